"""Checkers for the exercises of notebook 15_contrastive_vision_language: CLIP's symmetric contrastive loss,
recall@k for retrieval, and prompt ensembling for zero-shot classification.

The references are the packaged functions of `course_lib.models.clip`: `clip_loss` (without caption ids),
`recall_at_k` and `prompt_ensemble`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.models.clip import clip_loss as reference_clip_loss
from course_lib.models.clip import prompt_ensemble as reference_prompt_ensemble
from course_lib.models.clip import recall_at_k as reference_recall_at_k


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(15)


# --- clip_loss(logits_per_image) ------------------------------------------------------------------------------


def _loss_cases() -> list[Case]:
    generator = _generator()
    cases = [Case("logits [[2, 0], [1, 3]]", (torch.tensor([[2.0, 0.0], [1.0, 3.0]]),))]
    for size in (3, 5, 8):
        cases.append(Case(f"random ({size}, {size}) logits, not symmetric", (torch.randn(size, size, generator=generator) * 3,)))
    return cases


def _loss_images_only(logits: Tensor) -> Tensor:
    return F.cross_entropy(logits, torch.arange(len(logits)))


def _loss_summed(logits: Tensor) -> Tensor:
    targets = torch.arange(len(logits))
    return F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)


clip_loss = FunctionChecker(
    "clip_loss",
    lambda logits: reference_clip_loss(logits),
    _loss_cases,
    mistakes=[
        (_loss_images_only, "only the image->text direction (the rows) counts; add the text->image one, which "
         "reads the columns (logits.T), and average the two."),
        (_loss_summed, "the two directions are summed; CLIP averages them."),
    ],
    hint="targets = torch.arange(B); (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2",
)


# --- recall_at_k(similarity, k) ---------------------------------------------------------------------------------


def _recall_cases() -> list[Case]:
    generator = _generator()
    # sizes that are powers of two, so that every recall is exact in any float arithmetic
    similarity = torch.tensor([[0.9, 0.1, 0.3, 0.0], [0.8, 0.2, 0.1, 0.0], [0.1, 0.7, 0.6, 0.2], [0.5, 0.1, 0.2, 0.4]])
    cases = [Case("a (4, 4) similarity, k 1", (similarity, 1)), Case("the same similarity, k 2", (similarity, 2))]
    for size, k in ((8, 1), (8, 3), (16, 5)):
        cases.append(Case(f"random ({size}, {size}) similarity, k {k}", (torch.randn(size, size, generator=generator), k)))
    return cases


def _recall_columns(similarity: Tensor, k: int) -> float:
    return reference_recall_at_k(similarity.T.contiguous(), k)


def _recall_top_one(similarity: Tensor, k: int) -> float:
    return reference_recall_at_k(similarity, 1)


def _recall_lowest(similarity: Tensor, k: int) -> float:
    return reference_recall_at_k(-similarity, k)


recall_at_k = FunctionChecker(
    "recall_at_k",
    lambda similarity, k: reference_recall_at_k(similarity, k),
    _recall_cases,
    mistakes=[
        (_recall_columns, "this ranks the images for each caption (the columns); image->text retrieval ranks the "
         "captions for each image (the rows)."),
        (_recall_top_one, "only the best caption counts; any of the k best is a hit."),
        (_recall_lowest, "the k LEAST similar captions are taken; topk picks the largest."),
    ],
    hint="top = similarity.topk(k, dim=1).indices; hits = (top == torch.arange(N)[:, None]).any(dim=1); "
    "return hits.float().mean().item()",
)


# --- prompt_ensemble(embeddings) ----------------------------------------------------------------------------------


def _ensemble_cases() -> list[Case]:
    generator = _generator()
    cases = []
    for classes, prompts, dim in ((2, 1, 3), (3, 2, 4), (4, 3, 8)):
        embeddings = F.normalize(torch.randn(classes, prompts, dim, generator=generator), dim=-1)
        cases.append(Case(f"unit embeddings of {classes} classes x {prompts} prompts x {dim}", (embeddings,)))
    return cases


def _ensemble_not_renormalised(embeddings: Tensor) -> Tensor:
    return embeddings.mean(dim=1)


def _ensemble_over_classes(embeddings: Tensor) -> Tensor:
    return F.normalize(embeddings.mean(dim=0), dim=-1)


prompt_ensemble = FunctionChecker(
    "prompt_ensemble",
    reference_prompt_ensemble,
    _ensemble_cases,
    mistakes=[
        (_ensemble_not_renormalised, "the mean of unit vectors is shorter than 1; normalise it again, so that every "
         "class is scored by a cosine."),
        (_ensemble_over_classes, "the mean is over the classes (dim 0); average each class's prompts (dim 1)."),
    ],
    hint="F.normalize(embeddings.mean(dim=1), dim=-1)",
)
