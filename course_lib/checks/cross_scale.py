"""Checkers for the exercises of notebook 07_cross_scale: MaxViT's grid partition, CrossFormer's long-distance
groups as an attention mask, and CrossViT's class token attending across branches.

The references are the packaged model's own pieces where it has them (`course_lib.models.cross_scale`): a
grid partition that passes here is `grid_partition`, and global attention under a mask that passes here is
what `DistanceAttention(kind="long")` computes (tests/test_cross_scale.py checks that equality).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.models.cross_scale import grid_partition as reference_grid_partition
from course_lib.models.swin import window_partition

# --- grid_partition(x, grid) -----------------------------------------------------------------------


def _grid_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(7)
    cases = []
    for batch, height, width, channels, grid in [(1, 4, 4, 1, 2), (2, 8, 8, 3, 2), (1, 8, 12, 2, 4),
                                                 (2, 6, 6, 4, 3), (1, 12, 8, 2, 2), (1, 4, 4, 2, 4)]:
        x = torch.randn(batch, height, width, channels, generator=generator)
        cases.append(Case(f"x {tuple(x.shape)}, grid={grid}", (x, grid)))
    return cases


grid_partition = FunctionChecker(
    "grid_partition",
    reference_grid_partition,
    _grid_cases,
    mistakes=[
        (lambda x, grid: window_partition(x, grid),
         "these are grid x grid blocks of adjacent tokens (block attention); a grid group takes tokens spread over "
         "the whole map, H/grid apart: the grid position goes outside, (g1 h), the shared offset inside."),
        (lambda x, grid: rearrange(x, "b (g1 i) (g2 j) c -> (b i j) (g1 g2) c", i=grid, j=grid),
         "you used grid as the spacing between tokens (CrossFormer's interval); in MaxViT grid is the number of "
         "tokens along each side of a group, so the spacing is H / grid."),
        (lambda x, grid: rearrange(x, "b (g1 h) (g2 w) c -> (b h w) (g2 g1) c", g1=grid, g2=grid),
         "the tokens inside each group go column by column; keep them row by row, (g1 g2)."),
        (lambda x, grid: rearrange(x, "b (g1 h) (g2 w) c -> (b w h) (g1 g2) c", g1=grid, g2=grid),
         "the groups come column by column; number them row by row by their offset, (b h w)."),
    ],
    hint="einops: rearrange(x, 'b (g1 h) (g2 w) c -> (b h w) (g1 g2) c', g1=grid, g2=grid).",
)


# --- long_distance_mask(height, width, interval) ---------------------------------------------------


def _coords(height: int, width: int) -> Tensor:
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=-1)  # (H*W, 2), row by row


def reference_long_distance_mask(height: int, width: int, interval: int) -> Tensor:
    """(H*W, H*W) boolean mask, True where query i and key j lie in the same long-distance group: their rows
    agree modulo `interval` and so do their columns. Tokens are numbered row by row."""
    residue = _coords(height, width) % interval  # (L, 2)
    return (rearrange(residue, "i k -> i 1 k") == rearrange(residue, "j k -> 1 j k")).all(dim=-1)


def _mask_cases() -> list[Case]:
    return [Case(f"height={h}, width={w}, interval={i}", (h, w, i))
            for h, w, i in [(4, 4, 2), (6, 6, 3), (4, 6, 2), (6, 4, 2), (8, 8, 4), (4, 4, 1), (6, 9, 3)]]


def _same(key) -> Tensor:
    return rearrange(key, "i ... -> i 1 ...") == rearrange(key, "j ... -> 1 j ...")


long_distance_mask = FunctionChecker(
    "long_distance_mask",
    reference_long_distance_mask,
    _mask_cases,
    mistakes=[
        (lambda h, w, i: _same(_coords(h, w) // i).all(-1),
         "that is the short-distance mask (blocks of adjacent tokens): a long-distance group is the tokens "
         "whose row and column agree *modulo* the interval, `%`, not after `//`."),
        (lambda h, w, i: _same(_coords(h, w)[:, 0] % i),
         "only the rows are compared; the columns must agree modulo the interval too."),
        (lambda h, w, i: _same(_coords(w, h).flip(-1) % i).all(-1),
         "the tokens are numbered column by column; number them row by row (index = row * width + column)."),
        (lambda h, w, i: _same(_coords(h, w) % torch.tensor([h // i, w // i])).all(-1),
         "you treated interval as the number of tokens along each side of a group (MaxViT's grid); it is the "
         "spacing between the tokens of a group."),
    ],
    hint="number the tokens row by row; two tokens share a group when row % interval and column % interval "
         "both agree.",
)


# --- cross_attend(cls, patches, w_q, w_k, w_v) -------------------------------------------------------


def reference_cross_attend(cls: Tensor, patches: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor) -> Tensor:
    """One head of CrossViT's fusion: the class token cls (B, D) is the only query; keys and values come from
    [cls; patches] (B, 1 + N, D). Weights are (D, D) matrices applied as x @ w. Returns (B, D)."""
    tokens = torch.cat([cls[:, None], patches], dim=1)  # (B, 1 + N, D)
    q, k, v = cls @ w_q, tokens @ w_k, tokens @ w_v  # (B, D), (B, 1 + N, D), (B, 1 + N, D)
    scores = torch.einsum("bd,btd->bt", q, k) / math.sqrt(q.shape[-1])  # (B, 1 + N)
    return torch.einsum("bt,btd->bd", scores.softmax(dim=-1), v)


def _cross_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(8)
    cases = []
    for batch, patches, dim in [(1, 3, 4), (2, 5, 8), (3, 16, 8), (2, 4, 16)]:
        tensors = [torch.randn(batch, dim, generator=generator), torch.randn(batch, patches, dim, generator=generator)]
        tensors += [torch.randn(dim, dim, generator=generator) / math.sqrt(dim) for _ in range(3)]
        cases.append(Case(f"cls ({batch}, {dim}), patches ({batch}, {patches}, {dim})", tuple(tensors)))
    return cases


def _patches_only(cls, patches, w_q, w_k, w_v):
    scores = torch.einsum("bd,btd->bt", cls @ w_q, patches @ w_k) / math.sqrt(cls.shape[-1])
    return torch.einsum("bt,btd->bd", scores.softmax(dim=-1), patches @ w_v)


def _unscaled(cls, patches, w_q, w_k, w_v):
    tokens = torch.cat([cls[:, None], patches], dim=1)
    scores = torch.einsum("bd,btd->bt", cls @ w_q, tokens @ w_k)
    return torch.einsum("bt,btd->bd", scores.softmax(dim=-1), tokens @ w_v)


def _every_token_a_query(cls, patches, w_q, w_k, w_v):
    tokens = torch.cat([cls[:, None], patches], dim=1)
    scores = (tokens @ w_q) @ (tokens @ w_k).transpose(1, 2) / math.sqrt(cls.shape[-1])
    return scores.softmax(dim=-1) @ (tokens @ w_v)


cross_attend = FunctionChecker(
    "cross_attend",
    reference_cross_attend,
    _cross_cases,
    mistakes=[
        (_patches_only, "the keys and values are the other branch's patches only; CrossViT puts the class token "
                        "itself first among them, [cls; patches], so it can keep its own information."),
        (_unscaled, "the scores are not divided by sqrt(D)."),
        (_every_token_a_query, "every token is a query; only the class token asks, so the output is one vector "
                               "per image, (B, D). That is what makes the fusion cost linear in N."),
        (lambda cls, patches, w_q, w_k, w_v: torch.cat([cls[:, None], patches], dim=1).mean(dim=1) @ w_v,
         "the values are averaged with equal weights: the softmax of the scores must weigh them."),
    ],
    hint="tokens = torch.cat([cls[:, None], patches], dim=1); scores = (cls @ w_q) against (tokens @ w_k), "
         "divided by sqrt(D); softmax over the 1 + N keys; weigh tokens @ w_v.",
)
