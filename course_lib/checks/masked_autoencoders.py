"""Checkers for notebook 10's masked-autoencoder exercises: the loss on hidden patches, MAE's per-patch
normalised targets, and ConvMAE's block-wise mask at a finer resolution."""

from __future__ import annotations

import torch
from einops import repeat
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker

# --- masked_patch_loss(prediction, target, mask) -------------------------------------------------------


def reference_masked_patch_loss(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """(B, N, P), (B, N, P), (B, N) bool (True = hidden) -> (): the mean over hidden patches of each patch's
    mean squared error."""
    return (prediction - target).pow(2).mean(dim=-1)[mask].mean()


def _loss_cases() -> list[Case]:
    g = torch.Generator().manual_seed(21)
    cases = []
    for batch, n, pixels, hidden in [(1, 4, 3, 3), (2, 16, 12, 12), (3, 9, 48, 6), (2, 25, 5, 19)]:
        mask = torch.rand(batch, n, generator=g).argsort(dim=1) < hidden
        cases.append(Case(f"{batch} images, {n} patches of {pixels} pixels, {hidden} hidden",
                          (torch.randn(batch, n, pixels, generator=g), torch.randn(batch, n, pixels, generator=g),
                           mask)))
    return cases


masked_patch_loss = FunctionChecker(
    "masked_patch_loss",
    reference_masked_patch_loss,
    _loss_cases,
    mistakes=[
        (lambda p, t, m: (p - t).pow(2).mean(),
         "you averaged over every patch; MAE's loss counts the hidden patches only (the visible ones are given)."),
        (lambda p, t, m: (p - t).pow(2).mean(dim=-1)[~m].mean(),
         "the mask is the wrong way round: True marks a hidden patch, and those are the ones to score."),
        (lambda p, t, m: (p - t).pow(2).sum(dim=-1)[m].mean(),
         "you summed each patch's squared errors; take their mean, so the loss does not grow with the patch size."),
    ],
    hint="per patch: (prediction - target).pow(2).mean(dim=-1) is (B, N); index it with the bool mask and average.",
)

# --- normalise_patches(patches) -------------------------------------------------------------------------


def reference_normalise_patches(patches: Tensor) -> Tensor:
    """(B, N, P) -> (B, N, P): each patch minus its own mean, over sqrt(its biased variance + 1e-6)."""
    mean = patches.mean(dim=-1, keepdim=True)
    return (patches - mean) / (patches.var(dim=-1, keepdim=True, unbiased=False) + 1e-6).sqrt()


def _normalise_cases() -> list[Case]:
    g = torch.Generator().manual_seed(22)
    return [Case(f"patches {shape}", (torch.rand(*shape, generator=g) * 4 + 1,))
            for shape in [(1, 4, 3), (2, 16, 12), (3, 9, 48), (2, 6, 2)]]


normalise_patches = FunctionChecker(
    "normalise_patches",
    reference_normalise_patches,
    _normalise_cases,
    mistakes=[
        (lambda x: (x - x.mean(dim=-1, keepdim=True)) / (x.var(dim=-1, keepdim=True) + 1e-6).sqrt(),
         "torch.var divides by P - 1 by default; MAE's normalisation uses the biased variance (unbiased=False)."),
        (lambda x: (x - x.mean(dim=(1, 2), keepdim=True)) / (x.var(dim=(1, 2), keepdim=True, unbiased=False)
                                                          + 1e-6).sqrt(),
         "you normalised each image as a whole; every patch gets its own mean and standard deviation."),
        (lambda x: (x - x.mean(dim=1, keepdim=True)) / (x.var(dim=1, keepdim=True, unbiased=False) + 1e-6).sqrt(),
         "you normalised each pixel position across the patches; normalise along a patch's own pixels (dim=-1)."),
        (lambda x: x - x.mean(dim=-1, keepdim=True),
         "you subtracted the mean only; divide by the patch's standard deviation too."),
    ],
    hint="mean and var over dim=-1 with keepdim=True, var with unbiased=False, and 1e-6 inside the square root.",
)

# --- block_mask(mask, grid, factor) ---------------------------------------------------------------------


def reference_block_mask(mask: Tensor, grid: tuple[int, int], factor: int) -> Tensor:
    """(B, h*w) token mask, row by row -> (B, h*factor, w*factor): each token's verdict on its block of pixels."""
    return repeat(mask, "b (h w) -> b (h p) (w q)", h=grid[0], p=factor, q=factor)


def _block_cases() -> list[Case]:
    g = torch.Generator().manual_seed(23)
    return [Case(f"grid {grid}, factor {factor}", (torch.rand(batch, grid[0] * grid[1], generator=g) < 0.5,
                                                  grid, factor))
            for batch, grid, factor in [(1, (2, 2), 2), (2, (2, 3), 4), (3, (4, 4), 2), (2, (3, 2), 3)]]


block_mask = FunctionChecker(
    "block_mask",
    reference_block_mask,
    _block_cases,
    mistakes=[
        (lambda m, grid, f: repeat(m, "b (h w) -> b (p h) (q w)", h=grid[0], p=f, q=f),
         "you tiled the whole grid factor x factor times; each token must cover its own factor x factor block "
         "((h p), not (p h))."),
        (lambda m, grid, f: repeat(m, "b (w h) -> b (h p) (w q)", h=grid[0], p=f, q=f),
         "the tokens are read column by column; they are numbered row by row, (h w)."),
        (lambda m, grid, f: repeat(m, "b (h w) -> b (h p) w", h=grid[0], p=f),
         "you upsampled the rows only; the block is factor pixels wide as well as high."),
    ],
    hint="einops: repeat(mask, 'b (h w) -> b (h p) (w q)', h=grid[0], p=factor, q=factor).",
)
