"""Metrics of dense prediction: intersection over union per class for segmentation, PSNR for restoration.

- `confusion_matrix` counts (target, predicted) pairs of class indices over every pixel;
- `iou_per_class` is TP / (TP + FP + FN) from it, NaN for a class that appears in neither target nor prediction;
  `mean_iou` averages the classes that appear (the usual "mIoU", as in the SegFormer and EoMT papers);
- `psnr` is 10·log10(peak² / MSE) per image, averaged over the images (images in [0, peak]);
- `forecast_errors` is (MSE, MAE) of forecasts over the first h steps, for each horizon h of a list.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["confusion_matrix", "forecast_errors", "iou_per_class", "mean_iou", "psnr"]


def confusion_matrix(predicted: Tensor, target: Tensor, classes: int) -> Tensor:
    """(classes, classes) int64 counts: entry [t, p] is how many pixels of class t were predicted as p."""
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"classes={classes!r} must be a positive int")
    for name, value in (("predicted", predicted), ("target", target)):
        if not isinstance(value, Tensor) or value.is_floating_point() or value.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor of class indices; got {getattr(value, 'dtype', type(value))}")
    if predicted.shape != target.shape:
        raise ValueError(f"predicted has shape {tuple(predicted.shape)} but target {tuple(target.shape)}; they must match")
    for name, value in (("predicted", predicted), ("target", target)):
        if value.numel() and (value.min() < 0 or value.max() >= classes):
            raise ValueError(f"{name} holds values in {int(value.min())}..{int(value.max())}; expected 0..{classes - 1}")
    pairs = target.reshape(-1).long() * classes + predicted.reshape(-1).long()
    return torch.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


def iou_per_class(predicted: Tensor, target: Tensor, classes: int) -> Tensor:
    """(classes,) float64 IoU of each class; NaN where a class is in neither `target` nor `predicted`."""
    counts = confusion_matrix(predicted, target, classes).double()
    hits = counts.diagonal()
    union = counts.sum(dim=0) + counts.sum(dim=1) - hits
    return torch.where(union > 0, hits / union.clamp(min=1), torch.full_like(hits, float("nan")))


def mean_iou(predicted: Tensor, target: Tensor, classes: int) -> float:
    """The mean of `iou_per_class` over the classes that appear in the target or the prediction."""
    return float(iou_per_class(predicted, target, classes).nanmean())


def psnr(restored: Tensor, clean: Tensor, *, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, 10·log10(peak² / MSE), computed per image and averaged over the batch
    axis (dim 0). A perfect restoration is infinite."""
    if not isinstance(restored, Tensor) or not isinstance(clean, Tensor) or restored.shape != clean.shape:
        raise ValueError(f"restored {tuple(getattr(restored, 'shape', ()))} and clean {tuple(getattr(clean, 'shape', ()))} "
                         "must be tensors of the same shape")
    if restored.dim() < 2:
        raise ValueError(f"restored has shape {tuple(restored.shape)}; expected a batch axis and at least one more")
    if not peak > 0:
        raise ValueError(f"peak={peak!r} must be positive")
    error = (restored.double() - clean.double()).pow(2).flatten(1).mean(dim=1)  # (B,) MSE per image
    return float((10 * torch.log10(peak**2 / error)).mean())


def forecast_errors(forecasts: Tensor, targets: Tensor, horizons: Sequence[int]) -> dict[int, tuple[float, float]]:
    """{h: (MSE, MAE)} in float64 over the first h steps of every window (and channel): forecasts and targets are
    (N, H) or (N, H, C), and every h lies in 1..H."""
    if not isinstance(forecasts, Tensor) or not isinstance(targets, Tensor) or forecasts.shape != targets.shape:
        raise ValueError(f"forecasts {tuple(getattr(forecasts, 'shape', ()))} and targets "
                         f"{tuple(getattr(targets, 'shape', ()))} must be tensors of the same shape")
    if forecasts.dim() not in (2, 3) or forecasts.shape[0] == 0 or forecasts.shape[1] == 0:
        raise ValueError(f"forecasts has shape {tuple(forecasts.shape)}; expected (N, H) or (N, H, C) with N, H > 0")
    length = forecasts.shape[1]
    if isinstance(horizons, (str, bytes)) or not isinstance(horizons, Sequence) or len(horizons) == 0:
        raise ValueError(f"horizons={horizons!r} must be a non-empty sequence of ints")
    for h in horizons:
        if isinstance(h, bool) or not isinstance(h, int) or not 1 <= h <= length:
            raise ValueError(f"horizons holds {h!r}; every horizon must be an int in 1..{length} (the forecast length)")
    error = forecasts.detach().double() - targets.detach().double()  # (N, H[, C])
    return {h: (float(error[:, :h].pow(2).mean()), float(error[:, :h].abs().mean())) for h in horizons}
