"""Checkers for the segmentation exercises of notebook 09_dense_prediction: SegFormer's decoder fusion (project,
upsample, concatenate), the per-class IoU metric, and EoMT's semantic inference from (class, mask) pairs.

The references are the packaged pieces where they exist: `SegFormerDecodeHead.fused_features` computes what
`reference_fuse_stages` does (tests/test_checks_segmentation.py checks that equality), `iou_per_class` is
`course_lib.train.metrics.iou_per_class`, `semantic_inference` is `course_lib.models.segmentation`'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum
from torch import Tensor, nn

from course_lib.checks.core import Case, FunctionChecker
from course_lib.models.segmentation import semantic_inference as reference_semantic_inference
from course_lib.train.metrics import iou_per_class as reference_iou_per_class

# --- fuse_stages(features, projections) ------------------------------------------------------------


def _project(grid: Tensor, projection: nn.Linear) -> Tensor:
    """(B, C, h, w) -> (B, D, h, w): the same linear layer at every pixel."""
    return einsum(grid, projection.weight, "b c h w, d c -> b d h w") + projection.bias[:, None, None]


def reference_fuse_stages(features: list[Tensor], projections: list[nn.Linear]) -> Tensor:
    """SegFormer's decoder before its fusing 1x1 convolution: every (B, C_i, H_i, W_i) map projected to D by its
    linear layer, upsampled bilinearly (align_corners=False) to the first (finest) map's size, and concatenated
    along channels with the deepest stage first: (B, stages * D, H_0, W_0)."""
    size = features[0].shape[-2:]
    maps = [F.interpolate(_project(grid, p), size=size, mode="bilinear", align_corners=False)
            for grid, p in zip(features, projections)]
    return torch.cat(maps[::-1], dim=1)


def _fuse_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(9)
    cases = []
    for batch, dims, sides, width in [(1, (4, 8), ((8, 8), (4, 4)), 6), (2, (4, 8, 12), ((8, 8), (4, 4), (2, 2)), 5),
                                      (1, (3, 5, 7, 9), ((16, 12), (8, 6), (4, 3), (2, 2)), 4),
                                      (2, (6, 6, 6), ((9, 9), (5, 5), (3, 3)), 8)]:
        features = [torch.randn(batch, c, h, w, generator=generator) for c, (h, w) in zip(dims, sides)]
        projections = []
        for c in dims:
            layer = nn.Linear(c, width)
            with torch.no_grad():
                layer.weight.copy_(torch.randn(width, c, generator=generator) / c**0.5)
                layer.bias.copy_(torch.randn(width, generator=generator))
            projections.append(layer)
        shapes = ", ".join(str(tuple(f.shape)) for f in features)
        cases.append(Case(f"maps {shapes} projected to {width}", (features, projections)))
    return cases


def _fuse_with(features, projections, *, order: int = -1, **interpolate) -> Tensor:
    size = features[0].shape[-2:]
    maps = [F.interpolate(_project(grid, p), size=size, **interpolate) for grid, p in zip(features, projections)]
    return torch.cat(maps[::order], dim=1)


def _to_coarsest(features, projections) -> Tensor:
    size = features[-1].shape[-2:]
    maps = [F.interpolate(_project(grid, p), size=size, mode="bilinear", align_corners=False)
            for grid, p in zip(features, projections)]
    return torch.cat(maps[::-1], dim=1)


fuse_stages = FunctionChecker(
    "fuse_stages",
    reference_fuse_stages,
    _fuse_cases,
    mistakes=[
        (lambda f, p: _fuse_with(f, p, order=1, mode="bilinear", align_corners=False),
         "the stages are concatenated finest first; SegFormer (and Hugging Face's weights) put the deepest stage "
         "first: reverse the list before torch.cat."),
        (lambda f, p: _fuse_with(f, p, mode="bilinear", align_corners=True),
         "you upsampled with align_corners=True; SegFormer uses align_corners=False."),
        (lambda f, p: _fuse_with(f, p, mode="nearest"),
         "nearest-neighbour upsampling copies each coarse pixel into blocks; the decoder upsamples bilinearly."),
        (_to_coarsest,
         "every map was resized to the last (coarsest) stage's size; the decoder predicts at the finest one, "
         "features[0]'s, so that small shapes keep their outline."),
    ],
    hint="for each (grid, projection): rearrange to (B, h*w, C), apply the linear layer, back to (B, D, h, w), "
         "F.interpolate(..., size=features[0].shape[-2:], mode='bilinear', align_corners=False); then "
         "torch.cat(maps[::-1], dim=1).",
)


# --- iou_per_class(predicted, target, classes) -----------------------------------------------------


def _iou_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(10)
    cases = [Case("a 2x2 map, every class predicted exactly", (torch.tensor([[0, 1], [2, 1]]),
                                                                torch.tensor([[0, 1], [2, 1]]), 3))]
    target = torch.randint(0, 4, (2, 6, 6), generator=generator)
    noisy = torch.where(torch.rand(2, 6, 6, generator=generator) < 0.3,
                        torch.randint(0, 4, (2, 6, 6), generator=generator), target)
    cases.append(Case("2 maps of 6x6, 4 classes, 30% of pixels relabelled", (noisy, target, 4)))
    target = torch.randint(0, 3, (1, 8, 8), generator=generator)  # class 4 appears nowhere, class 3 only predicted
    predicted = target.clone()
    predicted[0, :2] = 3
    cases.append(Case("8x8, 5 classes: class 3 only predicted, class 4 nowhere", (predicted, target, 5)))
    target = torch.zeros(3, 4, 5, dtype=torch.long)
    target[:, 1:3, 1:4] = 2
    cases.append(Case("3 maps of 4x5, all predicted as background", (torch.zeros_like(target), target, 3)))
    return cases


def _counts(predicted: Tensor, target: Tensor, classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """(classes,) true positives, false positives and false negatives, float64."""
    hit = [((predicted == c) & (target == c)).sum() for c in range(classes)]
    predicted_count = [(predicted == c).sum() for c in range(classes)]
    target_count = [(target == c).sum() for c in range(classes)]
    tp, p, t = (torch.stack(v).double() for v in (hit, predicted_count, target_count))
    return tp, p - tp, t - tp


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.full_like(numerator, float("nan")))


def _iou_zero_for_absent(predicted, target, classes):
    tp, fp, fn = _counts(predicted, target, classes)
    return tp / (tp + fp + fn).clamp(min=1)


def _recall(predicted, target, classes):
    tp, fp, fn = _counts(predicted, target, classes)
    return _ratio(tp, tp + fn)


def _dice(predicted, target, classes):
    tp, fp, fn = _counts(predicted, target, classes)
    return _ratio(2 * tp, 2 * tp + fp + fn)


iou_per_class = FunctionChecker(
    "iou_per_class",
    reference_iou_per_class,
    _iou_cases,
    mistakes=[
        (_iou_zero_for_absent,
         "a class that is in neither the target nor the prediction gets 0; it has no IoU at all: give it NaN, so "
         "that the mean over classes skips it instead of being pulled down."),
        (_recall,
         "that is the share of each class's pixels found, TP / (TP + FN) (recall); IoU also counts the false "
         "positives: TP / (TP + FP + FN)."),
        (_dice,
         "that is the Dice (F1) score, 2TP / (2TP + FP + FN); IoU is TP / (TP + FP + FN)."),
    ],
    hint="for each class c: TP = pixels with predicted == c and target == c; union = (predicted == c) or "
         "(target == c); IoU = TP / union as float64, NaN where the union is empty.",
)


# --- semantic_inference(class_logits, mask_logits) -------------------------------------------------


def _inference_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(11)
    cases = []
    for batch, queries, classes, height, width in [(1, 2, 2, 3, 3), (2, 4, 3, 5, 6), (1, 8, 5, 8, 8),
                                                   (3, 5, 4, 4, 7)]:
        class_logits = 2 * torch.randn(batch, queries, classes + 1, generator=generator)
        mask_logits = 3 * torch.randn(batch, queries, height, width, generator=generator)
        cases.append(Case(f"{queries} queries, {classes} classes + no object, masks {height}x{width}, "
                          f"batch {batch}", (class_logits, mask_logits)))
    return cases


inference_mistakes = [
    (lambda c, m: torch.einsum("bqc,bqhw->bchw", c[..., :-1].softmax(-1), m.sigmoid()),
     "you dropped the no-object logit before the softmax, so every query's real classes sum to 1; take the "
     "softmax over all classes + 1 first, then drop the last column: a query sure it is nothing then votes "
     "for nothing."),
    (lambda c, m: torch.einsum("bqc,bqhw->bchw", c.softmax(-1)[..., :-1], m.softmax(1)),
     "the masks went through a softmax over the queries; each query's mask is independent: sigmoid."),
    (lambda c, m: torch.einsum("bqc,bqhw->bchw", c.softmax(-1)[..., :-1], m),
     "the mask logits were used as they are; turn them into probabilities with a sigmoid first."),
    (lambda c, m: torch.einsum("bqc,bqhw->bchw", c.softmax(-1), m.sigmoid()),
     "the no-object column was kept: the output has one channel per real class only, drop the last one."),
]

semantic_inference = FunctionChecker(
    "semantic_inference",
    reference_semantic_inference,
    _inference_cases,
    mistakes=inference_mistakes,
    hint="p = class_logits.softmax(-1)[..., :-1] (B, K, classes); then the sum over queries of p times "
         "mask_logits.sigmoid(): torch.einsum('bqc,bqhw->bchw', ...).",
)
