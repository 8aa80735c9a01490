"""Restoration pairs from the two photos that ship with scikit-learn (`load_sample_images`: china, flower).

Each photo (427 x 640) is cut into vertical strips of columns, and every split owns its own strips, so no
test pixel is ever seen in training:

| split | columns of both photos       | what they show                          |
|-------|------------------------------|-----------------------------------------|
| train | 0-127, 224-319, 416-639      | trees, sky, pagoda, dark leaves, petals |
| val   | 128-223                      | the pagoda's left side, the flower's left half |
| test  | 320-415                      | the pagoda's right side and lake, the flower's right half |

A crop lies wholly inside one strip (so `size` is at most 96). Tasks:
- "denoise": input = clean + Gaussian noise of standard deviation `sigma` (on the 0-1 scale, not clipped),
  target = clean;
- "sr2": input = the crop averaged over 2 x 2 blocks (area downsampling), target = the crop.

Crop positions and noise come from generators seeded by (seed, split), so the same arguments give the same
tensors. `bicubic_upsample` is the baseline every restoration model must beat.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

from course_lib.data.registry import SPLITS, check_int, check_split, register

TASKS = ("denoise", "sr2")
PHOTOS = ("china", "flower")
# [start, stop) column intervals of each split, the same in both photos
REGIONS: dict[str, tuple[tuple[int, int], ...]] = {
    "train": ((0, 128), (224, 320), (416, 640)),
    "val": ((128, 224),),
    "test": ((320, 416),),
}
MAX_SIZE = 96  # the narrowest strip
_SALT = 0x9407  # separates these streams from any other dataset's


class PhotoCropsDataset(TensorDataset):
    """(input (3, s, s), target (3, size, size)) pairs in [0, 1] (a noisy input may leave it); s = size, or
    size / 2 for "sr2". `inputs` and `targets` hold them all."""

    def __init__(self, inputs: Tensor, targets: Tensor, task: str, split: str) -> None:
        super().__init__(inputs, targets)
        self.inputs, self.targets, self.task, self.split = inputs, targets, task, split

    def __repr__(self) -> str:
        return (f"PhotoCropsDataset(task={self.task!r}, split={self.split!r}, n={len(self)}, "
                f"size={self.targets.shape[-1]})")


@lru_cache(maxsize=1)
def photos() -> Tensor:
    """(2, 3, 427, 640) float32 in [0, 1]: china and flower, decoded once per process (it takes a second)."""
    from sklearn.datasets import load_sample_images  # slow import: only when used

    images = torch.from_numpy(np.stack(load_sample_images().images)).float() / 255.0  # (2, H, W, 3)
    return images.permute(0, 3, 1, 2).contiguous()


def _generator(seed: int, split: str, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1000 + SPLITS.index(split) * 10 + stream) ^ _SALT)


def crop_positions(split: str, n: int, size: int, seed: int) -> Tensor:
    """(n, 3) long: photo index, top row, left column of each crop of `split`, every crop inside one strip."""
    height = photos().shape[2]
    # every (photo, strip, top, left) with the crop inside the strip, drawn uniformly
    starts = torch.cat([torch.arange(a, b - size + 1) for a, b in REGIONS[split]])  # allowed left columns
    g = _generator(seed, split, 0)
    photo = torch.randint(len(PHOTOS), (n,), generator=g)
    top = torch.randint(height - size + 1, (n,), generator=g)
    left = starts[torch.randint(len(starts), (n,), generator=g)]
    return torch.stack([photo, top, left], dim=1)


def clean_crops(split: str, n: int, size: int, seed: int) -> Tensor:
    """(n, 3, size, size) float32 crops of `split`'s strips, at positions `crop_positions` draws."""
    images = photos()
    return torch.stack([images[p, :, t:t + size, s:s + size] for p, t, s in crop_positions(split, n, size, seed).tolist()])


def bicubic_upsample(images: Tensor, factor: int) -> Tensor:
    """(B, C, H, W) -> (B, C, factor*H, factor*W) by bicubic interpolation (align_corners=False), clamped to
    [0, 1]: the baseline of super-resolution."""
    check_int("factor", factor, 1)
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (batch, channels, height, width); got "
                         f"{getattr(images, 'dtype', type(images).__name__)} of shape {tuple(getattr(images, 'shape', ()))}")
    up = F.interpolate(images, scale_factor=factor, mode="bicubic", align_corners=False)
    return up.clamp(0.0, 1.0)


def _check_options(split: str, task: str, n: int, size: int, sigma: float, seed: int) -> None:
    check_split(split)
    if task not in TASKS:
        raise ValueError(f"task={task!r}; expected one of {TASKS}")
    check_int("n", n, 1)
    check_int("size", size, 4, f" and at most {MAX_SIZE} (the narrowest strip)")
    if size > MAX_SIZE:
        raise ValueError(f"size={size} must be an int of at least 4 and at most {MAX_SIZE} (the narrowest strip)")
    if task == "sr2" and size % 2:
        raise ValueError(f"size={size} must be even for task='sr2' (the input is size / 2 on a side)")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma <= 1:
        raise ValueError(f"sigma={sigma!r} must be a number in (0, 1] (noise level on the 0-1 scale)")
    check_int("seed", seed, 0)


@register("photos")
def load_photos(split: str, task: str = "denoise", n: int = 256, size: int = 32, sigma: float = 0.1,
                seed: int = 0) -> PhotoCropsDataset:
    """`n` crops of `size` x `size` from `split`'s strips of both photos, as (degraded input, clean target)
    pairs for `task` ("denoise" with noise `sigma`, or "sr2")."""
    _check_options(split, task, n, size, sigma, seed)
    targets = clean_crops(split, n, size, seed)
    if task == "denoise":
        noise = torch.randn(targets.shape, generator=_generator(seed, split, 1))
        inputs = targets + sigma * noise
    else:
        inputs = F.avg_pool2d(targets, 2)  # (n, 3, size/2, size/2): each pixel the mean of a 2x2 block
    return PhotoCropsDataset(inputs, targets, task, split)
