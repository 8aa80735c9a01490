"""Checkers for the exercises of notebook 17_unified_backbones: the prefix-LM attention mask, the next-token
caption loss with padding ignored, and the intersection over union of boxes.

The references are the packaged functions of `course_lib.models.unified`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.models.unified import box_iou as reference_box_iou
from course_lib.models.unified import caption_loss as reference_caption_loss
from course_lib.models.unified import prefix_lm_mask as reference_prefix_lm_mask


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(17)


# --- prefix_lm_mask(prefix, length) ---------------------------------------------------------------------------------


def _mask_cases() -> list[Case]:
    return [Case(f"prefix {p}, length {n}", (p, n)) for p, n in ((2, 3), (4, 4), (1, 5), (3, 1), (0, 4))]


def _mask_causal_everywhere(prefix: int, length: int) -> Tensor:
    return torch.ones(prefix + length, prefix + length, dtype=torch.bool).tril()


def _mask_prefix_reads_text(prefix: int, length: int) -> Tensor:
    mask = reference_prefix_lm_mask(prefix, length)
    mask[:prefix] = True
    return mask


def _mask_text_without_prefix(prefix: int, length: int) -> Tensor:
    mask = reference_prefix_lm_mask(prefix, length)
    mask[prefix:, :prefix] = False
    return mask


prefix_lm_mask = FunctionChecker(
    "prefix_lm_mask",
    reference_prefix_lm_mask,
    _mask_cases,
    mistakes=[
        (_mask_causal_everywhere, "the image tokens are causal too; the prefix reads itself both ways."),
        (_mask_prefix_reads_text, "the image tokens read the caption; the prefix must never read the text (or a "
         "caption token would leak into the features every earlier position sees)."),
        (_mask_text_without_prefix, "the caption tokens do not read the image: every text row must be True over "
         "the whole prefix."),
    ],
    hint="mask = causal (tril) everywhere; then mask[:, :prefix] = True and mask[:prefix, prefix:] = False",
)


# --- caption_loss(logits, tokens, pad) ------------------------------------------------------------------------------


def _loss_cases() -> list[Case]:
    generator = _generator()
    cases = []
    for batch, length, vocab in ((2, 4, 5), (3, 6, 7), (1, 3, 4)):
        tokens = torch.randint(1, vocab, (batch, length), generator=generator)
        tokens[0, -1] = 0  # padding at the end of the first caption
        cases.append(Case(f"({batch}, {length}) captions over {vocab} words, pad 0",
                          (torch.randn(batch, length, vocab, generator=generator), tokens, 0)))
    return cases


def _loss_unshifted(logits: Tensor, tokens: Tensor, pad: int) -> Tensor:
    return F.cross_entropy(logits.flatten(0, 1), tokens.flatten().masked_fill(tokens.flatten() == pad, -100))


def _loss_with_padding(logits: Tensor, tokens: Tensor, pad: int) -> Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


caption_loss = FunctionChecker(
    "caption_loss",
    reference_caption_loss,
    _loss_cases,
    mistakes=[
        (_loss_unshifted, "the logits at position t predict token t + 1: compare logits[:, :-1] with tokens[:, 1:]."),
        (_loss_with_padding, "padding counts in the loss; ignore targets equal to pad (ignore_index)."),
    ],
    hint="targets = tokens[:, 1:] with pad replaced by -100; F.cross_entropy(logits[:, :-1] flattened, targets "
         "flattened, ignore_index=-100)",
)


# --- box_iou(a, b) --------------------------------------------------------------------------------------------------


def _boxes(generator: torch.Generator, n: int) -> Tensor:
    corner = torch.rand(n, 2, generator=generator)
    return torch.cat([corner, corner + torch.rand(n, 2, generator=generator) * 0.5], dim=1)


def _iou_cases() -> list[Case]:
    generator = _generator()
    exact = (torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]),
             torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]]))
    return [Case("overlapping, identical and disjoint boxes", exact),
            Case("8 random pairs of boxes", (_boxes(generator, 8), _boxes(generator, 8)))]


def _iou_unclamped(a: Tensor, b: Tensor) -> Tensor:
    low, high = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    intersection = (high - low).prod(dim=1)
    union = (a[:, 2:] - a[:, :2]).prod(dim=1) + (b[:, 2:] - b[:, :2]).prod(dim=1) - intersection
    return intersection / union


def _iou_over_sum(a: Tensor, b: Tensor) -> Tensor:
    low, high = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    intersection = (high - low).clamp(min=0).prod(dim=1)
    return intersection / ((a[:, 2:] - a[:, :2]).prod(dim=1) + (b[:, 2:] - b[:, :2]).prod(dim=1))


box_iou = FunctionChecker(
    "box_iou",
    reference_box_iou,
    _iou_cases,
    mistakes=[
        (_iou_unclamped, "boxes that do not overlap get a non-zero intersection: clamp the overlap's width and "
         "height at 0 before multiplying them."),
        (_iou_over_sum, "the union is the sum of the two areas minus the intersection, which is otherwise counted "
         "twice."),
    ],
    hint="overlap = (min of the far corners - max of the near corners).clamp(min=0); intersection = its product; "
         "union = area_a + area_b - intersection",
)
