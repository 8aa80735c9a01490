"""The checkers of notebook 18_mixture_of_experts: right answers pass, plausible wrong ones fail with a message
naming the mistake. Each correct answer is written here the way a learner would, independently of the packaged
references."""

from __future__ import annotations

import math

import torch
from checking import fails, passes

from course_lib.checks import moe as check


def top_k_routing(logits, k):
    indices = torch.zeros(len(logits), k, dtype=torch.long)
    gates = torch.zeros(len(logits), k)
    for t, row in enumerate(logits):
        probabilities = torch.exp(row - row.max())
        probabilities = probabilities / probabilities.sum()
        order = sorted(range(len(row)), key=lambda e: -probabilities[e].item())[:k]
        indices[t] = torch.tensor(order)
        gates[t] = probabilities[order] / probabilities[order].sum()
    return indices, gates


def test_top_k_right(capsys):
    passes(check.top_k_routing, top_k_routing, capsys)


def test_top_k_not_renormalised(capsys):
    def wrong(logits, k):
        gates, indices = logits.softmax(-1).topk(k, dim=-1)
        return indices, gates
    fails(check.top_k_routing, wrong, capsys, "sum to one")


def test_top_k_over_tokens(capsys):
    def wrong(logits, k):
        gates, indices = logits.softmax(0).topk(k, dim=-1)
        return indices, gates / gates.sum(-1, keepdim=True)
    fails(check.top_k_routing, wrong, capsys, "over the tokens")


def load_balancing_loss(logits, indices):
    tokens, experts = logits.shape
    probabilities = logits.softmax(-1)
    total = 0.0
    for e in range(experts):
        share = (indices == e).sum().item() / indices.numel()
        total = total + share * probabilities[:, e].mean()
    return experts * total


def test_balance_right(capsys):
    passes(check.balance_loss, load_balancing_loss, capsys)


def test_balance_without_the_factor(capsys):
    fails(check.balance_loss, lambda logits, indices: load_balancing_loss(logits, indices) / logits.shape[1], capsys,
          "number of experts")


def test_balance_first_choice_only(capsys):
    fails(check.balance_loss, lambda logits, indices: load_balancing_loss(logits, indices[:, :1]), capsys,
          "first choice")


def routing_entropies(logits, group, groups):
    locals_, globals_ = [], []
    for g in range(groups):
        chosen = logits[group == g]
        if len(chosen) == 0:
            continue
        p = chosen.softmax(-1)
        locals_.append(-(p * p.log()).sum(-1).mean())
        mean = p.mean(0)
        globals_.append(-(mean * mean.log()).sum())
    return torch.stack(locals_).mean(), torch.stack(globals_).mean()


def test_entropies_right(capsys):
    passes(check.routing_entropies, routing_entropies, capsys)


def test_entropies_over_all_tokens(capsys):
    def wrong(logits, group, groups):
        return routing_entropies(logits, torch.zeros_like(group), 1)
    fails(check.routing_entropies, wrong, capsys, "per group")


def test_entropies_swapped(capsys):
    fails(check.routing_entropies, lambda *a: routing_entropies(*a)[::-1], capsys, "swapped")


def test_entropies_with_an_empty_group_as_zero(capsys):
    def wrong(logits, group, groups):
        local, global_ = routing_entropies(logits, group, groups)
        present = len(set(group.tolist()))
        return local * present / groups, global_ * present / groups
    fails(check.routing_entropies, wrong, capsys, "groups present")


def test_uniform_routing_has_the_largest_global_entropy():
    local, global_ = check.reference_entropies(torch.zeros(6, 4), torch.zeros(6, dtype=torch.long), 1)
    assert math.isclose(local.item(), math.log(4), rel_tol=1e-6) and math.isclose(global_.item(), math.log(4), rel_tol=1e-6)
