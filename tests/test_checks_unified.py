"""The checkers of notebook 17_unified_backbones: right answers pass, plausible wrong ones fail with a message
naming the mistake. Each correct answer is written here the way a learner would, independently of the packaged
references."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from checking import fails, passes

from course_lib.checks import unified as check


def prefix_lm_mask(prefix, length):
    size = prefix + length
    mask = torch.zeros(size, size, dtype=torch.bool)
    for q in range(size):
        for k in range(size):
            mask[q, k] = k < prefix if q < prefix else (k < prefix or k <= q)
    return mask


def test_mask_right(capsys):
    passes(check.prefix_lm_mask, prefix_lm_mask, capsys)


def test_mask_causal_everywhere(capsys):
    fails(check.prefix_lm_mask, lambda p, n: torch.ones(p + n, p + n, dtype=torch.bool).tril(), capsys,
          "both ways")


def caption_loss(logits, tokens, pad):
    total, count = 0.0, 0
    for b in range(tokens.shape[0]):
        for t in range(tokens.shape[1] - 1):
            if tokens[b, t + 1] != pad:
                total = total - logits[b, t].log_softmax(0)[tokens[b, t + 1]]
                count += 1
    return total / count


def test_loss_right(capsys):
    passes(check.caption_loss, caption_loss, capsys)


def test_loss_counting_padding(capsys):
    fails(check.caption_loss, lambda logits, tokens, pad: F.cross_entropy(logits[:, :-1].flatten(0, 1),
                                                                          tokens[:, 1:].flatten()), capsys, "padding")


def box_iou(a, b):
    out = []
    for (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) in zip(a.tolist(), b.tolist()):
        width, height = max(0.0, min(ax2, bx2) - max(ax1, bx1)), max(0.0, min(ay2, by2) - max(ay1, by1))
        inter = width * height
        union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
        out.append(inter / union if union > 0 else 0.0)
    return torch.tensor(out)


def test_iou_right(capsys):
    passes(check.box_iou, box_iou, capsys)


def test_iou_without_clamping(capsys):
    def wrong(a, b):
        low, high = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
        inter = (high - low).prod(dim=1)
        return inter / ((a[:, 2:] - a[:, :2]).prod(dim=1) + (b[:, 2:] - b[:, :2]).prod(dim=1) - inter)
    fails(check.box_iou, wrong, capsys, "clamp")
