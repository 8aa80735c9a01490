"""Checkers for the restoration exercises of notebook 09_dense_prediction: Restormer's channel ("transposed")
attention, and the pixel shuffle that turns low-resolution channels into a 2x larger image.

The references are the packaged pieces: `course_lib.models.restoration.channel_attention` (tested against loops
in tests/test_restoration.py) and PyTorch's `F.pixel_shuffle`, which the super-resolution net uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.models.restoration import channel_attention as reference_channel_attention

# --- channel_attention(q, k, v, temperature, heads) --------------------------------------------------


def _attention_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(9)
    cases = []
    for batch, channels, heads, height, width in [(1, 4, 1, 3, 3), (2, 8, 2, 4, 5), (1, 12, 3, 6, 6),
                                                  (2, 6, 2, 2, 8), (1, 8, 4, 5, 3)]:
        q, k, v = (torch.randn(batch, channels, height, width, generator=generator) for _ in range(3))
        temperature = torch.rand(heads, generator=generator) * 4 + 0.5
        cases.append(Case(f"q, k, v {tuple(q.shape)}, heads={heads}", (q, k, v, temperature, heads)))
    return cases


def _per_head(q: Tensor, k: Tensor, v: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(rearrange(t, "b (h c) x y -> b h c (x y)", h=heads) for t in (q, k, v))


def _back(out: Tensor, like: Tensor) -> Tensor:
    return rearrange(out, "b h c (x y) -> b (h c) x y", x=like.shape[2], y=like.shape[3])


def _unnormalised(q, k, v, temperature, heads):
    q_, k_, v_ = _per_head(q, k, v, heads)
    scores = q_ @ k_.transpose(-2, -1) * temperature.reshape(1, heads, 1, 1)
    return _back(scores.softmax(-1) @ v_, q)


def _normalised_over_channels(q, k, v, temperature, heads):
    q_, k_, v_ = _per_head(q, k, v, heads)
    q_, k_ = F.normalize(q_, dim=-2), F.normalize(k_, dim=-2)
    scores = q_ @ k_.transpose(-2, -1) * temperature.reshape(1, heads, 1, 1)
    return _back(scores.softmax(-1) @ v_, q)


def _sqrt_scaled(axis: int):
    """Ordinary attention's 1/sqrt(d) in place of the temperature, d = the pixels (-1) or the channels per head (-2)."""
    def wrong(q, k, v, temperature, heads):
        q_, k_, v_ = _per_head(q, k, v, heads)
        q_, k_ = F.normalize(q_, dim=-1), F.normalize(k_, dim=-1)
        scores = q_ @ k_.transpose(-2, -1) / math.sqrt(q_.shape[axis])
        return _back(scores.softmax(-1) @ v_, q)
    return wrong


def _softmax_over_queries(q, k, v, temperature, heads):
    q_, k_, v_ = _per_head(q, k, v, heads)
    q_, k_ = F.normalize(q_, dim=-1), F.normalize(k_, dim=-1)
    scores = q_ @ k_.transpose(-2, -1) * temperature.reshape(1, heads, 1, 1)
    return _back(scores.softmax(-2) @ v_, q)


def _heads_interleaved(q, k, v, temperature, heads):
    q_, k_, v_ = (rearrange(t, "b (c h) x y -> b h c (x y)", h=heads) for t in (q, k, v))
    q_, k_ = F.normalize(q_, dim=-1), F.normalize(k_, dim=-1)
    scores = q_ @ k_.transpose(-2, -1) * temperature.reshape(1, heads, 1, 1)
    return rearrange(scores.softmax(-1) @ v_, "b h c (x y) -> b (c h) x y", x=q.shape[2])


channel_attention = FunctionChecker(
    "channel_attention",
    reference_channel_attention,
    _attention_cases,
    mistakes=[
        (_unnormalised, "q and k are not L2-normalised along the pixels: without it the scores grow with the image "
                        "size; Restormer divides each channel's vector by its length first (F.normalize(..., dim=-1))."),
        (_normalised_over_channels, "q and k are normalised across the channels of each pixel; each *channel* is the "
                                    "vector here, so normalise along the pixels, the last axis of (B, h, C/h, HW)."),
        *((_sqrt_scaled(axis), "the scores are divided by sqrt(d) as in ordinary attention; Restormer multiplies "
                               "the cosine similarities by the learned per-head `temperature` instead.") for axis in (-1, -2)),
        (_softmax_over_queries, "the softmax runs over the query channels (dim -2); each query channel's weights over "
                                "the key channels must sum to one: softmax over the last axis."),
        (_heads_interleaved, "the heads take every h-th channel; head i owns channels i*C/h .. (i+1)*C/h - 1, "
                             "'b (h c) x y -> b h c (x y)'."),
    ],
    hint="rearrange each map to (B, heads, C/heads, H*W); normalise q and k along the last axis; scores "
         "q @ kᵀ times temperature per head, shape (B, heads, C/h, C/h); softmax over the last axis; @ v; "
         "rearrange back.",
)


# --- pixel_shuffle(x, factor) ------------------------------------------------------------------------


def _shuffle_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(10)
    cases = []
    for batch, channels, factor, height, width in [(1, 1, 2, 2, 2), (2, 3, 2, 4, 5), (1, 2, 3, 3, 2), (2, 3, 2, 1, 3)]:
        x = torch.randn(batch, channels * factor * factor, height, width, generator=generator)
        cases.append(Case(f"x {tuple(x.shape)}, factor={factor}", (x, factor)))
    return cases


pixel_shuffle = FunctionChecker(
    "pixel_shuffle",
    F.pixel_shuffle,
    _shuffle_cases,
    mistakes=[
        (lambda x, r: rearrange(x, "b (i j c) h w -> b c (h i) (w j)", i=r, j=r),
         "the colour is the fastest-varying part of the channel index; in PixelShuffle it is the slowest: "
         "channel c * r² + i * r + j is offset (i, j) of colour c, '(c i j)'."),
        (lambda x, r: rearrange(x, "b (c j i) h w -> b c (h i) (w j)", i=r, j=r),
         "the row and column offsets are swapped: channel c * r² + i * r + j goes to row offset i, column offset j."),
        (lambda x, r: rearrange(x, "b (c i j) h w -> b c (i h) (j w)", i=r, j=r),
         "each offset became a whole tile of the image; the r x r offsets of one low-resolution pixel must land next "
         "to one another, '(h i) (w j)'."),
        (lambda x, r: x.reshape(x.shape[0], x.shape[1] // (r * r), x.shape[2] * r, x.shape[3] * r),
         "a plain reshape keeps the memory order, which mixes rows of different pixels; the offsets must be "
         "interleaved with the pixels (einops or permute)."),
    ],
    hint="(B, C*r*r, H, W) -> (B, C, H*r, W*r): rearrange(x, 'b (c i j) h w -> b c (h i) (w j)', i=r, j=r).",
)
