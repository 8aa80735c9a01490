"""The Vision Transformer (ViT): an image cut into patches, each patch a token, a transformer encoder on top.

Config: class-token or mean pooling, learned or fixed 2D sine-cosine positions, and two choices from
"Scaling Vision Transformers to 22 Billion Parameters": LayerNorm on queries and keys (`qk_norm`) and
attention in parallel with the MLP (`parallel_blocks`). Learned positions are resized by bicubic
interpolation for another input resolution. `ViT.from_hf` copies the weights of a Hugging Face
`ViTModel` or `ViTForImageClassification` through an explicit key map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from course_lib.models._common import check_num_classes, init_vit
from course_lib.models._weights import checked_state_dict, move_module
from course_lib.nn import MLP, LayerNorm, scaled_dot_product_attention, sinusoidal_table_2d


@dataclass
class ViTConfig:
    image_size: int = 32  # square images, image_size x image_size pixels
    patch_size: int = 4
    channels: int = 3
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None  # default: int(mlp_ratio * dim)
    num_classes: int = 10  # 0: no head, the model returns pooled features
    pool: Literal["cls", "mean"] = "cls"  # "cls": a class token is prepended and read out; "mean": no class token
    positional: Literal["learned", "sincos2d"] = "learned"
    qk_norm: bool = False  # LayerNorm on each head's queries and keys (ViT-22B)
    parallel_blocks: bool = False  # x + attention(norm(x)) + mlp(norm(x)), one norm per block (ViT-22B)
    norm_eps: float = 1e-6
    dropout: float = 0.0
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "channels", "dim", "depth", "heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        if self.dim % self.heads != 0:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")
        check_num_classes(self.num_classes)
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool={self.pool!r}; expected 'cls' or 'mean'")
        if self.positional not in ("learned", "sincos2d"):
            raise ValueError(f"positional={self.positional!r}; expected 'learned' or 'sincos2d'")
        if self.positional == "sincos2d" and self.dim % 4 != 0:
            raise ValueError(f"dim={self.dim} must be divisible by 4 for positional='sincos2d'")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps={self.norm_eps!r} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must lie in [0, 1)")
        if self.mlp_hidden is None:
            if not self.mlp_ratio > 0:
                raise ValueError(f"mlp_ratio={self.mlp_ratio!r} must be positive")
            self.mlp_hidden = int(self.mlp_ratio * self.dim)
        if isinstance(self.mlp_hidden, bool) or not isinstance(self.mlp_hidden, int) or self.mlp_hidden < 1:
            raise ValueError(f"mlp_hidden={self.mlp_hidden!r} must be a positive int")

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per column and per row at the training resolution."""
        side = self.image_size // self.patch_size
        return side, side

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class PatchEmbedding(nn.Module):
    """(B, C, H, W) images -> (B, N, dim) tokens: a linear map of each non-overlapping patch.

    A Conv2d whose kernel and stride are the patch size is exactly "flatten each patch, apply one Linear".
    """

    def __init__(self, patch_size: int, channels: int, dim: int) -> None:
        super().__init__()
        self.patch_size, self.channels = patch_size, channels
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return rearrange(self.proj(images), "b d h w -> b (h w) d")


class ViTAttention(nn.Module):
    """Bidirectional multi-head self-attention; with `qk_norm`, each head's queries and keys are layer-normed
    (one LayerNorm over head_dim shared by the heads), which keeps the attention logits from growing."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        c = config
        self.heads, self.dropout = c.heads, c.dropout
        self.to_q = nn.Linear(c.dim, c.dim, bias=c.qkv_bias)
        self.to_k = nn.Linear(c.dim, c.dim, bias=c.qkv_bias)
        self.to_v = nn.Linear(c.dim, c.dim, bias=c.qkv_bias)
        self.q_norm = LayerNorm(c.head_dim, eps=c.norm_eps) if c.qk_norm else nn.Identity()
        self.k_norm = LayerNorm(c.head_dim, eps=c.norm_eps) if c.qk_norm else nn.Identity()
        self.to_out = nn.Linear(c.dim, c.dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T, dim) -> (B, T, dim). `mask` (True = may attend), broadcastable to (B, heads, T, T), keeps
        tokens apart, e.g. the images of a packed sequence."""
        q = self.q_norm(rearrange(self.to_q(x), "b t (h d) -> b h t d", h=self.heads))
        k = self.k_norm(rearrange(self.to_k(x), "b t (h d) -> b h t d", h=self.heads))
        v = rearrange(self.to_v(x), "b t (h d) -> b h t d", h=self.heads)
        out = scaled_dot_product_attention(q, k, v, mask, impl="fused",
                                           dropout=self.dropout if self.training else 0.0)
        return self.to_out(rearrange(out, "b h t d -> b t (h d)"))


class ViTBlock(nn.Module):
    """Pre-norm encoder block. Sequential: x + attn(norm(x)), then x + mlp(norm(x)).
    Parallel (`parallel_blocks`): x + attn(norm(x)) + mlp(norm(x)) with one norm, so both branches'
    input projections can be fused into one matrix multiply."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        c = config
        self.parallel = c.parallel_blocks
        self.attn_norm = LayerNorm(c.dim, eps=c.norm_eps)  # parallel blocks: the one norm both branches read
        self.attn = ViTAttention(c)
        self.ffn_norm = None if c.parallel_blocks else LayerNorm(c.dim, eps=c.norm_eps)
        self.ffn = MLP(c.dim, c.mlp_hidden, activation="gelu", dropout=c.dropout)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T, dim) -> (B, T, dim); `mask` goes to the attention (the MLP works per token and needs none)."""
        if self.parallel:
            h = self.attn_norm(x)
            return x + self.dropout(self.attn(h, mask)) + self.ffn(h)
        x = x + self.dropout(self.attn(self.attn_norm(x), mask))
        return x + self.ffn(self.ffn_norm(x))  # MLP applies its own dropout to its output


class ViT(nn.Module):
    """images (B, C, H, W) -> class logits (B, num_classes), or pooled features (B, dim) when num_classes=0."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embed = PatchEmbedding(c.patch_size, c.channels, c.dim)
        self.cls_token = nn.Parameter(torch.zeros(c.dim)) if c.pool == "cls" else None
        self.prefix = 1 if c.pool == "cls" else 0  # tokens before the patches
        if c.positional == "learned":
            self.pos_embedding = nn.Parameter(torch.zeros(self.prefix + c.num_patches, c.dim))
        else:  # fixed: the table of the training grid is kept; other grids get theirs on the fly
            self.pos_embedding = None
            self.register_buffer("sincos", sinusoidal_table_2d(*c.grid, c.dim), persistent=False)
        self.embed_dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(ViTBlock(c) for _ in range(c.depth))
        self.final_norm = LayerNorm(c.dim, eps=c.norm_eps)
        self.head = nn.Linear(c.dim, c.num_classes) if c.num_classes > 0 else None
        init_vit(self, self.cls_token, self.pos_embedding)

    def interpolate_positions(self, new_grid: tuple[int, int]) -> Tensor:
        """The (prefix + h*w, dim) position table for a (h, w) patch grid.

        Learned positions: the training grid resized by bicubic interpolation, the class token's
        position kept as it is; the training grid itself comes back unchanged. Sine-cosine: the
        fixed table of the new grid (nothing to interpolate).
        """
        height, width = new_grid
        if height < 1 or width < 1:
            raise ValueError(f"new_grid={tuple(new_grid)} must have positive sides")
        c = self.config
        if self.pos_embedding is None:
            same = (height, width) == c.grid
            table = (self.sincos if same else sinusoidal_table_2d(height, width, c.dim)).to(self.final_norm.weight)
            return torch.cat([table.new_zeros(self.prefix, c.dim), table])  # the class token gets no position
        if (height, width) == c.grid:
            return self.pos_embedding
        prefix, patches = self.pos_embedding[: self.prefix], self.pos_embedding[self.prefix :]
        grid = rearrange(patches, "(h w) d -> 1 d h w", h=c.grid[0])
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        return torch.cat([prefix, rearrange(grid, "1 d h w -> (h w) d")])

    def _check_images(self, images: Tensor, interpolate: bool) -> tuple[int, int]:
        """Raise on a wrong shape; return the patch grid of the images."""
        c = self.config
        if images.dim() != 4:
            raise ValueError(f"images has shape {tuple(images.shape)}; expected (batch, channels, height, width)")
        if images.shape[1] != c.channels:
            raise ValueError(f"images has {images.shape[1]} channels (shape {tuple(images.shape)}); "
                             f"expected channels={c.channels}")
        height, width = images.shape[-2:]
        if not interpolate and (height, width) != (c.image_size, c.image_size):
            raise ValueError(f"images are {height}x{width}; expected image_size={c.image_size} "
                             "(pass interpolate=True to run at another resolution)")
        if height % c.patch_size or width % c.patch_size:
            raise ValueError(f"images are {height}x{width}, not divisible by patch_size={c.patch_size}")
        return height // c.patch_size, width // c.patch_size

    def features(self, images: Tensor, *, interpolate: bool = False) -> Tensor:
        """All tokens after the final norm: (B, prefix + N, dim), the class token first when pool='cls'.

        `interpolate=True` accepts any resolution divisible by the patch size (see `interpolate_positions`).
        """
        x = self.embed(images, interpolate=interpolate)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def embed(self, images: Tensor, *, interpolate: bool = False) -> Tensor:
        """The tokens the first block reads: (B, prefix + N, dim) patches with positions, the class token first."""
        grid = self._check_images(images, interpolate)
        x = self.patch_embed(images)  # (B, N, dim)
        if self.cls_token is not None:
            x = torch.cat([repeat(self.cls_token, "d -> b 1 d", b=x.shape[0]), x], dim=1)  # (B, 1 + N, dim)
        return self.embed_dropout(x + self.interpolate_positions(grid))

    def pool(self, tokens: Tensor) -> Tensor:
        """(B, T, dim) tokens -> (B, dim): the class token, or the mean of the patch tokens."""
        return tokens[:, 0] if self.config.pool == "cls" else tokens.mean(dim=1)

    def forward(self, images: Tensor, *, interpolate: bool = False) -> Tensor:
        pooled = self.pool(self.features(images, interpolate=interpolate))
        return self.head(pooled) if self.head is not None else pooled

    @classmethod
    def from_hf(cls, reference: nn.Module) -> ViT:
        """A ViT with the weights of a Hugging Face ViTModel (built with add_pooling_layer=False) or
        ViTForImageClassification: same last hidden state, same logits."""
        classifier = getattr(reference, "classifier", None)
        if isinstance(classifier, nn.Identity):
            raise ValueError("a ViTForImageClassification with num_labels=0 has no classifier; use its .vit")
        num_classes = reference.config.num_labels if classifier is not None else 0
        model = cls(config_from_hf(reference.config, num_classes=num_classes))
        model.load_state_dict(state_dict_from_hf(reference, model), strict=True)
        return model


# ----------------------------------------------------------------------------------------------
# Weights from Hugging Face: an explicit key map, and every key and shape must line up.


def config_from_hf(hf: object, *, num_classes: int = 0) -> ViTConfig:
    """The ViTConfig of a Hugging Face ViTConfig; refuses settings this model lacks."""
    if getattr(hf, "model_type", None) != "vit":
        raise ValueError(f"model_type={getattr(hf, 'model_type', None)!r}; expected 'vit'")
    if hf.hidden_act != "gelu":
        raise ValueError(f"hidden_act={hf.hidden_act!r}; this ViT's MLP uses exact 'gelu'")
    sizes = {}
    for name in ("image_size", "patch_size"):
        value = getattr(hf, name)
        if isinstance(value, (tuple, list)):
            if len(set(value)) != 1:
                raise ValueError(f"{name}={value!r}; this ViT supports only square images and patches")
            value = value[0]
        sizes[name] = value
    head_dim = getattr(hf, "head_dim", None)
    if head_dim is not None and head_dim * hf.num_attention_heads != hf.hidden_size:
        raise ValueError(f"head_dim={head_dim}; expected hidden_size // num_attention_heads")
    if hf.hidden_dropout_prob != hf.attention_probs_dropout_prob:
        raise ValueError(f"hidden_dropout_prob={hf.hidden_dropout_prob} and attention_probs_dropout_prob="
                         f"{hf.attention_probs_dropout_prob}; this ViT has one dropout rate")
    return ViTConfig(image_size=sizes["image_size"], patch_size=sizes["patch_size"], channels=hf.num_channels,
                     dim=hf.hidden_size, depth=hf.num_hidden_layers, heads=hf.num_attention_heads,
                     mlp_hidden=hf.intermediate_size, num_classes=num_classes, pool="cls", positional="learned",
                     qk_norm=False, parallel_blocks=False, norm_eps=hf.layer_norm_eps,
                     dropout=hf.hidden_dropout_prob, qkv_bias=hf.qkv_bias)


_LAYER_NAMES = {
    "attention.q_proj": "attn.to_q", "attention.k_proj": "attn.to_k", "attention.v_proj": "attn.to_v",
    "attention.o_proj": "attn.to_out", "layernorm_before": "attn_norm", "layernorm_after": "ffn_norm",
    "mlp.fc1": "ffn.fc_in", "mlp.fc2": "ffn.fc_out",
}


def _vit_weights(theirs: dict[str, Tensor], depth: int, prefix: str) -> dict[str, Tensor]:
    """HF stores the class token and positions with a leading batch axis of 1; ours have none."""
    ours = {
        "cls_token": rearrange(theirs.pop(prefix + "embeddings.cls_token"), "1 1 d -> d"),
        "pos_embedding": rearrange(theirs.pop(prefix + "embeddings.position_embeddings"), "1 t d -> t d"),
        "patch_embed.proj.weight": theirs.pop(prefix + "embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": theirs.pop(prefix + "embeddings.patch_embeddings.projection.bias"),
        "final_norm.weight": theirs.pop(prefix + "layernorm.weight"),
        "final_norm.bias": theirs.pop(prefix + "layernorm.bias"),
    }
    for i in range(depth):
        for old, new in _LAYER_NAMES.items():  # q, k, v have no bias when qkv_bias=False
            move_module(theirs, ours, f"{prefix}layers.{i}.{old}", f"blocks.{i}.{new}")
    move_module(theirs, ours, "classifier", "head")
    return ours


def state_dict_from_hf(reference: nn.Module, model: ViT) -> dict[str, Tensor]:
    """`reference`'s weights under our names; raises if any key or shape fails to line up."""
    theirs = dict(reference.state_dict())
    if any(key.startswith("pooler.") for key in theirs):
        raise ValueError("the ViTModel has a pooler (dense + tanh) that this ViT lacks; "
                         "build it with add_pooling_layer=False")
    prefix = "vit." if any(key.startswith("vit.") for key in theirs) else ""
    ours = _vit_weights(theirs, model.config.depth, prefix)
    return checked_state_dict(theirs, ours, model)
