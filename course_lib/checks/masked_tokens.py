"""Checkers for notebook 10's image-token and multi-modal exercises: BEiT's [MASK] replacement and the
rounding of a Dirichlet split of MultiMAE's visible-token budget."""

from __future__ import annotations

import torch
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker

# --- replace_masked(tokens, mask, mask_token) --------------------------------------------------------


def reference_replace_masked(tokens: Tensor, mask: Tensor, mask_token: Tensor) -> Tensor:
    """(B, N, D) embeddings, (B, N) bool (True = hidden), (D,) -> (B, N, D) with hidden rows set to mask_token."""
    return torch.where(mask[..., None], mask_token, tokens)


def _replace_cases() -> list[Case]:
    g = torch.Generator().manual_seed(11)
    cases = []
    for batch, n, dim in [(1, 4, 2), (2, 6, 3), (3, 16, 8), (2, 9, 4)]:
        mask = torch.rand(batch, n, generator=g) < 0.4
        mask[:, 0], mask[:, -1] = True, False
        cases.append(Case(f"tokens ({batch}, {n}, {dim})", (torch.randn(batch, n, dim, generator=g), mask,
                                                           torch.randn(dim, generator=g))))
    return cases


replace_masked = FunctionChecker(
    "replace_masked",
    reference_replace_masked,
    _replace_cases,
    mistakes=[
        (lambda t, m, k: t + m[..., None] * k,
         "you added the mask token to the hidden embeddings; BEiT replaces them, so nothing of the hidden pixels "
         "may remain."),
        (lambda t, m, k: torch.where(m[..., None], t, k),
         "the mask is the wrong way round: True means hidden, and hidden positions get the mask token."),
        (lambda t, m, k: t * (~m[..., None]),
         "you zeroed the hidden embeddings; they should hold the learned mask token instead."),
    ],
    hint="torch.where(mask[..., None], mask_token, tokens) broadcasts the (D,) token over the hidden rows.",
)

# --- split_budget(shares, budget) --------------------------------------------------------------------


def reference_split_budget(shares: Tensor, budget: int) -> Tensor:
    """(B, M) shares summing to 1 -> (B, M) int64 counts summing to `budget`: floor(shares * budget), then one
    more token for the largest remainders (ties: the earlier modality)."""
    ideal = shares.double() * budget
    counts = ideal.floor().long()
    left = budget - counts.sum(1)
    order = (ideal - counts).argsort(dim=1, descending=True, stable=True)
    extra = (torch.arange(shares.shape[1]) < left[:, None]).long()
    return counts.scatter_add(1, order, extra)


def _split_cases() -> list[Case]:
    g = torch.Generator().manual_seed(12)
    cases = []
    for batch, m, budget in [(4, 3, 16), (5, 3, 7), (3, 2, 9), (6, 4, 30), (2, 3, 1)]:
        shares = -torch.rand(batch, m, generator=g).log()
        cases.append(Case(f"shares ({batch}, {m}), budget={budget}", (shares / shares.sum(1, keepdim=True), budget)))
    return cases


split_budget = FunctionChecker(
    "split_budget",
    reference_split_budget,
    _split_cases,
    mistakes=[
        (lambda s, b: (s * b).round().long(),
         "rounding each share on its own does not keep the total: the counts must sum to the budget exactly."),
        (lambda s, b: (s * b).floor().long(),
         "flooring loses up to one token per modality: hand the leftover tokens to the largest remainders."),
        (lambda s, b: torch.cat([(s[:, :-1] * b).floor().long(),
                                 b - (s[:, :-1] * b).floor().long().sum(1, keepdim=True)], 1),
         "all leftover tokens went to the last modality; give them to the largest fractional parts."),
    ],
    hint="counts = floor(shares * budget); the rows still miss budget - counts.sum(1) tokens: add one to the "
         "modalities with the largest remainders (argsort descending, stable).",
)
