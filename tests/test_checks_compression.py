"""The checkers of notebook 25_compression: right answers pass, plausible wrong ones fail with a message naming
the mistake. Each correct answer is written here the way a learner would, independently of the packaged
references."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from checking import fails, passes

from course_lib.checks import compression as check


def quantize_per_channel(weight, bits):
    levels = 2 ** (bits - 1) - 1
    scale = weight.abs().amax(dim=1, keepdim=True) / levels
    return torch.round(weight / scale).clamp(-levels, levels) * scale


def test_per_channel_right(capsys):
    passes(check.quantize_per_channel, quantize_per_channel, capsys)


def test_per_channel_one_scale(capsys):
    def wrong(weight, bits):
        levels = 2 ** (bits - 1) - 1
        scale = weight.abs().max() / levels
        return torch.round(weight / scale).clamp(-levels, levels) * scale

    fails(check.quantize_per_channel, wrong, capsys, "each row")


def test_per_channel_unsigned_levels(capsys):
    def wrong(weight, bits):
        scale = weight.abs().amax(dim=1, keepdim=True) / (2**bits - 1)
        return torch.round(weight / scale) * scale

    fails(check.quantize_per_channel, wrong, capsys, "symmetric signed grid")


def log2_quantize(p, bits):
    out = torch.zeros_like(p)
    exponent = torch.round(-torch.log2(p))
    inside = exponent <= 2**bits - 2
    out[inside] = 2.0 ** -exponent[inside]
    return out


def test_log2_right(capsys):
    passes(check.log2_quantize, log2_quantize, capsys)


def test_log2_clamped_up(capsys):
    def wrong(p, bits):
        return 2.0 ** -torch.clamp(torch.round(-torch.log2(p)), 0, 2**bits - 1)

    fails(check.log2_quantize, wrong, capsys, "Give them 0")


def test_log2_uniform(capsys):
    fails(check.log2_quantize, lambda p, bits: torch.round(p * (2**bits - 1)) / (2**bits - 1), capsys, "uniform grid")


def reparameterize(gamma, beta, weight, bias, scale, zero_point):
    layer_scale, layer_zero = scale.mean(), torch.round(zero_point.mean())
    ratio = scale / layer_scale
    shift = (zero_point - layer_zero) * scale
    return (gamma / ratio, (beta + shift) / ratio, weight * ratio[None, :], bias - weight @ shift, layer_scale,
            layer_zero)


def test_reparameterize_right(capsys):
    passes(check.reparameterize, reparameterize, capsys)


def test_reparameterize_without_shift(capsys):
    def wrong(gamma, beta, weight, bias, scale, zero_point):
        s = scale.mean()
        return gamma * s / scale, beta * s / scale, weight * scale / s, bias, s, torch.round(zero_point.mean())

    fails(check.reparameterize, wrong, capsys, "zero points differ")


def merge_tokens(tokens, sizes, importance, keep):
    out_tokens, out_sizes = [], []
    for x, s, score in zip(tokens, sizes, importance):  # one image at a time
        order = score.argsort(descending=True)
        kept, others = order[:keep].sort().values, order[keep:]
        total, weight = x[kept] * s[kept, None], s[kept].clone()
        similarity = F.normalize(x[others], dim=-1) @ F.normalize(x[kept], dim=-1).T
        for j, target in zip(others, similarity.argmax(dim=-1)):
            total[target] += x[j] * s[j]
            weight[target] += s[j]
        out_tokens.append(total / weight[:, None])
        out_sizes.append(weight)
    return torch.stack(out_tokens), torch.stack(out_sizes)


def test_merge_right(capsys):
    passes(check.merge_tokens, merge_tokens, capsys)


def test_merge_unweighted(capsys):
    def wrong(tokens, sizes, importance, keep):
        merged, merged_sizes = merge_tokens(tokens, torch.ones_like(sizes), importance, keep)
        return merged, merge_tokens(tokens, sizes, importance, keep)[1]

    fails(check.merge_tokens, wrong, capsys, "ignores sizes")


def test_merge_dropped(capsys):
    def wrong(tokens, sizes, importance, keep):
        kept = importance.argsort(dim=1, descending=True)[:, :keep].sort(dim=1).values
        return tokens.gather(1, kept[..., None].expand(-1, -1, tokens.shape[-1])), sizes.gather(1, kept)

    fails(check.merge_tokens, wrong, capsys, "dropped")
