"""Small image-restoration transformers: Restormer's channel attention, Uformer's LeWin block, HiT-SR's
growing windows, and a denoiser and a 2x super-resolution net built from either.

- **Channel ("transposed") attention** (*Restormer: Efficient Transformer for High-Resolution Image
  Restoration*): queries, keys and values come from a 1x1 convolution followed by a 3x3 depthwise one; each
  head compares its C/h channels with one another, each channel a vector over all pixels, L2-normalised and
  scaled by a learned per-head temperature. The attention map is (heads, C/h, C/h) whatever the number of
  pixels, so memory and compute grow linearly with the pixels. Its feed-forward layer is gated and has a
  depthwise convolution (GDFN).
- **Spatial attention** is the usual self-attention over all pixels (`course_lib.nn.MultiHeadAttention`),
  here only for the memory comparison: its (pixels x pixels) score matrix grows quadratically.
- **LeWin** (*Uformer: A General U-Shaped Transformer for Image Restoration*): Swin's window attention
  (`course_lib.models.swin`), then a feed-forward layer with a 3x3 depthwise convolution on the token grid
  (SegFormer's Mix-FFN, `course_lib.models.hierarchical.MixFFN`: Uformer's LeFF, without its first GELU).
- **Hierarchical windows** (*HiT-SR: Hierarchical Transformer for Efficient Image Super-Resolution*): the
  window grows from block to block (e.g. 4, 8, 16), so later blocks gather context from farther away.

Both nets predict a *correction*: the denoiser returns input + correction, the super-resolution net
bicubic(input) + residual. Their output convolutions start at zero, so an untrained net is exactly the
identity (or bicubic upsampling) and training can only start from the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from course_lib.data.photos import bicubic_upsample
from course_lib.models._common import check_images, check_positive, check_positive_ints
from course_lib.models.hierarchical import MixFFN
from course_lib.models.swin import SwinBlock
from course_lib.nn import LayerNorm, MultiHeadAttention

BLOCKS = ("channel", "window")


def check_map(x: Tensor, channels: int) -> tuple[int, int]:
    """(height, width) of `x`, after checking that it is a (batch, channels, height, width) feature map."""
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (batch, channels={channels}, height, width)")
    return x.shape[2], x.shape[3]


def norm_channels(norm: nn.Module, x: Tensor) -> Tensor:
    """A LayerNorm over the channels of every pixel of a (B, C, H, W) map."""
    return rearrange(norm(rearrange(x, "b c h w -> b h w c")), "b h w c -> b c h w")


# ----------------------------------------------------------------------------------------------
# Restormer: channel attention and the gated-Dconv feed-forward layer.


def channel_attention(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, heads: int) -> Tensor:
    """Transposed attention on (B, C, H, W) maps: per head, softmax(q̂ k̂ᵀ · temperature) v over channels, where
    each channel is a vector over the H*W pixels and q̂, k̂ are L2-normalised along the pixels. `temperature`
    holds one value per head (any shape with `heads` entries). Returns (B, C, H, W)."""
    height, width = q.shape[2:]
    q, k, v = (rearrange(t, "b (h c) x y -> b h c (x y)", h=heads) for t in (q, k, v))  # (B, heads, C/h, HW)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    scores = q @ k.transpose(-2, -1) * temperature.reshape(1, heads, 1, 1)  # (B, heads, C/h, C/h)
    out = scores.softmax(dim=-1) @ v  # (B, heads, C/h, HW)
    return rearrange(out, "b h c (x y) -> b (h c) x y", x=height, y=width)


class ChannelAttention(nn.Module):
    """Restormer's multi-Dconv-head transposed attention: (B, dim, H, W) -> same shape, with an attention
    map of (heads, dim/heads, dim/heads) per image whatever H and W are."""

    def __init__(self, dim: int, heads: int, *, bias: bool = False) -> None:
        super().__init__()
        check_positive("dim", dim)
        check_positive("heads", heads)
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.dim, self.heads = dim, heads
        self.temperature = nn.Parameter(torch.ones(heads))
        self.to_qkv = nn.Conv2d(dim, 3 * dim, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(3 * dim, 3 * dim, kernel_size=3, padding=1, groups=3 * dim, bias=bias)
        self.to_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        check_map(x, self.dim)
        q, k, v = self.qkv_dwconv(self.to_qkv(x)).chunk(3, dim=1)  # 3 x (B, dim, H, W)
        return self.to_out(channel_attention(q, k, v, self.temperature, self.heads))


class GatedDconvFeedForward(nn.Module):
    """Restormer's GDFN: a 1x1 conv to two hidden maps, a 3x3 depthwise conv on both, GELU(first) * second,
    a 1x1 conv back. The gate lets each pixel decide which features pass; the conv adds local context."""

    def __init__(self, dim: int, hidden: int, *, bias: bool = False) -> None:
        super().__init__()
        check_positive("dim", dim)
        check_positive("hidden", hidden)
        self.dim = dim
        self.fc_in = nn.Conv2d(dim, 2 * hidden, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, kernel_size=3, padding=1, groups=2 * hidden, bias=bias)
        self.fc_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        check_map(x, self.dim)
        gate, value = self.dwconv(self.fc_in(x)).chunk(2, dim=1)  # 2 x (B, hidden, H, W)
        return self.fc_out(F.gelu(gate) * value)


class RestormerBlock(nn.Module):
    """x + channel attention(norm(x)), then x + GDFN(norm(x)), on (B, dim, H, W) maps (norms over channels)."""

    def __init__(self, dim: int, heads: int, *, ffn_ratio: float = 2.0, bias: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        if not ffn_ratio > 0:
            raise ValueError(f"ffn_ratio={ffn_ratio!r} must be positive")
        self.attn_norm = LayerNorm(dim, eps)
        self.attn = ChannelAttention(dim, heads, bias=bias)
        self.ffn_norm = LayerNorm(dim, eps)
        self.ffn = GatedDconvFeedForward(dim, max(1, int(ffn_ratio * dim)), bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(norm_channels(self.attn_norm, x))
        return x + self.ffn(norm_channels(self.ffn_norm, x))


class SpatialAttention(nn.Module):
    """Self-attention over all H*W pixels of a (B, dim, H, W) map, for comparison with `ChannelAttention`:
    `impl="explicit"` writes out the (heads, HW, HW) scores, whose memory grows with the square of the pixels."""

    def __init__(self, dim: int, heads: int, *, impl: str = "explicit") -> None:
        super().__init__()
        self.dim = dim
        self.attn = MultiHeadAttention(dim, heads, impl=impl)

    def forward(self, x: Tensor) -> Tensor:
        height, width = check_map(x, self.dim)
        tokens = self.attn(rearrange(x, "b c h w -> b (h w) c"))  # (B, HW, dim)
        return rearrange(tokens, "b (h w) c -> b c h w", h=height, w=width)


# ----------------------------------------------------------------------------------------------
# Uformer's LeWin block and HiT-SR's growing windows.


class LeWinBlock(SwinBlock):
    """Uformer's locally-enhanced window block: x + (shifted-)window attention(norm(x)), then
    x + LeFF(norm(x)), where LeFF has a 3x3 depthwise convolution on the token grid between its two linear
    layers. The window attention, padding and shift are Swin's (`SwinBlock.attend`)."""

    def __init__(self, dim: int, heads: int, window: int, shift: int = 0, *, mlp_ratio: float = 2.0,
                 eps: float = 1e-5) -> None:
        super().__init__(dim, heads, window, shift, mlp_ratio=mlp_ratio, eps=eps)
        self.ffn = MixFFN(dim, max(1, int(mlp_ratio * dim)))  # replaces Swin's position-wise MLP

    def forward(self, x: Tensor, resolution: tuple[int, int]) -> Tensor:
        """(B, H*W, dim) tokens of an H x W map, row by row -> same shape."""
        height, width = resolution
        grid = rearrange(self.attn_norm(x), "b (h w) c -> b h w c", h=height, w=width)
        x = x + rearrange(self.attend(grid), "b h w c -> b (h w) c")
        return x + self.ffn(self.ffn_norm(x), resolution)


class HierarchicalWindows(nn.Module):
    """HiT-SR-style stack of LeWin blocks on (B, dim, H, W) maps, block i attending in windows of
    `windows[i]` (growing, e.g. 4, 8, 16); with `shift`, every second block shifts by half its window."""

    def __init__(self, dim: int, heads: int, windows: tuple[int, ...], *, shift: bool = False,
                 mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.dim = dim
        self.windows = check_positive_ints("windows", windows)
        self.blocks = nn.ModuleList(
            LeWinBlock(dim, heads, w, w // 2 if shift and i % 2 else 0, mlp_ratio=mlp_ratio)
            for i, w in enumerate(self.windows)
        )

    def forward(self, x: Tensor) -> Tensor:
        height, width = check_map(x, self.dim)
        tokens = rearrange(x, "b c h w -> b (h w) c")
        for block in self.blocks:
            tokens = block(tokens, (height, width))
        return rearrange(tokens, "b (h w) c -> b c h w", h=height, w=width)


# ----------------------------------------------------------------------------------------------
# The restoration nets.


@dataclass
class RestorationConfig:
    """A small restoration net: `block` ("channel": Restormer blocks; "window": LeWin blocks with the window
    of each block in `windows`), `depth` blocks of width `dim` (for "window", depth = len(windows))."""

    channels: int = 3
    dim: int = 24
    heads: int = 2
    block: str = "channel"
    depth: int = 3
    windows: tuple[int, ...] = (4, 8, 16)  # "window" blocks only: one window per block, growing
    shift: bool = False  # "window" blocks only: shift every second block by half its window
    ffn_ratio: float = 2.0
    scale: int = 1  # 1: same-size restoration (denoising); 2: 2x super-resolution

    def __post_init__(self) -> None:
        for name in ("channels", "dim", "heads", "depth"):
            check_positive(name, getattr(self, name))
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")
        if self.block not in BLOCKS:
            raise ValueError(f"block={self.block!r}; expected one of {BLOCKS}")
        self.windows = check_positive_ints("windows", self.windows)
        if self.block == "window" and len(self.windows) != self.depth:
            raise ValueError(f"windows={self.windows} must name one window for each of depth={self.depth} blocks")
        if not self.ffn_ratio > 0:
            raise ValueError(f"ffn_ratio={self.ffn_ratio!r} must be positive")
        if self.scale not in (1, 2):
            raise ValueError(f"scale={self.scale!r}; expected 1 (denoising) or 2 (2x super-resolution)")


def _body(c: RestorationConfig) -> nn.Module:
    if c.block == "channel":
        return nn.Sequential(*(RestormerBlock(c.dim, c.heads, ffn_ratio=c.ffn_ratio) for _ in range(c.depth)))
    return HierarchicalWindows(c.dim, c.heads, c.windows, shift=c.shift, mlp_ratio=c.ffn_ratio)


class RestorationNet(nn.Module):
    """A conv embedding, blocks, a conv out. scale=1: (B, C, H, W) -> input + correction. scale=2:
    (B, C, H, W) -> bicubic(input) + residual, (B, C, 2H, 2W), the residual made at low resolution and
    upsampled by PixelShuffle. The output convolution starts at zero: untrained, the net is the baseline."""

    def __init__(self, config: RestorationConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Conv2d(c.channels, c.dim, kernel_size=3, padding=1)
        self.body = _body(c)
        self.out = nn.Conv2d(c.dim, c.channels * c.scale**2, kernel_size=3, padding=1)
        self.shuffle = nn.PixelShuffle(c.scale)  # (B, C*s², H, W) -> (B, C, sH, sW)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def baseline(self, images: Tensor) -> Tensor:
        """What the net adds its correction to: the input itself, or its bicubic upsampling."""
        return images if self.config.scale == 1 else bicubic_upsample(images, self.config.scale)

    def forward(self, images: Tensor) -> Tensor:
        check_images(images, self.config.channels)
        features = self.body(self.embed(images))  # (B, dim, H, W)
        return self.baseline(images) + self.shuffle(self.out(features))


def denoiser(**options) -> RestorationNet:
    """A same-size restoration net (scale 1); `options` go to RestorationConfig."""
    return RestorationNet(RestorationConfig(scale=1, **options))


def super_resolver(**options) -> RestorationNet:
    """A 2x super-resolution net (scale 2); `options` go to RestorationConfig."""
    return RestorationNet(RestorationConfig(scale=2, **options))
