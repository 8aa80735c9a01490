"""The checkers of notebook 15_contrastive_vision_language: right answers pass, plausible wrong ones fail with a
message naming the mistake. Each correct answer is written here the way a learner would, independently of the
packaged references."""

from __future__ import annotations

import torch
from checking import fails, passes

from course_lib.checks import contrastive as check

# --- clip_loss ----------------------------------------------------------------------------------------------


def clip_loss(logits):
    size = len(logits)
    image_to_text = -torch.stack([logits[i].log_softmax(0)[i] for i in range(size)]).mean()
    text_to_image = -torch.stack([logits[:, j].log_softmax(0)[j] for j in range(size)]).mean()
    return (image_to_text + text_to_image) / 2


def test_clip_loss_right(capsys):
    passes(check.clip_loss, clip_loss, capsys)


def test_clip_loss_one_direction(capsys):
    fails(check.clip_loss, lambda logits: torch.nn.functional.cross_entropy(logits, torch.arange(len(logits))),
          capsys, "text->image one")


def test_clip_loss_rows_twice(capsys):
    def rows_twice(logits):
        targets = torch.arange(len(logits))
        loss = torch.nn.functional.cross_entropy(logits, targets)
        return (loss + loss) / 2

    fails(check.clip_loss, rows_twice, capsys, "reads the columns")  # the same numbers as one direction alone


def test_clip_loss_summed(capsys):
    fails(check.clip_loss, lambda logits: 2 * clip_loss(logits), capsys, "averages them")


# --- recall_at_k ---------------------------------------------------------------------------------------------


def recall_at_k(similarity, k):
    hits = 0
    for i, row in enumerate(similarity.tolist()):
        best = sorted(range(len(row)), key=lambda j: -row[j])[:k]
        hits += i in best
    return hits / len(similarity)


def test_recall_right(capsys):
    passes(check.recall_at_k, recall_at_k, capsys)


def test_recall_by_columns(capsys):
    fails(check.recall_at_k, lambda s, k: recall_at_k(s.T, k), capsys, "captions for each image")


def test_recall_top_one_only(capsys):
    fails(check.recall_at_k, lambda s, k: recall_at_k(s, 1), capsys, "any of the k best")


# --- prompt_ensemble -----------------------------------------------------------------------------------------


def prompt_ensemble(embeddings):
    mean = embeddings.sum(dim=1) / embeddings.shape[1]
    return mean / mean.norm(dim=-1, keepdim=True)


def test_prompt_ensemble_right(capsys):
    passes(check.prompt_ensemble, prompt_ensemble, capsys)


def test_prompt_ensemble_not_renormalised(capsys):
    fails(check.prompt_ensemble, lambda e: e.mean(dim=1), capsys, "normalise it again")


def test_prompt_ensemble_over_classes(capsys):
    fails(check.prompt_ensemble, lambda e: prompt_ensemble(e.transpose(0, 1)), capsys, "each class's prompts")
