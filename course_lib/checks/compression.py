"""Checkers for the exercises of notebook 25_compression: per-channel weight quantisation, the log2 quantiser of
attention weights, scale reparameterisation of a LayerNorm's quantiser, and merging tokens.

The references are the packaged functions of `course_lib.compression`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from course_lib import compression
from course_lib.checks.core import Case, FunctionChecker


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(25)


# --- quantize_per_channel(weight, bits) -----------------------------------------------------------------------------


def _weight_cases() -> list[Case]:
    generator = _generator()
    cases = []
    for rows, columns, bits in ((4, 6, 8), (3, 5, 4), (6, 8, 3), (2, 3, 2)):
        spread = torch.logspace(-2, 1, rows)[:, None]  # rows of very different sizes: per-channel matters
        cases.append(Case(f"a ({rows}, {columns}) weight at {bits} bits",
                          (torch.randn(rows, columns, generator=generator) * spread, bits)))
    return cases


def _symmetric(weight: Tensor, bits: int, levels: int, per_channel: bool = True, rounding=torch.round) -> Tensor:
    magnitude = weight.abs().amax(dim=1, keepdim=True) if per_channel else weight.abs().amax()
    scale = magnitude / levels
    return rounding(weight / scale).clamp(-levels, levels) * scale


quantize_per_channel = FunctionChecker(
    "quantize_per_channel",
    lambda weight, bits: compression.quantize_weight(weight, bits, per_channel=True),
    _weight_cases,
    mistakes=[
        (lambda w, b: _symmetric(w, b, 2 ** (b - 1) - 1, per_channel=False),
         "one scale for the whole matrix: rows with small weights are rounded to few levels. Take the largest "
         "magnitude of each row (amax over dim=1, keepdim=True)."),
        (lambda w, b: _symmetric(w, b, 2**b - 1),
         "the largest magnitude maps to 2^b - 1, but a symmetric signed grid of b bits reaches only 2^(b-1) - 1 on "
         "each side of 0."),
        (lambda w, b: _symmetric(w, b, 2 ** (b - 1) - 1, rounding=torch.floor),
         "floor rounds every weight towards -infinity; round to the nearest level."),
    ],
    hint="scale = weight.abs().amax(dim=1, keepdim=True) / (2 ** (bits - 1) - 1); "
         "return (weight / scale).round().clamp(-levels, levels) * scale",
    atol=1e-6,
)


# --- log2_quantize(probabilities, bits) -----------------------------------------------------------------------------


def _probability_cases() -> list[Case]:
    generator = _generator()
    cases = []
    for rows, keys, bits, temperature in ((3, 16, 4, 1.0), (2, 40, 3, 3.0), (4, 8, 2, 0.5), (2, 64, 4, 4.0)):
        logits = torch.randn(rows, keys, generator=generator) * temperature
        cases.append(Case(f"{rows} softmax rows over {keys} keys at {bits} bits", (logits.softmax(dim=-1), bits)))
    return cases


def _clamped_up(p: Tensor, bits: int) -> Tensor:
    return torch.exp2(-(-torch.log2(p)).round().clamp(0, 2**bits - 1))


def _floored(p: Tensor, bits: int) -> Tensor:
    exponent = (-torch.log2(p)).floor()
    return torch.where(exponent <= 2**bits - 2, torch.exp2(-exponent), torch.zeros_like(p))


log2_quantize = FunctionChecker(
    "log2_quantize",
    compression.log2_quantize,
    _probability_cases,
    mistakes=[
        (_clamped_up, "weights too small for the grid are raised to its smallest level 2^-(2^b - 1): with many keys "
         "those add up to a lot of attention nobody paid. Give them 0 (the last code) instead."),
        (_floored, "the exponent is floored, which rounds every weight up; round -log2(p) to the nearest integer."),
        (compression.uniform_probability_quantize, "this is the uniform grid k / (2^b - 1); the log2 grid has levels "
         "2^-q."),
    ],
    hint="q = (-torch.log2(p)).round().clamp_min(0); return torch.where(q <= 2**bits - 2, torch.exp2(-q), 0)",
    atol=1e-7,
)


# --- reparameterize(gamma, beta, weight, bias, scale, zero_point) ---------------------------------------------------


def reference_reparameterize(gamma: Tensor, beta: Tensor, weight: Tensor, bias: Tensor, scale: Tensor,
                             zero_point: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`compression.reparameterize_layernorm` on a LayerNorm and one Linear built from the given tensors."""
    norm, layer = nn.LayerNorm(len(gamma)), nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        norm.weight.copy_(gamma), norm.bias.copy_(beta), layer.weight.copy_(weight), layer.bias.copy_(bias)
    layer_scale, layer_zero = compression.reparameterize_layernorm(norm, [layer], scale, zero_point)
    return (norm.weight.detach(), norm.bias.detach(), layer.weight.detach(), layer.bias.detach(), layer_scale,
            layer_zero)


def _reparameterize_cases() -> list[Case]:
    generator = _generator()
    cases = []
    for channels, outputs, bits in ((4, 3, 8), (6, 2, 4), (3, 5, 6)):
        gamma, beta = 1 + torch.rand(channels, generator=generator), torch.randn(channels, generator=generator)
        weight, bias = torch.randn(outputs, channels, generator=generator), torch.randn(outputs, generator=generator)
        low = -torch.rand(channels, generator=generator) * 4
        high = torch.rand(channels, generator=generator) * 4
        scale, zero_point = compression.minmax_parameters(low, high, bits)
        cases.append(Case(f"{channels} channels read by a Linear to {outputs} at {bits} bits",
                          (gamma, beta, weight, bias, scale, zero_point)))
    return cases


def _no_shift(gamma, beta, weight, bias, scale, zero_point):
    s = scale.mean()
    ratio = scale / s
    return gamma / ratio, beta / ratio, weight * ratio, bias, s, zero_point.mean().round()


def _divided_weight(gamma, beta, weight, bias, scale, zero_point):
    s, z = scale.mean(), zero_point.mean().round()
    ratio, shift = scale / s, (zero_point - z) * scale
    return gamma / ratio, (beta + shift) / ratio, weight / ratio, bias - weight @ shift, s, z


reparameterize = FunctionChecker(
    "reparameterize",
    reference_reparameterize,
    _reparameterize_cases,
    mistakes=[
        (_no_shift, "the zero points differ per channel: shift beta by (zero_point - z) * scale before dividing, and "
         "take weight @ shift from the bias, or the per-tensor quantiser rounds on a different grid."),
        (_divided_weight, "the norm's output channel c is divided by r_c, so the Linear must multiply its column c "
         "by r_c to read the same values."),
    ],
    hint="s, z = scale.mean(), zero_point.mean().round(); r = scale / s; shift = (zero_point - z) * scale; "
         "return gamma / r, (beta + shift) / r, weight * r, bias - weight @ shift, s, z",
    atol=1e-5,
)


# --- merge_tokens(tokens, sizes, importance, keep) ------------------------------------------------------------------


def _merge_cases() -> list[Case]:
    generator = _generator()
    cases = []
    for batch, count, dim, keep in ((2, 6, 4, 3), (1, 8, 3, 2), (3, 5, 2, 5), (2, 7, 5, 1)):
        sizes = torch.randint(1, 4, (batch, count), generator=generator).float()
        cases.append(Case(f"{batch} x {count} tokens of width {dim}, keep {keep}",
                          (torch.randn(batch, count, dim, generator=generator), sizes,
                           torch.rand(batch, count, generator=generator), keep)))
    return cases


def _dropped(tokens, sizes, importance, keep):
    return compression.merge_tokens(tokens, sizes, importance, keep, merge=False)


def _unweighted(tokens, sizes, importance, keep):
    return compression.merge_tokens(tokens, torch.ones_like(sizes), importance, keep)[0], \
        compression.merge_tokens(tokens, sizes, importance, keep)[1]


def _by_distance(tokens, sizes, importance, keep):
    """Nearest kept token by Euclidean distance instead of cosine similarity."""
    order = importance.argsort(dim=1, descending=True)
    kept_index = order[:, :keep].sort(dim=1).values
    dim = tokens.shape[-1]
    kept = tokens.gather(1, kept_index[..., None].expand(-1, -1, dim))
    kept_sizes = sizes.gather(1, kept_index)
    others = tokens.gather(1, order[:, keep:, None].expand(-1, -1, dim))
    other_sizes = sizes.gather(1, order[:, keep:])
    target = torch.cdist(others, kept).argmin(dim=-1)
    total = (kept * kept_sizes[..., None]).scatter_add(1, target[..., None].expand(-1, -1, dim),
                                                      others * other_sizes[..., None])
    merged = kept_sizes.scatter_add(1, target, other_sizes)
    return total / merged[..., None], merged


merge_tokens = FunctionChecker(
    "merge_tokens",
    lambda tokens, sizes, importance, keep: compression.merge_tokens(tokens, sizes, importance, keep),
    _merge_cases,
    mistakes=[
        (_dropped, "the other tokens are dropped; each must be averaged into the kept token it is most similar to."),
        (_unweighted, "the average ignores sizes: a token that already stands for 3 patches must count 3 times."),
        (_by_distance, "the most similar kept token is the one of highest cosine similarity (F.normalize, then a dot "
         "product), not the nearest by distance."),
    ],
    hint="kept = top-`keep` by importance (in their original order); target = argmax of cosine similarity from each "
         "other token to the kept ones; sums of size * token and of sizes by scatter_add; return sums / sizes, sizes",
    atol=1e-5,
)
