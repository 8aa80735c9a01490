"""The checkers of notebook 11_efficient_attention: right answers pass, plausible wrong ones fail with a message
naming the mistake.

Each correct answer is written here the way a learner would, independently of the references in
`course_lib.checks.efficient_attention`; each wrong one is a mistake a learner is likely to make.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from checking import fails, passes

from course_lib.checks import efficient_attention as check


def phi(x):
    return F.elu(x) + 1


# --- elu_linear_attention ----------------------------------------------------------------------------


def elu_linear_attention(q, k, v):
    kv = phi(k).transpose(-2, -1) @ v  # (..., d, d_v)
    z = phi(k).sum(dim=-2)  # (..., d)
    return (phi(q) @ kv) / (phi(q) @ z.unsqueeze(-1))


def test_elu_linear_attention_right(capsys):
    passes(check.elu_linear_attention, elu_linear_attention, capsys)


def test_elu_linear_attention_equals_the_quadratic_form(capsys):
    def quadratic(q, k, v):
        scores = phi(q) @ phi(k).transpose(-2, -1)
        return scores @ v / scores.sum(dim=-1, keepdim=True)

    passes(check.elu_linear_attention, quadratic, capsys)


def test_elu_linear_attention_unnormalised(capsys):
    message = fails(check.elu_linear_attention, lambda q, k, v: phi(q) @ (phi(k).transpose(-2, -1) @ v), capsys,
                    r"output\[.*\] is")
    assert "nothing divides it" in message


def test_elu_linear_attention_no_feature_map(capsys):
    message = fails(check.elu_linear_attention,
                    lambda q, k, v: (q @ (k.transpose(-2, -1) @ v)) / (q @ k.sum(dim=-2).unsqueeze(-1)), capsys,
                    r"output\[.*\] is")
    assert "feature map is missing" in message


def test_elu_linear_attention_softmax(capsys):
    message = fails(check.elu_linear_attention,
                    lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v,
                    capsys, r"output\[.*\] is")
    assert "softmax attention" in message


def test_elu_linear_attention_not_implemented(capsys):
    def exercise(q, k, v):
        raise NotImplementedError

    fails(check.elu_linear_attention, exercise, capsys, "not implemented yet")


# --- causal_linear_attention -------------------------------------------------------------------------


def causal_linear_attention(q, k, v):
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=v.dtype)
    state = torch.zeros(*q.shape[:-2], q.shape[-1], v.shape[-1], dtype=v.dtype)
    norm = torch.zeros(*q.shape[:-2], q.shape[-1], dtype=v.dtype)
    for i in range(q.shape[-2]):  # the recurrent form: one state update per position
        state = state + phi(k[..., i, :]).unsqueeze(-1) * v[..., i, None, :]
        norm = norm + phi(k[..., i, :])
        out[..., i, :] = (phi(q[..., i, None, :]) @ state).squeeze(-2) / (phi(q[..., i, :]) * norm).sum(-1, keepdim=True)
    return out


def test_causal_linear_attention_right(capsys):
    passes(check.causal_linear_attention, causal_linear_attention, capsys)


def test_causal_linear_attention_sees_the_future(capsys):
    message = fails(check.causal_linear_attention, elu_linear_attention, capsys, r"output\[.*\] is")
    assert "every query sees every key" in message


def test_causal_linear_attention_exclusive(capsys):
    def exclusive(q, k, v):
        scores = (phi(q) @ phi(k).transpose(-2, -1)).tril(diagonal=-1)
        return scores @ v / scores.sum(dim=-1, keepdim=True)

    message = fails(check.causal_linear_attention, exclusive, capsys, r"output\[.*\] is")
    assert "exclusive prefix sum" in message


def test_causal_linear_attention_crash(capsys):
    fails(check.causal_linear_attention, lambda q, k, v: q @ k, capsys, "raised RuntimeError")


# --- haar_level --------------------------------------------------------------------------------------


def haar_level(x):
    pairs = x.unflatten(-2, (x.shape[-2] // 2, 2))
    even, odd = pairs[..., 0, :], pairs[..., 1, :]
    return torch.cat([even + odd, even - odd], dim=-2) / 2**0.5


def test_haar_level_right(capsys):
    passes(check.haar_level, haar_level, capsys)


def test_haar_level_keeps_the_energy():
    x = torch.randn(3, 16, 4, dtype=torch.float64)
    torch.testing.assert_close(haar_level(x).pow(2).sum(), x.pow(2).sum())


def test_haar_level_halved(capsys):
    message = fails(check.haar_level, lambda x: haar_level(x) / 2**0.5, capsys, r"output\[.*\] is")
    assert "divided by 2" in message


def test_haar_level_details_first(capsys):
    def swapped(x):
        half = x.shape[-2] // 2
        y = haar_level(x)
        return torch.cat([y[..., half:, :], y[..., :half, :]], dim=-2)

    message = fails(check.haar_level, swapped, capsys, r"output\[.*\] is")
    assert "details come first" in message


def test_haar_level_wrong_shape(capsys):
    fails(check.haar_level, lambda x: x[..., 0::2, :] + x[..., 1::2, :], capsys, "has shape")
