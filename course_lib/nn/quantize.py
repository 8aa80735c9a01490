"""Learned vector quantisation (notebook 20): turn continuous vectors into discrete codes a transformer can model.

- `VectorQuantizer` (VQ-VAE): each vector becomes the index of its nearest codeword. The forward pass uses the
  codeword, the backward pass copies the gradient straight through to the encoder (the straight-through
  estimator); a codebook loss pulls codewords to the vectors they serve and a commitment loss (weight `beta`)
  keeps the encoder near its codewords. With `restart_after`, a codeword no vector chose for that many training
  steps is moved onto a random vector of the current batch (Jukebox's random restarts), so dead codes come back.
- `ResidualVQ` (SoundStream, EnCodec, UniAudio's codecs): `levels` quantisers in a row, each coding what the
  ones before left over; the codes of a vector are one per level and the reconstruction is their sum.
- `MultiScaleVQ` (VAR, HieraTok): a (B, D, H, W) map is coded coarse to fine: at each scale the residual is
  averaged down to s x s, quantised with one shared codebook, brought back up and subtracted; a map becomes
  1² + 2² + ... codes, the first ones describing the whole image.
- `perplexity`: exp of the entropy of code usage, the number of equally used codes that would give the same
  entropy; `codebook_size` when every code is used equally, 1 when one code is used.

Every quantiser returns (quantised with the straight-through gradient, codes, loss) and keeps the training
loss of its last call in `loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["MultiScaleVQ", "ResidualVQ", "VectorQuantizer", "nearest_codes", "perplexity"]


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int")


def nearest_codes(vectors: Tensor, codebook: Tensor) -> Tensor:
    """(N, D) vectors, (K, D) codewords -> (N,) index of each vector's nearest codeword (Euclidean)."""
    distances = vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ codebook.T + codebook.pow(2).sum(1)  # (N, K)
    return distances.argmin(dim=1)


def perplexity(codes: Tensor, codebook_size: int) -> float:
    """exp(entropy) of how often each of `codebook_size` codes appears in `codes` (any shape)."""
    _check_positive("codebook_size", codebook_size)
    if not isinstance(codes, Tensor) or codes.is_floating_point() or codes.numel() == 0:
        raise ValueError(f"codes must be a non-empty integer tensor; got {getattr(codes, 'dtype', type(codes).__name__)}")
    share = torch.bincount(codes.flatten(), minlength=codebook_size).double() / codes.numel()
    return torch.exp(-(share * share.clamp_min(1e-12).log()).sum()).item()


class VectorQuantizer(nn.Module):
    """(..., dim) vectors -> (quantised (..., dim), codes (...), loss): nearest of `codebook_size` codewords,
    straight-through gradient, codebook + beta · commitment loss; optional dead-code restarts."""

    def __init__(self, codebook_size: int, dim: int, *, beta: float = 0.25, restart_after: int | None = None) -> None:
        super().__init__()
        _check_positive("codebook_size", codebook_size)
        _check_positive("dim", dim)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
            raise ValueError(f"beta={beta!r} must be a number >= 0")
        if restart_after is not None:
            _check_positive("restart_after", restart_after)
        self.codebook_size, self.dim, self.beta, self.restart_after = codebook_size, dim, float(beta), restart_after
        self.codebook = nn.Parameter(torch.empty(codebook_size, dim).uniform_(-1 / codebook_size, 1 / codebook_size))
        self.register_buffer("idle_steps", torch.zeros(codebook_size, dtype=torch.long))  # since each code was chosen
        self.loss = torch.zeros(())
        self.restarted = 0  # codes restarted so far

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not isinstance(z, Tensor) or not z.is_floating_point() or z.dim() < 1 or z.shape[-1] != self.dim \
                or z.numel() == 0:
            raise ValueError(f"z must be float vectors (..., dim={self.dim}); got {getattr(z, 'dtype', type(z).__name__)}"
                             f" of shape {tuple(getattr(z, 'shape', ()))}")
        flat = z.reshape(-1, self.dim)
        codes = nearest_codes(flat.detach(), self.codebook.detach())
        chosen = F.one_hot(codes, self.codebook_size).to(flat.dtype) @ self.codebook  # as a matmul: a fixed-order backward
        self.loss = F.mse_loss(chosen, flat.detach()) + self.beta * F.mse_loss(flat, chosen.detach())
        if self.training and self.restart_after is not None:
            self._restart_dead_codes(flat.detach(), codes)
        quantised = flat + (chosen - flat).detach()  # the codeword forward, the identity backward
        return quantised.reshape(z.shape), codes.reshape(z.shape[:-1]), self.loss

    def lookup(self, codes: Tensor) -> Tensor:
        """(...) codes -> (..., dim) codewords."""
        return self.codebook[codes]

    @torch.no_grad()
    def _restart_dead_codes(self, vectors: Tensor, codes: Tensor) -> None:
        used = torch.bincount(codes, minlength=self.codebook_size) > 0
        self.idle_steps.copy_(torch.where(used, 0, self.idle_steps + 1))
        dead = (self.idle_steps >= self.restart_after).nonzero()[:, 0]
        if len(dead):
            self.codebook[dead] = vectors[torch.randint(len(vectors), (len(dead),), device=vectors.device)]
            self.idle_steps[dead] = 0
            self.restarted += len(dead)


class ResidualVQ(nn.Module):
    """(..., dim) -> (quantised, codes (..., levels), loss): `levels` quantisers, each on the previous residual."""

    def __init__(self, levels: int, codebook_size: int, dim: int, **options) -> None:
        super().__init__()
        _check_positive("levels", levels)
        self.levels = nn.ModuleList(VectorQuantizer(codebook_size, dim, **options) for _ in range(levels))
        self.codebook_size = codebook_size
        self.loss = torch.zeros(())

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        residual, total, codes, losses = z, torch.zeros_like(z), [], []
        for level in self.levels:
            quantised, level_codes, loss = level(residual)
            residual = residual - quantised.detach()  # what is left for the next level
            total = total + quantised
            codes.append(level_codes)
            losses.append(loss)
        self.loss = torch.stack(losses).sum()
        return total, torch.stack(codes, dim=-1), self.loss

    def lookup(self, codes: Tensor) -> Tensor:
        """(..., levels) codes -> (..., dim): the sum of each level's codeword."""
        return sum(level.lookup(codes[..., i]) for i, level in enumerate(self.levels))


class MultiScaleVQ(nn.Module):
    """(B, dim, H, W) -> (quantised (B, dim, H, W), codes [(B, s, s) per scale], loss): coarse-to-fine residual
    quantisation over the square `scales` (the last equal to H = W), one codebook shared by the scales."""

    def __init__(self, scales: tuple[int, ...], codebook_size: int, dim: int, *, beta: float = 0.25,
                 restart_after: int | None = None) -> None:
        super().__init__()
        if not scales or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales) \
                or list(scales) != sorted(set(scales)):
            raise ValueError(f"scales={scales!r} must be increasing positive ints, e.g. (1, 2, 4, 8)")
        self.scales, self.beta, self.codebook_size = tuple(scales), float(beta), codebook_size
        self.quantizer = VectorQuantizer(codebook_size, dim, beta=0.0, restart_after=restart_after)
        self.loss = torch.zeros(())

    def forward(self, z: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
        if not isinstance(z, Tensor) or z.dim() != 4 or z.shape[2] != z.shape[3] or z.shape[2] != self.scales[-1]:
            raise ValueError(f"z must be (batch, dim, {self.scales[-1]}, {self.scales[-1]}) for scales={self.scales}; "
                             f"got {tuple(getattr(z, 'shape', ()))}")
        residual, total, codes, codebook_losses = z.detach(), torch.zeros_like(z), [], []
        for scale in self.scales:
            coarse = F.adaptive_avg_pool2d(residual, scale)  # (B, D, s, s)
            quantised, scale_codes, _ = self.quantizer(rearrange(coarse, "b d h w -> b h w d"))
            codebook_losses.append(self.quantizer.loss)
            up = self._upsample(quantised, z.shape[-1])
            residual = residual - up.detach()
            total = total + up
            codes.append(scale_codes)
        self.loss = torch.stack(codebook_losses).sum() + self.beta * F.mse_loss(z, total.detach())
        return z + (total - z).detach(), codes, self.loss

    @staticmethod
    def _upsample(vectors: Tensor, size: int) -> Tensor:
        """(B, s, s, D) codewords -> (B, D, size, size), bilinearly."""
        grid = rearrange(vectors, "b h w d -> b d h w")
        if grid.shape[-1] == size:
            return grid
        return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)

    def lookup(self, codes: list[Tensor]) -> Tensor:
        """[(B, s, s) codes per scale] -> (B, dim, H, W): the sum of every scale's codewords, brought up to H x W.
        The codes of the first few scales alone give a coarser map: what the image looks like so far."""
        if not 1 <= len(codes) <= len(self.scales) \
                or any(tuple(c.shape[-2:]) != (s, s) for c, s in zip(codes, self.scales)):
            raise ValueError(f"codes must be the (batch, s, s) code maps of the first 1 to {len(self.scales)} of "
                             f"scales={self.scales}; got shapes {[tuple(c.shape) for c in codes]}")
        return sum(self._upsample(self.quantizer.lookup(c), self.scales[-1]) for c in codes)
