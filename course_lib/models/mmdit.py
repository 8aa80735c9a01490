"""A text-to-image diffusion transformer with joint attention (MM-DiT, "Scaling Rectified Flow Transformers for
High-Resolution Image Synthesis"; notebook 21).

The caption is not squeezed into one conditioning vector: its tokens form a second stream beside the image
patches. Every block keeps two sets of weights, one per stream (their own adaLN-Zero modulations, query, key and
value projections, output projections and MLPs), but runs a single attention over the two sequences concatenated,
so every patch reads every word and every word reads every patch (`joint_attention`). The conditioning vector c
that modulates both streams is the time embedding plus a pooled summary of the caption.

`JointBlock` equals `diffusers`' `JointTransformerBlock` (Stable Diffusion 3's block) given the same weights
(`JointBlock.from_hf`); the last SD3 block, which stops updating the text stream, is left out here: every block
updates both and the text stream's output is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from course_lib.data.captions import VOCAB
from course_lib.models._common import check_images, check_patched_image_config
from course_lib.models.dit import DiTBlock, init_weights, modulate, timestep_embedding
from course_lib.models.image_tokens import unpatchify
from course_lib.nn import MultiHeadAttention, scaled_dot_product_attention, sinusoidal_table_2d

__all__ = ["JointBlock", "MMDiT", "MMDiTConfig", "joint_attention"]


@dataclass(frozen=True)
class MMDiTConfig:
    """Images of `channels` x `image_size`², patches of `patch_size`², captions of `text_length` token ids below
    `vocab_size` (the shapes world's caption vocabulary by default), `depth` joint blocks of width `dim`."""

    image_size: int = 16
    patch_size: int = 4
    channels: int = 3
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    vocab_size: int = len(VOCAB)
    text_length: int = 16
    frequency_dim: int = 256

    def __post_init__(self) -> None:
        check_patched_image_config(self, "image_size", "patch_size", "channels", "dim", "depth", "heads", "vocab_size",
                                   "text_length", "frequency_dim")


def joint_attention(image: Tensor, text: Tensor, image_attn: MultiHeadAttention,
                    text_attn: MultiHeadAttention) -> tuple[Tensor, Tensor]:
    """One attention over the image tokens (B, N, dim) and the text tokens (B, M, dim) concatenated, each stream
    projected by its own weights; returns the two streams' outputs, (B, N, dim) and (B, M, dim)."""
    heads = image_attn.heads

    def project(layer: nn.Linear, x: Tensor) -> Tensor:
        return rearrange(layer(x), "b l (h d) -> b h l d", h=heads)

    q, k, v = (torch.cat([project(getattr(image_attn, name), image), project(getattr(text_attn, name), text)], dim=2)
               for name in ("to_q", "to_k", "to_v"))
    out = rearrange(scaled_dot_product_attention(q, k, v, impl=image_attn.impl), "b h l d -> b l (h d)")
    return image_attn.to_out(out[:, : image.shape[1]]), text_attn.to_out(out[:, image.shape[1]:])


class JointBlock(nn.Module):
    """Two adaLN-Zero DiT blocks, one per stream, whose attentions are one joint attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.image = DiTBlock(dim, heads, mlp_ratio, mlp_norm_eps=1e-6)
        self.text = DiTBlock(dim, heads, mlp_ratio, mlp_norm_eps=1e-6)

    def forward(self, image: Tensor, text: Tensor, condition: Tensor) -> tuple[Tensor, Tensor]:
        image_vectors, text_vectors = self.image.modulations(condition), self.text.modulations(condition)
        attended_image, attended_text = joint_attention(self.image.attention_input(image, image_vectors),
                                                        self.text.attention_input(text, text_vectors),
                                                        self.image.attn, self.text.attn)
        return (self.image.after_attention(image, attended_image, image_vectors),
                self.text.after_attention(text, attended_text, text_vectors))

    @classmethod
    def from_hf(cls, reference: nn.Module) -> JointBlock:
        """Our block with the weights of a `diffusers` `JointTransformerBlock` (context_pre_only=False, no qk-norm,
        no dual attention)."""
        if reference.context_pre_only or reference.use_dual_attention or reference.attn.norm_q is not None:
            raise ValueError("only a JointTransformerBlock with context_pre_only=False, use_dual_attention=False and "
                             "qk_norm=None has an equivalent here")
        attn = reference.attn
        block = cls(attn.inner_dim, attn.heads, reference.ff.net[2].in_features / attn.inner_dim)
        pairs = {"image.modulation": "norm1.linear", "text.modulation": "norm1_context.linear",
                 "image.attn.to_q": "attn.to_q", "image.attn.to_k": "attn.to_k", "image.attn.to_v": "attn.to_v",
                 "image.attn.to_out": "attn.to_out.0", "text.attn.to_q": "attn.add_q_proj",
                 "text.attn.to_k": "attn.add_k_proj", "text.attn.to_v": "attn.add_v_proj",
                 "text.attn.to_out": "attn.to_add_out", "image.mlp.fc_in": "ff.net.0.proj",
                 "image.mlp.fc_out": "ff.net.2", "text.mlp.fc_in": "ff_context.net.0.proj",
                 "text.mlp.fc_out": "ff_context.net.2"}
        theirs = reference.state_dict()
        block.load_state_dict({f"{ours}.{part}": theirs[f"{name}.{part}"] for ours, name in pairs.items()
                               for part in ("weight", "bias")})
        return block


class MMDiT(nn.Module):
    """(noisy images (B, C, H, W), times (B,), captions (B, text_length) token ids) -> (B, C, H, W)."""

    def __init__(self, config: MMDiTConfig) -> None:
        super().__init__()
        self.config = c = config
        grid = c.image_size // c.patch_size
        self.patch_embed = nn.Conv2d(c.channels, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.register_buffer("positions", sinusoidal_table_2d(grid, grid, c.dim), persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(c.frequency_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.word_embed = nn.Embedding(c.vocab_size, c.dim)
        self.word_positions = nn.Parameter(torch.zeros(c.text_length, c.dim))
        self.pool = nn.Sequential(nn.Linear(c.dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))  # caption -> c
        self.blocks = nn.ModuleList(JointBlock(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.final_norm = nn.LayerNorm(c.dim, eps=1e-6, elementwise_affine=False)
        self.final_modulation = nn.Linear(c.dim, 2 * c.dim)
        self.to_patches = nn.Linear(c.dim, c.patch_size ** 2 * c.channels)
        init_weights(self, [*(b.image.modulation for b in self.blocks), *(b.text.modulation for b in self.blocks),
                            self.final_modulation, self.to_patches])
        nn.init.normal_(self.word_embed.weight, std=0.02)
        nn.init.normal_(self.word_positions, std=0.02)

    def _check(self, images: Tensor, times: Tensor, captions: Tensor) -> None:
        c = self.config
        if check_images(images, c.channels) != (c.image_size, c.image_size):
            raise ValueError(f"images are {tuple(images.shape[-2:])}; this model reads image_size={c.image_size} squares")
        if not isinstance(times, Tensor) or times.shape != images.shape[:1]:
            raise ValueError(f"times must be a ({len(images)},) tensor, one per image; got shape "
                             f"{tuple(getattr(times, 'shape', ()))}")
        if not isinstance(captions, Tensor) or captions.shape != (len(images), c.text_length) \
                or captions.is_floating_point() or captions.min() < 0 or captions.max() >= c.vocab_size:
            raise ValueError(f"captions must be ({len(images)}, text_length={c.text_length}) integer token ids in "
                             f"[0, vocab_size={c.vocab_size}); got {getattr(captions, 'dtype', type(captions))} of "
                             f"shape {tuple(getattr(captions, 'shape', ()))}")

    def forward(self, images: Tensor, times: Tensor, captions: Tensor) -> Tensor:
        self._check(images, times, captions)
        image = rearrange(self.patch_embed(images), "b d h w -> b (h w) d") + self.positions
        text = self.word_embed(captions) + self.word_positions
        condition = self.time_mlp(timestep_embedding(times, self.config.frequency_dim)) + self.pool(text.mean(dim=1))
        for block in self.blocks:
            image, text = block(image, text, condition)
        shift, scale = self.final_modulation(F.silu(condition)).chunk(2, dim=-1)
        grid = self.config.image_size // self.config.patch_size
        return unpatchify(self.to_patches(modulate(self.final_norm(image), shift, scale)), self.config.patch_size,
                          (grid, grid))
