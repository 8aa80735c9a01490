"""A diffusion transformer (DiT, "Scalable Diffusion Models with Transformers"; notebook 21): a ViT over the
patches of a noisy image that predicts the noise, conditioned on the diffusion time and a class label.

Conditioning is adaLN-Zero: the time and the label become one vector c (a sinusoidal time embedding through a small
MLP, plus a learned label embedding with one extra "no label" row for classifier-free guidance). In every block a
linear map of SiLU(c) gives six vectors: a shift and a scale for the LayerNorm before attention and before the
MLP, and a gate for each branch's output. The maps start at zero, so every block starts as the identity.

Two other ways to condition, for comparison (notebook 21 measures them against adaLN-Zero):
- `conditioning="in-context"`: the time and the label are two extra tokens in the sequence, read by attention like
  any patch, and the blocks are plain pre-norm ViT blocks (DiT's "in-context conditioning");
- `long_skips=True` (U-ViT, "All are Worth Words: A ViT Backbone for Diffusion Models"): with in-context tokens,
  the output of each of the first depth // 2 blocks is concatenated to the input of its mirror block in the second
  half and projected back to `dim`, like a U-Net's skips; `depth` must then be odd (a middle block).

`DiT.from_hf` copies a `diffusers` `DiTTransformer2DModel`. Diffusers gives every block its own copy of the time and
label embedders; the DiT paper (and this file) computes c once, so the copy takes block 0's embedders and checks
that the others hold the same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from course_lib.models._common import check_images, check_patched_image_config
from course_lib.models.image_tokens import unpatchify
from course_lib.nn import MLP, MultiHeadAttention, sinusoidal_table_2d

__all__ = ["CONDITIONINGS", "DiT", "DiTBlock", "DiTConfig", "timestep_embedding"]

CONDITIONINGS = ("adaln-zero", "in-context")


@dataclass(frozen=True)
class DiTConfig:
    """Images of `channels` x `image_size`², patches of `patch_size`², `depth` blocks of width `dim`, and
    `num_classes` labels (plus the "no label" one, id `num_classes`)."""

    image_size: int = 16
    patch_size: int = 4
    channels: int = 3
    out_channels: int | None = None  # default: channels (predict the noise)
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 12
    frequency_dim: int = 256  # width of the sinusoidal time features before the time MLP
    conditioning: str = "adaln-zero"  # or "in-context": time and label as two extra tokens
    long_skips: bool = False  # U-ViT's skips from the first half of the blocks to the second (in-context only)

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning={self.conditioning!r}; expected one of {CONDITIONINGS}")
        if self.long_skips and (self.conditioning != "in-context" or self.depth % 2 == 0):
            raise ValueError(f"long_skips=True is U-ViT's design: it needs conditioning='in-context' and an odd depth "
                             f"(a middle block); got {self.conditioning!r} and depth={self.depth}")
        check_patched_image_config(self, "image_size", "patch_size", "channels", "dim", "depth", "heads", "num_classes",
                                   "frequency_dim")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def timestep_embedding(t: Tensor, dim: int, *, base: float = 10000.0) -> Tensor:
    """(B,) times -> (B, dim) features [cos(t·ω_i), sin(t·ω_i)], ω_i = base^(-i / (dim/2 - 1)) for i < dim/2."""
    half = dim // 2
    frequencies = torch.exp(-math.log(base) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def init_weights(model: nn.Module, zero_start: list[nn.Linear | None]) -> None:
    """Xavier-uniform weights and zero biases for every linear layer of `model`, then zeros for `zero_start` (the
    adaLN-Zero modulations and the output layer)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    for layer in (layer for layer in zero_start if layer is not None):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (B, N, dim) normalised, then scaled by (1 + scale) and shifted, per example: adaptive LayerNorm."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """x + gate_a · attention(adaLN(x)), then x + gate_m · MLP(adaLN(x)), the six vectors from SiLU(c). Without
    `adaptive` (in-context conditioning), a plain pre-norm block: LayerNorms with their own scale and shift, no
    gates, and `condition` unused."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, *, adaptive: bool = True,
                 mlp_norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=not adaptive)
        self.attn = MultiHeadAttention(dim, heads)
        self.mlp_norm = nn.LayerNorm(dim, eps=mlp_norm_eps, elementwise_affine=not adaptive)
        self.mlp = MLP(dim, int(dim * mlp_ratio), activation="gelu_tanh")
        self.modulation = nn.Linear(dim, 6 * dim) if adaptive else None  # adaLN-Zero: starts at zero

    def forward(self, x: Tensor, condition: Tensor | None) -> Tensor:
        if self.modulation is None:
            x = x + self.attn(self.attn_norm(x))
            return x + self.mlp(self.mlp_norm(x))
        vectors = self.modulations(condition)
        return self.after_attention(x, self.attn(self.attention_input(x, vectors)), vectors)

    def modulations(self, condition: Tensor) -> tuple[Tensor, ...]:
        """adaLN-Zero's six (B, dim) vectors: shift, scale, gate before and after attention, then for the MLP."""
        return self.modulation(F.silu(condition)).chunk(6, dim=-1)

    def attention_input(self, x: Tensor, vectors: tuple[Tensor, ...]) -> Tensor:
        """What attention reads: x normalised, scaled and shifted."""
        shift, scale = vectors[0], vectors[1]
        return modulate(self.attn_norm(x), shift, scale)

    def after_attention(self, x: Tensor, attended: Tensor, vectors: tuple[Tensor, ...]) -> Tensor:
        """The gated attention output added to x, then the gated MLP branch."""
        gate_a, shift_m, scale_m, gate_m = vectors[2:]
        x = x + gate_a[:, None] * attended
        return x + gate_m[:, None] * self.mlp(modulate(self.mlp_norm(x), shift_m, scale_m))


class DiT(nn.Module):
    """(noisy images (B, C, H, W), times (B,), labels (B,)) -> (B, out_channels, H, W)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embed = nn.Conv2d(c.channels, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.register_buffer("positions", sinusoidal_table_2d(c.grid, c.grid, c.dim), persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(c.frequency_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.label_embed = nn.Embedding(c.num_classes + 1, c.dim)  # the last row: "no label"
        adaptive = c.conditioning == "adaln-zero"
        self.blocks = nn.ModuleList(DiTBlock(c.dim, c.heads, c.mlp_ratio, adaptive=adaptive) for _ in range(c.depth))
        # U-ViT: block depth - 1 - i reads block i's output too, through a projection of the concatenation
        self.skip_projections = nn.ModuleList(nn.Linear(2 * c.dim, c.dim) for _ in range(c.depth // 2)) \
            if c.long_skips else None
        self.final_norm = nn.LayerNorm(c.dim, eps=1e-6, elementwise_affine=not adaptive)
        self.final_modulation = nn.Linear(c.dim, 2 * c.dim) if adaptive else None
        self.to_patches = nn.Linear(c.dim, c.patch_size ** 2 * (c.out_channels or c.channels))
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's: Xavier-uniform linear layers, the label table at std 0.02, and adaLN-Zero: every modulation and
        the output layer start at zero, so the untrained model predicts zero."""
        init_weights(self, [*(block.modulation for block in self.blocks), self.final_modulation, self.to_patches])
        nn.init.normal_(self.label_embed.weight, std=0.02)

    def embed(self, times: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(B, dim) each: the time (sinusoidal features through the time MLP) and the label, embedded."""
        return self.time_mlp(timestep_embedding(times, self.config.frequency_dim)), self.label_embed(labels)

    def condition(self, times: Tensor, labels: Tensor) -> Tensor:
        """(B, dim) conditioning vector c of adaLN-Zero: the embedded time plus the embedded label."""
        time, label = self.embed(times, labels)
        return time + label

    def _check(self, images: Tensor, times: Tensor, labels: Tensor) -> None:
        c = self.config
        if check_images(images, c.channels) != (c.image_size, c.image_size):
            raise ValueError(f"images are {tuple(images.shape[-2:])}; this model reads image_size={c.image_size} squares")
        for name, value in (("times", times), ("labels", labels)):
            if not isinstance(value, Tensor) or value.shape != images.shape[:1]:
                raise ValueError(f"{name} must be a ({len(images)},) tensor, one per image; got shape "
                                 f"{tuple(getattr(value, 'shape', ()))}")
        if labels.is_floating_point() or labels.min() < 0 or labels.max() > c.num_classes:
            raise ValueError(f"labels must be integer ids in [0, num_classes={c.num_classes}] ({c.num_classes}: no "
                             f"label); got {labels.dtype} in [{labels.min().item()}, {labels.max().item()}]")

    def forward(self, images: Tensor, times: Tensor, labels: Tensor) -> Tensor:
        self._check(images, times, labels)
        c = self.config
        x = rearrange(self.patch_embed(images), "b d h w -> b (h w) d") + self.positions
        if self.final_modulation is not None:  # adaLN-Zero
            condition = self.condition(times, labels)
            for block in self.blocks:
                x = block(x, condition)
            shift, scale = self.final_modulation(F.silu(condition)).chunk(2, dim=-1)
            x = modulate(self.final_norm(x), shift, scale)
        else:  # in-context: two more tokens, dropped after the last block
            time, label = self.embed(times, labels)
            x = torch.cat([time[:, None], label[:, None], x], dim=1)
            x = self.final_norm(self._in_context_blocks(x))[:, 2:]
        return unpatchify(self.to_patches(x), c.patch_size, (c.grid, c.grid))

    def _in_context_blocks(self, x: Tensor) -> Tensor:
        """The blocks in order; with U-ViT's long skips, the first half's outputs are fed to the second half."""
        skips = []
        for i, block in enumerate(self.blocks):
            mirror = len(self.blocks) - 1 - i
            if self.skip_projections is not None and i > mirror:
                x = self.skip_projections[mirror](torch.cat([x, skips.pop()], dim=-1))
            x = block(x, None)
            if self.skip_projections is not None and i < mirror:
                skips.append(x)
        return x

    @classmethod
    def from_hf(cls, reference: nn.Module) -> DiT:
        """Our DiT with the weights of a `diffusers` `DiTTransformer2DModel` (norm_type 'ada_norm_zero')."""
        h = reference.config
        if getattr(h, "norm_type", None) != "ada_norm_zero":
            raise ValueError(f"norm_type={h.norm_type!r}; only DiT's 'ada_norm_zero' has an equivalent here")
        config = DiTConfig(image_size=h.sample_size, patch_size=h.patch_size, channels=h.in_channels,
                           out_channels=h.out_channels, dim=h.num_attention_heads * h.attention_head_dim,
                           depth=h.num_layers, heads=h.num_attention_heads, num_classes=h.num_embeds_ada_norm)
        model = cls(config)
        theirs = reference.state_dict()
        embedder = "transformer_blocks.0.norm1.emb."
        for i in range(1, h.num_layers):  # one shared c here: the copies must agree
            for key in [k for k in theirs if k.startswith(embedder)]:
                other = key.replace("blocks.0.", f"blocks.{i}.")
                if not torch.equal(theirs[key], theirs[other]):
                    raise ValueError(f"{other} differs from {key}: this DiT computes one conditioning vector for "
                                     f"every block, so the reference's per-block embedders must hold equal weights")
        ours = {"patch_embed.weight": theirs["pos_embed.proj.weight"], "patch_embed.bias": theirs["pos_embed.proj.bias"],
                "time_mlp.0.weight": theirs[embedder + "timestep_embedder.linear_1.weight"],
                "time_mlp.0.bias": theirs[embedder + "timestep_embedder.linear_1.bias"],
                "time_mlp.2.weight": theirs[embedder + "timestep_embedder.linear_2.weight"],
                "time_mlp.2.bias": theirs[embedder + "timestep_embedder.linear_2.bias"],
                "label_embed.weight": theirs[embedder + "class_embedder.embedding_table.weight"],
                "final_modulation.weight": theirs["proj_out_1.weight"], "final_modulation.bias": theirs["proj_out_1.bias"],
                "to_patches.weight": theirs["proj_out_2.weight"], "to_patches.bias": theirs["proj_out_2.bias"]}
        for i in range(h.num_layers):
            old, new = f"transformer_blocks.{i}.", f"blocks.{i}."
            for theirs_name, our_name in (("norm1.linear", "modulation"), ("attn1.to_q", "attn.to_q"),
                                          ("attn1.to_k", "attn.to_k"), ("attn1.to_v", "attn.to_v"),
                                          ("attn1.to_out.0", "attn.to_out"), ("ff.net.0.proj", "mlp.fc_in"),
                                          ("ff.net.2", "mlp.fc_out")):
                for part in ("weight", "bias"):
                    ours[f"{new}{our_name}.{part}"] = theirs[f"{old}{theirs_name}.{part}"]
        model.load_state_dict(ours)
        model.positions.copy_(reference.pos_embed.pos_embed.reshape(model.positions.shape))
        return model
