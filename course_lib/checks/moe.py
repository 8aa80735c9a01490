"""Checkers for the exercises of notebook 18_mixture_of_experts: top-k routing, Switch's load-balancing loss and
LIMoE's per-modality routing entropies.

The references are the packaged functions of `course_lib.nn.moe`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.nn.moe import load_balancing_loss as reference_balance
from course_lib.nn.moe import routing_entropies as reference_entropies
from course_lib.nn.moe import top_k_routing as reference_top_k


def _logits(tokens: int, experts: int, seed: int, scale: float = 1.0) -> Tensor:
    return torch.randn(tokens, experts, generator=torch.Generator().manual_seed(seed)) * scale


# --- top_k_routing(logits, k) --------------------------------------------------------------------------------------


def _top_k_cases() -> list[Case]:
    return [Case(f"{t} tokens, {e} experts, k={k}", (_logits(t, e, seed, 2.0), k))
            for seed, (t, e, k) in enumerate(((6, 4, 1), (6, 4, 2), (9, 8, 2), (5, 8, 3)))]


def _top_k_mixtral(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    return reference_top_k(logits, k, renormalise=True)


def _top_k_not_renormalised(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    return reference_top_k(logits, k, renormalise=False)


def _top_k_softmax_over_tokens(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    gates, indices = logits.softmax(dim=0).topk(k, dim=-1)
    return indices, gates / gates.sum(dim=-1, keepdim=True)


def _top_k_raw_logits(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    gates, indices = logits.topk(k, dim=-1)
    return indices, gates / gates.sum(dim=-1, keepdim=True)


top_k_routing = FunctionChecker(
    "top_k_routing",
    _top_k_mixtral,
    _top_k_cases,
    mistakes=[
        (_top_k_not_renormalised, "the gates are the softmax probabilities of the k chosen experts, but they must be "
         "rescaled to sum to one over those k (Mixtral's gates)."),
        (_top_k_softmax_over_tokens, "the softmax runs over the tokens (dim 0); each token's distribution is over "
         "the experts, the last axis."),
        (_top_k_raw_logits, "the gates are rescaled logits; take the softmax over the experts first, then the top k "
         "of the probabilities."),
    ],
    hint="gates, indices = logits.softmax(dim=-1).topk(k, dim=-1); gates / gates.sum(dim=-1, keepdim=True)",
)


# --- load_balancing_loss(logits, indices) --------------------------------------------------------------------------


def _balance_cases() -> list[Case]:
    cases = []
    for seed, (t, e, k, scale) in enumerate(((8, 4, 1, 1.0), (12, 4, 2, 3.0), (10, 8, 2, 0.5), (16, 8, 1, 4.0))):
        logits = _logits(t, e, 10 + seed, scale)
        cases.append(Case(f"{t} tokens, {e} experts, k={k}", (logits, reference_top_k(logits, k)[0])))
    collapsed = torch.zeros(6, 4)
    collapsed[:, 2] = 5.0
    cases.append(Case("every token sent to expert 2", (collapsed, torch.full((6, 1), 2))))
    return cases


def _balance_without_count(logits: Tensor, indices: Tensor) -> Tensor:
    return reference_balance(logits, indices) / logits.shape[1]


def _balance_probability_squared(logits: Tensor, indices: Tensor) -> Tensor:
    probability = logits.softmax(dim=-1).mean(dim=0)
    return logits.shape[1] * (probability * probability).sum()


def _balance_first_choice_only(logits: Tensor, indices: Tensor) -> Tensor:
    return reference_balance(logits, indices[:, :1])


balance_loss = FunctionChecker(
    "load_balancing_loss",
    reference_balance,
    _balance_cases,
    mistakes=[
        (_balance_without_count, "the sum is not multiplied by the number of experts E: the loss should be 1 when "
         "routing is uniform, whatever E."),
        (_balance_probability_squared, "f_e, the share of assignments, is taken from the probabilities; it must count "
         "where the tokens were actually sent (the indices), which has no gradient, while P_e carries it."),
        (_balance_first_choice_only, "only the first choice of each token is counted; f_e is the share of all k "
         "assignments of every token."),
    ],
    hint="fraction = F.one_hot(indices, E).float().mean(dim=(0, 1)); probability = logits.softmax(-1).mean(0); "
         "E * (fraction * probability).sum()",
)


# --- routing_entropies(logits, group, groups) ----------------------------------------------------------------------


def _entropy_cases() -> list[Case]:
    cases = []
    for seed, (t, e, g) in enumerate(((10, 4, 2), (16, 8, 2), (12, 4, 3))):
        logits = _logits(t, e, 20 + seed, 2.0)
        group = torch.randint(g, (t,), generator=torch.Generator().manual_seed(30 + seed))
        cases.append(Case(f"{t} tokens, {e} experts, {g} groups", (logits, group, g)))
    logits = _logits(9, 4, 40, 2.0)
    cases.append(Case("9 tokens in groups 0 and 2 of 3 (group 1 absent)", (logits, torch.tensor([0, 2] * 4 + [0]), 3)))
    return cases


def _entropy(p: Tensor) -> Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(dim=-1)


def _entropies_ignoring_groups(logits: Tensor, group: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    probabilities = logits.softmax(dim=-1)
    return _entropy(probabilities).mean(), _entropy(probabilities.mean(dim=0))


def _entropies_swapped(logits: Tensor, group: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    local, global_ = reference_entropies(logits, group, groups)
    return global_, local


def _entropies_empty_groups_counted(logits: Tensor, group: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    probabilities = logits.softmax(dim=-1)
    members = F.one_hot(group, groups).float()
    count = members.sum(dim=0).clamp_min(1)
    local = (members.T @ _entropy(probabilities)) / count
    global_ = _entropy((members.T @ probabilities) / count[:, None])
    return local.mean(), global_.mean()


routing_entropies = FunctionChecker(
    "routing_entropies",
    reference_entropies,
    _entropy_cases,
    mistakes=[
        (_entropies_ignoring_groups, "the entropies are taken over all tokens together; LIMoE takes them per group "
         "(per modality), then averages over the groups, so that one modality cannot hide behind the other."),
        (_entropies_swapped, "local and global are swapped: local is the mean of each token's entropy, global the "
         "entropy of the group's mean distribution."),
        (_entropies_empty_groups_counted, "a group with no token in the batch is averaged in as a 0; average over the "
         "groups present only."),
    ],
    hint="for each group present: p = logits[group == g].softmax(-1); local = entropy(p).mean(); "
         "global = entropy(p.mean(0)); then average each over the groups",
)
