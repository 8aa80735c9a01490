"""Images as a foreign language: a patch tokenizer and a BEiT-style masked token model.

"Image as a Foreign Language: BEiT Pretraining for All Vision and Vision-Language Tasks" treats an image's
patches as words: a tokenizer turns each patch into a discrete visual token, some patches are hidden, and a
transformer predicts the hidden patches' tokens with a softmax over the vocabulary, as a masked language model
predicts words. Here the tokenizer is the simplest one there is, a k-means vector quantiser of raw pixel patches
(`ResidualQuantizer` with one level), fitted on training images only. Unlike a masked autoencoder, BEiT keeps
every position in the encoder: a hidden patch's embedding is *replaced* by one learned [MASK] embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from course_lib.data.codec import ResidualQuantizer
from course_lib.models._common import check_images, check_positive, check_tiles, init_vit
from course_lib.models.vit import PatchEmbedding, ViTBlock, ViTConfig
from course_lib.nn import LayerNorm, sinusoidal_table_2d
from course_lib.nn.masking import random_masking

__all__ = ["MaskedTokenConfig", "MaskedTokenModel", "PatchTokenizer", "masked_token_accuracy",
           "masked_token_loss", "patchify", "unpatchify"]


def patchify(images: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, N, patch*patch*C): each non-overlapping patch flattened, patches row by row."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images has shape {tuple(getattr(images, 'shape', ()))}; expected (batch, channels, height, width)")
    check_tiles(images.shape[2], images.shape[3], patch, "patch")
    return rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=patch, q=patch)


def unpatchify(patches: Tensor, patch: int, grid: tuple[int, int]) -> Tensor:
    """(B, N, patch*patch*C) -> (B, C, H, W), the inverse of `patchify` for a (rows, columns) patch grid."""
    check_positive("patch", patch)
    if patches.dim() != 3 or patches.shape[1] != grid[0] * grid[1] or patches.shape[2] % (patch * patch):
        raise ValueError(f"patches has shape {tuple(patches.shape)}; expected (batch, {grid[0] * grid[1]}, "
                         f"a multiple of patch*patch={patch * patch})")
    return rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=grid[0], p=patch, q=patch)


class PatchTokenizer:
    """A visual vocabulary: k-means on the pixel vectors of patch x patch patches; a patch's token is the index of
    its nearest codeword, and decoding pastes the codewords back."""

    def __init__(self, patch: int = 4) -> None:
        check_positive("patch", patch)
        self.patch = patch
        self.quantizer = ResidualQuantizer()

    @property
    def vocab(self) -> int:
        return self.quantizer.codebook_size

    @property
    def codebook(self) -> Tensor:
        """(vocab, patch*patch*C) codewords, in the layout of `patchify`."""
        return self.quantizer.codebooks[0]

    def fit(self, images: Tensor, vocab: int = 64, *, iterations: int = 20, seed: int = 0) -> PatchTokenizer:
        """Fit the codebook on every patch of (B, C, H, W) training images; returns self."""
        check_positive("vocab", vocab)
        points = rearrange(patchify(images, self.patch), "b n d -> (b n) d")
        self.quantizer.fit(points, levels=1, codebook_size=vocab, iterations=iterations, seed=seed)
        return self

    def encode(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N) int64 tokens, patches row by row."""
        return self.quantizer.encode(patchify(images, self.patch))[..., 0]

    def decode(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, N) tokens -> (B, C, H, W) images built from the codewords, for a (rows, columns) patch grid."""
        if not isinstance(tokens, Tensor) or tokens.dim() != 2:
            raise ValueError(f"tokens has shape {tuple(getattr(tokens, 'shape', ()))}; expected (batch, patches)")
        return unpatchify(self.quantizer.decode(tokens[..., None]), self.patch, grid)


@dataclass
class MaskedTokenConfig:
    image_size: int = 32
    patch_size: int = 4
    channels: int = 3
    vocab: int = 64  # visual tokens the head chooses from
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    mask_ratio: float = 0.4  # BEiT hides about 40% of the patches

    def __post_init__(self) -> None:
        for name in ("vocab", "dim", "depth", "heads", "image_size", "patch_size", "channels"):
            check_positive(name, getattr(self, name))
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio!r} must lie in (0, 1)")
        if self.dim % 4:
            raise ValueError(f"dim={self.dim} must be divisible by 4 for the 2D sine-cosine positions")

    def vit(self) -> ViTConfig:
        """The ViT blocks' config (no class token, no head)."""
        return ViTConfig(image_size=self.image_size, patch_size=self.patch_size, channels=self.channels, dim=self.dim,
                         depth=self.depth, heads=self.heads, mlp_ratio=self.mlp_ratio, num_classes=0, pool="mean",
                         positional="sincos2d")


class MaskedTokenModel(nn.Module):
    """images (B, C, H, W), mask (B, N) bool (True = hidden) -> (token logits (B, N, vocab), mask).

    Without a mask (training through `fit`), each image hides its own random `mask_ratio` of the patches, drawn
    from the model's `generator`, so a seed gives the same masks. The loss reads the mask from the output."""

    def __init__(self, config: MaskedTokenConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = c = config
        vit = c.vit()
        self.grid = vit.grid
        self.patch_embed = PatchEmbedding(c.patch_size, c.channels, c.dim)
        self.mask_token = nn.Parameter(torch.zeros(c.dim))
        self.register_buffer("positions", sinusoidal_table_2d(*self.grid, c.dim), persistent=False)
        self.blocks = nn.ModuleList(ViTBlock(vit) for _ in range(c.depth))
        self.norm = LayerNorm(c.dim, eps=vit.norm_eps)
        self.head = nn.Linear(c.dim, c.vocab)
        self.generator = torch.Generator().manual_seed(seed)
        init_vit(self, self.mask_token)

    def embed(self, images: Tensor, mask: Tensor) -> Tensor:
        """(B, C, H, W), (B, N) -> (B, N, dim): patch embeddings, hidden ones replaced by [MASK], plus positions."""
        tokens = self.patch_embed(images)  # (B, N, dim)
        tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        return tokens + self.positions

    def forward(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        c = self.config
        check_images(images, c.channels)
        if images.shape[2:] != (c.image_size, c.image_size):
            raise ValueError(f"images has shape {tuple(images.shape)}; expected {c.image_size}x{c.image_size} pixels")
        n = self.grid[0] * self.grid[1]
        if mask is None:
            mask = random_masking(len(images), n, c.mask_ratio, generator=self.generator, device=images.device)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (len(images), n):
            raise ValueError(f"mask must be a ({len(images)}, {n}) bool tensor; got "
                             f"{getattr(mask, 'dtype', type(mask))} of shape {tuple(getattr(mask, 'shape', ()))}")
        x = self.embed(images, mask)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)), mask  # (B, N, vocab), (B, N)


def masked_token_loss(output: tuple[Tensor, Tensor], tokens: Tensor) -> Tensor:
    """Cross-entropy of the true (B, N) tokens at the hidden positions only, averaged over them."""
    logits, mask = output
    if tokens.shape != mask.shape:
        raise ValueError(f"tokens has shape {tuple(tokens.shape)}; expected the mask's {tuple(mask.shape)}")
    return F.cross_entropy(logits[mask], tokens[mask])


@torch.no_grad()
def masked_token_accuracy(model: MaskedTokenModel, images: Tensor, tokens: Tensor, mask: Tensor,
                          *, batch: int = 500) -> float:
    """Fraction of the hidden positions whose highest logit is the true token, `batch` images at a time."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hits = 0
    for start in range(0, len(images), batch):
        part = slice(start, start + batch)
        logits, m = model(images[part].to(device), mask[part].to(device))
        hits += (logits.argmax(-1).cpu() == tokens[part])[m.cpu()].sum().item()
    model.train(was_training)
    return hits / mask.sum().item()
