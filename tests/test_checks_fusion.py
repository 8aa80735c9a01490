"""The checkers of notebook 16_fusion: right answers pass, plausible wrong ones fail with a message naming the
mistake. Each correct answer is written here the way a learner would, independently of the packaged references."""

from __future__ import annotations

import torch
from checking import fails, passes

from course_lib.checks import fusion as check


def modality_pure_mask(lengths, fusion_tokens):
    owner = [m for m, n in enumerate(lengths) for _ in range(n)] + [-1] * fusion_tokens
    size = len(owner)
    mask = torch.zeros(size, size, dtype=torch.bool)
    for q in range(size):
        for k in range(size):
            mask[q, k] = owner[q] == -1 or owner[q] == owner[k]
    return mask


def test_mask_right(capsys):
    passes(check.modality_pure_mask, modality_pure_mask, capsys)


def test_mask_where_modalities_read_the_fusion_tokens(capsys):
    def wrong(lengths, fusion_tokens):
        mask = modality_pure_mask(lengths, fusion_tokens)
        mask[:, sum(lengths):] = True
        return mask
    fails(check.modality_pure_mask, wrong, capsys, "no longer pure")


def test_mask_transposed(capsys):
    fails(check.modality_pure_mask, lambda lengths, f: modality_pure_mask(lengths, f).T, capsys, "transposed")


def attention_pairs(lengths, fusion, fusion_tokens):
    total = sum(lengths)
    if fusion == "early":
        return total * total
    if fusion == "zorro":
        return (total + fusion_tokens) ** 2
    if fusion == "late":
        return sum(n * n for n in lengths)
    if fusion == "cross":
        return sum(n * n + n * (total - n) for n in lengths)
    return sum((n + fusion_tokens) ** 2 for n in lengths)


def test_pairs_right(capsys):
    passes(check.attention_pairs, attention_pairs, capsys)


def test_pairs_cross_without_self_attention(capsys):
    def wrong(lengths, fusion, fusion_tokens):
        if fusion == "cross":
            return sum(n * (sum(lengths) - n) for n in lengths)
        return attention_pairs(lengths, fusion, fusion_tokens)
    fails(check.attention_pairs, wrong, capsys, "attends to itself")


def test_pairs_without_fusion_tokens(capsys):
    fails(check.attention_pairs, lambda lengths, fusion, f: attention_pairs(lengths, fusion, 0), capsys,
          "left out")


def drop_modalities(inputs, generator, p):
    names = list(inputs)
    draws = torch.rand(len(names), generator=generator)
    kept = {name: inputs[name] for name, draw in zip(names, draws) if draw >= p}
    if not kept:
        best = names[draws.argmax().item()]
        kept = {best: inputs[best]}
    return kept


def test_dropout_right(capsys):
    passes(check.drop_modalities, drop_modalities, capsys)


def test_dropout_that_can_drop_everything(capsys):
    def wrong(inputs, generator, p):
        draws = torch.rand(len(inputs), generator=generator)
        return {name: inputs[name] for name, draw in zip(inputs, draws) if draw >= p}
    fails(check.drop_modalities, wrong, capsys, "nothing is left")


def test_dropout_with_p_as_keep_probability(capsys):
    def wrong(inputs, generator, p):
        draws = torch.rand(len(inputs), generator=generator)
        kept = {name: inputs[name] for name, draw in zip(inputs, draws) if draw < p}
        return kept or {list(inputs)[draws.argmin().item()]: None}
    fails(check.drop_modalities, wrong, capsys, "probability of dropping")
