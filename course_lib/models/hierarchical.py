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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from course_lib.models._weights import checked_state_dict, move_module
from course_lib.nn import MLP, LayerNorm, MultiHeadAttention


def _check_positive(argument: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{argument}={value!r} must be a positive int")


def _check_images(images: Tensor, channels: int) -> None:
    if images.dim() != 4 or images.shape[1] != channels:
        raise ValueError(f"images has shape {tuple(images.shape)}; expected (batch, channels={channels}, height, width)")


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
        _check_positive("channels", self.channels)
        names = ("depths", "hidden_sizes", "heads", "patch_sizes", "strides", "sr_ratios", "mlp_ratios")
        for name in names:
            values = tuple(getattr(self, name))
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{name}={values!r} must be a non-empty sequence of positive ints")
            setattr(self, name, values)
        lengths = {name: len(getattr(self, name)) for name in names}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"every per-stage setting must name the same number of stages; got lengths {lengths}")
        for stage, (dim, heads) in enumerate(zip(self.hidden_sizes, self.heads)):
            if dim % heads:
                raise ValueError(f"stage {stage}: hidden_sizes[{stage}]={dim} is not divisible by heads[{stage}]={heads}")
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
            _check_positive(argument, value)
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
        _check_positive("ratio", ratio)
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
        _check_positive("dim", dim)
        _check_positive("hidden", hidden)
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
        _check_images(images, self.config.channels)
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
        _check_positive("channels", self.channels)
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
            _check_positive(argument, value)
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
        _check_images(images, self.config.channels)
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
