"""Cross-scale vision transformers: three ways to let one model use fine detail and coarse layout together.

- **CrossViT** ("CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification"): two
  ViT branches read the same image, one in small patches (fine detail, many tokens), one in large patches
  (coarse layout, few tokens). After every few blocks, each branch's class token visits the other branch:
  it is projected to the other branch's width, attends over [itself; the other branch's patch tokens] as
  the one query, and is projected back, replacing the old class token. One query per branch makes the
  fusion linear in the number of tokens. A `CrossViT` with one branch is exactly the packaged `ViT`.
- **CrossFormer** ("CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale Attention"): each
  stage embeds its input with several convolutions of different kernel sizes and one stride, their
  channels concatenated (the cross-scale embedding layer), so every token mixes small and large
  neighbourhoods. Its blocks alternate short-distance attention (inside G x G groups of adjacent tokens)
  and long-distance attention (inside groups of the tokens an interval I apart along each axis). A small
  MLP turns relative offsets into attention biases (the dynamic position bias), so one module serves
  groups of any size.
- **MaxViT** ("MaxViT: Multi-Axis Vision Transformer"): each block attends first inside non-overlapping
  P x P blocks (local), then inside G x G grids spread evenly over the whole map (sparse and global, the
  grid's tokens H/G apart). Both are Swin's window attention with its relative position bias, applied
  after two different partitions. Simplified here: the MBConv is a residual expand -> 3x3 depthwise ->
  project convolution without squeeze-excitation, the stem is a patchify convolution and stages are joined
  by a 2x2 stride-2 convolution.

Tokens of a feature map are kept row by row, as (B, H*W, C) or (B, H, W, C).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from course_lib.models._common import (
    check_feature_map,
    check_images,
    check_num_classes,
    check_positive,
    check_positive_ints,
    check_tiles,
    init_vit_style,
)
from course_lib.models.swin import WindowAttention, window_partition, window_reverse
from course_lib.models.vit import ViT, ViTConfig
from course_lib.nn import MLP, LayerNorm, MultiHeadAttention

BRANCHES = ("small", "large")


def _check_common(config: object) -> None:
    """The checks every config here shares: positive mlp_ratio and norm_eps, num_classes >= 0."""
    if not config.mlp_ratio > 0:
        raise ValueError(f"mlp_ratio={config.mlp_ratio!r} must be positive")
    if not config.norm_eps > 0:
        raise ValueError(f"norm_eps={config.norm_eps!r} must be positive")
    check_num_classes(config.num_classes)


# ----------------------------------------------------------------------------------------------
# Partitions of a (B, H, W, C) feature map into groups of tokens. Block partition is Swin's window_partition.


def grid_partition(x: Tensor, grid: int) -> Tensor:
    """(B, H, W, C) -> (B * H/grid * W/grid, grid², C): MaxViT's grid. Each group holds grid x grid tokens
    spread evenly over the whole map, H/grid rows and W/grid columns apart; groups go row by row by offset."""
    height, width = check_feature_map(x)
    check_tiles(height, width, grid, "grid")
    # g1, g2: position on the grid (coarse, outside); h, w: the offset shared by a group (fine, inside)
    return rearrange(x, "b (g1 h) (g2 w) c -> (b h w) (g1 g2) c", g1=grid, g2=grid)


def grid_reverse(groups: Tensor, grid: int, height: int, width: int) -> Tensor:
    """Inverse of `grid_partition`: (B * H/grid * W/grid, grid², C) -> (B, height, width, C)."""
    check_tiles(height, width, grid, "grid")
    return rearrange(groups, "(b h w) (g1 g2) c -> b (g1 h) (g2 w) c", h=height // grid, w=width // grid, g1=grid)


def interval_partition(x: Tensor, interval: int) -> Tensor:
    """(B, H, W, C) -> (B * interval², H/interval * W/interval, C): CrossFormer's long-distance groups, the
    tokens whose row and column agree modulo `interval`. On a square map this is `grid_partition` with
    grid = H / interval: CrossFormer fixes the spacing, MaxViT the number of tokens per group."""
    height, width = check_feature_map(x)
    check_tiles(height, width, interval, "interval")
    return rearrange(x, "b (g1 i) (g2 j) c -> (b i j) (g1 g2) c", i=interval, j=interval)


def interval_reverse(groups: Tensor, interval: int, height: int, width: int) -> Tensor:
    """Inverse of `interval_partition`: (B * interval², H/interval * W/interval, C) -> (B, height, width, C)."""
    check_tiles(height, width, interval, "interval")
    return rearrange(groups, "(b i j) (g1 g2) c -> b (g1 i) (g2 j) c", i=interval, j=interval, g1=height // interval)


def group_offsets(rows: int, cols: int, *, device: torch.device | None = None) -> Tensor:
    """(t, t, 2) offsets (dy, dx) from key j to query i of a rows x cols group read row by row (t = rows*cols)."""
    r, c = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
    coords = torch.stack([r.flatten(), c.flatten()], dim=-1)  # (t, 2)
    return rearrange(coords, "i k -> i 1 k") - rearrange(coords, "j k -> 1 j k")


# ----------------------------------------------------------------------------------------------
# CrossViT: two ViT branches whose class tokens read each other's patches.


@dataclass
class CrossViTConfig:
    """Two ViT branches over the same image. `fusions` multi-scale encoders run in turn; each runs
    `small_depth` blocks of the small-patch branch and `large_depth` of the large-patch branch, then fuses them.
    `branches=("small",)` or `("large",)` keeps one branch: a plain ViT, for comparisons."""

    image_size: int = 32
    channels: int = 3
    small_patch: int = 4
    large_patch: int = 8
    small_dim: int = 32
    large_dim: int = 64
    small_depth: int = 1  # blocks of the small-patch branch per multi-scale encoder
    large_depth: int = 2
    small_heads: int = 2
    large_heads: int = 4
    fusions: int = 2  # multi-scale encoders, each ending in one cross-attention fusion
    mlp_ratio: float = 4.0
    num_classes: int = 0  # 0: no heads, the model returns the class tokens of its branches, concatenated
    branches: tuple[str, ...] = BRANCHES
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "small_patch", "large_patch", "small_dim", "large_dim",
                     "small_depth", "large_depth", "small_heads", "large_heads", "fusions"):
            check_positive(name, getattr(self, name))
        _check_common(self)
        branches = tuple(self.branches) if isinstance(self.branches, (tuple, list)) else (self.branches,)
        if not branches or len(set(branches)) != len(branches) or not set(branches) <= set(BRANCHES):
            raise ValueError(f"branches={self.branches!r}; expected a non-empty selection of {BRANCHES} without repeats")
        self.branches = tuple(b for b in BRANCHES if b in branches)  # always small first
        for branch in self.branches:
            patch, dim, heads = (getattr(self, f"{branch}_{name}") for name in ("patch", "dim", "heads"))
            if self.image_size % patch:
                raise ValueError(f"image_size={self.image_size} is not divisible by {branch}_patch={patch}")
            if dim % heads:
                raise ValueError(f"{branch}_dim={dim} is not divisible by {branch}_heads={heads}")

    def depth(self, branch: str) -> int:
        """Blocks of `branch` in each multi-scale encoder."""
        return getattr(self, f"{branch}_depth")

    def branch_config(self, branch: str) -> ViTConfig:
        """The ViTConfig of one branch: class-token read-out, learned positions, all its blocks."""
        if branch not in BRANCHES:
            raise ValueError(f"branch={branch!r}; expected one of {BRANCHES}")
        return ViTConfig(image_size=self.image_size, patch_size=getattr(self, f"{branch}_patch"), channels=self.channels,
                         dim=getattr(self, f"{branch}_dim"), depth=self.fusions * self.depth(branch),
                         heads=getattr(self, f"{branch}_heads"), mlp_ratio=self.mlp_ratio,
                         num_classes=self.num_classes, pool="cls", positional="learned", norm_eps=self.norm_eps)


class ClassTokenCrossAttention(nn.Module):
    """CrossViT's fusion for one branch: its class token (B, 1, dim) reads the other branch's patch tokens.

    f = Linear(LayerNorm(.)) projects the class token to the other width; pre-normed, it attends as the only
    query over [itself; the other branch's patches]; the attention output is added to it, and g (LayerNorm,
    Linear) projects it back. The result replaces the class token. (The paper's code puts a GELU in f and g.)
    """

    def __init__(self, dim: int, other_dim: int, heads: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.to_other = nn.Sequential(LayerNorm(dim, eps), nn.Linear(dim, other_dim))  # f
        self.norm = LayerNorm(other_dim, eps)
        self.attn = MultiHeadAttention(other_dim, heads)
        self.from_other = nn.Sequential(LayerNorm(other_dim, eps), nn.Linear(other_dim, dim))  # g

    def forward(self, cls: Tensor, other_patches: Tensor, *,
                return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """cls (B, 1, dim), other_patches (B, N, other_dim) -> the new class token (B, 1, dim); with
        `return_weights`, also the (B, heads, 1, 1 + N) attention, key 0 being the class token itself."""
        if cls.dim() != 3 or cls.shape[1] != 1:
            raise ValueError(f"cls has shape {tuple(cls.shape)}; expected (batch, 1, dim)")
        query = self.to_other(cls)  # (B, 1, other_dim)
        keys = self.norm(torch.cat([query, other_patches], dim=1))  # (B, 1 + N, other_dim)
        out = self.attn(keys[:, :1], keys, return_weights=return_weights)
        out, weights = out if return_weights else (out, None)
        new_cls = self.from_other(query + out)  # (B, 1, dim)
        return (new_cls, weights) if return_weights else new_cls


class CrossViT(nn.Module):
    """images (B, C, H, W) -> logits (B, num_classes), the mean of the branches' heads; or, with
    num_classes=0, the branches' final class tokens concatenated (B, small_dim + large_dim)."""

    def __init__(self, config: CrossViTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.branches = nn.ModuleDict({name: ViT(c.branch_config(name)) for name in c.branches})
        self.fusions = None
        if len(c.branches) == 2:  # per encoder: the small branch's class token reads large patches, and back
            self.fusions = nn.ModuleList(nn.ModuleDict({
                "small": ClassTokenCrossAttention(c.small_dim, c.large_dim, c.large_heads, eps=c.norm_eps),
                "large": ClassTokenCrossAttention(c.large_dim, c.small_dim, c.small_heads, eps=c.norm_eps),
            }) for _ in range(c.fusions))
            self.fusions.apply(init_vit_style)

    def _check(self, images: Tensor) -> None:
        size = check_images(images, self.config.channels)
        if size != (self.config.image_size,) * 2:
            raise ValueError(f"images are {size[0]}x{size[1]}; expected image_size={self.config.image_size}")

    @staticmethod
    def _embed(branch: ViT, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 1 + N, dim): the branch's class token, then its patches, plus positions."""
        x = branch.patch_embed(images)  # (B, N, dim)
        x = torch.cat([repeat(branch.cls_token, "d -> b 1 d", b=x.shape[0]), x], dim=1)  # (B, 1 + N, dim)
        return branch.embed_dropout(x + branch.pos_embedding)

    def fuse(self, step: int, tokens: dict[str, Tensor], *, return_weights: bool = False):
        """Both class tokens read the other branch's patches (both from before this fusion). Returns the new
        tokens, and with `return_weights` the attention of each branch's class token (B, heads, 1, 1 + N_other)."""
        new, weights = {}, {}
        for name, other in (("small", "large"), ("large", "small")):
            out = self.fusions[step][name](tokens[name][:, :1], tokens[other][:, 1:], return_weights=return_weights)
            cls, weights[name] = out if return_weights else (out, None)
            new[name] = torch.cat([cls, tokens[name][:, 1:]], dim=1)
        return (new, weights) if return_weights else new

    def features(self, images: Tensor, *, return_weights: bool = False):
        """{branch: (B, 1 + N, dim) final-normed tokens}; with `return_weights`, also one dict of the fused
        class tokens' attention weights per fusion (empty list for one branch)."""
        self._check(images)
        c, all_weights = self.config, []
        tokens = {name: self._embed(branch, images) for name, branch in self.branches.items()}
        for step in range(c.fusions):
            for name, branch in self.branches.items():
                depth = c.depth(name)
                for block in branch.blocks[step * depth:(step + 1) * depth]:
                    tokens[name] = block(tokens[name])
            if self.fusions is not None:
                tokens = self.fuse(step, tokens, return_weights=return_weights)
                if return_weights:
                    tokens, weights = tokens
                    all_weights.append(weights)
        tokens = {name: self.branches[name].final_norm(x) for name, x in tokens.items()}
        return (tokens, all_weights) if return_weights else tokens

    def forward(self, images: Tensor) -> Tensor:
        tokens = self.features(images)
        if self.config.num_classes == 0:
            return torch.cat([x[:, 0] for x in tokens.values()], dim=-1)
        logits = [self.branches[name].head(x[:, 0]) for name, x in tokens.items()]  # each (B, num_classes)
        return torch.stack(logits).mean(dim=0)


# ----------------------------------------------------------------------------------------------
# CrossFormer: cross-scale embeddings, short- and long-distance attention.


def channel_split(dim: int, parts: int) -> tuple[int, ...]:
    """How CrossFormer shares `dim` channels among `parts` kernels, smallest kernel first: halves, the last
    two equal (dim/2, dim/4, dim/8, dim/8 for four). Small kernels are cheap, so they get more channels."""
    check_positive("dim", dim)
    check_positive("parts", parts)
    if dim % 2 ** (parts - 1):
        raise ValueError(f"dim={dim} is not divisible by 2**(parts - 1)={2 ** (parts - 1)}, as {parts} kernels need")
    split = [dim // 2 ** (i + 1) for i in range(parts - 1)]
    return (*split, dim - sum(split))


class CrossScaleEmbedding(nn.Module):
    """(B, C_in, H, W) -> tokens (B, H/stride * W/stride, dim) and (H/stride, W/stride): one convolution per
    kernel size, all with the same stride and centred on the same points (padding (kernel - stride) / 2), their
    outputs concatenated along channels, then LayerNorm. Each token sees its patch at several scales."""

    def __init__(self, in_channels: int, dim: int, kernels: tuple[int, ...], stride: int, eps: float = 1e-5) -> None:
        super().__init__()
        check_positive("in_channels", in_channels)
        check_positive("stride", stride)
        kernels = check_positive_ints("kernels", kernels)
        for kernel in kernels:
            if kernel < stride or (kernel - stride) % 2:
                raise ValueError(f"kernel {kernel} in kernels={kernels}: each kernel must be at least stride={stride} "
                                 "and differ from it by an even number, so that all share their centres")
        if list(kernels) != sorted(set(kernels)):
            raise ValueError(f"kernels={kernels} must increase strictly")
        self.stride, self.kernels, self.split = stride, kernels, channel_split(dim, len(kernels))
        self.convs = nn.ModuleList(nn.Conv2d(in_channels, d, kernel_size=k, stride=stride, padding=(k - stride) // 2)
                                   for k, d in zip(kernels, self.split))
        self.norm = LayerNorm(dim, eps)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        height, width = check_images(x, self.convs[0].in_channels)
        if height % self.stride or width % self.stride:
            raise ValueError(f"a {height}x{width} input is not divisible by stride={self.stride}")
        grid = torch.cat([conv(x) for conv in self.convs], dim=1)  # (B, dim, H/stride, W/stride)
        return self.norm(rearrange(grid, "b c h w -> b (h w) c")), (grid.shape[2], grid.shape[3])


class DynamicPositionBias(nn.Module):
    """(..., 2) relative offsets (dy, dx) -> (..., heads) attention biases: a small MLP of the offset (Linear,
    then twice LayerNorm, ReLU, Linear), so that groups of any size share one module."""

    def __init__(self, heads: int, hidden: int) -> None:
        super().__init__()
        check_positive("heads", heads)
        check_positive("hidden", hidden)
        self.mlp = nn.Sequential(
            nn.Linear(2, hidden),
            LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, hidden),
            LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, heads),
        )

    def forward(self, offsets: Tensor) -> Tensor:
        return self.mlp(offsets.to(self.mlp[0].weight.dtype))


class DistanceAttention(nn.Module):
    """CrossFormer's attention on a (B, H, W, C) map, inside groups, plus a dynamic position bias of the
    offsets within a group (in group steps: tokens `size` apart in a long-distance group are 1 apart).

    kind="short": groups of size x size adjacent tokens (short-distance attention, SDA);
    kind="long": groups of the tokens whose row and column agree modulo size, i.e. every size-th token
    (long-distance attention, LDA).
    """

    def __init__(self, dim: int, heads: int, kind: str, size: int, *, qkv_bias: bool = True) -> None:
        super().__init__()
        for argument, value in (("dim", dim), ("heads", heads), ("size", size)):
            check_positive(argument, value)
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        if kind not in ("short", "long"):
            raise ValueError(f"kind={kind!r}; expected 'short' or 'long'")
        self.heads, self.kind, self.size = heads, kind, size
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_out = nn.Linear(dim, dim)
        self.position_bias = DynamicPositionBias(heads, max(dim // 4, 8))

    def group_shape(self, height: int, width: int) -> tuple[int, int]:
        """Rows and columns of one group on a height x width map; raises unless the groups tile it."""
        if height % self.size or width % self.size:
            raise ValueError(f"a {height}x{width} feature map is not divisible by the {self.kind}-distance "
                             f"{'group' if self.kind == 'short' else 'interval'} size={self.size}")
        return (self.size, self.size) if self.kind == "short" else (height // self.size, width // self.size)

    def partition(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (groups, tokens per group, C)."""
        return window_partition(x, self.size) if self.kind == "short" else interval_partition(x, self.size)

    def reverse(self, groups: Tensor, height: int, width: int) -> Tensor:
        if self.kind == "short":
            return window_reverse(groups, self.size, height, width)
        return interval_reverse(groups, self.size, height, width)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        height, width = x.shape[1:3]
        rows, cols = self.group_shape(height, width)
        groups = self.partition(x)  # (B * groups, rows * cols, C)
        q, k, v = (rearrange(proj(groups), "n t (h d) -> n h t d", h=self.heads) for proj in (self.to_q, self.to_k, self.to_v))
        bias = rearrange(self.position_bias(group_offsets(rows, cols, device=x.device)), "i j h -> 1 h i j")
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))  # (B * groups, heads, t, d)
        return self.reverse(self.to_out(rearrange(out, "n h t d -> n t (h d)")), height, width)


class CrossFormerBlock(nn.Module):
    """Pre-norm block on (B, H*W, C) tokens: x + distance attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, dim: int, heads: int, kind: str, size: int, *, mlp_ratio: float = 4.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.attn_norm = LayerNorm(dim, eps)
        self.attn = DistanceAttention(dim, heads, kind, size)
        self.ffn_norm = LayerNorm(dim, eps)
        self.ffn = MLP(dim, int(mlp_ratio * dim), activation="gelu")

    def forward(self, x: Tensor, resolution: tuple[int, int]) -> Tensor:
        height, width = resolution
        grid = rearrange(self.attn_norm(x), "b (h w) c -> b h w c", h=height, w=width)
        x = x + rearrange(self.attn(grid), "b h w c -> b (h w) c")
        return x + self.ffn(self.ffn_norm(x))


@dataclass
class CrossFormerConfig:
    """Stages of cross-scale embedding + blocks; blocks alternate short (even) and long (odd) distance attention.
    Stage 0 embeds the image with `embed_kernels` at `embed_stride`; later stages halve the resolution with
    `merge_kernels` at stride 2. The defaults suit 32 x 32 images (8 x 8 then 4 x 4 tokens)."""

    image_size: int = 32
    channels: int = 3
    dims: tuple[int, ...] = (32, 64)
    depths: tuple[int, ...] = (2, 2)
    heads: tuple[int, ...] = (2, 4)
    group: int = 4  # G: short-distance groups are G x G adjacent tokens
    intervals: tuple[int, ...] = (2, 1)  # I per stage: long-distance groups take every I-th token
    embed_kernels: tuple[int, ...] = (4, 8, 16)
    embed_stride: int = 4
    merge_kernels: tuple[int, ...] = (2, 4)
    mlp_ratio: float = 4.0
    num_classes: int = 0  # 0: no head, the model returns the pooled features
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "group", "embed_stride"):
            check_positive(name, getattr(self, name))
        for name in ("dims", "depths", "heads", "intervals", "embed_kernels", "merge_kernels"):
            setattr(self, name, check_positive_ints(name, getattr(self, name)))
        _check_common(self)
        stages = {name: len(getattr(self, name)) for name in ("dims", "depths", "heads", "intervals")}
        if len(set(stages.values())) != 1:
            raise ValueError(f"dims, depths, heads and intervals must name the same number of stages; got {stages}")
        for stage, (dim, heads) in enumerate(zip(self.dims, self.heads)):
            if dim % heads:
                raise ValueError(f"stage {stage}: dims[{stage}]={dim} is not divisible by heads[{stage}]={heads}")
            kernels = "embed_kernels" if stage == 0 else "merge_kernels"
            parts = len(getattr(self, kernels))
            if dim % 2 ** (parts - 1):
                raise ValueError(f"stage {stage}: dims[{stage}]={dim} is not divisible by 2**(kernels - 1)="
                                 f"{2 ** (parts - 1)}, as the {parts} {kernels} share its channels by halves")
        for name, stride in (("embed_kernels", self.embed_stride), ("merge_kernels", 2)):
            for kernel in getattr(self, name):
                if kernel < stride or (kernel - stride) % 2:
                    raise ValueError(f"kernel {kernel} in {name}={getattr(self, name)}: each kernel must be at least "
                                     f"its stride={stride} and differ from it by an even number")
        self.check_size(self.image_size, self.image_size)

    def resolutions(self, height: int, width: int) -> list[tuple[int, int]]:
        """The (h, w) token grid of each stage for a height x width image."""
        h, w = height // self.embed_stride, width // self.embed_stride
        return [(h // 2**i, w // 2**i) for i in range(len(self.dims))]

    def check_size(self, height: int, width: int) -> None:
        """Raise ValueError unless every stage of a height x width image tiles into groups and intervals."""
        divisor = self.embed_stride * 2 ** (len(self.dims) - 1)
        if height % divisor or width % divisor:
            raise ValueError(f"a {height}x{width} image is not divisible by embed_stride * 2**(stages - 1) = {divisor}")
        for stage, ((h, w), interval) in enumerate(zip(self.resolutions(height, width), self.intervals)):
            if h % self.group or w % self.group:
                raise ValueError(f"stage {stage}: a {h}x{w} token map is not divisible by group={self.group}")
            if h % interval or w % interval:
                raise ValueError(f"stage {stage}: a {h}x{w} token map is not divisible by intervals[{stage}]={interval}")


class CrossFormer(nn.Module):
    """images (B, C, H, W) -> logits (B, num_classes), or pooled features (B, dims[-1]) when num_classes=0.
    Any image size whose stages tile into groups and intervals is accepted (there is no absolute position)."""

    def __init__(self, config: CrossFormerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embeds = nn.ModuleList(
            CrossScaleEmbedding(c.channels, c.dims[0], c.embed_kernels, c.embed_stride, c.norm_eps) if stage == 0
            else CrossScaleEmbedding(c.dims[stage - 1], c.dims[stage], c.merge_kernels, 2, c.norm_eps)
            for stage in range(len(c.dims))
        )
        self.stages = nn.ModuleList(
            nn.ModuleList(
                CrossFormerBlock(dim, heads, "short" if i % 2 == 0 else "long", c.group if i % 2 == 0 else interval,
                                 mlp_ratio=c.mlp_ratio, eps=c.norm_eps)
                for i in range(depth)
            )
            for dim, depth, heads, interval in zip(c.dims, c.depths, c.heads, c.intervals)
        )
        self.final_norm = LayerNorm(c.dims[-1], c.norm_eps)
        self.head = nn.Linear(c.dims[-1], c.num_classes) if c.num_classes > 0 else None
        self.apply(init_vit_style)

    def forward_features(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, h*w, dims[-1]): the normalised tokens of the last stage."""
        self.config.check_size(*check_images(images, self.config.channels))
        x = images
        for embed, blocks in zip(self.embeds, self.stages):
            tokens, resolution = embed(x)
            for block in blocks:
                tokens = block(tokens, resolution)
            x = rearrange(tokens, "b (h w) c -> b c h w", h=resolution[0])
        return self.final_norm(tokens)

    def forward(self, images: Tensor) -> Tensor:
        pooled = self.forward_features(images).mean(dim=1)
        return self.head(pooled) if self.head is not None else pooled


# ----------------------------------------------------------------------------------------------
# MaxViT: block attention, then grid attention.


class MBConv(nn.Module):
    """A simplified MBConv on (B, C, H, W): x + project(GELU(depthwise3x3(GELU(expand(BatchNorm(x)))))).
    The paper's also has squeeze-excitation and can downsample; here a separate convolution downsamples."""

    def __init__(self, dim: int, expansion: int = 4) -> None:
        super().__init__()
        check_positive("dim", dim)
        check_positive("expansion", expansion)
        hidden = dim * expansion
        self.norm = nn.BatchNorm2d(dim)
        self.expand = nn.Conv2d(dim, hidden, 1)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.project = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.project(F.gelu(self.depthwise(F.gelu(self.expand(self.norm(x))))))


class AxisAttentionLayer(nn.Module):
    """One axis of MaxViT's attention on (B, H, W, C): x + windowed attention(norm(x)), then x + MLP(norm(x)).
    axis="block": windows of size x size adjacent tokens; axis="grid": a size x size grid over the whole map.
    The relative position bias (Swin's) is indexed by offsets in window steps (grid steps for the grid)."""

    def __init__(self, dim: int, heads: int, axis: str, size: int, *, mlp_ratio: float = 4.0, eps: float = 1e-5) -> None:
        super().__init__()
        if axis not in ("block", "grid"):
            raise ValueError(f"axis={axis!r}; expected 'block' or 'grid'")
        self.axis, self.size = axis, size
        self.attn_norm = LayerNorm(dim, eps)
        self.attn = WindowAttention(dim, heads, size)
        self.ffn_norm = LayerNorm(dim, eps)
        self.ffn = MLP(dim, int(mlp_ratio * dim), activation="gelu")

    def attend(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C): partition along this axis, attend inside each group, put back."""
        height, width = x.shape[1:3]
        if self.axis == "block":
            return window_reverse(self.attn(window_partition(x, self.size)), self.size, height, width)
        return grid_reverse(self.attn(grid_partition(x, self.size)), self.size, height, width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attend(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class MaxViTBlock(nn.Module):
    """(B, C, H, W) -> same: MBConv, then block attention (local), then grid attention (sparse global)."""

    def __init__(self, dim: int, heads: int, block: int, grid: int, *, mlp_ratio: float = 4.0, expansion: int = 4,
                 eps: float = 1e-5) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.mbconv = MBConv(dim, expansion)
        self.block_attn = AxisAttentionLayer(dim, heads, "block", block, mlp_ratio=mlp_ratio, eps=eps)
        self.grid_attn = AxisAttentionLayer(dim, heads, "grid", grid, mlp_ratio=mlp_ratio, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[2:]
        for axis, size in (("block", self.block_attn.size), ("grid", self.grid_attn.size)):
            if height % size or width % size:
                raise ValueError(f"a {height}x{width} feature map is not divisible by the {axis} size={size}")
        x = rearrange(self.mbconv(x), "b c h w -> b h w c")
        x = self.grid_attn(self.block_attn(x))
        return rearrange(x, "b h w c -> b c h w")


@dataclass
class MaxViTConfig:
    """A patchify stem (stride `stem_stride`), then stages of MaxViT blocks; each later stage halves the map
    with a 2x2 stride-2 convolution. Every stage's map must tile into blocks and grids."""

    image_size: int = 32
    channels: int = 3
    stem_stride: int = 2
    dims: tuple[int, ...] = (32, 64)
    depths: tuple[int, ...] = (1, 1)
    heads: tuple[int, ...] = (2, 4)
    block: int = 4  # P: block attention inside P x P windows
    grid: int = 4  # G: grid attention over a G x G grid
    mlp_ratio: float = 4.0
    expansion: int = 4  # MBConv's hidden width / dim
    num_classes: int = 0  # 0: no head, the model returns the pooled features
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "stem_stride", "block", "grid", "expansion"):
            check_positive(name, getattr(self, name))
        for name in ("dims", "depths", "heads"):
            setattr(self, name, check_positive_ints(name, getattr(self, name)))
        _check_common(self)
        stages = {name: len(getattr(self, name)) for name in ("dims", "depths", "heads")}
        if len(set(stages.values())) != 1:
            raise ValueError(f"dims, depths and heads must name the same number of stages; got {stages}")
        for stage, (dim, heads) in enumerate(zip(self.dims, self.heads)):
            if dim % heads:
                raise ValueError(f"stage {stage}: dims[{stage}]={dim} is not divisible by heads[{stage}]={heads}")
        self.check_size(self.image_size, self.image_size)

    def check_size(self, height: int, width: int) -> None:
        """Raise ValueError unless every stage of a height x width image tiles into blocks and grids."""
        divisor = self.stem_stride * 2 ** (len(self.dims) - 1)
        if height % divisor or width % divisor:
            raise ValueError(f"a {height}x{width} image is not divisible by stem_stride * 2**(stages - 1) = {divisor}")
        for stage in range(len(self.dims)):
            h, w = height // self.stem_stride // 2**stage, width // self.stem_stride // 2**stage
            for name in ("block", "grid"):
                size = getattr(self, name)
                if h % size or w % size:
                    raise ValueError(f"stage {stage}: a {h}x{w} feature map is not divisible by {name}={size}")


class MaxViT(nn.Module):
    """images (B, C, H, W) -> logits (B, num_classes), or pooled features (B, dims[-1]) when num_classes=0."""

    def __init__(self, config: MaxViTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.stem = nn.Conv2d(c.channels, c.dims[0], kernel_size=c.stem_stride, stride=c.stem_stride)
        self.downsamples = nn.ModuleList(nn.Conv2d(c.dims[i - 1], c.dims[i], kernel_size=2, stride=2)
                                         for i in range(1, len(c.dims)))
        self.stages = nn.ModuleList(
            nn.ModuleList(MaxViTBlock(dim, heads, c.block, c.grid, mlp_ratio=c.mlp_ratio, expansion=c.expansion,
                                      eps=c.norm_eps) for _ in range(depth))
            for dim, depth, heads in zip(c.dims, c.depths, c.heads)
        )
        self.final_norm = LayerNorm(c.dims[-1], c.norm_eps)
        self.head = nn.Linear(c.dims[-1], c.num_classes) if c.num_classes > 0 else None
        self.apply(init_vit_style)

    def forward_features(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, dims[-1], h, w): the last stage's feature map."""
        self.config.check_size(*check_images(images, self.config.channels))
        x = self.stem(images)  # (B, dims[0], H/stem, W/stem)
        for stage, blocks in enumerate(self.stages):
            if stage > 0:
                x = self.downsamples[stage - 1](x)  # (B, dims[stage], h/2, w/2)
            for block in blocks:
                x = block(x)
        return x

    def forward(self, images: Tensor) -> Tensor:
        pooled = self.final_norm(self.forward_features(images).mean(dim=(2, 3)))  # (B, dims[-1])
        return self.head(pooled) if self.head is not None else pooled
