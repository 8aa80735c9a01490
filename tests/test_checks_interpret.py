"""The checkers of notebook 19_interpretability: right answers pass, plausible wrong ones fail with a message naming
the mistake. Each correct answer is written here the way a learner would, independently of the packaged
references."""

from __future__ import annotations

import torch
from checking import fails, passes

from course_lib.checks import interpret as check


def attention_rollout(weights):
    batch, _, length, _ = weights[0].shape
    rollout = torch.stack([torch.eye(length)] * batch)
    for layer in weights:
        mixed = 0.5 * layer.mean(dim=1) + 0.5 * torch.eye(length)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = torch.bmm(mixed, rollout)
    return rollout


def test_rollout_right(capsys):
    passes(check.attention_rollout, attention_rollout, capsys)


def test_rollout_without_the_residual(capsys):
    def wrong(weights):
        rollout = torch.stack([torch.eye(weights[0].shape[-1])] * weights[0].shape[0])
        for layer in weights:
            rollout = torch.bmm(layer.mean(1), rollout)
        return rollout
    fails(check.attention_rollout, wrong, capsys, "residual")


def test_rollout_in_the_wrong_order(capsys):
    def wrong(weights):
        length = weights[0].shape[-1]
        rollout = torch.stack([torch.eye(length)] * weights[0].shape[0])
        for layer in weights:
            rollout = torch.bmm(rollout, 0.5 * layer.mean(1) + 0.5 * torch.eye(length))
        return rollout
    fails(check.attention_rollout, wrong, capsys, "wrong order")


def relevance_propagation(weights, gradients):
    batch, heads, length, _ = weights[0].shape
    relevance = torch.stack([torch.eye(length)] * batch)
    for a, g in zip(weights, gradients):
        weighted = sum(torch.relu(a[:, h] * g[:, h]) for h in range(heads)) / heads
        relevance = relevance + torch.bmm(weighted, relevance)
    return relevance


def test_relevance_right(capsys):
    passes(check.relevance_propagation, relevance_propagation, capsys)


def test_relevance_without_gradients(capsys):
    fails(check.relevance_propagation, lambda w, g: relevance_propagation(w, [torch.ones_like(x) for x in g]), capsys,
          "gradients are ignored")


def test_relevance_unclipped(capsys):
    def wrong(weights, gradients):
        relevance = torch.stack([torch.eye(weights[0].shape[-1])] * weights[0].shape[0])
        for a, g in zip(weights, gradients):
            relevance = relevance + torch.bmm((a * g).mean(1), relevance)
        return relevance
    fails(check.relevance_propagation, wrong, capsys, "negative contributions")


def pointing_game(relevance, masks):
    grid = int(relevance.shape[1] ** 0.5)
    side = masks.shape[1] // grid
    hits = []
    for b in range(len(masks)):
        best = int(relevance[b].argmax())
        row, col = best // grid, best % grid
        hits.append(bool(masks[b, row * side:(row + 1) * side, col * side:(col + 1) * side].any()))
    return torch.tensor(hits)


def test_pointing_right(capsys):
    passes(check.pointing_game, pointing_game, capsys)


def test_pointing_transposed(capsys):
    def wrong(relevance, masks):
        grid = int(relevance.shape[1] ** 0.5)
        return pointing_game(relevance.reshape(-1, grid, grid).transpose(1, 2).reshape(len(relevance), -1), masks)
    fails(check.pointing_game, wrong, capsys, "swapped")


def test_pointing_at_the_least_relevant_patch(capsys):
    fails(check.pointing_game, lambda r, m: pointing_game(-r, m), capsys, "least relevant")
