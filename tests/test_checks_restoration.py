"""The restoration checkers: right answers, written here independently, pass; plausible wrong ones fail with a
message naming the mistake."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from checking import fails, passes

from course_lib.checks import restoration as check

# --- channel_attention --------------------------------------------------------------------------------


def channel_attention(q, k, v, temperature, heads):
    batch, channels, height, width = q.shape
    per = channels // heads
    flat = [t.reshape(batch, heads, per, height * width) for t in (q, k, v)]
    qn = flat[0] / flat[0].norm(dim=-1, keepdim=True).clamp(min=1e-12)
    kn = flat[1] / flat[1].norm(dim=-1, keepdim=True).clamp(min=1e-12)
    scores = torch.einsum("bhip,bhjp->bhij", qn, kn) * temperature.view(1, heads, 1, 1)
    out = torch.einsum("bhij,bhjp->bhip", torch.softmax(scores, dim=-1), flat[2])
    return out.reshape(batch, channels, height, width)


def test_channel_attention_right(capsys):
    passes(check.channel_attention, channel_attention, capsys)


def _without(step):
    def wrong(q, k, v, temperature, heads):
        batch, channels, height, width = q.shape
        per = channels // heads
        qf, kf, vf = (t.reshape(batch, heads, per, height * width) for t in (q, k, v))
        if step != "normalise":
            qf, kf = F.normalize(qf, dim=-1), F.normalize(kf, dim=-1)
        scores = qf @ kf.transpose(-2, -1)
        scores = scores / per**0.5 if step == "temperature" else scores * temperature.view(1, heads, 1, 1)
        weights = scores.softmax(dim=-2 if step == "softmax" else -1)
        return (weights @ vf).reshape(q.shape)
    return wrong


@pytest.mark.parametrize("step, explanation", [
    ("normalise", "not L2-normalised along the pixels"),
    ("temperature", "divided by sqrt(d)"),
    ("softmax", "softmax runs over the query channels"),
], ids=["no-norm", "sqrt-scale", "softmax-axis"])
def test_channel_attention_mistakes_are_named(step, explanation, capsys):
    message = fails(check.channel_attention, _without(step), capsys, r"\(on q, k, v")
    assert explanation in message


def test_channel_attention_normalised_over_channels_is_named(capsys):
    def wrong(q, k, v, temperature, heads):
        b, c, h, w = q.shape
        qf, kf, vf = (t.reshape(b, heads, c // heads, h * w) for t in (q, k, v))
        qf, kf = F.normalize(qf, dim=2), F.normalize(kf, dim=2)
        weights = (qf @ kf.transpose(-2, -1) * temperature.view(1, heads, 1, 1)).softmax(-1)
        return (weights @ vf).reshape(q.shape)

    assert "normalised across the channels" in fails(check.channel_attention, wrong, capsys, "q, k, v")


def test_channel_attention_not_implemented(capsys):
    def exercise(q, k, v, temperature, heads):
        raise NotImplementedError

    fails(check.channel_attention, exercise, capsys, "not implemented yet")


# --- pixel_shuffle --------------------------------------------------------------------------------------


def pixel_shuffle(x, factor):
    batch, channels, height, width = x.shape
    out = torch.empty(batch, channels // factor**2, height * factor, width * factor)
    for c in range(channels // factor**2):
        for i in range(factor):
            for j in range(factor):
                out[:, c, i::factor, j::factor] = x[:, c * factor * factor + i * factor + j]
    return out


def test_pixel_shuffle_right(capsys):
    passes(check.pixel_shuffle, pixel_shuffle, capsys)


def test_pixel_shuffle_is_what_the_super_resolver_uses():
    from course_lib.models.restoration import super_resolver

    net = super_resolver(dim=8, heads=2, depth=1)
    x = torch.randn(1, 12, 3, 3)
    torch.testing.assert_close(net.shuffle(x), pixel_shuffle(x, 2))


@pytest.mark.parametrize("wrong, explanation", [
    (lambda x, r: x.reshape(x.shape[0], -1, r, r, *x.shape[2:]).permute(0, 1, 4, 3, 5, 2)
     .reshape(x.shape[0], -1, x.shape[2] * r, x.shape[3] * r), "offsets are swapped"),
    (lambda x, r: x.reshape(x.shape[0], x.shape[1] // r**2, x.shape[2] * r, x.shape[3] * r), "plain reshape"),
    (lambda x, r: x.reshape(x.shape[0], r, r, -1, *x.shape[2:]).permute(0, 3, 4, 1, 5, 2)
     .reshape(x.shape[0], -1, x.shape[2] * r, x.shape[3] * r), "colour is the fastest-varying"),
    (lambda x, r: x.reshape(x.shape[0], -1, r, r, *x.shape[2:]).permute(0, 1, 2, 4, 3, 5)
     .reshape(x.shape[0], -1, x.shape[2] * r, x.shape[3] * r), "whole tile"),
], ids=["swapped", "reshape", "colour-last", "tiles"])
def test_pixel_shuffle_mistakes_are_named(wrong, explanation, capsys):
    message = fails(check.pixel_shuffle, wrong, capsys, r"\(on x")
    assert explanation in message
