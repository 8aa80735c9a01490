"""Real handwritten digits offline: scikit-learn's 8x8 `load_digits` (1,797 images, 10 classes).

Small enough to train a ViT on a laptop in seconds, and real rather than generated. The split is
a seeded permutation of all images cut 70/15/15, so train, val and test never share an image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torch.utils.data import TensorDataset

from course_lib.data.registry import SPLITS, register

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
NATIVE_SIZE = 8


class DigitsDataset(TensorDataset):
    """(image (1, size, size) float in [0, 1], label long) pairs; `images` and `labels` hold them all."""

    def __init__(self, images: Tensor, labels: Tensor, split: str) -> None:
        super().__init__(images, labels)
        self.images, self.labels, self.split = images, labels, split
        self.num_classes = 10

    def __repr__(self) -> str:
        return f"DigitsDataset(split={self.split!r}, n={len(self)}, size={self.images.shape[-1]})"


def split_indices(total: int, split: str, seed: int) -> Tensor:
    """The indices of `split` in a seeded permutation of range(total), cut by FRACTIONS."""
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    n_train = round(FRACTIONS["train"] * total)
    n_val = round(FRACTIONS["val"] * total)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, total)}
    start, stop = bounds[split]
    return order[start:stop]


@register("digits")
def load_digits(split: str, size: int = 8, seed: int = 0, n: int | None = None) -> DigitsDataset:
    """The `split` of scikit-learn's digits at `size` x `size` (bilinear upsampling above 8); at most `n` images."""
    if not isinstance(size, int) or size < NATIVE_SIZE:
        raise ValueError(f"size={size!r} must be an int of at least {NATIVE_SIZE} (the native resolution)")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative int")
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n={n!r} must be a positive int or None (all images of the split)")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    from sklearn.datasets import load_digits as sklearn_digits  # slow import: only when used

    raw = sklearn_digits()
    pixels = torch.tensor(raw.images, dtype=torch.float32) / 16.0  # (N, 8, 8), ink 0..16
    labels = torch.tensor(raw.target, dtype=torch.long)
    keep = split_indices(len(labels), split, seed)[:n]
    images = rearrange(pixels[keep], "n h w -> n 1 h w")
    if size != NATIVE_SIZE:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return DigitsDataset(images, labels[keep], split)
