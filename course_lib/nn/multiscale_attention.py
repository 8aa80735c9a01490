"""Multi-scale self-attention: each head sees only a window of its own radius around every token.

From "Multi-Scale Self-Attention for Text Classification" (Guo et al.): head h of a layer attends
from token i to the tokens j with |i - j| <= radius[h] (radius None: every token, a global head).
Small windows act like n-gram features, large ones like document-level features; the paper finds
that lower layers want more small-scale heads and higher layers more large-scale ones, and that
this prior helps most on small and moderate datasets. `scale_schedule` builds such a layer-wise
assignment. The parameters are those of `MultiHeadAttention` (to_q, to_k, to_v, to_out), so weights
copy across: with every radius None the two modules compute the same function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from course_lib.nn.attention import Impl, MultiHeadAttention, causal_mask

Radius = int | None


def check_radii(radii: object) -> tuple[Radius, ...]:
    """`radii` as a tuple, after checking that it is a non-empty sequence of positive ints or None."""
    if isinstance(radii, (str, bytes)) or not isinstance(radii, Sequence) or len(radii) == 0:
        raise ValueError(f"radii={radii!r} must be a non-empty sequence of positive ints or None (global)")
    for radius in radii:
        if radius is not None and (isinstance(radius, bool) or not isinstance(radius, int) or radius < 1):
            raise ValueError(f"radii={tuple(radii)!r} holds {radius!r}; expected positive ints or None (global)")
    return tuple(radii)


def multiscale_mask(
    length: int, radii: Sequence[Radius], *, causal: bool = False, device: torch.device | None = None
) -> Tensor:
    """(heads, length, length) boolean mask, True where |i - j| <= radii[head] (None: everywhere).

    With `causal`, query i also sees only keys j <= i, so a radius r then means the r previous tokens.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length={length!r} must be a positive int")
    radii = check_radii(radii)
    positions = torch.arange(length, device=device)
    distance = (rearrange(positions, "i -> i 1") - rearrange(positions, "j -> 1 j")).abs()  # (L, L)
    # a radius of length - 1 already covers every key: it stands for None
    reach = torch.tensor([length - 1 if r is None else min(r, length - 1) for r in radii], device=device)
    mask = distance <= rearrange(reach, "h -> h 1 1")  # (h, L, L)
    if causal:
        mask = mask & causal_mask(length, device=device)
    return mask


def scale_schedule(
    depth: int, heads: int, length: int, *, scales: Sequence[Radius] | None = None
) -> list[list[Radius]]:
    """Per-layer lists of per-head radii: lower layers mostly local, higher layers mostly wide and global.

    The rule: the scale ladder is `scales` (default 1, 2, 4, ... up to the largest power of two below
    `length`, then None for global), K rungs from small to large. Head h (0-based) of layer l gets the
    rung floor(f_h * g_l * (K - 1)), with f_h = (h + 1) / heads spreading the heads over the ladder and
    g_l = (l + 1) / depth stretching that spread upwards with depth. So every layer mixes scales,
    layer 0 uses only the bottom 1/depth of the ladder, and the last head of the last layer is global.
    Example, depth=3, heads=4, length=64: [[1, 2, 2, 4], [2, 4, 8, 16], [2, 8, 16, None]].
    """
    for argument, value in (("depth", depth), ("heads", heads), ("length", length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{argument}={value!r} must be a positive int")
    if scales is None:
        scales = [2**k for k in range(max(1, math.ceil(math.log2(length))))] + [None]
    ladder = check_radii(scales)
    top = len(ladder) - 1
    return [
        [ladder[(h + 1) * (layer + 1) * top // (heads * depth)] for h in range(heads)]  # exact floor
        for layer in range(depth)
    ]


class MultiScaleAttention(MultiHeadAttention):
    """Multi-head self-attention where head h attends only within a window of radius `radii[h]` (None: global).

    Same parameters as `MultiHeadAttention`, so a trained one's weights load as they are; only the mask differs.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        radii: Sequence[Radius],
        *,
        bias: bool = True,
        dropout: float = 0.0,
        impl: Impl = "fused",
    ) -> None:
        if isinstance(dim, bool) or isinstance(heads, bool) or dim <= 0 or heads <= 0:
            raise ValueError(f"dim={dim!r} and heads={heads!r} must be positive ints")
        radii = check_radii(radii)
        if len(radii) != heads:
            raise ValueError(f"radii={radii!r} has {len(radii)} entries; expected one per head, heads={heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must lie in [0, 1)")
        super().__init__(dim, heads, bias=bias, dropout=dropout, impl=impl)
        self.radii = radii

    def window_mask(self, length: int, *, device: torch.device | None = None) -> Tensor | None:
        """(heads, length, length) mask of the heads' windows; None when every head is global."""
        if all(r is None or r >= length - 1 for r in self.radii):
            return None
        return multiscale_mask(length, self.radii, device=device)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        causal: bool = False,
        rope: nn.Module | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """(B, L, dim) -> (B, L, dim). `mask` (boolean, broadcasting to (B, heads, L, L), e.g. padding) is
        combined with the windows; with `return_weights`, also the (B, heads, L, L) attention weights."""
        if x.dim() != 3:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (batch, length, dim)")
        windows = self.window_mask(x.shape[1], device=x.device)
        if windows is not None:
            mask = windows if mask is None else mask & windows  # (h, L, L) & (B, 1|h, 1|L, L)
        return super().forward(x, mask=mask, causal=causal, rope=rope, return_weights=return_weights)
