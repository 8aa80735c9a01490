"""The checkers of notebook 10's token and multi-modal exercises: right answers pass, the mistakes fail named."""

import pytest
import torch
from checking import fails, passes

from course_lib.checks import masked_tokens as check
from course_lib.models.multimae import dirichlet_split


def replace_masked(tokens, mask, mask_token):
    out = tokens.clone()
    for b in range(tokens.shape[0]):
        for t in range(tokens.shape[1]):
            if mask[b, t]:
                out[b, t] = mask_token
    return out


def split_budget(shares, budget):
    rows = []
    for row in shares.tolist():
        ideal = [s * budget for s in row]
        counts = [int(v // 1) for v in ideal]
        order = sorted(range(len(row)), key=lambda i: -(ideal[i] - counts[i]))
        for i in order[: budget - sum(counts)]:
            counts[i] += 1
        rows.append(counts)
    return torch.tensor(rows)


def test_right_answers_pass(capsys):
    passes(check.replace_masked, replace_masked, capsys)
    passes(check.split_budget, split_budget, capsys)


@pytest.mark.parametrize("wrong, words", [
    (lambda t, m, k: t + m[..., None] * k, "replaces them"),
    (lambda t, m, k: torch.where(m[..., None], t, k), "wrong way round"),
    (lambda t, m, k: t * (~m[..., None]), "zeroed"),
])
def test_replace_masked_mistakes(wrong, words, capsys):
    assert words in fails(check.replace_masked, wrong, capsys, "replace_masked")


@pytest.mark.parametrize("wrong, words", [
    (lambda s, b: (s * b).floor().long(), "largest remainders"),
    (lambda s, b: torch.cat([(s[:, :-1] * b).floor().long(),
                             b - (s[:, :-1] * b).floor().long().sum(1, keepdim=True)], 1), "last modality"),
])
def test_split_budget_mistakes(wrong, words, capsys):
    assert words in fails(check.split_budget, wrong, capsys, "split_budget")


def test_rounding_alone_fails(capsys):
    fails(check.split_budget, lambda s, b: (s * b).round().long(), capsys, "split_budget")


def test_reference_is_the_packaged_rounding():
    g = torch.Generator().manual_seed(0)
    counts = dirichlet_split(30, 16, 16, generator=g)
    assert (counts.sum(1) == 16).all()
