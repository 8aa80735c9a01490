"""Checkers for the exercises of notebook 01_attention."""

from __future__ import annotations

import torch

from course_lib import nn as course_nn
from course_lib.checks.core import Case, FunctionChecker, ModuleChecker


def _causal_cases() -> list[Case]:
    return [Case(f"length={n}", (n,)) for n in (1, 2, 5, 16)]


causal_mask = FunctionChecker(
    "causal_mask",
    lambda length: course_nn.causal_mask(length),
    _causal_cases,
    hint="a (length, length) bool tensor, True on and below the diagonal: query i may read keys 0..i. "
    "torch.ones(...).tril() does it.",
)


def _attention_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(0)

    def tensors(*shape):
        return torch.randn(*shape, generator=generator)

    cases = []
    for batch, length_q, length_k, dim in [(1, 4, 4, 8), (2, 5, 7, 16), (3, 1, 6, 4)]:
        q, k, v = tensors(batch, length_q, dim), tensors(batch, length_k, dim), tensors(batch, length_k, dim)
        cases.append(Case(f"q {tuple(q.shape)}, k {tuple(k.shape)}, no mask", (q, k, v)))
        mask = torch.rand(batch, length_q, length_k, generator=generator) > 0.4
        mask[..., 0] = True  # every query sees at least one key
        cases.append(Case(f"q {tuple(q.shape)}, k {tuple(k.shape)}, random boolean mask", (q, k, v), {"mask": mask}))
    q = tensors(2, 6, 8)
    cases.append(Case("a causal mask of length 6", (q, q, q), {"mask": course_nn.causal_mask(6)}))
    return cases


scaled_dot_product_attention = FunctionChecker(
    "scaled_dot_product_attention",
    lambda q, k, v, mask=None: course_nn.scaled_dot_product_attention(q, k, v, mask, return_weights=True),
    _attention_cases,
    hint="scores = q @ k.transpose(-2, -1) / sqrt(d); set scores to -inf where mask is False; "
    "weights = softmax over the last dim (the keys); return (weights @ v, weights).",
)


def _multi_head_cases() -> list[tuple[Case, Case]]:
    generator = torch.Generator().manual_seed(1)
    pairs = []
    for dim, heads, length in [(16, 4, 5), (24, 3, 7), (8, 1, 3)]:
        x = torch.randn(2, length, dim, generator=generator)
        pairs.append((Case(f"dim={dim}, heads={heads}", (dim, heads)), Case(f"x {tuple(x.shape)}", (x,))))
    return pairs


class _ReferenceMultiHead(course_nn.MultiHeadAttention):
    """The packaged module with the notebook's constructor: (dim, heads)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__(dim, heads)


multi_head_attention = ModuleChecker(
    "MultiHeadAttention",
    _ReferenceMultiHead,
    _multi_head_cases,
    hint="project x with to_q, to_k and to_v; rearrange 'b l (h d) -> b h l d'; attend in every head; "
    "rearrange back 'b h l d -> b l (h d)' and apply to_out.",
)


def _sinusoid_cases() -> list[Case]:
    return [Case(f"max_len={n}, dim={d}", (n, d)) for n, d in [(1, 2), (8, 4), (50, 16), (128, 64)]]


sinusoidal_table = FunctionChecker(
    "sinusoidal_table",
    course_nn.sinusoidal_table,
    _sinusoid_cases,
    hint="angle[p, i] = p / 10000**(2i/dim) for i < dim/2; feature 2i is sin(angle), feature 2i+1 is cos(angle).",
)
