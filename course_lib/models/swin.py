"""Swin Transformer ("Swin Transformer: Hierarchical Vision Transformer using Shifted Windows").

Attention stays inside non-overlapping windows of `window_size`² patches, which makes its cost linear in
the image area; every second block rolls the feature map by half a window first, so information crosses
window borders, and a mask keeps apart the tokens that the roll brought together from opposite edges.
Between stages, patch merging halves the resolution and doubles the width. `Swin.from_hf` copies the
weights of a Hugging Face `SwinModel` (or `SwinForImageClassification`) through an explicit key map.

A feature map no larger than the window along a side is attended as one window, without a shift. When it is
smaller than the window, this model reads the central entries of the block's bias table (the paper's code
builds a smaller table instead; Hugging Face's SwinModel 5.x raises a shape error there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from course_lib.models._common import (
    check_feature_map,
    check_num_classes,
    check_positive,
    check_tiles,
)
from course_lib.models._weights import checked_state_dict, move_module
from course_lib.nn import MLP, LayerNorm


@dataclass
class SwinConfig:
    image_size: int = 224
    patch_size: int = 4
    channels: int = 3
    embed_dim: int = 96  # width of the first stage; each later stage doubles it
    depths: tuple[int, ...] = (2, 2, 6, 2)  # blocks per stage
    heads: tuple[int, ...] = (3, 6, 12, 24)  # attention heads per stage
    window_size: int = 7
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-5
    num_classes: int = 0  # 0: no head, the model returns the pooled features
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "channels", "embed_dim", "window_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")
        self.depths, self.heads = tuple(self.depths), tuple(self.heads)
        for name in ("depths", "heads"):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{name}={values!r} must be a non-empty sequence of positive ints")
        if len(self.depths) != len(self.heads):
            raise ValueError(f"depths={self.depths} and heads={self.heads} must name the same number of stages")
        for stage, (dim, heads) in enumerate(zip(self.stage_dims, self.heads)):
            if dim % heads != 0:
                raise ValueError(f"stage {stage}: width {dim} (embed_dim={self.embed_dim} * 2**{stage}) "
                                 f"is not divisible by heads={heads}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio={self.mlp_ratio!r} must be positive")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps={self.norm_eps!r} must be positive")
        check_num_classes(self.num_classes)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))

    @property
    def num_features(self) -> int:
        return self.stage_dims[-1]


# ----------------------------------------------------------------------------------------------
# Windows, the shifted-window mask and the relative position index.


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B * H/window * W/window, window², C): the tokens of each window, windows row by row."""
    height, width = check_feature_map(x)
    check_tiles(height, width, window, "window")
    return rearrange(x, "b (h p) (w q) c -> (b h w) (p q) c", p=window, q=window)


def window_reverse(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """Inverse of `window_partition`: (B * nH * nW, window², C) -> (B, height, width, C)."""
    check_tiles(height, width, window, "window")
    if windows.dim() != 3 or windows.shape[1] != window * window:
        raise ValueError(f"windows has shape {tuple(windows.shape)}; expected (windows, {window * window}, channels)")
    per_image = (height // window) * (width // window)
    if windows.shape[0] % per_image:
        raise ValueError(f"{windows.shape[0]} windows do not make whole {height}x{width} images of {per_image} windows")
    return rearrange(windows, "(b h w) (p q) c -> b (h p) (w q) c", h=height // window, w=width // window, p=window)


def shifted_window_mask(height: int, width: int, window: int, shift: int, *, device: torch.device | None = None) -> Tensor:
    """(nH * nW, window², window²) boolean mask, True where a query may attend to a key, for the windows of a
    feature map rolled by -shift: along each axis the rolled map has three regions (never wrapped; the last
    window's part that was there before; the part that wrapped round from the start), and tokens that came
    from different regions were not neighbours in the image."""
    check_tiles(height, width, window, "window")
    if not 0 <= shift < window:
        raise ValueError(f"shift={shift} must lie in [0, window={window})")

    def regions(size: int) -> Tensor:
        index = torch.arange(size, device=device)
        return (index >= size - window).long() + (index >= size - shift).long()  # 0, 1 or 2

    region = rearrange(regions(height), "h -> h 1") * 3 + rearrange(regions(width), "w -> 1 w")  # (H, W)
    region = window_partition(rearrange(region, "h w -> 1 h w 1"), window)[..., 0]  # (windows, window²)
    return rearrange(region, "n i -> n i 1") == rearrange(region, "n j -> n 1 j")


def relative_position_index(window: int, table_window: int | None = None) -> Tensor:
    """(window², window²) index into a ((2 * table_window - 1)², heads) bias table: the entry for the offset
    (dy, dx) from key to query. A window smaller than the table's uses the table's central entries."""
    table_window = window if table_window is None else table_window
    check_positive("window", window)
    check_positive("table_window", table_window)
    if window > table_window:
        raise ValueError(f"window={window} is larger than the bias table's window={table_window}")
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()  # (window²,) coordinates of each token in its window
    dy = rearrange(rows, "i -> i 1") - rearrange(rows, "j -> 1 j") + table_window - 1  # in [0, 2w - 2]
    dx = rearrange(cols, "i -> i 1") - rearrange(cols, "j -> 1 j") + table_window - 1
    return dy * (2 * table_window - 1) + dx


def global_attention_with_block_mask(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, bias: Tensor) -> Tensor:
    """The naive reference: softmax(q kᵀ / √d + bias) v over all (B, heads, L, d) tokens at once, with the
    (L, L) boolean `allowed` mask (True = may attend) hiding every other pair. Quadratic in L; for tests."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias  # (B, heads, L, L)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # (B, heads, L, d)


# ----------------------------------------------------------------------------------------------
# Building blocks.


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, plus a learned bias per head and relative offset."""

    def __init__(self, dim: int, heads: int, window: int, *, qkv_bias: bool = True) -> None:
        super().__init__()
        for argument, value in (("dim", dim), ("heads", heads), ("window", window)):
            check_positive(argument, value)
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads, self.window = heads, window
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_out = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # recomputed from `window`, never loaded: not part of the state dict
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def position_bias(self, window: int) -> Tensor:
        """(heads, window², window²) bias; `window` may be smaller than the table's (a small feature map)."""
        index = self.relative_position_index if window == self.window else \
            relative_position_index(window, self.window).to(self.relative_position_bias_table.device)
        return rearrange(self.relative_position_bias_table[index], "i j h -> h i j")

    def forward(self, windows: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B * nW, t, dim) tokens of square windows (t = window²) -> same shape. `mask` (nW, t, t), True where
        a query may attend to a key, is shared by the windows at the same place in every image."""
        window = math.isqrt(windows.shape[1])
        if window * window != windows.shape[1] or window > self.window:
            raise ValueError(f"windows of {windows.shape[1]} tokens are not square windows of at most "
                             f"{self.window}² tokens")
        q, k, v = (rearrange(proj(windows), "n t (h d) -> n h t d", h=self.heads)
                   for proj in (self.to_q, self.to_k, self.to_v))
        bias = self.position_bias(window)  # (heads, t, t)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None])
        else:
            if windows.shape[0] % mask.shape[0]:
                raise ValueError(f"{windows.shape[0]} windows are not a multiple of the mask's {mask.shape[0]}")
            bias = bias + torch.zeros_like(mask, dtype=bias.dtype).masked_fill(~mask, float("-inf"))[:, None]
            # the windows of one image side by side as extra heads: 4D, so that PyTorch's fused kernels take it,
            # and the (nW, heads, t, t) bias is shared by the images without a copy per image
            n = mask.shape[0]
            q, k, v = (rearrange(t, "(b n) h t d -> b (n h) t d", n=n) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=rearrange(bias, "n h i j -> 1 (n h) i j"))
            out = rearrange(out, "b (n h) t d -> (b n) h t d", n=n)
        return self.to_out(rearrange(out, "n h t d -> n t (h d)"))


class SwinBlock(nn.Module):
    """Pre-norm block: x + (shifted-)window attention(norm(x)), then x + MLP(norm(x)).

    When the feature map is no larger than the window along some side, one window covers it: the window
    shrinks to that side and the shift is dropped (as in the paper's code and Hugging Face's).
    """

    def __init__(self, dim: int, heads: int, window: int, shift: int = 0, *, mlp_ratio: float = 4.0,
                 eps: float = 1e-5, qkv_bias: bool = True) -> None:
        super().__init__()
        check_positive("window", window)
        if not 0 <= shift < window:
            raise ValueError(f"shift={shift} must lie in [0, window={window})")
        self.window, self.shift = window, shift
        self.attn_norm = LayerNorm(dim, eps)
        self.attn = WindowAttention(dim, heads, window, qkv_bias=qkv_bias)
        self.ffn_norm = LayerNorm(dim, eps)
        self.ffn = MLP(dim, int(mlp_ratio * dim), activation="gelu")

    def window_and_shift(self, height: int, width: int) -> tuple[int, int]:
        """The window and shift used on a height x width feature map."""
        if min(height, width) <= self.window:
            return min(height, width), 0
        return self.window, self.shift

    def attend(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C): pad to whole windows, roll, attend in windows, roll back, crop."""
        height, width = x.shape[1:3]
        window, shift = self.window_and_shift(height, width)
        pad_h, pad_w = -height % window, -width % window
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # zeros at the bottom and right, which every query sees
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2)) if shift else x
        mask = shifted_window_mask(*x.shape[1:3], window, shift, device=x.device) if shift else None
        out = window_reverse(self.attn(window_partition(x, window), mask), window, *x.shape[1:3])
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2)) if shift else out
        return out[:, :height, :width]

    def forward(self, x: Tensor, resolution: tuple[int, int]) -> Tensor:
        """(B, H*W, C) tokens of an H x W feature map, row by row -> same shape."""
        height, width = resolution
        grid = rearrange(self.attn_norm(x), "b (h w) c -> b h w c", h=height, w=width)
        x = x + rearrange(self.attend(grid), "b h w c -> b (h w) c")
        return x + self.ffn(self.ffn_norm(x))


class PatchMerging(nn.Module):
    """Halve the resolution, double the width: each 2x2 group of tokens is concatenated (4C), normalised
    and projected to 2C. The concatenation order, (0,0), (1,0), (0,1), (1,1) as (row, col), is the paper's."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = LayerNorm(4 * dim, eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, resolution: tuple[int, int]) -> Tensor:
        """(B, H*W, C) -> (B, ceil(H/2) * ceil(W/2), 2C); an odd side is padded with zeros first."""
        height, width = resolution
        grid = rearrange(x, "b (h w) c -> b h w c", h=height, w=width)
        grid = F.pad(grid, (0, 0, 0, width % 2, 0, height % 2))
        # p: row offset, q: column offset within the 2x2 group; channels go (q p c), so rows vary fastest
        merged = rearrange(grid, "b (h p) (w q) c -> b (h w) (q p c)", p=2, q=2)
        return self.reduction(self.norm(merged))


class SwinStage(nn.Module):
    """`depth` blocks that alternate plain and shifted windows, then (except in the last stage) a merge."""

    def __init__(self, config: SwinConfig, stage: int) -> None:
        super().__init__()
        c, dim = config, config.stage_dims[stage]
        self.blocks = nn.ModuleList(
            SwinBlock(dim, c.heads[stage], c.window_size, 0 if i % 2 == 0 else c.window_size // 2,
                      mlp_ratio=c.mlp_ratio, eps=c.norm_eps, qkv_bias=c.qkv_bias)
            for i in range(c.depths[stage])
        )
        self.merge = PatchMerging(dim, c.norm_eps) if stage < len(c.depths) - 1 else None

    def forward(self, x: Tensor, resolution: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        for block in self.blocks:
            x = block(x, resolution)
        if self.merge is not None:
            x = self.merge(x, resolution)
            resolution = ((resolution[0] + 1) // 2, (resolution[1] + 1) // 2)
        return x, resolution


class Swin(nn.Module):
    """images (B, channels, H, W) -> pooled features (B, num_features), or logits (B, num_classes) with a head."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embed = nn.Conv2d(c.channels, c.embed_dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.embed_norm = LayerNorm(c.embed_dim, c.norm_eps)
        self.stages = nn.ModuleList(SwinStage(c, i) for i in range(len(c.depths)))
        self.final_norm = LayerNorm(c.num_features, c.norm_eps)
        self.head = nn.Linear(c.num_features, c.num_classes) if c.num_classes > 0 else None

    def forward_features(self, images: Tensor) -> Tensor:
        """(B, channels, H, W) -> (B, h*w, num_features): the normalised tokens of the last stage, row by row.
        A side that is not a multiple of patch_size is padded with zeros, as Hugging Face does."""
        if images.dim() != 4 or images.shape[1] != self.config.channels:
            raise ValueError(f"images has shape {tuple(images.shape)}; expected "
                             f"(batch, channels={self.config.channels}, height, width)")
        p = self.config.patch_size
        images = F.pad(images, (0, -images.shape[3] % p, 0, -images.shape[2] % p))
        grid = self.patch_embed(images)  # (B, embed_dim, H/p, W/p)
        resolution = (grid.shape[2], grid.shape[3])
        x = self.embed_norm(rearrange(grid, "b c h w -> b (h w) c"))
        for stage in self.stages:
            x, resolution = stage(x, resolution)
        return self.final_norm(x)

    def forward(self, images: Tensor) -> Tensor:
        pooled = self.forward_features(images).mean(dim=1)  # (B, num_features)
        return self.head(pooled) if self.head is not None else pooled

    @classmethod
    def from_hf(cls, reference: nn.Module) -> Swin:
        """A Swin with the weights of a Hugging Face SwinModel (same last_hidden_state and pooler_output), or of
        a SwinForImageClassification (same logits)."""
        num_classes = reference.config.num_labels if _is_classifier(reference) else 0
        model = cls(config_from_hf(reference.config, num_classes=num_classes))
        model.load_state_dict(state_dict_from_hf(reference, model), strict=True)
        return model


# ----------------------------------------------------------------------------------------------
# Weights from Hugging Face: an explicit key map, and every key and shape must line up.


def _is_classifier(reference: nn.Module) -> bool:
    return hasattr(reference, "swin") and hasattr(reference, "classifier")


def config_from_hf(hf: object, *, num_classes: int = 0) -> SwinConfig:
    """The SwinConfig of a Hugging Face SwinConfig; refuses settings this model lacks."""
    if getattr(hf, "model_type", None) != "swin":
        raise ValueError(f"model_type={getattr(hf, 'model_type', None)!r}; expected 'swin'")
    expected = {"hidden_act": "gelu", "use_absolute_embeddings": False,
                "layer_norm_eps": 1e-5}  # HF's patch-embedding and merging norms always use 1e-5
    for name, value in expected.items():
        if getattr(hf, name) != value:
            raise ValueError(f"{name}={getattr(hf, name)!r}; this Swin supports only {value!r}")
    for name in ("image_size", "patch_size"):
        if not isinstance(getattr(hf, name), int):
            raise ValueError(f"{name}={getattr(hf, name)!r}; this Swin supports only square sizes given as an int")
    return SwinConfig(image_size=hf.image_size, patch_size=hf.patch_size, channels=hf.num_channels,
                      embed_dim=hf.embed_dim, depths=tuple(hf.depths), heads=tuple(hf.num_heads),
                      window_size=hf.window_size, mlp_ratio=hf.mlp_ratio, norm_eps=hf.layer_norm_eps,
                      num_classes=num_classes, qkv_bias=hf.qkv_bias)


_BLOCK_NAMES = {
    "layernorm_before": "attn_norm", "layernorm_after": "ffn_norm",
    "attention.q_proj": "attn.to_q", "attention.k_proj": "attn.to_k", "attention.v_proj": "attn.to_v",
    "attention.o_proj": "attn.to_out", "mlp.fc1": "ffn.fc_in", "mlp.fc2": "ffn.fc_out",
}


def _check_position_indices(reference: nn.Module, model: Swin) -> None:
    """The index buffers are recomputed on both sides, not copied: they must agree."""
    theirs = {k: v for k, v in reference.named_buffers() if k.endswith("relative_position_index")}
    ours = [v for k, v in model.named_buffers() if k.endswith("relative_position_index")]
    if len(theirs) != len(ours):
        raise ValueError(f"{len(theirs)} relative position indices in the reference, {len(ours)} here")
    for (name, index), mine in zip(sorted(theirs.items(), key=lambda kv: _natural(kv[0])), ours):
        if not torch.equal(index.flatten().cpu(), mine.flatten().cpu()):
            raise ValueError(f"{name} differs from our relative position index")


def _natural(key: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in key.split(".")]


def state_dict_from_hf(reference: nn.Module, model: Swin) -> dict[str, Tensor]:
    """`reference`'s weights under our names; raises if any key or shape fails to line up."""
    theirs = dict(reference.state_dict())
    ours: dict[str, Tensor] = {}
    if _is_classifier(reference):  # SwinForImageClassification: a SwinModel under swin., a linear head
        move_module(theirs, ours, "classifier", "head")
        theirs = {k.removeprefix("swin."): v for k, v in theirs.items()}
    move_module(theirs, ours, "embeddings.patch_embeddings.projection", "patch_embed")
    move_module(theirs, ours, "embeddings.norm", "embed_norm")
    move_module(theirs, ours, "layernorm", "final_norm")
    for s, depth in enumerate(model.config.depths):
        for b in range(depth):
            old, new = f"encoder.layers.{s}.blocks.{b}.", f"stages.{s}.blocks.{b}."
            for old_name, new_name in _BLOCK_NAMES.items():
                move_module(theirs, ours, old + old_name, new + new_name)
            table = old + "attention.relative_position_bias.relative_position_bias_table"
            ours[new + "attn.relative_position_bias_table"] = theirs.pop(table)
        for part in ("norm", "reduction"):
            move_module(theirs, ours, f"encoder.layers.{s}.downsample.{part}", f"stages.{s}.merge.{part}")
    ours = checked_state_dict(theirs, ours, model)
    _check_position_indices(reference, model)
    return ours
