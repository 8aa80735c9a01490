"""A transformer over the points of a field: a surrogate for a PDE solver (after "PDE-Transformer: Efficient and
Versatile Transformers for Physics Simulations"; notebook 21, and notebook 27's operators).

Every sample point is a token: its field values, plus Fourier features of its coordinate (sin and cos of k·x for
k = 1..frequencies, on a periodic domain), go through one linear embedding, a pre-norm transformer encoder and a
linear head that gives the output channels at the same points. Attention lets each point read any other, so the
model can learn the non-local parts of a solver's step, and since the coordinates enter as features rather than as
positions in a sequence, the points need not lie on a grid. On a grid, `patch_size` > 1 makes each token a run of
neighbouring points (as a ViT's patches): a token then sees a local stencil, from which one linear map can form
derivatives, and there are fewer tokens to attend over.

`attention="multipole"` swaps every block's softmax attention for `multipole_attention` (after "Linear Attention
with Global Context: A Multipole Attention Mechanism for Vision and Physics"): exact attention to the tokens of the
neighbouring `window`-token cells, and to the far ones through the means of coarser and coarser cells, in time
linear in the number of tokens. The cells are runs of consecutive tokens, so this suits points in order along the
interval (a grid, or sorted irregular points), and the number of tokens must be a multiple of window·2^(levels−1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from course_lib.models._common import check_heads, check_positive
from course_lib.nn import TransformerEncoder, multipole_attention

__all__ = ["FieldTransformer", "FieldTransformerConfig", "fourier_features"]

ATTENTIONS = ("full", "multipole")


@dataclass(frozen=True)
class FieldTransformerConfig:
    """`in_channels` values per point in, `out_channels` out; `frequencies` Fourier features of the coordinate;
    `attention` 'full' (softmax over all tokens) or 'multipole' (`window` tokens per finest cell, `levels` levels)."""

    in_channels: int = 1
    out_channels: int = 1
    patch_size: int = 1  # points per token: > 1 groups runs of neighbouring grid points, like a ViT's patches
    frequencies: int = 8
    dim: int = 64
    depth: int = 3
    heads: int = 4
    mlp_ratio: float = 2.0
    attention: str = "full"
    window: int = 8  # multipole only: tokens per finest cell
    levels: int = 2  # multipole only: cells of window·2^l tokens for l = 0 .. levels - 1

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "patch_size", "frequencies", "dim", "depth", "heads", "window",
                     "levels"):
            check_positive(name, getattr(self, name))
        check_heads(self.dim, self.heads)
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention={self.attention!r}; expected one of {ATTENTIONS}")

    @property
    def token_multiple(self) -> int:
        """The number of tokens must be a multiple of this: window·2^(levels−1) for multipole attention, else 1."""
        return self.window * 2 ** (self.levels - 1) if self.attention == "multipole" else 1


def fourier_features(coordinates: Tensor, frequencies: int) -> Tensor:
    """(..., points) angles on [0, 2π) -> (..., points, 2·frequencies): sin(k x) and cos(k x) for k = 1..frequencies."""
    angles = coordinates[..., None] * torch.arange(1, frequencies + 1, device=coordinates.device)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class FieldTransformer(nn.Module):
    """(values (B, points, in_channels), coordinates (points,) or (B, points)) -> (B, points, out_channels); without
    coordinates, the points are equally spaced on [0, 2π)."""

    def __init__(self, config: FieldTransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Linear(c.patch_size * (c.in_channels + 2 * c.frequencies), c.dim)
        attention = partial(multipole_attention, window=c.window, levels=c.levels) if c.attention == "multipole" \
            else None  # None: softmax attention over all tokens
        self.encoder = TransformerEncoder(c.depth, c.dim, c.heads, mlp_ratio=c.mlp_ratio, attention=attention)
        self.head = nn.Linear(c.dim, c.patch_size * c.out_channels)

    def forward(self, values: Tensor, coordinates: Tensor | None = None) -> Tensor:
        c = self.config
        if not isinstance(values, Tensor) or values.dim() != 3 or values.shape[-1] != c.in_channels \
                or not values.is_floating_point() or values.shape[0] == 0:
            raise ValueError(f"values has shape {tuple(getattr(values, 'shape', ()))}; expected a float "
                             f"(batch >= 1, points, in_channels={c.in_channels}) tensor")
        if coordinates is None:
            coordinates = torch.arange(values.shape[1], device=values.device) * (2 * math.pi / values.shape[1])
        if not isinstance(coordinates, Tensor) or coordinates.shape not in (values.shape[1:2], values.shape[:2]):
            raise ValueError(f"coordinates has shape {tuple(getattr(coordinates, 'shape', ()))}; expected "
                             f"(points,) = {tuple(values.shape[1:2])} or (batch, points) = {tuple(values.shape[:2])}")
        if values.shape[1] % c.patch_size:
            raise ValueError(f"values has {values.shape[1]} points; patch_size={c.patch_size} must divide them")
        if values.shape[1] // c.patch_size % c.token_multiple:
            raise ValueError(f"values has {values.shape[1]} points, {values.shape[1] // c.patch_size} tokens of "
                             f"patch_size={c.patch_size}; multipole attention with window={c.window} and "
                             f"levels={c.levels} needs a multiple of window·2^(levels−1) = {c.token_multiple} tokens")
        features = fourier_features(coordinates.to(values), c.frequencies)
        if features.dim() == 2:
            features = repeat(features, "n f -> b n f", b=len(values))
        tokens = rearrange(torch.cat([values, features], dim=-1), "b (n p) f -> b n (p f)", p=c.patch_size)
        out = self.head(self.encoder(self.embed(tokens)))
        return rearrange(out, "b n (p c) -> b (n p) c", p=c.patch_size)
