"""The checkers of notebook 12_state_space_models: right answers pass, plausible wrong ones fail with a message
naming the mistake.

Each correct answer is written here the way a learner would, independently of the references in
`course_lib.checks.ssm`; each wrong one is a mistake a learner is likely to make.
"""

from __future__ import annotations

import torch
from checking import fails, passes

from course_lib.checks import ssm as check

# --- linear_scan ----------------------------------------------------------------------------------------


def linear_scan(a, b):
    h, states = torch.zeros_like(b[:, 0]), []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1), strict=True):
        h = a_t * h + b_t
        states.append(h)
    return torch.stack(states, dim=1)


def test_linear_scan_right(capsys):
    passes(check.linear_scan, linear_scan, capsys)


def test_linear_scan_by_cumulative_products(capsys):
    def closed_form(a, b):  # h_t = sum_s (prod_{s<r<=t} a_r) b_s, written as a lower-triangular matrix
        length = a.shape[1]
        out = torch.zeros_like(b)
        for t in range(length):
            for s in range(t + 1):
                weight = a[:, s + 1:t + 1].prod(dim=1) if t > s else torch.ones_like(a[:, 0])
                out[:, t] += weight * b[:, s]
        return out

    passes(check.linear_scan, closed_form, capsys)


def test_linear_scan_without_decay(capsys):
    message = fails(check.linear_scan, lambda a, b: b.cumsum(dim=1), capsys, r"output\[.*\] is")
    assert "decay a is missing" in message


def test_linear_scan_last_state_only(capsys):
    message = fails(check.linear_scan, lambda a, b: linear_scan(a, b)[:, -1], capsys, "shape")
    assert "only the last state" in message


def test_linear_scan_decay_after_input(capsys):
    def wrong(a, b):
        h, states = torch.zeros_like(b[:, 0]), []
        for t in range(a.shape[1]):
            h = a[:, t] * (h + b[:, t])
            states.append(h)
        return torch.stack(states, dim=1)

    message = fails(check.linear_scan, wrong, capsys, r"output\[.*\] is")
    assert "multiplies the new input too" in message


def test_linear_scan_not_implemented(capsys):
    def exercise(a, b):
        raise NotImplementedError

    fails(check.linear_scan, exercise, capsys, "not implemented yet")


# --- parallel_scan --------------------------------------------------------------------------------------


def parallel_scan(a, b):
    length, offset = a.shape[1], 1
    while offset < length:
        new_b = b.clone()
        new_a = a.clone()
        new_b[:, offset:] = a[:, offset:] * b[:, :-offset] + b[:, offset:]
        new_a[:, offset:] = a[:, offset:] * a[:, :-offset]
        a, b, offset = new_a, new_b, 2 * offset
    return b


def test_parallel_scan_right(capsys):
    passes(check.parallel_scan, parallel_scan, capsys)


def test_parallel_scan_sequential_answer_passes_too(capsys):
    passes(check.parallel_scan, linear_scan, capsys)


def test_parallel_scan_wrong_order(capsys):
    def wrong(a, b):
        offset = 1
        while offset < a.shape[1]:
            new_b = b.clone()
            new_b[:, offset:] = a[:, :-offset] * b[:, offset:] + b[:, :-offset]
            new_a = a.clone()
            new_a[:, offset:] = a[:, offset:] * a[:, :-offset]
            a, b, offset = new_a, new_b, 2 * offset
        return b

    message = fails(check.parallel_scan, wrong, capsys, r"output\[.*\] is")
    assert "wrong order" in message


def test_parallel_scan_a_never_updated(capsys):
    def wrong(a, b):
        offset = 1
        while offset < a.shape[1]:
            new_b = b.clone()
            new_b[:, offset:] = a[:, offset:] * b[:, :-offset] + b[:, offset:]
            b, offset = new_b, 2 * offset
        return b

    message = fails(check.parallel_scan, wrong, capsys, r"output\[.*\] is")
    assert "a is never updated" in message


# --- zoh ------------------------------------------------------------------------------------------------


def zoh(A, B, dt):
    decay = torch.exp(A * dt.unsqueeze(-1))
    return decay, (decay - 1) / A * B


def test_zoh_right(capsys):
    passes(check.zoh, zoh, capsys)


def test_zoh_euler(capsys):
    message = fails(check.zoh, lambda A, B, dt: (1 + dt[:, None] * A, dt[:, None] * B), capsys, r"output\[0\]")
    assert "Euler" in message


def test_zoh_mamba_simplification(capsys):
    message = fails(check.zoh, lambda A, B, dt: (torch.exp(dt[:, None] * A), dt[:, None] * B), capsys,
                    r"output\[1\]")
    assert "simplification" in message


def test_zoh_missing_division(capsys):
    message = fails(check.zoh, lambda A, B, dt: (torch.exp(dt[:, None] * A), torch.expm1(dt[:, None] * A) * B),
                    capsys, r"output\[1\]")
    assert "division by A" in message


def test_zoh_returns_a_tensor_not_a_pair(capsys):
    fails(check.zoh, lambda A, B, dt: torch.exp(dt[:, None] * A), capsys, "tuple of 2 items")
