"""Hierarchical vision transformers with convolutions inside. SegFormer's encoder, the Mix Transformer
("SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers").

Each stage embeds the previous feature map with an *overlapping* strided convolution (kernel larger than the
stride, so neighbouring patches share pixels), runs transformer blocks on its tokens and normalises them. The
blocks attend globally but cheaply: keys and values come from a copy of the map shrunk by a strided convolution
(`sr_ratio` per side), so the cost is L * L / sr_ratio². There is no position embedding: the Mix-FFN's 3x3
depthwise convolution (Linear -> depthwise conv -> GELU -> Linear) tells tokens where they are, which lets the
encoder run at any resolution. The encoder returns one (B, C_i, H_i, W_i) feature map per stage, as a
segmentation decoder wants. `SegFormerEncoder.from_hf` copies a Hugging Face `SegformerModel` through an
explicit key map.

CvT ("CvT: Introducing Convolutions to Vision Transformers") brings convolutions in elsewhere: a strided
convolution embeds each stage's tokens, and queries, keys and values are depthwise convolutions + BatchNorm of
the token map before their linear layers, keys and values strided. `CvT.from_hf` copies a `CvtModel`.

Three classifiers follow, each a pyramid of tokens built a different way (no Hugging Face model exists for
them; the tests check each piece against a naive computation, and the default configs against the parameter
counts of the papers' tables):
- `MViT` ("Multiscale Vision Transformers"): pooling attention. Queries, keys and values are pooled over the
  token grid (a depthwise convolution + LayerNorm, or max pooling), the class token aside; pooled queries
  shorten the sequence at each stage transition, pooled keys and values make attention cheaper.
- `PiT` ("Rethinking Spatial Dimensions of Vision Transformers"): plain ViT blocks, and between stages a
  strided depthwise convolution (with a channel multiplier) that halves the grid and widens the tokens.
- `T2TViT` ("Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet"): overlapping soft
  splits (`nn.Unfold`) and small transformer layers build the tokens before a plain ViT backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from course_lib.models._common import (
    check_images,
    check_num_classes,
    check_positive,
    check_positive_ints,
    init_vit,
)
from course_lib.models._weights import checked_state_dict, move_module
from course_lib.nn import MLP, LayerNorm, MultiHeadAttention, TransformerBlock


def _check_stages(config: object, names: tuple[str, ...], dims: str) -> None:
    """Turn each per-stage setting `names` of `config` into a tuple of positive ints, and check that they all name
    the same number of stages and that every stage's width `dims` divides by its heads."""
    for name in names:
        setattr(config, name, check_positive_ints(name, getattr(config, name)))
    lengths = {name: len(getattr(config, name)) for name in names}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"every per-stage setting must name the same number of stages; got lengths {lengths}")
    for stage, (dim, heads) in enumerate(zip(getattr(config, dims), config.heads)):
        if dim % heads:
            raise ValueError(f"stage {stage}: {dims}[{stage}]={dim} is not divisible by heads[{stage}]={heads}")


@dataclass
class SegFormerConfig:
    """The Mix Transformer's stages; every tuple names one value per stage. The defaults are MiT-b0."""

    channels: int = 3
    depths: tuple[int, ...] = (2, 2, 2, 2)  # blocks per stage
    hidden_sizes: tuple[int, ...] = (32, 64, 160, 256)  # width of each stage
    heads: tuple[int, ...] = (1, 2, 5, 8)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)  # kernel of each overlapping patch embedding
    strides: tuple[int, ...] = (4, 2, 2, 2)  # its stride: the stage's downsampling
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)  # keys/values come from a map shrunk this much per side
    mlp_ratios: tuple[int, ...] = (4, 4, 4, 4)  # Mix-FFN hidden width / stage width
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_positive("channels", self.channels)
        _check_stages(self, ("depths", "hidden_sizes", "heads", "patch_sizes", "strides", "sr_ratios", "mlp_ratios"),
                      "hidden_sizes")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps={self.norm_eps!r} must be positive")

    @property
    def num_stages(self) -> int:
        return len(self.depths)


# ----------------------------------------------------------------------------------------------
# Building blocks.


class OverlapPatchEmbed(nn.Module):
    """(B, C_in, H, W) -> tokens (B, h*w, dim) and (h, w): a `patch` x `patch` convolution with a smaller
    `stride` and `patch // 2` padding, so neighbouring patches overlap, then LayerNorm."""

    def __init__(self, in_channels: int, dim: int, patch: int, stride: int, eps: float = 1e-5) -> None:
        super().__init__()
        for argument, value in (("in_channels", in_channels), ("dim", dim), ("patch", patch), ("stride", stride)):
            check_positive(argument, value)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=stride, padding=patch // 2)
        self.norm = LayerNorm(dim, eps)

    def forward(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        grid = self.proj(images)  # (B, dim, h, w)
        return self.norm(rearrange(grid, "b c h w -> b (h w) c")), (grid.shape[2], grid.shape[3])


class SpatialReductionAttention(nn.Module):
    """Global self-attention whose keys and values come from the feature map shrunk `ratio` times per side by a
    `ratio` x `ratio` strided convolution and a LayerNorm. `ratio=1` is plain self-attention."""

    def __init__(self, dim: int, heads: int, ratio: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        check_positive("ratio", ratio)
        self.ratio = ratio
        self.attn = MultiHeadAttention(dim, heads)
        if ratio > 1:
            self.reduce = nn.Conv2d(dim, dim, kernel_size=ratio, stride=ratio)
            self.reduce_norm = LayerNorm(dim, eps)

    def reduced(self, x: Tensor, resolution: tuple[int, int]) -> Tensor:
        """(B, H*W, dim) -> (B, floor(H/ratio) * floor(W/ratio), dim): the tokens keys and values are made of."""
        if self.ratio == 1:
            return x
        height, width = resolution
        if height < self.ratio or width < self.ratio:
            raise ValueError(f"a {height}x{width} feature map is smaller than the reduction ratio={self.ratio}")
        grid = self.reduce(rearrange(x, "b (h w) c -> b c h w", h=height, w=width))  # (B, dim, H/r, W/r)
        return self.reduce_norm(rearrange(grid, "b c h w -> b (h w) c"))

    def forward(self, x: Tensor, resolution: tuple[int, int]) -> Tensor:
        """(B, H*W, dim) tokens of an H x W map, row by row -> same shape."""
        return self.attn(x, context=self.reduced(x, resolution))


def conv_on_tokens(conv: nn.Conv2d, x: Tensor, resolution: tuple[int, int]) -> Tensor:
    """Apply a convolution to (B, H*W, C) tokens laid out as their H x W map; back to (B, H'*W', C')."""
    height, width = resolution
    grid = conv(rearrange(x, "b (h w) c -> b c h w", h=height, w=width))
    return rearrange(grid, "b c h w -> b (h w) c")


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv -> GELU -> Linear. The convolution, one 3x3 filter per channel, leaks
    position information into the tokens in place of a position embedding."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        check_positive("dim", dim)
        check_positive("hidden", hidden)
        self.fc_in = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.fc_out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, resolution: tuple[int, int]) -> Tensor:
        """(B, H*W, dim) -> same shape."""
        hidden = conv_on_tokens(self.dwconv, self.fc_in(x), resolution)
        return self.fc_out(F.gelu(hidden))


class SegFormerBlock(nn.Module):
    """Pre-norm block: x + spatial-reduction attention(norm(x)), then x + Mix-FFN(norm(x))."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.attn_norm = LayerNorm(dim, eps)
        self.attn = SpatialReductionAttention(dim, heads, sr_ratio, eps)
        self.ffn_norm = LayerNorm(dim, eps)
        self.ffn = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: Tensor, resolution: tuple[int, int]) -> Tensor:
        x = x + self.attn(self.attn_norm(x), resolution)
        return x + self.ffn(self.ffn_norm(x), resolution)


class SegFormerStage(nn.Module):
    """Overlapping patch embedding, `depth` blocks, LayerNorm: (B, C_in, H, W) -> (B, dim, H/stride, W/stride)."""

    def __init__(self, config: SegFormerConfig, stage: int) -> None:
        super().__init__()
        c = config
        in_channels = c.channels if stage == 0 else c.hidden_sizes[stage - 1]
        dim = c.hidden_sizes[stage]
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, c.patch_sizes[stage], c.strides[stage], c.norm_eps)
        self.blocks = nn.ModuleList(
            SegFormerBlock(dim, c.heads[stage], c.sr_ratios[stage], c.mlp_ratios[stage], c.norm_eps)
            for _ in range(c.depths[stage])
        )
        self.norm = LayerNorm(dim, c.norm_eps)

    def forward(self, grid: Tensor) -> Tensor:
        x, resolution = self.patch_embed(grid)
        for block in self.blocks:
            x = block(x, resolution)
        return rearrange(self.norm(x), "b (h w) c -> b c h w", h=resolution[0], w=resolution[1])


class SegFormerEncoder(nn.Module):
    """The Mix Transformer: images (B, channels, H, W) -> one feature map (B, C_i, H_i, W_i) per stage."""

    def __init__(self, config: SegFormerConfig) -> None:
        super().__init__()
        self.config = config
        self.stages = nn.ModuleList(SegFormerStage(config, i) for i in range(config.num_stages))

    def forward(self, images: Tensor) -> list[Tensor]:
        check_images(images, self.config.channels)
        features, grid = [], images
        for stage in self.stages:
            grid = stage(grid)
            features.append(grid)
        return features

    @classmethod
    def from_hf(cls, reference: nn.Module) -> SegFormerEncoder:
        """An encoder with the weights of a Hugging Face SegformerModel: its i-th output is the model's
        hidden_states[i] (output_hidden_states=True), its last the last_hidden_state. A model with a head
        (`SegformerForSemanticSegmentation`, ...) gives its encoder, `reference.segformer`."""
        reference = getattr(reference, "segformer", reference)
        model = cls(segformer_config_from_hf(reference.config))
        model.load_state_dict(segformer_state_dict_from_hf(reference, model), strict=True)
        return model


# ----------------------------------------------------------------------------------------------
# SegFormer weights from Hugging Face: an explicit key map, and every key and shape must line up.


def segformer_config_from_hf(hf: object) -> SegFormerConfig:
    """The SegFormerConfig of a Hugging Face SegformerConfig; refuses settings this encoder lacks.
    Hugging Face's SegFormer LayerNorms all use PyTorch's default eps, 1e-5, whatever `layer_norm_eps` says."""
    if getattr(hf, "model_type", None) != "segformer":
        raise ValueError(f"model_type={getattr(hf, 'model_type', None)!r}; expected 'segformer'")
    for name, value in {"hidden_act": "gelu", "reshape_last_stage": True}.items():
        if getattr(hf, name) != value:
            raise ValueError(f"{name}={getattr(hf, name)!r}; this encoder supports only {value!r}")
    if len(hf.depths) != hf.num_encoder_blocks:
        raise ValueError(f"num_encoder_blocks={hf.num_encoder_blocks} but depths={list(hf.depths)}")
    return SegFormerConfig(channels=hf.num_channels, depths=tuple(hf.depths), hidden_sizes=tuple(hf.hidden_sizes),
                           heads=tuple(hf.num_attention_heads), patch_sizes=tuple(hf.patch_sizes),
                           strides=tuple(hf.strides), sr_ratios=tuple(hf.sr_ratios),
                           mlp_ratios=tuple(hf.mlp_ratios), norm_eps=1e-5)


_SEGFORMER_BLOCK_NAMES = {
    "layernorm_before": "attn_norm", "layernorm_after": "ffn_norm",
    "attention.q_proj": "attn.attn.to_q", "attention.k_proj": "attn.attn.to_k",
    "attention.v_proj": "attn.attn.to_v", "attention.o_proj": "attn.attn.to_out",
    "attention.sequence_reduction.sequence_reduction": "attn.reduce",
    "attention.sequence_reduction.layer_norm": "attn.reduce_norm",
    "mlp.fc1": "ffn.fc_in", "mlp.dwconv.dwconv": "ffn.dwconv", "mlp.fc2": "ffn.fc_out",
}


def segformer_state_dict_from_hf(reference: nn.Module, model: SegFormerEncoder) -> dict[str, Tensor]:
    """`reference`'s (a SegformerModel's) weights under our names; raises if any key or shape fails to line up."""
    theirs = dict(reference.state_dict())
    ours: dict[str, Tensor] = {}
    for s, depth in enumerate(model.config.depths):
        move_module(theirs, ours, f"stages.{s}.patch_embeddings.proj", f"stages.{s}.patch_embed.proj")
        move_module(theirs, ours, f"stages.{s}.patch_embeddings.layer_norm", f"stages.{s}.patch_embed.norm")
        move_module(theirs, ours, f"stages.{s}.layer_norm", f"stages.{s}.norm")
        for b in range(depth):
            for old, new in _SEGFORMER_BLOCK_NAMES.items():
                move_module(theirs, ours, f"stages.{s}.blocks.{b}.{old}", f"stages.{s}.blocks.{b}.{new}")
    return checked_state_dict(theirs, ours, model)


# ==============================================================================================
# CvT ("CvT: Introducing Convolutions to Vision Transformers").
#
# Each stage embeds the previous map with a strided convolution and a LayerNorm (convolutional token
# embedding). Inside attention, queries, keys and values are made by a depthwise convolution + BatchNorm on the
# token map, then a linear layer (convolutional projection); keys and values use a stride, which shrinks
# them much as SegFormer's reduction does. Only the last stage carries a cls token: it skips the convolutions
# and joins the tokens just before the linear projections.


@dataclass
class CvTConfig:
    """CvT's stages; every tuple names one value per stage. The defaults are CvT-13."""

    channels: int = 3
    depths: tuple[int, ...] = (1, 2, 10)
    dims: tuple[int, ...] = (64, 192, 384)
    heads: tuple[int, ...] = (1, 3, 6)
    patch_sizes: tuple[int, ...] = (7, 3, 3)  # convolutional token embedding: kernel, stride, padding
    patch_strides: tuple[int, ...] = (4, 2, 2)
    patch_paddings: tuple[int, ...] = (2, 1, 1)
    mlp_ratios: tuple[float, ...] = (4.0, 4.0, 4.0)
    qkv_bias: tuple[bool, ...] = (True, True, True)
    kernel_qkv: tuple[int, ...] = (3, 3, 3)  # depthwise kernel of the convolutional projections
    stride_kv: tuple[int, ...] = (2, 2, 2)  # keys and values from a map shrunk this much per side
    padding_kv: tuple[int, ...] = (1, 1, 1)
    cls_token: bool = True  # a cls token in the last stage
    norm_eps: float = 1e-5  # LayerNorm
    bn_eps: float = 1e-5  # BatchNorm of the projections

    def __post_init__(self) -> None:
        check_positive("channels", self.channels)
        counts = ("depths", "dims", "heads", "patch_sizes", "patch_strides", "kernel_qkv", "stride_kv")
        sizes = ("patch_paddings", "padding_kv")
        names = (*counts, *sizes, "mlp_ratios", "qkv_bias")
        for name in names:
            setattr(self, name, tuple(getattr(self, name)))
        for name in counts:
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{name}={values!r} must be a non-empty sequence of positive ints")
        for name in sizes:
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a sequence of non-negative ints")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in self.mlp_ratios):
            raise ValueError(f"mlp_ratios={self.mlp_ratios!r} must be positive numbers")
        if any(not isinstance(v, bool) for v in self.qkv_bias):
            raise ValueError(f"qkv_bias={self.qkv_bias!r} must be a sequence of bools")
        lengths = {name: len(getattr(self, name)) for name in names}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"every per-stage setting must name the same number of stages; got lengths {lengths}")
        for stage, (dim, heads, kernel) in enumerate(zip(self.dims, self.heads, self.kernel_qkv)):
            if dim % heads:
                raise ValueError(f"stage {stage}: dims[{stage}]={dim} is not divisible by heads[{stage}]={heads}")
            if kernel % 2 == 0:
                raise ValueError(f"kernel_qkv[{stage}]={kernel} must be odd, so that the query map keeps its size")
        for name in ("norm_eps", "bn_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be positive")

    @property
    def num_stages(self) -> int:
        return len(self.depths)


class ConvProjection(nn.Module):
    """(B, dim, H, W) map -> (B, h*w, dim) tokens: a depthwise convolution (no bias) and BatchNorm; with
    stride > 1 it also shrinks the map."""

    def __init__(self, dim: int, kernel: int, stride: int, padding: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size=kernel, stride=stride, padding=padding, groups=dim, bias=False)
        self.norm = nn.BatchNorm2d(dim, eps=eps)

    def forward(self, grid: Tensor) -> Tensor:
        return rearrange(self.norm(self.conv(grid)), "b c h w -> b (h w) c")


class ConvAttention(nn.Module):
    """Multi-head self-attention whose queries, keys and values are convolutional projections of the token map
    followed by linear layers; keys and values are strided. A leading cls token (`with_cls`) bypasses the
    convolutions. Scores are scaled by 1/√dim, not 1/√head_dim, as in the paper's code and Hugging Face's."""

    def __init__(self, dim: int, heads: int, *, kernel: int = 3, stride_kv: int = 2, padding_kv: int = 1,
                 qkv_bias: bool = True, with_cls: bool = False, bn_eps: float = 1e-5) -> None:
        super().__init__()
        for argument, value in (("dim", dim), ("heads", heads), ("kernel", kernel), ("stride_kv", stride_kv)):
            check_positive(argument, value)
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        if kernel % 2 == 0:
            raise ValueError(f"kernel={kernel} must be odd, so that the query map keeps its size")
        self.heads, self.with_cls, self.scale = heads, with_cls, dim**-0.5
        self.conv_q = ConvProjection(dim, kernel, 1, kernel // 2, bn_eps)
        self.conv_k = ConvProjection(dim, kernel, stride_kv, padding_kv, bn_eps)
        self.conv_v = ConvProjection(dim, kernel, stride_kv, padding_kv, bn_eps)
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, resolution: tuple[int, int]) -> Tensor:
        """(B, [1 +] H*W, dim) tokens, the cls token first if `with_cls` -> same shape."""
        height, width = resolution
        cls, x = (x[:, :1], x[:, 1:]) if self.with_cls else (x[:, :0], x)
        grid = rearrange(x, "b (h w) c -> b c h w", h=height, w=width)
        heads = []
        for conv, proj in ((self.conv_q, self.to_q), (self.conv_k, self.to_k), (self.conv_v, self.to_v)):
            tokens = torch.cat([cls, conv(grid)], dim=1)  # (B, [1 +] h*w, dim)
            heads.append(rearrange(proj(tokens), "b l (h d) -> b h l d", h=self.heads))
        out = F.scaled_dot_product_attention(*heads, scale=self.scale)  # (B, heads, L, d)
        return self.to_out(rearrange(out, "b h l d -> b l (h d)"))


class CvTBlock(nn.Module):
    """Pre-norm block: x + convolutional attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, config: CvTConfig, stage: int, with_cls: bool) -> None:
        super().__init__()
        c, dim = config, config.dims[stage]
        self.attn_norm = LayerNorm(dim, c.norm_eps)
        self.attn = ConvAttention(dim, c.heads[stage], kernel=c.kernel_qkv[stage], stride_kv=c.stride_kv[stage],
                                  padding_kv=c.padding_kv[stage], qkv_bias=c.qkv_bias[stage], with_cls=with_cls,
                                  bn_eps=c.bn_eps)
        self.ffn_norm = LayerNorm(dim, c.norm_eps)
        self.ffn = MLP(dim, int(dim * c.mlp_ratios[stage]), activation="gelu")

    def forward(self, x: Tensor, resolution: tuple[int, int]) -> Tensor:
        x = x + self.attn(self.attn_norm(x), resolution)
        return x + self.ffn(self.ffn_norm(x))


class CvTStage(nn.Module):
    """Convolutional token embedding (conv + LayerNorm), [a cls token,] `depth` blocks.
    (B, C_in, H, W) -> (B, dim, h, w) and the cls token (B, dim), or None."""

    def __init__(self, config: CvTConfig, stage: int) -> None:
        super().__init__()
        c, dim = config, config.dims[stage]
        with_cls = c.cls_token and stage == c.num_stages - 1
        in_channels = c.channels if stage == 0 else c.dims[stage - 1]
        self.embed = nn.Conv2d(in_channels, dim, kernel_size=c.patch_sizes[stage], stride=c.patch_strides[stage],
                               padding=c.patch_paddings[stage])
        self.embed_norm = LayerNorm(dim, c.norm_eps)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if with_cls else None
        self.blocks = nn.ModuleList(CvTBlock(c, stage, with_cls) for _ in range(c.depths[stage]))

    def forward(self, grid: Tensor) -> tuple[Tensor, Tensor | None]:
        grid = self.embed(grid)  # (B, dim, h, w)
        resolution = (grid.shape[2], grid.shape[3])
        x = self.embed_norm(rearrange(grid, "b c h w -> b (h w) c"))
        if self.cls_token is not None:
            x = torch.cat([repeat(self.cls_token, "1 1 c -> b 1 c", b=x.shape[0]), x], dim=1)
        for block in self.blocks:
            x = block(x, resolution)
        cls, x = (x[:, 0], x[:, 1:]) if self.cls_token is not None else (None, x)
        return rearrange(x, "b (h w) c -> b c h w", h=resolution[0], w=resolution[1]), cls


class CvT(nn.Module):
    """images (B, channels, H, W) -> (one feature map (B, C_i, H_i, W_i) per stage, the last stage's cls token
    (B, C_last) or None)."""

    def __init__(self, config: CvTConfig) -> None:
        super().__init__()
        self.config = config
        self.stages = nn.ModuleList(CvTStage(config, i) for i in range(config.num_stages))

    def forward(self, images: Tensor) -> tuple[list[Tensor], Tensor | None]:
        check_images(images, self.config.channels)
        features, grid, cls = [], images, None
        for stage in self.stages:
            grid, cls = stage(grid)
            features.append(grid)
        return features, cls

    @classmethod
    def from_hf(cls, reference: nn.Module) -> CvT:
        """A CvT with the weights (and BatchNorm running statistics) of a Hugging Face CvtModel: its feature
        maps are the model's hidden_states, its cls token the cls_token_value. Call `.eval()` on both: in
        training mode BatchNorm uses batch statistics. A model with a head gives its encoder, `reference.cvt`."""
        reference = getattr(reference, "cvt", reference)
        model = cls(cvt_config_from_hf(reference.config))
        model.load_state_dict(cvt_state_dict_from_hf(reference, model), strict=True)
        return model


# ----------------------------------------------------------------------------------------------
# CvT weights from Hugging Face.


def cvt_config_from_hf(hf: object) -> CvTConfig:
    """The CvTConfig of a Hugging Face CvtConfig; refuses settings this model lacks. Hugging Face's CvT norms
    use PyTorch's default eps, 1e-5, whatever `layer_norm_eps` says."""
    if getattr(hf, "model_type", None) != "cvt":
        raise ValueError(f"model_type={getattr(hf, 'model_type', None)!r}; expected 'cvt'")
    stages = len(hf.depth)
    if list(hf.qkv_projection_method) != ["dw_bn"] * stages:
        raise ValueError(f"qkv_projection_method={list(hf.qkv_projection_method)!r}; this CvT supports only 'dw_bn'")
    if any(hf.cls_token[:-1]):
        raise ValueError(f"cls_token={list(hf.cls_token)!r}; this CvT supports a cls token in the last stage only")
    for stage, (kernel, stride, padding) in enumerate(zip(hf.kernel_qkv, hf.stride_q, hf.padding_q)):
        if stride != 1 or 2 * padding != kernel - 1:
            raise ValueError(f"stride_q[{stage}]={stride}, padding_q[{stage}]={padding}; this CvT keeps the query "
                             f"map's size: stride 1 and padding (kernel_qkv - 1) / 2 = {(kernel - 1) / 2}")
    return CvTConfig(channels=hf.num_channels, depths=tuple(hf.depth), dims=tuple(hf.embed_dim),
                     heads=tuple(hf.num_heads), patch_sizes=tuple(hf.patch_sizes),
                     patch_strides=tuple(hf.patch_stride), patch_paddings=tuple(hf.patch_padding),
                     mlp_ratios=tuple(hf.mlp_ratio), qkv_bias=tuple(hf.qkv_bias), kernel_qkv=tuple(hf.kernel_qkv),
                     stride_kv=tuple(hf.stride_kv), padding_kv=tuple(hf.padding_kv), cls_token=bool(hf.cls_token[-1]))


_CVT_BLOCK_NAMES = {
    "layernorm_before": "attn_norm", "layernorm_after": "ffn_norm",
    "attention.attention.projection_query": "attn.to_q", "attention.attention.projection_key": "attn.to_k",
    "attention.attention.projection_value": "attn.to_v", "attention.output.dense": "attn.to_out",
    "intermediate.dense": "ffn.fc_in", "output.dense": "ffn.fc_out",
}
_BATCH_NORM_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def cvt_state_dict_from_hf(reference: nn.Module, model: CvT) -> dict[str, Tensor]:
    """`reference`'s (a CvtModel's) weights and BatchNorm statistics under our names; raises if any key or
    shape fails to line up."""
    theirs = dict(reference.state_dict())
    ours: dict[str, Tensor] = {}
    for s, depth in enumerate(model.config.depths):
        old, new = f"encoder.stages.{s}.", f"stages.{s}."
        move_module(theirs, ours, old + "embedding.convolution_embeddings.projection", new + "embed")
        move_module(theirs, ours, old + "embedding.convolution_embeddings.normalization", new + "embed_norm")
        if old + "cls_token" in theirs:
            ours[new + "cls_token"] = theirs.pop(old + "cls_token")
        for b in range(depth):
            old_block, new_block = f"{old}layers.{b}.", f"{new}blocks.{b}."
            for old_name, new_name in _CVT_BLOCK_NAMES.items():
                move_module(theirs, ours, old_block + old_name, new_block + new_name)
            for letter, name in (("q", "query"), ("k", "key"), ("v", "value")):
                conv = f"{old_block}attention.attention.convolution_projection_{name}.convolution_projection."
                move_module(theirs, ours, conv + "convolution", f"{new_block}attn.conv_{letter}.conv")
                for part in _BATCH_NORM_PARTS:  # the running statistics too: eval mode normalises with them
                    if conv + f"normalization.{part}" in theirs:
                        ours[f"{new_block}attn.conv_{letter}.norm.{part}"] = theirs.pop(conv + f"normalization.{part}")
    return checked_state_dict(theirs, ours, model)


# ==============================================================================================
# Shared by the three classifiers below.


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Side of a convolution's (or pooling's) output map."""
    return (size + 2 * padding - kernel) // stride + 1


def _check_square_images(images: Tensor, channels: int, image_size: int) -> None:
    check_images(images, channels)
    if tuple(images.shape[2:]) != (image_size, image_size):
        raise ValueError(f"images are {images.shape[2]}x{images.shape[3]}; expected image_size={image_size} "
                         "(the learned positions belong to that grid)")


# ==============================================================================================
# MViT ("Multiscale Vision Transformers"), for images.
#
# Multi-head pooling attention: queries, keys and values are projected, then each is *pooled* over the token
# grid, head by head, by a strided operator with padding kernel // 2. Pooling the queries shortens the output
# sequence (the stage transition: the map halves, the channels double a block earlier, in the MLP); pooling keys
# and values only makes attention cheaper, L * L / kv_stride² products. The class token is never pooled: it is
# split off, the grid pooled, and the token put back in front. Where a block pools its queries, its residual is
# max-pooled the same way so that the two still add up.
#
# The pooling operator: MViT compares average, max and convolutional pooling and finds the learned one best, a
# depthwise convolution (one kernel per channel, shared by the heads) followed by a LayerNorm; that is
# `pool_mode="conv"`, the default here. `pool_mode="max"` is the parameter-free alternative. Pooling happens only
# where a stride is above 1; a block with both strides 1 is plain multi-head attention. Two simplifications of
# the paper's code: a stage's keys and values are pooled by the same stride in all its blocks (the code adapts the
# stride so that their grid stays fixed), and the residual's max pooling uses `pool_kernel` (the code uses
# stride + 1, the same for the stride 2 of every stage transition).


@dataclass
class MViTConfig:
    """MViT's stages for square images; every tuple names one value per stage. The defaults are MViT-B's
    16-block layout (the paper's image model), for 224 px images."""

    image_size: int = 224
    channels: int = 3
    patch_size: int = 4  # stride of the patch-embedding convolution
    patch_kernel: int = 7  # its kernel (odd, padding patch_kernel // 2): neighbouring patches overlap
    depths: tuple[int, ...] = (1, 2, 11, 2)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    heads: tuple[int, ...] = (1, 2, 4, 8)
    kv_strides: tuple[int, ...] = (8, 4, 2, 1)  # keys and values pooled this much per side in the stage's blocks
    q_stride: int = 2  # the first block of every stage after the first pools its queries this much per side
    pool_kernel: int = 3  # kernel of every pooling (odd)
    pool_mode: str = "conv"  # "conv": depthwise conv + LayerNorm, "max": max pooling
    mlp_ratio: float = 4.0
    num_classes: int = 1000  # 0: no head, the model returns the class token's features
    qkv_bias: bool = True
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "patch_size", "patch_kernel", "q_stride", "pool_kernel"):
            check_positive(name, getattr(self, name))
        _check_stages(self, ("depths", "dims", "heads", "kv_strides"), "dims")
        for name in ("patch_kernel", "pool_kernel"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name}={getattr(self, name)} must be odd (padding {name} // 2 centres it)")
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size={self.image_size} is smaller than patch_size={self.patch_size}")
        if self.pool_mode not in ("conv", "max"):
            raise ValueError(f"pool_mode={self.pool_mode!r}; expected 'conv' or 'max'")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio={self.mlp_ratio!r} must be positive")
        check_num_classes(self.num_classes)
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps={self.norm_eps!r} must be positive")

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def grids(self) -> tuple[int, ...]:
        """Side of the token grid in each stage."""
        side = _conv_out(self.image_size, self.patch_kernel, self.patch_size, self.patch_kernel // 2)
        sides = [side]
        for _ in range(1, self.num_stages):
            side = _conv_out(side, self.pool_kernel, self.q_stride, self.pool_kernel // 2)
            sides.append(side)
        return tuple(sides)


class GridPool(nn.Module):
    """Pool tokens over their grid: (..., 1 + H*W, channels), the class token first -> (..., 1 + h*w, channels)
    and (h, w). The class token passes through; `mode="conv"` is a depthwise convolution and a LayerNorm (of every
    token, the class token's too, as in the paper's code), `mode="max"` max pooling. Padding is kernel // 2, so
    h = floor((H - 1) / stride) + 1."""

    def __init__(self, channels: int, kernel: int, stride: int, mode: str = "conv", eps: float = 1e-6) -> None:
        super().__init__()
        for argument, value in (("channels", channels), ("kernel", kernel), ("stride", stride)):
            check_positive(argument, value)
        if kernel % 2 == 0:
            raise ValueError(f"kernel={kernel} must be odd")
        if mode == "conv":
            self.pool = nn.Conv2d(channels, channels, kernel, stride, padding=kernel // 2, groups=channels, bias=False)
            self.norm = LayerNorm(channels, eps)
        elif mode == "max":
            self.pool, self.norm = nn.MaxPool2d(kernel, stride, padding=kernel // 2), None
        else:
            raise ValueError(f"mode={mode!r}; expected 'conv' or 'max'")

    def forward(self, x: Tensor, resolution: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        height, width = resolution
        if x.shape[-2] != 1 + height * width:
            raise ValueError(f"{x.shape[-2]} tokens are not a class token and a {height}x{width} grid")
        leading, channels = x.shape[:-2], x.shape[-1]
        grid = rearrange(x[..., 1:, :].reshape(-1, height * width, channels), "n (h w) c -> n c h w", h=height)
        grid = self.pool(grid)  # (N, channels, h, w), N = the leading axes flattened
        tokens = rearrange(grid, "n c h w -> n (h w) c").reshape(*leading, -1, channels)
        out = torch.cat([x[..., :1, :], tokens], dim=-2)  # (..., 1 + h*w, channels)
        return (self.norm(out) if self.norm is not None else out), (grid.shape[2], grid.shape[3])


class PoolingAttention(nn.Module):
    """Multi-head pooling attention: (B, 1 + H*W, dim) tokens, class token first -> (B, 1 + h*w, dim) and (h, w).
    Queries are pooled by `q_stride` per side (that sets h, w), keys and values by `kv_stride`, each head alone
    (one pooling module per q, k, v, shared by the heads). Strides of 1 leave the tokens unpooled."""

    def __init__(self, dim: int, heads: int, *, q_stride: int = 1, kv_stride: int = 1, kernel: int = 3,
                 mode: str = "conv", qkv_bias: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        for argument, value in (("dim", dim), ("heads", heads), ("q_stride", q_stride), ("kv_stride", kv_stride)):
            check_positive(argument, value)
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads, head_dim = heads, dim // heads
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_out = nn.Linear(dim, dim)
        self.pool_q = GridPool(head_dim, kernel, q_stride, mode, eps) if q_stride > 1 else None
        self.pool_k = GridPool(head_dim, kernel, kv_stride, mode, eps) if kv_stride > 1 else None
        self.pool_v = GridPool(head_dim, kernel, kv_stride, mode, eps) if kv_stride > 1 else None

    def forward(self, x: Tensor, resolution: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        pooled = []
        for proj, pool in ((self.to_q, self.pool_q), (self.to_k, self.pool_k), (self.to_v, self.pool_v)):
            tokens = rearrange(proj(x), "b l (h d) -> b h l d", h=self.heads)
            pooled.append(pool(tokens, resolution) if pool is not None else (tokens, resolution))
        (q, q_resolution), (k, _), (v, _) = pooled
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, 1 + h*w, head_dim)
        return self.to_out(rearrange(out, "b h l d -> b l (h d)")), q_resolution


class MViTBlock(nn.Module):
    """Pre-norm block: pool(x) + pooling attention(norm(x)), then x + MLP(norm(x)). When `dim_out` differs from
    `dim` the MLP widens the tokens and the residual goes through a linear layer of the normalised tokens (the
    paper's code does the same)."""

    def __init__(self, dim: int, dim_out: int, heads: int, *, q_stride: int = 1, kv_stride: int = 1,
                 kernel: int = 3, mode: str = "conv", mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 eps: float = 1e-6) -> None:
        super().__init__()
        check_positive("dim_out", dim_out)
        self.attn_norm = LayerNorm(dim, eps)
        self.attn = PoolingAttention(dim, heads, q_stride=q_stride, kv_stride=kv_stride, kernel=kernel, mode=mode,
                                     qkv_bias=qkv_bias, eps=eps)
        self.pool_skip = GridPool(dim, kernel, q_stride, "max") if q_stride > 1 else None
        self.ffn_norm = LayerNorm(dim, eps)
        self.ffn = MLP(dim, int(dim * mlp_ratio), activation="gelu")
        if dim_out != dim:
            self.ffn.fc_out = nn.Linear(self.ffn.fc_in.out_features, dim_out)  # the MLP widens the tokens
        self.proj = nn.Linear(dim, dim_out) if dim_out != dim else None

    def forward(self, x: Tensor, resolution: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """(B, 1 + H*W, dim) -> (B, 1 + h*w, dim_out) and (h, w)."""
        out, new_resolution = self.attn(self.attn_norm(x), resolution)
        x = (self.pool_skip(x, resolution)[0] if self.pool_skip is not None else x) + out
        h = self.ffn_norm(x)
        return (self.proj(h) if self.proj is not None else x) + self.ffn(h), new_resolution


class MViT(nn.Module):
    """images (B, channels, image_size, image_size) -> logits (B, num_classes), or the class token's features
    (B, dims[-1]) when num_classes=0."""

    def __init__(self, config: MViTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embed = nn.Conv2d(c.channels, c.dims[0], c.patch_kernel, c.patch_size, padding=c.patch_kernel // 2)
        self.cls_token = nn.Parameter(torch.zeros(c.dims[0]))
        self.pos_embedding = nn.Parameter(torch.zeros(1 + c.grids[0] ** 2, c.dims[0]))
        blocks = []
        for stage, depth in enumerate(c.depths):
            for j in range(depth):
                widen = j == depth - 1 and stage < c.num_stages - 1  # the last block of a stage widens the tokens
                blocks.append(MViTBlock(
                    c.dims[stage], c.dims[stage + 1] if widen else c.dims[stage], c.heads[stage],
                    q_stride=c.q_stride if stage > 0 and j == 0 else 1, kv_stride=c.kv_strides[stage],
                    kernel=c.pool_kernel, mode=c.pool_mode, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias,
                    eps=c.norm_eps))
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = LayerNorm(c.dims[-1], c.norm_eps)
        self.head = nn.Linear(c.dims[-1], c.num_classes) if c.num_classes > 0 else None
        init_vit(self, self.cls_token, self.pos_embedding)

    def features(self, images: Tensor) -> Tensor:
        """All tokens of the last stage after the final norm: (B, 1 + h*w, dims[-1]), the class token first."""
        _check_square_images(images, self.config.channels, self.config.image_size)
        grid = self.patch_embed(images)  # (B, dims[0], H/patch, W/patch)
        resolution = (grid.shape[2], grid.shape[3])
        x = rearrange(grid, "b c h w -> b (h w) c")
        x = torch.cat([repeat(self.cls_token, "c -> b 1 c", b=x.shape[0]), x], dim=1) + self.pos_embedding
        for block in self.blocks:
            x, resolution = block(x, resolution)
        return self.final_norm(x)

    def forward(self, images: Tensor) -> Tensor:
        cls = self.features(images)[:, 0]
        return self.head(cls) if self.head is not None else cls


# ==============================================================================================
# PiT ("Rethinking Spatial Dimensions of Vision Transformers").
#
# A ViT whose token grid shrinks and whose width grows from stage to stage, as a CNN's feature maps do. Within a
# stage the blocks are the plain ViT block on the class token and the grid's tokens. Between stages a pooling
# layer puts the tokens back on their grid and applies a strided convolution with kernel stride + 1 whose groups
# are the input channels: each input channel makes dims[s+1] / dims[s] output channels from its own map alone
# (depthwise, with a channel multiplier). The class token, which has no grid, goes through a linear layer to the
# new width.


@dataclass
class PiTConfig:
    """PiT's stages for square images. The defaults are PiT-S (base width 48 per head) for 224 px images."""

    image_size: int = 224
    channels: int = 3
    patch_size: int = 16  # kernel of the patch-embedding convolution
    patch_stride: int = 8  # its stride: PiT's patches overlap
    depths: tuple[int, ...] = (2, 6, 4)
    dims: tuple[int, ...] = (144, 288, 576)  # each a multiple of the one before
    heads: tuple[int, ...] = (3, 6, 12)
    pool_stride: int = 2  # every pooling layer shrinks the grid this much per side
    mlp_ratio: float = 4.0
    num_classes: int = 1000  # 0: no head, the model returns the class token's features

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "patch_size", "patch_stride", "pool_stride"):
            check_positive(name, getattr(self, name))
        _check_stages(self, ("depths", "dims", "heads"), "dims")
        for stage in range(1, len(self.dims)):
            if self.dims[stage] % self.dims[stage - 1]:
                raise ValueError(f"dims[{stage}]={self.dims[stage]} is not a multiple of dims[{stage - 1}]="
                                 f"{self.dims[stage - 1]} (each input channel of the pooling makes whole outputs)")
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size={self.image_size} is smaller than patch_size={self.patch_size}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio={self.mlp_ratio!r} must be positive")
        check_num_classes(self.num_classes)

    @property
    def grids(self) -> tuple[int, ...]:
        """Side of the token grid in each stage."""
        side = _conv_out(self.image_size, self.patch_size, self.patch_stride, 0)
        sides = [side]
        for _ in range(1, len(self.depths)):
            side = _conv_out(side, self.pool_stride + 1, self.pool_stride, self.pool_stride // 2)
            sides.append(side)
        return tuple(sides)


class PiTPooling(nn.Module):
    """Between two PiT stages: grid tokens (B, H*W, dim) -> (B, h*w, dim_out) by a grouped strided convolution on
    their H x W map (kernel stride + 1, padding stride // 2, groups=dim), class token (B, 1, dim) -> (B, 1,
    dim_out) by a linear layer."""

    def __init__(self, dim: int, dim_out: int, stride: int = 2) -> None:
        super().__init__()
        for argument, value in (("dim", dim), ("dim_out", dim_out), ("stride", stride)):
            check_positive(argument, value)
        if dim_out % dim:
            raise ValueError(f"dim_out={dim_out} is not a multiple of dim={dim}")
        self.conv = nn.Conv2d(dim, dim_out, kernel_size=stride + 1, stride=stride, padding=stride // 2, groups=dim)
        self.cls = nn.Linear(dim, dim_out)

    def forward(self, tokens: Tensor, cls: Tensor, resolution: tuple[int, int]) -> tuple[Tensor, Tensor, tuple[int, int]]:
        height, width = resolution
        grid = self.conv(rearrange(tokens, "b (h w) c -> b c h w", h=height, w=width))  # (B, dim_out, h, w)
        return rearrange(grid, "b c h w -> b (h w) c"), self.cls(cls), (grid.shape[2], grid.shape[3])


class PiT(nn.Module):
    """images (B, channels, image_size, image_size) -> logits (B, num_classes), or the class token's features
    (B, dims[-1]) when num_classes=0."""

    def __init__(self, config: PiTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embed = nn.Conv2d(c.channels, c.dims[0], kernel_size=c.patch_size, stride=c.patch_stride)
        self.pos_embedding = nn.Parameter(torch.zeros(c.grids[0] ** 2, c.dims[0]))  # the grid's; not the class token's
        self.cls_token = nn.Parameter(torch.zeros(c.dims[0]))
        self.stages = nn.ModuleList(
            nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio=c.mlp_ratio) for _ in range(depth))
            for depth, dim, heads in zip(c.depths, c.dims, c.heads)
        )
        self.pools = nn.ModuleList(PiTPooling(c.dims[s], c.dims[s + 1], c.pool_stride) for s in range(len(c.dims) - 1))
        self.final_norm = LayerNorm(c.dims[-1])
        self.head = nn.Linear(c.dims[-1], c.num_classes) if c.num_classes > 0 else None
        init_vit(self, self.cls_token, self.pos_embedding)

    def forward(self, images: Tensor) -> Tensor:
        _check_square_images(images, self.config.channels, self.config.image_size)
        grid = self.patch_embed(images)  # (B, dims[0], h, w)
        resolution = (grid.shape[2], grid.shape[3])
        tokens = rearrange(grid, "b c h w -> b (h w) c") + self.pos_embedding
        cls = repeat(self.cls_token, "c -> b 1 c", b=tokens.shape[0])
        for stage, blocks in enumerate(self.stages):
            x = torch.cat([cls, tokens], dim=1)  # (B, 1 + h*w, dim)
            for block in blocks:
                x = block(x)
            cls, tokens = x[:, :1], x[:, 1:]
            if stage < len(self.pools):
                tokens, cls, resolution = self.pools[stage](tokens, cls, resolution)
        cls = self.final_norm(cls[:, 0])
        return self.head(cls) if self.head is not None else cls


# ==============================================================================================
# T2T-ViT ("Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet").
#
# Before a plain ViT backbone, the tokens-to-token module builds the tokens in a few rounds. A *soft split*
# cuts the map into overlapping k x k patches (nn.Unfold: kernel larger than the stride) and concatenates each
# patch's channels, so every token carries its neighbourhood; a small transformer layer mixes the tokens; they
# are put back on their grid (*re-structurization*) and split again. Each round shortens the sequence by the
# stride² and lets neighbouring tokens' contents flow into one. The last split is projected to the backbone's
# width. The paper's transformer layer narrows the tokens inside attention (values projected to token_dim), so
# its residual adds the values rather than the wider input; we do the same.


@dataclass
class T2TConfig:
    """T2T-ViT for square images. `kernels`, `strides` and `paddings` describe the soft splits; there is one
    token transformer between each two. The defaults are T2T-ViT-14 for 224 px images."""

    image_size: int = 224
    channels: int = 3
    kernels: tuple[int, ...] = (7, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2)
    paddings: tuple[int, ...] = (2, 1, 1)
    token_dim: int = 64  # width of the tokens inside the tokens-to-token module
    token_mlp_ratio: float = 1.0
    dim: int = 384  # the backbone
    depth: int = 14
    heads: int = 6
    mlp_ratio: float = 3.0
    num_classes: int = 1000  # 0: no head, the model returns the class token's features

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "token_dim", "dim", "depth", "heads"):
            check_positive(name, getattr(self, name))
        for name in ("kernels", "strides", "paddings"):
            setattr(self, name, tuple(getattr(self, name)))
        check_positive_ints("kernels", self.kernels)
        check_positive_ints("strides", self.strides)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in self.paddings):
            raise ValueError(f"paddings={self.paddings!r} must be a sequence of non-negative ints")
        if not len(self.kernels) == len(self.strides) == len(self.paddings):
            raise ValueError(f"kernels={self.kernels}, strides={self.strides} and paddings={self.paddings} must "
                             "name the same number of soft splits")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")
        for name in ("token_mlp_ratio", "mlp_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be positive")
        check_num_classes(self.num_classes)
        side = self.image_size
        for i, (kernel, stride, padding) in enumerate(zip(self.kernels, self.strides, self.paddings)):
            if side + 2 * padding < kernel:
                raise ValueError(f"image_size={self.image_size} is too small: soft split {i} sees a {side}x{side} map "
                                 f"padded by {padding}, smaller than its kernel {kernel}")
            side = _conv_out(side, kernel, stride, padding)

    @property
    def grids(self) -> tuple[int, ...]:
        """Side of the token grid after each soft split; the last is the backbone's."""
        sides, side = [], self.image_size
        for kernel, stride, padding in zip(self.kernels, self.strides, self.paddings):
            side = _conv_out(side, kernel, stride, padding)
            sides.append(side)
        return tuple(sides)


def soft_split(grid: Tensor, kernel: int, stride: int, padding: int) -> tuple[Tensor, tuple[int, int]]:
    """(B, C, H, W) map -> (B, h*w, C*kernel*kernel) tokens, one per overlapping kernel x kernel patch (row by row,
    each flattened as (channel, row, column)), and the grid (h, w)."""
    tokens = F.unfold(grid, kernel_size=kernel, stride=stride, padding=padding)  # (B, C*k*k, h*w)
    resolution = (_conv_out(grid.shape[2], kernel, stride, padding), _conv_out(grid.shape[3], kernel, stride, padding))
    return rearrange(tokens, "b c l -> b l c"), resolution


class TokenTransformer(nn.Module):
    """The T2T layer: one-head attention whose queries, keys and values are projected from `dim` down to
    `token_dim`; the values are the residual, then x + MLP(norm(x)). (B, L, dim) -> (B, L, token_dim). The
    scores are scaled by 1/√token_dim (the paper's code divides by √dim, the input width)."""

    def __init__(self, dim: int, token_dim: int, mlp_ratio: float = 1.0, eps: float = 1e-5) -> None:
        super().__init__()
        check_positive("dim", dim)
        check_positive("token_dim", token_dim)
        self.attn_norm = LayerNorm(dim, eps)
        self.to_q = nn.Linear(dim, token_dim, bias=False)
        self.to_k = nn.Linear(dim, token_dim, bias=False)
        self.to_v = nn.Linear(dim, token_dim, bias=False)
        self.to_out = nn.Linear(token_dim, token_dim)
        self.ffn_norm = LayerNorm(token_dim, eps)
        self.ffn = MLP(token_dim, max(1, int(token_dim * mlp_ratio)), activation="gelu")

    def forward(self, x: Tensor) -> Tensor:
        h = self.attn_norm(x)
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)  # (B, L, token_dim) each
        x = v + self.to_out(F.scaled_dot_product_attention(q, k, v))  # the values carry the residual
        return x + self.ffn(self.ffn_norm(x))


class T2TViT(nn.Module):
    """images (B, channels, image_size, image_size) -> logits (B, num_classes), or the class token's features
    (B, dim) when num_classes=0."""

    def __init__(self, config: T2TConfig) -> None:
        super().__init__()
        self.config = c = config
        widths = [c.channels * c.kernels[0] ** 2] + [c.token_dim * k**2 for k in c.kernels[1:]]  # token width after each split
        self.token_layers = nn.ModuleList(TokenTransformer(widths[i], c.token_dim, c.token_mlp_ratio)
                                          for i in range(len(c.kernels) - 1))
        self.project = nn.Linear(widths[-1], c.dim)
        self.cls_token = nn.Parameter(torch.zeros(c.dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1 + c.grids[-1] ** 2, c.dim))
        self.blocks = nn.ModuleList(TransformerBlock(c.dim, c.heads, mlp_ratio=c.mlp_ratio) for _ in range(c.depth))
        self.final_norm = LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes) if c.num_classes > 0 else None
        init_vit(self, self.cls_token, self.pos_embedding)

    def tokens_to_token(self, images: Tensor) -> Tensor:
        """(B, channels, H, W) -> (B, h*w, dim): soft split, [token transformer, re-structurize, soft split]..."""
        c = self.config
        x, resolution = soft_split(images, c.kernels[0], c.strides[0], c.paddings[0])
        for layer, kernel, stride, padding in zip(self.token_layers, c.kernels[1:], c.strides[1:], c.paddings[1:]):
            grid = rearrange(layer(x), "b (h w) c -> b c h w", h=resolution[0], w=resolution[1])  # re-structurize
            x, resolution = soft_split(grid, kernel, stride, padding)
        return self.project(x)

    def forward(self, images: Tensor) -> Tensor:
        _check_square_images(images, self.config.channels, self.config.image_size)
        x = self.tokens_to_token(images)
        x = torch.cat([repeat(self.cls_token, "c -> b 1 c", b=x.shape[0]), x], dim=1) + self.pos_embedding
        for block in self.blocks:
            x = block(x)
        cls = self.final_norm(x[:, 0])
        return self.head(cls) if self.head is not None else cls
