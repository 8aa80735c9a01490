"""One transformer that writes captions token by token and draws images by diffusion (Transfusion, "Transfusion:
Predict the Next Token and Diffuse Images with One Multi-Modal Model"; MonoFormer, "MonoFormer: One Transformer for
Both Diffusion and Autoregression"; notebook 22).

A sequence holds a caption's tokens and an image's patches, in either order. Text tokens are embedded from a
table; patches by one linear map, plus 2D positions and the embedding of the image's own diffusion time (an image
in the sequence may be clean, time 0, or noisy). Every block is an ordinary pre-norm transformer block under the
mixed-modal mask (`course_lib.nn.mixed_modal_mask`): causal across the sequence, bidirectional inside the image.
Two heads read the last layer: next-token logits at the text positions and the flow's velocity at the patches.

With the caption first, the model learns the caption's next tokens and to denoise the image given the caption
(text-to-image); with the image first and clean, it learns the caption given the image (captioning). One set of
weights does both; `TransfusionObjective` trains it on both orders at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.data.captions import EOT, PAD, SOT, VOCAB
from course_lib.diffusion import FLOW_TIME_SCALE, flow_pair
from course_lib.models._common import check_images, check_patched_image_config
from course_lib.models.dit import timestep_embedding
from course_lib.models.image_tokens import patchify, unpatchify
from course_lib.models.unified import caption_loss
from course_lib.nn import LayerNorm, TransformerBlock, mixed_modal_mask, sinusoidal_table_2d

__all__ = ["ORDERS", "Transfusion", "TransfusionConfig", "TransfusionObjective"]

ORDERS = ("text-first", "image-first")


@dataclass(frozen=True)
class TransfusionConfig:
    """Captions of `text_length` token ids below `vocab_size`; images of `channels` x `image_size`², patches of
    `patch_size`²; `depth` blocks of width `dim`."""

    vocab_size: int = len(VOCAB)
    text_length: int = 8
    image_size: int = 16
    patch_size: int = 4
    channels: int = 3
    dim: int = 96
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    frequency_dim: int = 256

    def __post_init__(self) -> None:
        check_patched_image_config(self, "vocab_size", "text_length", "image_size", "patch_size", "channels", "dim",
                                   "depth", "heads", "frequency_dim")

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class Transfusion(nn.Module):
    """(text (B, text_length) ids, images (B, C, H, W), times (B,), order) -> (next-token logits (B, text_length,
    vocab), velocity (B, C, H, W)). `times` is the image's diffusion time as the model sees it (1000·s; 0: clean)."""

    def __init__(self, config: TransfusionConfig) -> None:
        super().__init__()
        self.config = c = config
        grid = c.image_size // c.patch_size
        self.word_embed = nn.Embedding(c.vocab_size, c.dim)
        self.text_positions = nn.Parameter(torch.randn(c.text_length, c.dim) * 0.02)
        self.patch_embed = nn.Linear(c.patch_size ** 2 * c.channels, c.dim)
        self.register_buffer("image_positions", sinusoidal_table_2d(grid, grid, c.dim), persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(c.frequency_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.blocks = nn.ModuleList(TransformerBlock(c.dim, c.heads, mlp_ratio=c.mlp_ratio) for _ in range(c.depth))
        self.norm = LayerNorm(c.dim)
        self.to_words = nn.Linear(c.dim, c.vocab_size)
        self.to_patches = nn.Linear(c.dim, c.patch_size ** 2 * c.channels)
        nn.init.zeros_(self.to_patches.weight), nn.init.zeros_(self.to_patches.bias)  # predicts zero velocity at first

    def _check(self, text: Tensor, images: Tensor, times: Tensor, order: str) -> None:
        c = self.config
        if order not in ORDERS:
            raise ValueError(f"order={order!r}; expected one of {ORDERS}")
        if check_images(images, c.channels) != (c.image_size, c.image_size):
            raise ValueError(f"images are {tuple(images.shape[-2:])}; this model reads image_size={c.image_size} squares")
        if not isinstance(text, Tensor) or text.shape != (len(images), c.text_length) or text.is_floating_point() \
                or text.min() < 0 or text.max() >= c.vocab_size:
            raise ValueError(f"text must be ({len(images)}, text_length={c.text_length}) integer token ids in "
                             f"[0, vocab_size={c.vocab_size}); got {getattr(text, 'dtype', type(text))} of shape "
                             f"{tuple(getattr(text, 'shape', ()))}")
        if not isinstance(times, Tensor) or times.shape != images.shape[:1]:
            raise ValueError(f"times must be a ({len(images)},) tensor, one per image; got shape "
                             f"{tuple(getattr(times, 'shape', ()))}")

    def forward(self, text: Tensor, images: Tensor, times: Tensor, order: str = "text-first") -> tuple[Tensor, Tensor]:
        self._check(text, images, times, order)
        c = self.config
        words = self.word_embed(text) + self.text_positions
        patches = patchify(images, c.patch_size)
        time = self.time_mlp(timestep_embedding(times, c.frequency_dim))
        image = self.patch_embed(patches) + self.image_positions + time[:, None]
        text_segment = torch.zeros(c.text_length, dtype=torch.long, device=text.device)
        image_segment = torch.ones(c.patches, dtype=torch.long, device=text.device)
        if order == "text-first":
            x, segments = torch.cat([words, image], dim=1), torch.cat([text_segment, image_segment])
        else:
            x, segments = torch.cat([image, words], dim=1), torch.cat([image_segment, text_segment])
        mask = mixed_modal_mask(segments)
        for block in self.blocks:
            x = block(x, mask=mask)
        x = self.norm(x)
        text_out, image_out = (x[:, : c.text_length], x[:, c.text_length:]) if order == "text-first" \
            else (x[:, c.patches:], x[:, : c.patches])
        grid = c.image_size // c.patch_size
        return self.to_words(text_out), unpatchify(self.to_patches(image_out), c.patch_size, (grid, grid))

    def velocity(self, images: Tensor, times: Tensor, text: Tensor) -> Tensor:
        """The flow's velocity for noisy `images` given captions `text` (caption first): the denoiser that
        `course_lib.diffusion.sample_flow` calls for text-to-image."""
        return self(text, images, times, "text-first")[1]

    @torch.no_grad()
    def caption(self, images: Tensor) -> Tensor:
        """(B, text_length) greedy captions of clean `images` (image first), one token per forward pass."""
        text = torch.full((len(images), self.config.text_length), PAD, dtype=torch.long, device=images.device)
        text[:, 0] = SOT
        times = torch.zeros(len(images), device=images.device)
        done = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        for position in range(1, self.config.text_length):
            logits = self(text, images, times, "image-first")[0][:, position - 1]
            word = torch.where(done, torch.full_like(done, PAD, dtype=torch.long), logits.argmax(dim=-1))
            text[:, position] = word
            done |= word == EOT
        return text


class TransfusionObjective(nn.Module):
    """`model` with Transfusion's loss, for `fit`: forward({"images": x_0, "text": captions}) trains the first half
    of the batch caption-first (next-token loss on the caption, flow loss on the image noised to a uniform time; the
    caption replaced by `empty_caption` with probability `drop_caption`, for guidance) and the second half
    image-first with the image clean (next-token loss on the caption: captioning). Returns text loss +
    `image_weight` · image loss; draws come from a generator seeded with `seed`."""

    def __init__(self, model: Transfusion, empty_caption: Tensor, *, image_weight: float = 1.0,
                 drop_caption: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        if not image_weight > 0 or not 0 <= drop_caption < 1:
            raise ValueError(f"image_weight={image_weight!r} must be > 0 and drop_caption={drop_caption!r} in [0, 1)")
        self.model, self.image_weight, self.drop_caption = model, image_weight, drop_caption
        self.register_buffer("empty_caption", empty_caption.clone(), persistent=False)
        self.generator = torch.Generator().manual_seed(seed)
        self.last = {}  # the parts of the latest loss, for logging

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        if not isinstance(inputs, Mapping) or set(inputs) != {"images", "text"} or len(inputs["images"]) < 2:
            raise ValueError("inputs must be a mapping with keys 'images' and 'text' and a batch of at least 2")
        images, text = inputs["images"], inputs["text"]
        half = len(images) // 2
        generator = self.generator
        noise = torch.randn(images[:half].shape, generator=generator).to(images.device)
        s = torch.rand(half, generator=generator).to(images.device)
        dropped = (torch.rand(half, generator=generator) < self.drop_caption).to(images.device)
        prompt = torch.where(dropped[:, None], self.empty_caption, text[:half])
        noisy, target = flow_pair(images[:half], noise, s)
        words_first, velocity = self.model(prompt, noisy, s * FLOW_TIME_SCALE, "text-first")
        clean_times = torch.zeros(len(images) - half, device=images.device)
        words_second, _ = self.model(text[half:], images[half:], clean_times, "image-first")
        text_loss = (caption_loss(words_first, prompt, PAD) + caption_loss(words_second, text[half:], PAD)) / 2
        image_loss = F.mse_loss(velocity, target)
        self.last = {"text": text_loss.item(), "image": image_loss.item()}
        return text_loss + self.image_weight * image_loss
