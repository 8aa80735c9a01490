"""Masked autoencoders: a ViT encoder that sees only the visible patches, and its hybrid conv-transformer cousin.

"Masked Autoencoders Are Scalable Vision Learners": hide most patches at random (75%), run the encoder on the
visible quarter only, then a light decoder puts a learned mask token at every hidden position and reconstructs
the hidden patches' pixels; the loss is the mean squared error on the hidden patches alone, optionally against
each patch standardised by its own mean and standard deviation (`norm_pix_loss`).

"ConvMAE: Masked Convolution Meets Masked Autoencoders": convolutional stages at high resolution, then a
transformer stage on the coarsest grid. A convolution cannot skip hidden pixels the way attention skips hidden
tokens, so the mask is drawn on the transformer's token grid, upsampled to every finer stage (block-wise
masking), and every convolution reads a feature map multiplied by the visible mask (masked convolution): nothing
of a hidden block reaches a visible one.

Both models: `model(images)` draws a mask from the model's own generator and returns (prediction, mask), and
`model.loss((prediction, mask), images)` is the masked loss, so `fit(model, images, images, loss=model.loss)`
trains them. `model.features(images)` encodes whole unmasked images into pooled (B, dim) features for probing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from course_lib.models._common import check_images, check_positive, check_positive_ints, init_vit
from course_lib.models.image_tokens import patchify, unpatchify
from course_lib.models.vit import PatchEmbedding, ViTBlock, ViTConfig
from course_lib.nn import MLP, LayerNorm, sinusoidal_table_2d
from course_lib.nn.masking import gather_tokens, random_masking, visible_indices

__all__ = ["ConvMAE", "ConvMAEConfig", "MAEConfig", "MAEDecoder", "MaskedAutoencoder", "MaskedConvBlock",
           "masked_patch_loss", "normalise_patches", "upsample_mask"]


def _check_ratio(ratio: object) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
        raise ValueError(f"mask_ratio={ratio!r} must lie in (0, 1)")


def _blocks_config(dim: int, heads: int, mlp_ratio: float, image_size: int, patch_size: int) -> ViTConfig:
    """The ViTConfig that ViTBlock reads (no class token, no head, fixed positions)."""
    return ViTConfig(image_size=image_size, patch_size=patch_size, dim=dim, depth=1, heads=heads,
                     mlp_ratio=mlp_ratio, num_classes=0, pool="mean", positional="sincos2d")


def normalise_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """(..., P) -> (..., P): each patch minus its mean, over sqrt(its (biased) variance + eps); MAE's norm_pix."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


def masked_patch_loss(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over the hidden patches of each patch's mean squared error: (B, N, P), (B, N, P), (B, N) bool -> ()."""
    if prediction.shape != target.shape or prediction.dim() != 3:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must be the same "
                         "(batch, tokens, pixels) shape")
    if mask.dtype != torch.bool or mask.shape != prediction.shape[:2]:
        raise ValueError(f"mask must be a {tuple(prediction.shape[:2])} bool tensor; got {mask.dtype} "
                         f"of shape {tuple(mask.shape)}")
    if not mask.any():
        raise ValueError("mask hides no patch: the masked loss has nothing to average")
    per_patch = (prediction - target).pow(2).mean(dim=-1)  # (B, N)
    return per_patch[mask].mean()


def upsample_mask(mask: Tensor, grid: tuple[int, int], factor: int) -> Tensor:
    """(B, h*w) token mask -> (B, h*factor, w*factor) bool: each token's verdict covers its factor x factor block."""
    check_positive("factor", factor)
    height, width = grid
    if mask.dim() != 2 or mask.shape[1] != height * width:
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected (batch, {height}*{width}) for grid={grid}")
    return repeat(mask, "b (h w) -> b (h p) (w q)", h=height, p=factor, q=factor)


def _check_mask(mask: object, batch: int, tokens: int) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (batch, tokens):
        raise ValueError(f"mask must be a ({batch}, {tokens}) bool tensor; got {getattr(mask, 'dtype', type(mask))} "
                         f"of shape {tuple(getattr(mask, 'shape', ()))}")


# ----------------------------------------------------------------------------------------------
# The decoder both models share.


class MAEDecoder(nn.Module):
    """(B, N_visible, dim) encoded tokens, (B, N) mask -> (B, N, pixels) predicted patches.

    Linear to the decoder's width, the learned mask token at every hidden position, fixed 2D sine-cosine
    positions, a few ViT blocks, a norm and a linear map to each patch's pixels."""

    def __init__(self, dim: int, decoder_dim: int, depth: int, heads: int, mlp_ratio: float,
                 grid: tuple[int, int], pixels: int) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("decoder_dim", decoder_dim), ("decoder_depth", depth),
                            ("decoder_heads", heads), ("pixels", pixels)):
            check_positive(name, value)
        self.grid = grid
        config = _blocks_config(decoder_dim, heads, mlp_ratio, grid[0], 1)
        self.embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(decoder_dim))
        self.register_buffer("positions", sinusoidal_table_2d(*grid, decoder_dim), persistent=False)
        self.blocks = nn.ModuleList(ViTBlock(config) for _ in range(depth))
        self.norm = LayerNorm(decoder_dim, eps=config.norm_eps)
        self.to_pixels = nn.Linear(decoder_dim, pixels)

    def fill(self, latent: Tensor, mask: Tensor) -> Tensor:
        """(B, N_visible, dim), (B, N) -> (B, N, decoder_dim): visible tokens back in place, mask tokens elsewhere,
        positions added. What the decoder's blocks read."""
        x = self.embed(latent)  # (B, N_visible, decoder_dim)
        full = repeat(self.mask_token.to(x.dtype), "d -> b n d", b=mask.shape[0], n=mask.shape[1]).clone()
        index = repeat(visible_indices(mask), "b k -> b k d", d=x.shape[-1])
        full = full.scatter(1, index, x)  # (B, N, decoder_dim)
        return full + self.positions.to(x.dtype)

    def forward(self, latent: Tensor, mask: Tensor) -> Tensor:
        x = self.fill(latent, mask)
        for block in self.blocks:
            x = block(x)
        return self.to_pixels(self.norm(x))  # (B, N, pixels)


# ----------------------------------------------------------------------------------------------
# The masked autoencoder (ViT encoder).


class _PatchGrid:
    """What both configs share: square images cut into a grid of patch_size x patch_size blocks, encoder and
    decoder widths that split into heads and carry 2D sine-cosine positions, a mask ratio in (0, 1)."""

    image_size: int
    patch_size: int
    channels: int
    dim: int
    heads: int
    decoder_dim: int
    decoder_heads: int
    mask_ratio: float

    def _check_widths_and_ratio(self) -> None:
        for name, heads in (("dim", self.heads), ("decoder_dim", self.decoder_heads)):
            if getattr(self, name) % heads or getattr(self, name) % 4:
                raise ValueError(f"{name}={getattr(self, name)} must be divisible by its heads={heads} and by 4 "
                                 "(the 2D sine-cosine positions)")
        _check_ratio(self.mask_ratio)

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def patch_pixels(self) -> int:
        return self.patch_size * self.patch_size * self.channels


@dataclass
class MAEConfig(_PatchGrid):
    image_size: int = 32
    patch_size: int = 4
    channels: int = 3
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    decoder_dim: int = 32
    decoder_depth: int = 1
    decoder_heads: int = 4
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True  # targets: each patch standardised by its own mean and std

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "channels", "dim", "depth", "heads", "decoder_dim",
                     "decoder_depth", "decoder_heads"):
            check_positive(name, getattr(self, name))
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        self._check_widths_and_ratio()


class _MaskedImageModel(nn.Module):
    """What both masked autoencoders share: input checks, their own masks, the targets, the loss, the
    reconstruction and pooled features. Subclasses set `config` and define `encode` and `forward`."""

    config: MAEConfig | ConvMAEConfig

    def _check(self, images: Tensor) -> None:
        c = self.config
        check_images(images, c.channels)
        if tuple(images.shape[2:]) != (c.image_size, c.image_size):
            raise ValueError(f"images has shape {tuple(images.shape)}; expected {c.image_size}x{c.image_size} pixels")

    def draw_mask(self, batch: int, device: torch.device | str | None = None) -> Tensor:
        """(batch, N) bool: a fresh random mask of `mask_ratio` from the model's generator."""
        return random_masking(batch, self.config.num_patches, self.config.mask_ratio, generator=self.generator,
                              device=device)

    def targets(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, P): the patches the decoder should predict (standardised with norm_pix_loss)."""
        patches = patchify(images, self.config.patch_size)
        return normalise_patches(patches) if self.config.norm_pix_loss else patches

    def loss(self, output: tuple[Tensor, Tensor], images: Tensor) -> Tensor:
        """The masked loss of `output = model(images)`: for `fit(model, images, images, loss=model.loss)`."""
        prediction, mask = output
        return masked_patch_loss(prediction, self.targets(images), mask)

    def reconstruct(self, images: Tensor, mask: Tensor) -> Tensor:
        """(B, C, H, W): visible patches as given, hidden ones predicted. With norm_pix_loss the prediction is put
        back in pixel units with each hidden patch's true mean and std (the paper's visualisation)."""
        with torch.no_grad():
            prediction, _ = self(images, mask)
        patches = patchify(images, self.config.patch_size)
        if self.config.norm_pix_loss:
            mean = patches.mean(dim=-1, keepdim=True)
            std = (patches.var(dim=-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
            prediction = prediction * std + mean
        mixed = torch.where(mask[..., None], prediction, patches)
        return unpatchify(mixed, self.config.patch_size, self.config.grid)

    def features(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, dim): the encoder on every patch (no mask), mean-pooled; for a linear probe."""
        mask = torch.zeros(len(images), self.config.num_patches, dtype=torch.bool, device=images.device)
        return self.encode(images, mask).mean(dim=1)


class MaskedAutoencoder(_MaskedImageModel):
    """images (B, C, H, W) [, mask (B, N) bool, True = hidden] -> (predicted patches (B, N, P), mask).

    Without a mask (training through `fit`), each image hides its own random `mask_ratio` of the patches, drawn
    from the model's `generator` (seeded by `seed`), so a seed gives the same masks."""

    def __init__(self, config: MAEConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = c = config
        blocks = _blocks_config(c.dim, c.heads, c.mlp_ratio, c.image_size, c.patch_size)
        self.patch_embed = PatchEmbedding(c.patch_size, c.channels, c.dim)
        self.register_buffer("positions", sinusoidal_table_2d(*c.grid, c.dim), persistent=False)
        self.blocks = nn.ModuleList(ViTBlock(blocks) for _ in range(c.depth))
        self.norm = LayerNorm(c.dim, eps=blocks.norm_eps)
        self.decoder = MAEDecoder(c.dim, c.decoder_dim, c.decoder_depth, c.decoder_heads, c.mlp_ratio, c.grid,
                                  c.patch_pixels)
        self.generator = torch.Generator().manual_seed(seed)
        init_vit(self, self.decoder.mask_token)

    def embed(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, dim): every patch embedded, its fixed position added."""
        return self.patch_embed(images) + self.positions.to(images.dtype)

    def encode(self, images: Tensor, mask: Tensor) -> Tensor:
        """(B, C, H, W), (B, N) -> (B, N_visible, dim): the encoder run on the visible patches alone."""
        self._check(images)
        _check_mask(mask, len(images), self.config.num_patches)
        x = gather_tokens(self.embed(images), visible_indices(mask))  # (B, N_visible, dim)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(images)
        if mask is None:
            mask = self.draw_mask(len(images), images.device)
        return self.decoder(self.encode(images, mask), mask), mask

# ----------------------------------------------------------------------------------------------
# ConvMAE: convolution stages with masked convolutions, then a transformer stage on visible tokens.


class MaskedConvBlock(nn.Module):
    """(B, C, H, W), visible (B, 1, H, W) or None -> (B, C, H, W): x + depthwise conv(x * visible), then
    x + MLP(norm(x)) per position. Zeroing hidden positions before the convolution keeps them out of every
    visible neighbour; the MLP mixes channels only, so it cannot leak."""

    def __init__(self, dim: int, kernel: int = 3, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        check_positive("dim", dim)
        if kernel % 2 == 0 or kernel < 1:
            raise ValueError(f"kernel={kernel!r} must be a positive odd int (same-size output)")
        self.conv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(mlp_ratio * dim), activation="gelu")

    def forward(self, x: Tensor, visible: Tensor | None = None) -> Tensor:
        x = x + self.conv(x if visible is None else x * visible)
        h = rearrange(x, "b c h w -> b h w c")
        return x + rearrange(self.mlp(self.norm(h)), "b h w c -> b c h w")


@dataclass
class ConvMAEConfig(_PatchGrid):
    image_size: int = 32
    channels: int = 3
    conv_dims: tuple[int, ...] = (16, 32)  # one convolution stage per entry, each after a stride-2 embedding
    conv_depths: tuple[int, ...] = (1, 1)
    kernel: int = 3
    dim: int = 64  # the transformer stage
    depth: int = 2
    heads: int = 4
    token_stride: int = 2  # the embedding of the transformer's tokens from the last conv stage (1: same grid)
    mlp_ratio: float = 2.0
    decoder_dim: int = 32
    decoder_depth: int = 1
    decoder_heads: int = 4
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True

    def __post_init__(self) -> None:
        self.conv_dims = check_positive_ints("conv_dims", self.conv_dims)
        self.conv_depths = check_positive_ints("conv_depths", self.conv_depths)
        if len(self.conv_dims) != len(self.conv_depths):
            raise ValueError(f"conv_dims={self.conv_dims} and conv_depths={self.conv_depths} must be equally long")
        for name in ("image_size", "channels", "dim", "depth", "heads", "token_stride", "decoder_dim",
                     "decoder_depth", "decoder_heads"):
            check_positive(name, getattr(self, name))
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by the token stride "
                             f"{self.patch_size} (2 per conv stage times token_stride)")
        self._check_widths_and_ratio()

    @property
    def patch_size(self) -> int:
        """Pixels per side of the block one transformer token covers."""
        return 2 ** len(self.conv_dims) * self.token_stride


class ConvMAE(_MaskedImageModel):
    """images (B, C, H, W) [, mask (B, N) on the token grid] -> (predicted patches (B, N, P), mask).

    Stride-2 embeddings and masked depthwise-conv blocks at each finer resolution, then a token embedding, fixed
    positions and ViT blocks on the visible tokens; the decoder is MAE's. `masked_convolution=False` (for the
    leak demonstration) runs the conv stages on the whole image instead."""

    def __init__(self, config: ConvMAEConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = c = config
        widths = (c.channels, *c.conv_dims)
        self.downsample = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 2, stride=2)
                                        for i in range(len(c.conv_dims)))
        self.stages = nn.ModuleList(nn.ModuleList(MaskedConvBlock(dim, c.kernel, c.mlp_ratio) for _ in range(depth))
                                    for dim, depth in zip(c.conv_dims, c.conv_depths))
        self.token_embed = nn.Conv2d(widths[-1], c.dim, c.token_stride, stride=c.token_stride)
        blocks = _blocks_config(c.dim, c.heads, c.mlp_ratio, c.image_size, c.patch_size)
        self.register_buffer("positions", sinusoidal_table_2d(*c.grid, c.dim), persistent=False)
        self.blocks = nn.ModuleList(ViTBlock(blocks) for _ in range(c.depth))
        self.norm = LayerNorm(c.dim, eps=blocks.norm_eps)
        self.decoder = MAEDecoder(c.dim, c.decoder_dim, c.decoder_depth, c.decoder_heads, c.mlp_ratio, c.grid,
                                  c.patch_pixels)
        self.generator = torch.Generator().manual_seed(seed)
        init_vit(self, self.decoder.mask_token)

    def conv_features(self, images: Tensor, mask: Tensor, *, masked_convolution: bool = True) -> list[Tensor]:
        """The feature maps after each conv stage, (B, C_s, H_s, W_s), finest first; with masked convolution the
        hidden blocks are zero in each, and no visible position has read a hidden one."""
        self._check(images)
        _check_mask(mask, len(images), self.config.num_patches)
        x, maps = images, []
        for i, (down, stage) in enumerate(zip(self.downsample, self.stages)):
            factor = self.config.patch_size // 2 ** i  # pixels (i = 0) or stage i-1 positions per token
            visible = (~upsample_mask(mask, self.config.grid, factor))[:, None].to(x.dtype)  # (B, 1, H, W)
            x = down(x * visible if masked_convolution else x)
            visible = visible[..., ::2, ::2]  # the same blocks at this stage's resolution
            for block in stage:
                x = block(x, visible if masked_convolution else None)
            maps.append(x * visible if masked_convolution else x)
        return maps

    def encode(self, images: Tensor, mask: Tensor, *, masked_convolution: bool = True) -> Tensor:
        """(B, C, H, W), (B, N) -> (B, N_visible, dim): conv stages, then the transformer on visible tokens."""
        x = self.conv_features(images, mask, masked_convolution=masked_convolution)[-1]
        tokens = rearrange(self.token_embed(x), "b d h w -> b (h w) d") + self.positions.to(x.dtype)
        x = gather_tokens(tokens, visible_indices(mask))  # (B, N_visible, dim)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: Tensor, mask: Tensor | None = None, *,
                masked_convolution: bool = True) -> tuple[Tensor, Tensor]:
        self._check(images)
        if mask is None:
            mask = self.draw_mask(len(images), images.device)
        latent = self.encode(images, mask, masked_convolution=masked_convolution)
        return self.decoder(latent, mask), mask
