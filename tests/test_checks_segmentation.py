"""The segmentation checkers of notebook 09_dense_prediction: right answers pass, plausible wrong ones fail with a
message naming the mistake.

Each correct answer is written here the way a learner would (loops, plain tensor code), independently of the
references in `course_lib.checks.segmentation`; each wrong one is a mistake a learner is likely to make.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from checking import fails, passes
from einops import rearrange

from course_lib.checks import segmentation as check
from course_lib.checks.segmentation import reference_fuse_stages
from course_lib.models.segmentation import SegFormerDecodeHead

torch.set_num_threads(1)

# --- fuse_stages ------------------------------------------------------------------------------------


def fuse_stages(features, projections, *, reverse=True, align_corners=False, mode="bilinear"):
    height, width = features[0].shape[-2:]
    maps = []
    for grid, projection in zip(features, projections):
        h, w = grid.shape[-2:]
        tokens = projection(rearrange(grid, "b c h w -> b (h w) c"))
        grid = rearrange(tokens, "b (h w) d -> b d h w", h=h, w=w)
        options = dict(align_corners=align_corners) if mode == "bilinear" else {}
        maps.append(F.interpolate(grid, size=(height, width), mode=mode, **options))
    if reverse:
        maps = maps[::-1]
    return torch.cat(maps, dim=1)


def test_fuse_stages_right(capsys):
    passes(check.fuse_stages, fuse_stages, capsys)


def test_fuse_stages_reference_is_the_packaged_head():
    head = SegFormerDecodeHead((4, 8, 12), 6, 5).eval()
    features = [torch.randn(2, c, s, s) for c, s in [(4, 8), (8, 4), (12, 2)]]
    with torch.no_grad():
        torch.testing.assert_close(reference_fuse_stages(features, list(head.project)), head.fused_features(features))


@pytest.mark.parametrize("options, explanation", [
    (dict(reverse=False), "deepest stage first"),
    (dict(align_corners=True), "align_corners=True"),
    (dict(mode="nearest"), "nearest-neighbour"),
], ids=["order", "corners", "nearest"])
def test_fuse_stages_mistakes_are_named(options, explanation, capsys):
    message = fails(check.fuse_stages, lambda f, p: fuse_stages(f, p, **options), capsys, r"output\[.*\] is .* \(on maps")
    assert explanation in message


def test_fuse_stages_at_the_coarsest_size(capsys):
    def coarsest(features, projections):
        size = features[-1].shape[-2:]
        maps = [F.interpolate(rearrange(p(rearrange(g, "b c h w -> b h w c")), "b h w d -> b d h w"), size=size,
                              mode="bilinear") for g, p in zip(features, projections)]
        return torch.cat(maps[::-1], dim=1)

    message = fails(check.fuse_stages, coarsest, capsys, r"has shape \(.*\), expected \(.*\)")
    assert "coarsest" in message


def test_fuse_stages_not_implemented(capsys):
    def exercise(features, projections):
        raise NotImplementedError

    fails(check.fuse_stages, exercise, capsys, "not implemented yet")


# --- iou_per_class ----------------------------------------------------------------------------------


def iou_per_class(predicted, target, classes):
    values = []
    for c in range(classes):
        overlap = ((predicted == c) & (target == c)).sum().item()
        union = ((predicted == c) | (target == c)).sum().item()
        values.append(overlap / union if union else float("nan"))
    return torch.tensor(values, dtype=torch.float64)


def test_iou_per_class_right(capsys):
    passes(check.iou_per_class, iou_per_class, capsys)


def test_iou_zero_for_absent_classes_is_named(capsys):
    def zero(predicted, target, classes):
        return torch.nan_to_num(iou_per_class(predicted, target, classes), nan=0.0)

    assert "NaN" in fails(check.iou_per_class, zero, capsys, r"output\[.*\] is 0, expected nan")


def test_recall_and_dice_are_named(capsys):
    def recall(predicted, target, classes):
        return torch.tensor([((predicted == c) & (target == c)).sum().item() / (target == c).sum().item()
                             if (target == c).any() else float("nan") for c in range(classes)], dtype=torch.float64)

    def dice(predicted, target, classes):
        iou = iou_per_class(predicted, target, classes)
        return 2 * iou / (1 + iou)  # Dice = 2 IoU / (1 + IoU)

    assert "recall" in fails(check.iou_per_class, recall, capsys, r"output\[.*\] is")
    assert "Dice" in fails(check.iou_per_class, dice, capsys, r"output\[.*\] is")


def test_iou_in_float32_is_refused(capsys):
    fails(check.iou_per_class, lambda p, t, c: iou_per_class(p, t, c).float(), capsys, "dtype torch.float32")


# --- semantic_inference -----------------------------------------------------------------------------


def semantic_inference(class_logits, mask_logits, *, drop_first=False, mask_fn=torch.sigmoid, keep_void=False):
    batch, queries, classes_plus_one = class_logits.shape
    classes = classes_plus_one if keep_void else classes_plus_one - 1
    out = torch.zeros(batch, classes, *mask_logits.shape[-2:])
    masks = mask_fn(mask_logits)
    for b in range(batch):
        for q in range(queries):
            logits = class_logits[b, q, :-1] if drop_first else class_logits[b, q]
            p = torch.exp(logits - logits.max())
            p = p / p.sum()
            for c in range(classes):
                out[b, c] += p[c] * masks[b, q]
    return out


def test_semantic_inference_right(capsys):
    passes(check.semantic_inference, semantic_inference, capsys)


@pytest.mark.parametrize("options, explanation", [
    (dict(drop_first=True), "before the softmax"),
    (dict(mask_fn=lambda m: m.softmax(dim=1)), "softmax over the queries"),
    (dict(mask_fn=lambda m: m), "sigmoid first"),
    (dict(keep_void=True), "no-object column was kept"),
], ids=["renormalised", "mask-softmax", "raw-masks", "void-kept"])
def test_semantic_inference_mistakes_are_named(options, explanation, capsys):
    message = fails(check.semantic_inference, lambda c, m: semantic_inference(c, m, **options), capsys,
                    r"\(on \d+ queries")
    assert explanation in message
