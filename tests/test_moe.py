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
    moe_aux,
    router_z_loss,
    routing_entropies,
    top_k_routing,
    usage_entropy,
)


def naive(moe: MoE, x: torch.Tensor, keep: torch.Tensor | None = None, group: torch.Tensor | None = None
          ) -> torch.Tensor:
    """One token at a time: the softmax over experts (from its group's router), its top k (renormalised for
    Mixtral), each kept expert weighted by its gate."""
    tokens = x.reshape(-1, x.shape[-1])
    groups = torch.zeros(len(tokens), dtype=torch.long) if group is None else group.reshape(-1)
    out = torch.zeros_like(tokens)
    for t in range(len(tokens)):
        router = moe.router.weight.reshape(-1, moe.experts, x.shape[-1])[groups[t] if moe.router_per_group else 0]
        probabilities = (router @ tokens[t]).softmax(-1)
        gates, experts = probabilities.topk(moe.k)
        if moe.renormalise:
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
    (lambda: MoE(8, 16, 4, 1, groups=2)(torch.randn(2, 3, 8), torch.full((2, 3), 2)), "groups=2"),
    (lambda: MoE(8, 16, 4, 1, groups=2)(torch.randn(2, 3, 8), torch.zeros(2, 4, dtype=torch.long)), "group must"),
    (lambda: usage_entropy(torch.ones(1)), "usage"),
])
def test_bad_arguments_are_named(call, words):
    with pytest.raises(ValueError, match=words):
        call()


@pytest.mark.parametrize("k", [1, 2])
def test_a_router_per_group_sends_each_token_by_its_group_router(k):
    torch.manual_seed(4)
    moe = MoE(12, 20, 4, k, groups=3, router_per_group=True)
    x = torch.randn(2, 6, 12)
    group = torch.randint(3, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(moe(x, group), naive(moe, x, group=group), rtol=1e-5, atol=1e-6)
        by_sequence = torch.tensor([2, 0])  # one group per sequence (a task id) is the same as repeating it
        torch.testing.assert_close(moe(x, by_sequence), moe(x, by_sequence[:, None].expand(2, 6)))


def test_switch_gate_is_the_router_probability_so_the_router_learns_from_the_main_loss():
    torch.manual_seed(6)
    moe = MoE(8, 16, 4, 1)
    assert not moe.renormalise
    x = torch.randn(2, 3, 8)
    moe(x).pow(2).mean().backward()  # no auxiliary loss
    assert moe.router.weight.grad.abs().max() > 1e-3
    renormalised = MoE(8, 16, 4, 1, renormalise=True)  # the gate g / g = 1: nothing but rounding reaches the router
    renormalised.load_state_dict(moe.state_dict())
    renormalised(x).pow(2).mean().backward()
    assert renormalised.router.weight.grad.abs().max() < 1e-6


def test_routing_entropies_per_group_equal_a_loop_over_groups():
    torch.manual_seed(5)
    logits, group = torch.randn(14, 6), torch.tensor([0, 1, 1, 0, 3, 3, 0, 1, 3, 0, 1, 1, 3, 0])
    locals_, globals_ = [], []
    for g in (0, 1, 3):  # group 2 is absent and must not count
        p = logits[group == g].softmax(-1)
        locals_.append(-(p * p.log()).sum(-1).mean())
        globals_.append(-(p.mean(0) * p.mean(0).log()).sum())
    local, global_ = routing_entropies(logits, group, 4)
    torch.testing.assert_close(local, torch.stack(locals_).mean())
    torch.testing.assert_close(global_, torch.stack(globals_).mean())


def test_usage_and_its_entropy():
    moe = MoE(8, 16, 4, 2, groups=2)
    x, group = torch.randn(3, 5, 8), torch.randint(2, (3, 5))
    moe(x, group)
    indices, _ = top_k_routing(moe.router(x.reshape(-1, 8)), 2)
    torch.testing.assert_close(moe.aux["usage"], torch.bincount(indices.flatten(), minlength=4) / indices.numel())
    for g in range(2):
        mine = indices[group.reshape(-1) == g].flatten()
        torch.testing.assert_close(moe.aux["group_usage"][g], torch.bincount(mine, minlength=4) / max(1, len(mine)))
    assert math.isclose(usage_entropy(torch.ones(8)).item(), 1.0, rel_tol=1e-6)
    assert usage_entropy(torch.tensor([1.0, 0, 0, 0])).item() == 0
    assert 0 < usage_entropy(torch.tensor([3.0, 1, 0, 0])).item() < 1


def test_moe_aux_averages_the_layers():
    layers = torch.nn.Sequential(MoE(8, 16, 4, 1), MoE(8, 16, 4, 1))
    with pytest.raises(ValueError, match="forward pass"):
        moe_aux(layers)
    x = torch.randn(2, 3, 8)
    layers[1](layers[0](x))
    torch.testing.assert_close(moe_aux(layers)["balance"], (layers[0].aux["balance"] + layers[1].aux["balance"]) / 2)


def test_gpt_with_experts_in_every_other_block_trains_and_repeats():
    from course_lib.models.gpt import GPT, GPTConfig
    from course_lib.train.language import fit_language_model

    config = GPTConfig(vocab_size=16, max_len=12, dim=16, depth=4, heads=2, ffn="glu", moe_experts=4)
    assert [config.is_moe(i) for i in range(4)] == [False, True, False, True]
    data = torch.randint(16, (500,), generator=torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = GPT(config)
        assert sum(isinstance(m, MoE) for m in model.modules()) == 2
        history = fit_language_model(model, data, length=12, steps=6, lr=1e-2, batch=4,
                                     extra_loss=lambda model=model: 0.01 * moe_aux(model)["balance"])
        runs.append(history["train"])
        assert len(history["seconds"]) == 6 and history["seconds"] == sorted(history["seconds"])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("kind", ["moe", "moe-modality"])
def test_unified_transformer_with_experts_routes_by_modality(kind):
    from course_lib.models.unified import UnifiedConfig, UnifiedTransformer

    config = UnifiedConfig(vocab_size=10, kind=kind, image_size=16, patch_size=8, context_length=5, dim=16, heads=2,
                           experts=4)
    model = UnifiedTransformer(config, seed=0)
    images, tokens = torch.randn(3, 3, 16, 16), torch.randint(10, (3, 5))
    out = model(images, tokens)
    assert out.shape == (3, 4 + 5, 16)
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    assert len(moes) == 2 and all(m.router_per_group == (kind == "moe-modality") for m in moes)
    assert moes[0].aux["group_usage"].shape == (2, 4)
    dense = sum(p.numel() for p in UnifiedTransformer(UnifiedConfig(vocab_size=10, dim=16, heads=2)).blocks[0]
                .block.ffn.parameters() if p.dim() > 1)
    assert moes[0].gate_up[0].numel() + moes[0].down[0].numel() == pytest.approx(dense, rel=0.05)
