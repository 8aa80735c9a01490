"""A VQ-VAE (notebook 20): a small convolutional encoder, a quantiser, and a decoder, trained to reconstruct.

The encoder halves the height and width twice (32 x 32 images -> an 8 x 8 grid of `dim`-wide vectors; 32 x 64
spectrograms -> 8 x 16), the quantiser turns every vector into codes, and the decoder mirrors the encoder. The
quantiser is chosen by `quantizer`:

| quantizer    | codes per grid cell                  | reference                                               |
|--------------|--------------------------------------|---------------------------------------------------------|
| "vq"         | one of `codebook_size`               | "Neural Discrete Representation Learning" (VQ-VAE)      |
| "residual"   | `levels`, each coding the residual   | SoundStream / EnCodec, the codecs UniAudio models       |
| "multiscale" | a code map at every one of `scales`  | VAR's next-scale tokens; HieraTok's multi-scale codes   |

`forward(x)` returns the reconstruction and keeps the quantiser's loss in `quantizer.loss` (add it to the
reconstruction loss) and the codes in `codes`. `encode` gives the codes alone, `decode_codes` an image from codes:
what a generative transformer over these tokens (notebook 22) needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from course_lib.models._common import check_positive
from course_lib.nn.quantize import MultiScaleVQ, ResidualVQ, VectorQuantizer

__all__ = ["QUANTIZERS", "VQVAE", "VQVAEConfig"]

QUANTIZERS = ("vq", "residual", "multiscale")


@dataclass(frozen=True)
class VQVAEConfig:
    """Inputs of `channels` x `height` x `width` (both divisible by 4), a latent grid a quarter as high and wide of
    `dim`-wide vectors, and the quantiser (see the module docstring)."""

    channels: int = 3
    height: int = 32
    width: int = 32
    hidden: int = 64
    dim: int = 16
    quantizer: str = "vq"
    codebook_size: int = 64
    levels: int = 4  # "residual" only
    scales: tuple[int, ...] = (1, 2, 4, 8)  # "multiscale" only: the last must be the latent grid's side
    beta: float = 0.25
    restart_after: int | None = None  # restart a code unused for this many training steps; None: never

    def __post_init__(self) -> None:
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer={self.quantizer!r}; expected one of {QUANTIZERS}")
        for name in ("channels", "height", "width", "hidden", "dim", "codebook_size", "levels"):
            check_positive(name, getattr(self, name))
        if self.height % 4 or self.width % 4:
            raise ValueError(f"height={self.height} and width={self.width} must be divisible by 4 (two halvings)")
        if self.quantizer == "multiscale" and (self.height != self.width or self.scales[-1] != self.height // 4):
            raise ValueError(f"quantizer='multiscale' needs square inputs and scales ending at the latent side "
                             f"{self.height // 4}; got {self.height}x{self.width}, scales={self.scales}")

    @property
    def grid(self) -> tuple[int, int]:
        return self.height // 4, self.width // 4


class VQVAE(nn.Module):
    """(B, channels, height, width) -> its reconstruction, through discrete codes."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = nn.Sequential(
            nn.Conv2d(c.channels, c.hidden, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(c.hidden, c.hidden, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(c.hidden, c.dim, 1))
        options = dict(beta=c.beta, restart_after=c.restart_after)
        if c.quantizer == "vq":
            self.quantizer = VectorQuantizer(c.codebook_size, c.dim, **options)
        elif c.quantizer == "residual":
            self.quantizer = ResidualVQ(c.levels, c.codebook_size, c.dim, **options)
        else:
            self.quantizer = MultiScaleVQ(c.scales, c.codebook_size, c.dim, **options)
        self.decoder = nn.Sequential(
            nn.Conv2d(c.dim, c.hidden, 3, padding=1), nn.GELU(),
            nn.ConvTranspose2d(c.hidden, c.hidden, 4, stride=2, padding=1), nn.GELU(),
            nn.ConvTranspose2d(c.hidden, c.channels, 4, stride=2, padding=1))
        self.codes: Tensor | list[Tensor] | None = None

    def check_inputs(self, x: Tensor) -> None:
        c = self.config
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4 \
                or tuple(x.shape[1:]) != (c.channels, c.height, c.width) or len(x) == 0:
            raise ValueError(f"x must be float (batch >= 1, channels={c.channels}, height={c.height}, width={c.width});"
                             f" got {getattr(x, 'dtype', type(x).__name__)} of shape {tuple(getattr(x, 'shape', ()))}")

    def quantize(self, x: Tensor) -> tuple[Tensor, Tensor | list[Tensor]]:
        """The quantised latent grid (B, dim, h, w) with its straight-through gradient, and its codes."""
        self.check_inputs(x)
        z = self.encoder(x)  # (B, dim, h, w)
        if self.config.quantizer == "multiscale":
            quantised, codes, _ = self.quantizer(z)
            return quantised, codes
        quantised, codes, _ = self.quantizer(rearrange(z, "b d h w -> b h w d"))
        return rearrange(quantised, "b h w d -> b d h w"), codes

    def forward(self, x: Tensor) -> Tensor:
        quantised, self.codes = self.quantize(x)
        return self.decoder(quantised)

    def encode(self, x: Tensor) -> Tensor | list[Tensor]:
        """Codes: (B, h, w) for "vq", (B, h, w, levels) for "residual", [(B, s, s) per scale] for "multiscale"."""
        return self.quantize(x)[1]

    def decode_codes(self, codes: Tensor | list[Tensor]) -> Tensor:
        """Inputs rebuilt from codes in the layout `encode` gives ("multiscale": the first scales alone give a
        coarser picture)."""
        latent = self.quantizer.lookup(codes)
        if self.config.quantizer != "multiscale":
            latent = rearrange(latent, "b h w d -> b d h w")
        return self.decoder(latent)

    def loss(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        """Mean squared reconstruction error plus the quantiser's codebook and commitment losses (for `fit`)."""
        return F.mse_loss(reconstruction, target) + self.quantizer.loss
