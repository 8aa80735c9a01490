"""Random token masks for masked modelling (MAE, BEiT, MultiMAE, ConvMAE) and the gathers that use them.

A mask is a (B, N) bool tensor, True where a token is *masked* (hidden from the encoder). Every row masks
exactly `round(ratio * N)` tokens, so the visible tokens of a batch stack into one (B, N_visible, D) tensor:
the encoder of a masked autoencoder then runs on the visible tokens alone, which is where its saving comes from.
"""

from __future__ import annotations

import torch
from einops import repeat
from torch import Tensor

__all__ = ["gather_tokens", "masked_count", "random_masking", "visible_indices"]


def masked_count(tokens: int, ratio: float) -> int:
    """How many of `tokens` a mask of `ratio` hides: round(ratio * tokens), and at least one token stays visible."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"tokens={tokens!r} must be a positive int")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio={ratio!r} must lie in [0, 1): at least one token must stay visible")
    return min(round(ratio * tokens), tokens - 1)


def random_masking(batch: int, tokens: int, ratio: float, *, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> Tensor:
    """(batch, tokens) bool, True = masked: each row hides its own uniformly random `masked_count` tokens.

    Each row ranks the tokens by uniform noise and masks the highest ranks, so every subset of that size is
    equally likely and rows are independent. The noise is drawn on the CPU from `generator`, so a seed gives the
    same masks on every device."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch={batch!r} must be a positive int")
    hidden = masked_count(tokens, ratio)
    noise = torch.rand(batch, tokens, generator=generator)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # (B, N): rank of each token's noise within its row
    return (ranks >= tokens - hidden).to(device)


def visible_indices(mask: Tensor) -> Tensor:
    """(B, N_visible) long: the positions of each row's visible tokens, ascending. Rows must hide equally many."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"mask must be a (batch, tokens) bool tensor; got {getattr(mask, 'dtype', type(mask))} "
                         f"of shape {tuple(getattr(mask, 'shape', ()))}")
    visible = (~mask).sum(dim=1)
    if len(visible) and (visible != visible[0]).any():
        raise ValueError(f"every row of mask must hide as many tokens; visible counts per row are {visible.tolist()}")
    order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # visible (0) first, each group in order
    return order[:, : int(visible[0]) if len(visible) else 0]


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """(B, N, D) tokens, (B, K) positions -> (B, K, D): row b keeps its tokens index[b], in that order."""
    if x.dim() != 3 or index.dim() != 2 or index.shape[0] != x.shape[0]:
        raise ValueError(f"x {tuple(x.shape)} must be (batch, tokens, dim) and index {tuple(index.shape)} (batch, k)")
    return torch.gather(x, 1, repeat(index, "b k -> b k d", d=x.shape[-1]))
