"""Mixture of experts (notebook 18, library first): the grouped dispatch against a per-token loop and against
Hugging Face's Mixtral block, capacity and the dropped fraction against their formula, the router losses."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.nn.moe import (
    MoE,
    capacity_mask,
    expert_capacity,
    expert_choice_routing,
    load_balancing_loss,
    router_z_loss,
    top_k_routing,
)


def naive(moe: MoE, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """One token at a time: the softmax over experts, its top k renormalised, each kept expert weighted by its gate."""
    tokens = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(tokens)
    for t in range(len(tokens)):
        probabilities = moe.router(tokens[t]).softmax(-1)
        gates, experts = probabilities.topk(moe.k)
        gates = gates / gates.sum()
        for slot in range(moe.k):
            if keep is None or keep[t, slot]:
                out[t] += gates[slot] * moe.expert(int(experts[slot]), tokens[t][None])[0]
    return out.reshape(x.shape)


@pytest.mark.parametrize("experts, k", [(4, 1), (4, 2), (8, 3)])
def test_grouped_dispatch_equals_a_per_token_loop(experts, k):
    torch.manual_seed(0)
    moe = MoE(12, 20, experts, k)
    x = torch.randn(3, 7, 12)
    with torch.no_grad():
        torch.testing.assert_close(moe(x), naive(moe, x), rtol=1e-5, atol=1e-6)
    assert moe.aux["dropped"] == 0


def test_capacity_drops_exactly_what_the_mask_says_and_the_formula_counts():
    torch.manual_seed(1)
    moe = MoE(12, 20, 4, 2, capacity_factor=1.0)
    x = torch.randn(2, 9, 12)
    with torch.no_grad():
        out = moe(x)
        indices, _ = top_k_routing(moe.router(x.reshape(-1, 12)), 2)
    capacity = expert_capacity(18, 4, 2, 1.0)
    assert capacity == 9
    keep = capacity_mask(indices, 4, capacity)
    counts = torch.bincount(indices.flatten(), minlength=4)
    expected_dropped = (counts - capacity).clamp(min=0).sum().item() / indices.numel()
    assert math.isclose(moe.aux["dropped"].item(), expected_dropped, abs_tol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(out, naive(moe, x, keep), rtol=1e-5, atol=1e-6)


def test_capacity_serves_first_choices_first_in_token_order():
    indices = torch.tensor([[0, 1], [0, 1], [1, 0], [0, 2]])  # expert 0 is asked 4 times, first choices 3 times
    keep = capacity_mask(indices, 3, 2)
    # expert 0 keeps the first choices of tokens 0 and 1; expert 1 keeps token 2's first and token 0's second
    assert keep.tolist() == [[True, True], [True, False], [True, False], [False, True]]


def test_mixtral_block_from_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = transformers.MixtralConfig(hidden_size=16, intermediate_size=24, num_local_experts=4,
                                        num_experts_per_tok=2, router_jitter_noise=0.0)
    torch.manual_seed(0)
    block = MixtralSparseMoeBlock(config).eval()
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.normal_(0, 0.3)
    ours = MoE.from_hf(block)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), block(x), rtol=1e-5, atol=1e-6)


def test_losses_match_their_definitions():
    torch.manual_seed(2)
    logits = torch.randn(10, 4)
    indices, _ = top_k_routing(logits, 2)
    f = torch.stack([(indices == e).float().sum() / indices.numel() for e in range(4)])
    p = logits.softmax(-1).mean(0)
    torch.testing.assert_close(load_balancing_loss(logits, indices), 4 * (f * p).sum())
    torch.testing.assert_close(router_z_loss(logits), torch.logsumexp(logits, -1).pow(2).mean())


def test_balance_loss_is_one_when_routing_is_uniform_and_grows_when_it_collapses():
    even = torch.zeros(20, 4)  # equal logits: probability 1/4 each ...
    indices = torch.arange(20)[:, None] % 4  # ... and tokens spread evenly
    assert math.isclose(load_balancing_loss(even, indices).item(), 1.0, rel_tol=1e-6)
    collapsed = torch.tensor([[5.0, 0, 0, 0]]).repeat(20, 1)
    assert load_balancing_loss(collapsed, torch.zeros(20, 1, dtype=torch.long)).item() > 3.5


def test_expert_choice_gives_every_expert_its_capacity():
    logits = torch.randn(16, 4, generator=torch.Generator().manual_seed(3))
    tokens, gates = expert_choice_routing(logits, 5)
    assert tokens.shape == gates.shape == (4, 5)
    for e in range(4):
        probabilities = logits.softmax(-1)[:, e]
        assert set(tokens[e].tolist()) == set(probabilities.topk(5).indices.tolist())
        torch.testing.assert_close(gates[e], probabilities[tokens[e]])


def test_gates_sum_to_one_and_the_router_learns_through_them():
    moe = MoE(8, 16, 4, 2)
    out = moe(torch.randn(2, 3, 8))
    (out.pow(2).mean() + 0.01 * moe.aux["balance"] + 0.001 * moe.aux["z"]).backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    _, gates = top_k_routing(torch.randn(5, 4), 3)
    torch.testing.assert_close(gates.sum(-1), torch.ones(5))


@pytest.mark.parametrize("call, words", [
    (lambda: MoE(8, 16, 2, 3), "k=3"), (lambda: MoE(8, 0, 2, 1), "hidden"),
    (lambda: MoE(8, 16, 4, 2, capacity_factor=0), "capacity_factor"),
    (lambda: MoE(8, 16, 4, 2)(torch.randn(2, 8)), "x must be"),
    (lambda: top_k_routing(torch.randn(3, 4), 5), "k=5"), (lambda: top_k_routing(torch.zeros(3, 4, dtype=torch.long), 1), "logits"),
    (lambda: expert_choice_routing(torch.randn(3, 4), 4), "capacity"),
    (lambda: expert_capacity(0, 4, 2, 1.0), "tokens"),
])
def test_bad_arguments_are_named(call, words):
    with pytest.raises(ValueError, match=words):
        call()
