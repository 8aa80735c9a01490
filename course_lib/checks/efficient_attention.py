"""Checkers for the exercises of notebook 11_efficient_attention: elu+1 linear attention (non-causal), causal
linear attention with prefix sums, and one level of the Haar transform.

The references are the packaged functions of `course_lib.nn.efficient_attention`: an answer that passes
here computes what `linear_attention(elu_feature_map(q), elu_feature_map(k), v)` and `haar_transform(x, 1)`
compute.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.nn.efficient_attention import elu_feature_map, haar_transform, linear_attention


def _qkv_cases(seed: int) -> list[Case]:
    generator = torch.Generator().manual_seed(seed)
    cases = []
    for shape, d_v in [((1, 1, 4, 2), 2), ((2, 3, 7, 4), 5), ((1, 2, 16, 8), 8), ((2, 1, 5, 3), 1)]:
        q, k = (torch.randn(*shape, generator=generator, dtype=torch.float64) for _ in range(2))
        v = torch.randn(*shape[:-1], d_v, generator=generator, dtype=torch.float64)
        cases.append(Case(f"q, k {shape}, v {tuple(v.shape)}", (q, k, v)))
    return cases


def _phi(x: Tensor) -> Tensor:
    return F.elu(x) + 1


# --- elu_linear_attention(q, k, v) -------------------------------------------------------------------


def reference_elu_linear_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Non-causal linear attention with the elu+1 feature map: phi(Q) (phi(K)ᵀ V) / phi(Q) (phi(K)ᵀ 1)."""
    return linear_attention(elu_feature_map(q), elu_feature_map(k), v, eps=0.0)


elu_linear_attention = FunctionChecker(
    "elu_linear_attention",
    reference_elu_linear_attention,
    lambda: _qkv_cases(11),
    mistakes=[
        (lambda q, k, v: _phi(q) @ (_phi(k).transpose(-2, -1) @ v),
         "the numerator is right but nothing divides it: divide each row by phi(q_i)·sum_j phi(k_j), so the "
         "weights of each query sum to one as softmax weights do."),
        (lambda q, k, v: (q @ (k.transpose(-2, -1) @ v)) / (q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1)),
         "the feature map is missing: apply phi(x) = elu(x) + 1 to q and k first, so every score is positive."),
        (lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v,
         "this is softmax attention (quadratic); replace exp(q·k/√d) by phi(q)·phi(k) and regroup the products."),
        (lambda q, k, v: (_phi(q) @ (_phi(k).transpose(-2, -1) @ v)) / _phi(q).sum(dim=-1, keepdim=True),
         "the denominator sums the query's features alone; it is phi(q_i)·(sum_j phi(k_j)), the sum of the "
         "row's scores."),
    ],
    hint="phi = elu(x) + 1; kv = phi(k)ᵀ v (d × d_v), z = phi(k) summed over positions; "
    "out = phi(q) kv / (phi(q) z)[..., None].",
)


# --- causal_linear_attention(q, k, v) ------------------------------------------------------------------


def reference_causal_linear_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal elu+1 linear attention: query i sees keys 0..i, through prefix sums of phi(k_j) v_jᵀ and phi(k_j)."""
    return linear_attention(elu_feature_map(q), elu_feature_map(k), v, causal=True, eps=0.0)


causal_linear_attention = FunctionChecker(
    "causal_linear_attention",
    reference_causal_linear_attention,
    lambda: _qkv_cases(12),
    mistakes=[
        (reference_elu_linear_attention,
         "every query sees every key (the non-causal summary); keep running sums over positions, "
         ".cumsum(dim=-3) for phi(k_j) v_jᵀ and .cumsum(dim=-2) for phi(k_j), so query i sees keys 0..i only."),
        (lambda q, k, v: _causal_without_denominator(q, k, v),
         "the numerator is right but nothing divides it: divide by phi(q_i)·(sum_{j<=i} phi(k_j))."),
        (lambda q, k, v: _causal_strict(q, k, v),
         "query i sees keys 0..i-1 only (an exclusive prefix sum); include key i itself, as a causal mask does."),
    ],
    hint="kv = einsum('...lm,...ld->...lmd', phi(k), v).cumsum(dim=-3); z = phi(k).cumsum(dim=-2); "
    "out = einsum('...lm,...lmd->...ld', phi(q), kv) / einsum('...lm,...lm->...l', phi(q), z)[..., None].",
)


def _causal_without_denominator(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    kv = torch.einsum("...lm,...ld->...lmd", _phi(k), v).cumsum(dim=-3)
    return torch.einsum("...lm,...lmd->...ld", _phi(q), kv)


def _causal_strict(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    scores = (_phi(q) @ _phi(k).transpose(-2, -1)).tril(diagonal=-1)
    return (scores @ v) / scores.sum(dim=-1, keepdim=True)


# --- haar_level(x) -------------------------------------------------------------------------------------


def reference_haar_level(x: Tensor) -> Tensor:
    """One level of the orthonormal Haar transform along dim -2 of (..., L, d): the L/2 averages
    (even + odd)/√2, then the L/2 details (even - odd)/√2."""
    return haar_transform(x, 1)


def _haar_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(13)
    cases = [Case("x = [[1], [3]] (one pair)", (torch.tensor([[1.0], [3.0]], dtype=torch.float64),))]
    for shape in [(8, 1), (2, 6, 3), (1, 2, 16, 4)]:
        x = torch.randn(*shape, generator=generator, dtype=torch.float64)
        cases.append(Case(f"x {shape}", (x,)))
    return cases


def _haar_with(scale: float = math.sqrt(2), interleave: bool = False, swap: bool = False, halves: bool = False):
    def haar(x: Tensor) -> Tensor:
        if halves:
            half = x.shape[-2] // 2
            even, odd = x[..., :half, :], x[..., half:, :]
        else:
            even, odd = x[..., 0::2, :], x[..., 1::2, :]
        average, detail = (even + odd) / scale, (even - odd) / scale
        if swap:
            average, detail = detail, average
        if interleave:
            return torch.stack([average, detail], dim=-2).flatten(-3, -2)
        return torch.cat([average, detail], dim=-2)
    return haar


haar_level = FunctionChecker(
    "haar_level",
    reference_haar_level,
    _haar_cases,
    mistakes=[
        (_haar_with(scale=2.0), "you divided by 2 (plain averages and half-differences); divide by √2 so the "
         "transform is orthonormal and keeps the sequence's energy (sum of squares)."),
        (_haar_with(scale=1.0), "nothing is divided; divide sums and differences by √2."),
        (_haar_with(swap=True), "details come first; put the averages first, then the details."),
        (_haar_with(interleave=True), "averages and details are interleaved; concatenate all L/2 averages, "
         "then all L/2 details."),
        (_haar_with(halves=True), "you paired the first half with the second half; pair neighbours, "
         "x[..., 0::2, :] with x[..., 1::2, :]."),
    ],
    hint="even, odd = x[..., 0::2, :], x[..., 1::2, :]; "
    "torch.cat([(even + odd) / √2, (even - odd) / √2], dim=-2).",
)
