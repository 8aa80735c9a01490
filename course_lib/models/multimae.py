"""MultiMAE: one masked autoencoder over several modalities of the same scene.

"MultiMAE: Multi-modal Multi-task Masked Autoencoders" cuts every modality (here RGB, depth and a semantic map)
into patches, embeds each with its own linear map, adds a learned modality embedding and shared 2D positions,
and keeps only a fixed budget of visible tokens, split across the modalities at random per sample (a symmetric
Dirichlet draw). The visible tokens of all modalities go, concatenated, through ONE shared encoder; one light
decoder per modality cross-attends from its queries to the encoder tokens and rebuilds that modality. Because
the hidden patches of one modality must often be guessed from another, the model learns to predict across
modalities: given RGB alone, it predicts depth and segmentation. "4M: Massively Multimodal Masked Modeling"
scales the same idea to many modalities, all as discrete tokens.

A scene travels as one packed (B, 3 + 1 + classes, H, W) tensor (`pack_scene`), so the course's `fit` can
batch it: RGB in [0, 1], depth times `depth_scale`, the semantic map one-hot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from course_lib.models._common import check_positive, init_vit
from course_lib.models.image_tokens import patchify, unpatchify
from course_lib.models.vit import PatchEmbedding, ViTBlock, ViTConfig
from course_lib.nn import MLP, LayerNorm, MultiHeadAttention, sinusoidal_table_2d
from course_lib.nn.masking import gather_tokens, visible_indices

__all__ = ["MODALITIES", "MultiMAE", "MultiMAEConfig", "dirichlet_split", "modality_masks", "multimae_losses",
           "pack_scene"]

MODALITIES = ("rgb", "depth", "semantic")


@dataclass
class MultiMAEConfig:
    image_size: int = 32
    patch_size: int = 4
    classes: int = 5  # semantic classes (the shapes world: background + 4 shapes)
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    decoder_dim: int = 64
    decoder_depth: int = 1  # self-attention blocks after each decoder's cross-attention
    decoder_heads: int = 4
    visible: int = 64  # visible tokens per sample, all modalities together
    alpha: float = 1.0  # concentration of the symmetric Dirichlet that splits the budget
    depth_scale: float = 0.5  # depth (objects stacked) is multiplied by this before embedding
    given: tuple[str, ...] | None = None  # set: always show these modalities fully, hide the rest (no Dirichlet)

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "classes", "dim", "depth", "heads", "decoder_dim",
                     "decoder_depth", "decoder_heads", "visible"):
            check_positive(name, getattr(self, name))
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        for dim, heads in ((self.dim, "heads"), (self.decoder_dim, "decoder_heads")):
            if dim % 4 or dim % getattr(self, heads):
                raise ValueError(f"dim={dim} must be divisible by 4 and by {heads}={getattr(self, heads)}")
        if self.visible > len(MODALITIES) * self.tokens:
            raise ValueError(f"visible={self.visible} exceeds the {len(MODALITIES) * self.tokens} tokens of a scene")
        if not self.alpha > 0:
            raise ValueError(f"alpha={self.alpha!r} must be positive")
        if self.given is not None:
            self.given = tuple(self.given)
            if not self.given or any(m not in MODALITIES for m in self.given):
                raise ValueError(f"given={self.given!r} must be a non-empty tuple of modalities from {MODALITIES}")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    @property
    def tokens(self) -> int:
        """Patches per modality."""
        return self.grid[0] * self.grid[1]

    @property
    def channels(self) -> dict[str, int]:
        return {"rgb": 3, "depth": 1, "semantic": self.classes}

    def vit(self, decoder: bool = False) -> ViTConfig:
        dim, heads, depth = ((self.decoder_dim, self.decoder_heads, self.decoder_depth) if decoder
                             else (self.dim, self.heads, self.depth))
        return ViTConfig(image_size=self.image_size, patch_size=self.patch_size, dim=dim, depth=depth, heads=heads,
                         mlp_ratio=self.mlp_ratio, num_classes=0, pool="mean", positional="sincos2d")


def pack_scene(images: Tensor, depth: Tensor, semantic: Tensor, *, classes: int = 5,
               depth_scale: float = 0.5) -> Tensor:
    """RGB (B, 3, H, W) in [0, 1], depth (B, H, W) ints, semantic (B, H, W) classes -> (B, 4 + classes, H, W)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images has shape {tuple(images.shape)}; expected (batch, 3, height, width)")
    for name, value in (("depth", depth), ("semantic", semantic)):
        if value.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"{name} has shape {tuple(value.shape)}; expected {(images.shape[0], *images.shape[2:])}")
    if semantic.is_floating_point() or semantic.min() < 0 or semantic.max() >= classes:
        raise ValueError(f"semantic must hold integer classes in 0..{classes - 1}")
    one_hot = rearrange(F.one_hot(semantic.long(), classes), "b h w k -> b k h w").float()
    return torch.cat([images.float(), depth_scale * depth.float()[:, None], one_hot], dim=1)


def _split_scene(scene: Tensor, classes: int) -> dict[str, Tensor]:
    """(B, 4 + classes, H, W) -> the three modalities' (B, C, H, W) maps."""
    if scene.dim() != 4 or scene.shape[1] != 4 + classes:
        raise ValueError(f"scene has shape {tuple(scene.shape)}; expected (batch, 4 + classes={4 + classes}, "
                         "height, width), as pack_scene makes")
    return {"rgb": scene[:, :3], "depth": scene[:, 3:4], "semantic": scene[:, 4:]}


def dirichlet_split(batch: int, budget: int, tokens: int, *, modalities: int = 3, alpha: float = 1.0,
                    generator: torch.Generator | None = None) -> Tensor:
    """(batch, modalities) int64 visible-token counts: each row splits `budget` by a symmetric Dirichlet(alpha)
    draw, rounded by largest remainders so that the row sums to `budget` exactly, no count above `tokens`."""
    for name, value in (("batch", batch), ("budget", budget), ("tokens", tokens), ("modalities", modalities)):
        check_positive(name, value)
    if budget > modalities * tokens:
        raise ValueError(f"budget={budget} exceeds modalities * tokens = {modalities * tokens}")
    if not alpha > 0:
        raise ValueError(f"alpha={alpha!r} must be positive")
    seed = int(torch.randint(2**62, (1,), generator=generator))  # numpy draws the Dirichlet, seeded from torch
    shares = torch.from_numpy(np.random.default_rng(seed).dirichlet([alpha] * modalities, size=batch))
    ideal = shares * budget  # (B, M) float64
    counts = ideal.floor().long()
    left = budget - counts.sum(dim=1)  # (B,) tokens still to hand out, fewer than modalities
    order = (ideal - counts).argsort(dim=1, descending=True, stable=True)
    counts.scatter_add_(1, order, (torch.arange(modalities) < left[:, None]).long())
    for _ in range(modalities):  # move any excess over `tokens` to the modalities with room
        excess = (counts - tokens).clamp_min(0).sum(dim=1)  # (B,)
        if not excess.any():
            break
        counts = counts.clamp_max(tokens)
        room = tokens - counts
        take = torch.minimum(room.cumsum(1), excess[:, None]) - torch.minimum(room.cumsum(1) - room, excess[:, None])
        counts = counts + take
    return counts


def modality_masks(counts: Tensor, tokens: int, *, generator: torch.Generator | None = None) -> Tensor:
    """(B, M) visible counts -> (B, M, tokens) bool, True = hidden: each modality of each row shows `counts`
    tokens chosen uniformly at random."""
    noise = torch.rand(*counts.shape, tokens, generator=generator)
    ranks = noise.argsort(dim=-1).argsort(dim=-1)  # (B, M, N)
    return ranks >= counts.to(ranks.device)[..., None]


class CrossAttentionDecoder(nn.Module):
    """One modality's decoder: its queries ([MASK] everywhere except its own visible tokens, plus positions)
    cross-attend to all encoder tokens, then an MLP, then a few self-attention blocks and a linear patch head."""

    def __init__(self, config: MultiMAEConfig, out_channels: int) -> None:
        super().__init__()
        c, vit = config, config.vit(decoder=True)
        self.mask_token = nn.Parameter(torch.zeros(c.decoder_dim))
        self.query_norm = LayerNorm(c.decoder_dim, eps=vit.norm_eps)
        self.context_norm = LayerNorm(c.decoder_dim, eps=vit.norm_eps)
        self.cross = MultiHeadAttention(c.decoder_dim, c.decoder_heads)
        self.ffn_norm = LayerNorm(c.decoder_dim, eps=vit.norm_eps)
        self.ffn = MLP(c.decoder_dim, vit.mlp_hidden, activation="gelu")
        self.blocks = nn.ModuleList(ViTBlock(vit) for _ in range(c.decoder_depth))
        self.norm = LayerNorm(c.decoder_dim, eps=vit.norm_eps)
        self.head = nn.Linear(c.decoder_dim, c.patch_size**2 * out_channels)

    def forward(self, context: Tensor, own: Tensor, own_mask: Tensor, positions: Tensor) -> Tensor:
        """context (B, V, Dd) all encoder tokens; own (B, N, Dd) this modality's encoder tokens scattered to their
        positions; own_mask (B, N) True = hidden; positions (N, Dd) -> (B, N, patch*patch*out_channels)."""
        queries = torch.where(own_mask[..., None], self.mask_token.to(own.dtype), own) + positions
        x = queries + self.cross(self.query_norm(queries), context=self.context_norm(context))
        x = x + self.ffn(self.ffn_norm(x))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class MultiMAE(nn.Module):
    """scene (B, 4 + classes, H, W) -> (predictions {modality: (B, C, H, W)}, masks (B, M, N) True = hidden).

    `masks` given: those tokens are hidden; `given=("rgb",)` shows RGB fully and hides the other modalities;
    neither (training): the config's `given` if set, else a Dirichlet split of `visible` tokens per sample drawn
    from the model's `generator`. Semantic predictions are logits over classes."""

    def __init__(self, config: MultiMAEConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = c = config
        vit = c.vit()
        self.embeds = nn.ModuleDict({m: PatchEmbedding(c.patch_size, k, c.dim) for m, k in c.channels.items()})
        self.modality_embedding = nn.Parameter(torch.zeros(len(MODALITIES), c.dim))
        self.register_buffer("positions", sinusoidal_table_2d(*c.grid, c.dim), persistent=False)
        self.register_buffer("decoder_positions", sinusoidal_table_2d(*c.grid, c.decoder_dim), persistent=False)
        self.blocks = nn.ModuleList(ViTBlock(vit) for _ in range(c.depth))
        self.norm = LayerNorm(c.dim, eps=vit.norm_eps)
        self.to_decoder = nn.Linear(c.dim, c.decoder_dim)
        self.decoder_modality = nn.Parameter(torch.zeros(len(MODALITIES), c.decoder_dim))
        self.decoders = nn.ModuleDict({m: CrossAttentionDecoder(c, k) for m, k in c.channels.items()})
        self.generator = torch.Generator().manual_seed(seed)
        init_vit(self, self.modality_embedding, self.decoder_modality, *(d.mask_token for d in self.decoders.values()))

    def draw_masks(self, batch: int, given: tuple[str, ...] | None = None) -> Tensor:
        """(batch, M, N) bool masks, True = hidden: `given` modalities fully shown, or a Dirichlet split."""
        c = self.config
        if given is not None:
            if not given or any(m not in MODALITIES for m in given):
                raise ValueError(f"given={given!r} must be a non-empty tuple of modalities from {MODALITIES}")
            shown = torch.tensor([m in given for m in MODALITIES])
            return (~shown)[None, :, None].expand(batch, len(MODALITIES), c.tokens).clone()
        counts = dirichlet_split(batch, c.visible, c.tokens, alpha=c.alpha, generator=self.generator)
        return modality_masks(counts, c.tokens, generator=self.generator)

    def tokens(self, scene: Tensor) -> Tensor:
        """(B, 4 + classes, H, W) -> (B, M * N, dim): every modality's patch tokens with modality and position
        embeddings, modality-major."""
        maps = _split_scene(scene, self.config.classes)
        per = [self.embeds[m](maps[m]) + self.modality_embedding[i] + self.positions for i, m in enumerate(MODALITIES)]
        return torch.cat(per, dim=1)

    def encode(self, scene: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """The shared encoder on the visible tokens of all modalities: (B, V, dim) and their (B, V) indices into
        the modality-major (M * N) token list."""
        flat = rearrange(masks, "b m n -> b (m n)")
        index = visible_indices(flat)  # (B, V)
        x = gather_tokens(self.tokens(scene), index)  # (B, V, dim)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), index

    def forward(self, scene: Tensor, masks: Tensor | None = None, *,
                given: tuple[str, ...] | None = None) -> tuple[dict[str, Tensor], Tensor]:
        c = self.config
        maps = _split_scene(scene, c.classes)
        batch, n = len(scene), c.tokens
        if maps["rgb"].shape[2:] != (c.image_size, c.image_size):
            raise ValueError(f"scene has shape {tuple(scene.shape)}; expected {c.image_size}x{c.image_size} pixels")
        if masks is None:
            masks = self.draw_masks(batch, given if given is not None else c.given).to(scene.device)
        elif given is not None:
            raise ValueError("pass either masks or given, not both")
        if not isinstance(masks, Tensor) or masks.dtype != torch.bool or masks.shape != (batch, len(MODALITIES), n):
            raise ValueError(f"masks must be a ({batch}, {len(MODALITIES)}, {n}) bool tensor; got "
                             f"{getattr(masks, 'dtype', type(masks))} of shape {tuple(getattr(masks, 'shape', ()))}")
        encoded, index = self.encode(scene, masks)
        context = self.to_decoder(encoded)  # (B, V, Dd)
        modality = index // n  # (B, V) which modality each visible token came from
        context = context + self.decoder_modality[modality] + self.decoder_positions[index % n]
        scattered = context.new_zeros(batch, len(MODALITIES) * n, c.decoder_dim).scatter(
            1, index[..., None].expand(-1, -1, c.decoder_dim), context)  # (B, M * N, Dd), zeros where hidden
        own = rearrange(scattered, "b (m n) d -> m b n d", m=len(MODALITIES))
        predictions = {}
        for i, m in enumerate(MODALITIES):
            patches = self.decoders[m](context, own[i], masks[:, i], self.decoder_positions + self.decoder_modality[i])
            predictions[m] = unpatchify(patches, c.patch_size, c.grid)  # (B, C_m, H, W)
        return predictions, masks


def multimae_losses(output: tuple[dict[str, Tensor], Tensor], scene: Tensor, *, classes: int = 5,
                    patch: int = 4) -> dict[str, Tensor]:
    """Per-modality losses on the hidden patches only: MSE for RGB and depth (per pixel value), per-pixel
    cross-entropy for the semantic map. A modality with no hidden patch contributes zero."""
    predictions, masks = output
    maps = _split_scene(scene, classes)
    losses = {}
    for i, m in enumerate(MODALITIES):
        hidden = masks[:, i]  # (B, N)
        if not hidden.any():
            losses[m] = scene.new_zeros(())
            continue
        pred, true = patchify(predictions[m], patch), patchify(maps[m], patch)  # (B, N, p*p*C)
        if m == "semantic":
            logits = rearrange(pred[hidden], "k (pp c) -> (k pp) c", c=classes)
            labels = rearrange(true[hidden], "k (pp c) -> (k pp) c", c=classes).argmax(-1)
            losses[m] = F.cross_entropy(logits, labels)
        else:
            losses[m] = F.mse_loss(pred[hidden], true[hidden])
    return losses
