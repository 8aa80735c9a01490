"""Post-training quantisation, structured pruning and token merging (`course_lib.compression`), each against a
direct computation: the quantisers' grids and errors, scale reparameterisation that changes nothing, pruning that
equals zeroing, merging that conserves what it averages."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import compression as C
from course_lib.models import ViT, ViTConfig
from course_lib.nn import scaled_dot_product_attention, transform_attention_weights


def tiny_vit(seed: int = 0, **overrides) -> ViT:
    torch.manual_seed(seed)
    config = dict(image_size=8, patch_size=2, channels=1, dim=16, depth=2, heads=4, num_classes=3, pool="cls")
    model = ViT(ViTConfig(**{**config, **overrides})).eval()
    with torch.no_grad():  # non-trivial norms, so that reparameterisation has something to move
        for module in model.modules():
            if isinstance(module, nn.LayerNorm) or type(module).__name__ == "LayerNorm":
                module.weight.uniform_(0.5, 2.0), module.bias.normal_()
    return model


def images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_grid_and_error(bits, per_channel):
    weight = torch.randn(5, 7) * torch.logspace(-2, 1, 5)[:, None]
    quantized = C.quantize_weight(weight, bits, per_channel=per_channel)
    levels = 2 ** (bits - 1) - 1
    magnitude = weight.abs().amax(dim=1, keepdim=True) if per_channel else weight.abs().amax()
    scale = magnitude / levels
    codes = quantized / scale
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= levels + 1e-4
    assert ((quantized - weight).abs() <= scale / 2 + 1e-6).all()


def test_per_channel_is_never_worse_on_unequal_rows():
    weight = torch.randn(8, 16) * torch.logspace(-3, 0, 8)[:, None]
    error = {pc: (C.quantize_weight(weight, 4, per_channel=pc) - weight).pow(2).sum(dim=1) / weight.pow(2).sum(dim=1)
             for pc in (True, False)}  # relative error of each row
    assert (error[True] <= error[False] + 1e-12).all() and error[True].mean() < 0.1 * error[False].mean()


def test_uniform_quantizer_spans_range_and_keeps_zero():
    low, high = torch.tensor([-1.0, -0.1, 0.5]), torch.tensor([2.0, 0.3, 3.0])
    scale, zero = C.minmax_parameters(low, high, 4)
    x = torch.stack([torch.linspace(lo, hi, 50) for lo, hi in zip(low.clamp(max=0), high)], dim=1)  # (50, 3)
    q = C.uniform_quantize(x, scale, zero, 4)
    assert ((q - x).abs() <= scale / 2 + 1e-6).all()
    assert (C.uniform_quantize(torch.zeros(3), scale, zero, 4) == 0).all()
    assert torch.equal(zero, zero.round())


def test_log2_grid():
    p = torch.rand(1000).pow(3)
    for bits in (2, 3, 4):
        q = C.log2_quantize(p, bits)
        nonzero = q[q > 0]
        exponents = -torch.log2(nonzero)
        assert torch.allclose(exponents, exponents.round()) and exponents.max() <= 2**bits - 2
        kept = q > 0
        assert ((q[kept] / p[kept]) <= math.sqrt(2) + 1e-6).all() and ((p[kept] / q[kept]) <= math.sqrt(2) + 1e-6).all()
        assert (p[~kept] < 2.0 ** -(2**bits - 2) + 1e-9).all()  # only weights below the grid become 0
    powers = torch.exp2(-torch.arange(0, 7.0))
    assert torch.equal(C.log2_quantize(powers, 3), powers)


def test_log_sqrt2_grid_is_finer_and_runs_as_shifts():
    p = torch.rand(2000).pow(2).clamp_min(1e-4)
    fine, coarse = C.log_sqrt2_quantize(p, 6), C.log2_quantize(p, 6)
    assert (fine / p).log2().abs().max() <= 0.25 + 1e-5 and (coarse / p).log2().abs().max() <= 0.5 + 1e-5
    assert (fine / p).log2().abs().mean() < 0.6 * (coarse / p).log2().abs().mean()
    codes = torch.arange(0, 40)
    assert torch.allclose(C.log_sqrt2_as_shifts(codes), torch.exp2(-codes / 2), rtol=1e-6)
    assert torch.equal(C.log_sqrt2_quantize(torch.tensor([2.0**-3, 2.0**-3.5]), 3), torch.tensor([2.0**-3, 0.0]))  # q = 6 is the last level


def test_bits_are_validated():
    with pytest.raises(ValueError, match="bits=1"):
        C.quantize_weight(torch.randn(2, 2), 1)
    with pytest.raises(ValueError, match="bits=2.5"):
        C.log2_quantize(torch.rand(3), 2.5)


def test_transform_attention_weights_replaces_the_softmax():
    q, k, v = torch.randn(3, 2, 4, 5, 8).unbind(0)
    plain = scaled_dot_product_attention(q, k, v, impl="fused")
    with transform_attention_weights(lambda w: w):
        same = scaled_dot_product_attention(q, k, v, impl="fused")
    with transform_attention_weights(lambda w: torch.full_like(w, 1 / w.shape[-1])):
        averaged = scaled_dot_product_attention(q, k, v, impl="fused")
    assert torch.allclose(plain, same, atol=1e-5)
    assert torch.allclose(averaged, v.mean(dim=-2, keepdim=True).expand_as(averaged), atol=1e-6)
    assert torch.equal(scaled_dot_product_attention(q, k, v), scaled_dot_product_attention(q, k, v))  # reset after


def test_reparameterization_keeps_the_function_and_the_rounding():
    torch.manual_seed(0)
    norm, layer = nn.LayerNorm(6), nn.Linear(6, 4)
    with torch.no_grad():
        norm.weight.uniform_(0.2, 3.0), norm.bias.normal_()
    x = torch.randn(50, 6) * 3
    low, high = norm(x).amin(0).detach(), norm(x).amax(0).detach()
    scale, zero = C.minmax_parameters(low, high, 4)
    with torch.no_grad():
        per_channel = layer(C.uniform_quantize(norm(x), scale, zero, 4))
        float_before = layer(norm(x))
        s, z = C.reparameterize_layernorm(norm, [layer], scale, zero)
        per_tensor = layer(C.uniform_quantize(norm(x), s, z, 4))
        float_after = layer(norm(x))
    assert s.dim() == 0 and z.dim() == 0 and z == z.round()
    assert torch.allclose(per_channel, per_tensor, atol=1e-5)
    assert torch.allclose(float_before, float_after, atol=1e-5)


def test_reparameterization_rejects_wrong_shapes():
    norm, layer = nn.LayerNorm(6), nn.Linear(5, 4)
    with pytest.raises(ValueError, match="consumers"):
        C.reparameterize_layernorm(norm, [layer], torch.ones(6), torch.zeros(6))
    with pytest.raises(ValueError, match="scale"):
        C.reparameterize_layernorm(norm, [nn.Linear(6, 2)], torch.ones(5), torch.zeros(5))


def test_quantize_vit_granularities():
    model, x = tiny_vit(), images()
    reference = model(x)
    channel = C.quantize_vit(model, x, norm_bits=4, norm_granularity="channel")(x)
    reparameterized = C.quantize_vit(model, x, norm_bits=4, norm_granularity="reparameterized")(x)
    assert torch.allclose(channel, reparameterized, atol=1e-4)
    assert not torch.allclose(channel, reference, atol=1e-3)  # 4 bits do change the logits
    fine = C.quantize_vit(model, x, weight_bits=16, norm_bits=16, norm_granularity="reparameterized",
                          softmax_bits=16, softmax="uniform")(x)  # (log2's steps are relative: no finer with bits)
    assert torch.allclose(fine, reference, atol=2e-3)
    assert torch.equal(model(x), reference)  # the original is untouched
    with pytest.raises(ValueError, match="norm_granularity"):
        C.quantize_vit(model, x, norm_bits=4, norm_granularity="row")


def test_softmax_quantized_model_uses_the_quantizer():
    model, x = tiny_vit(), images()
    uniform1 = C.quantize_vit(model, x, softmax_bits=1, softmax="uniform")(x)
    assert not torch.allclose(uniform1, model(x), atol=1e-3)


def test_model_bytes():
    model = tiny_vit()
    numel = sum(p.numel() for p in model.parameters())
    assert C.model_bytes(model) == 4 * numel
    assert C.model_bytes(model, 8) < C.model_bytes(model)


def _zero_heads(model: ViT, block: int, heads: list[int]):
    head_dim = model.config.head_dim

    def hook(module, inputs):
        x = inputs[0].clone()
        for h in heads:
            x[..., h * head_dim:(h + 1) * head_dim] = 0
        return (x,)
    return model.blocks[block].attn.to_out.register_forward_pre_hook(hook)


def test_pruned_heads_equal_zeroed_heads():
    model, x = tiny_vit(), images()
    handle = _zero_heads(model, 1, [0, 2])
    zeroed = model(x)
    handle.remove()
    pruned = tiny_vit()
    C.prune_heads_(pruned.blocks[1].attn, torch.tensor([1, 3]))
    assert pruned.blocks[1].attn.heads == 2 and pruned.blocks[1].attn.to_q.out_features == 8
    assert torch.allclose(pruned(x), zeroed, atol=1e-5)


def test_pruned_channels_equal_zeroed_channels():
    model, x = tiny_vit(), images()
    keep = torch.tensor([0, 3, 5, 10, 40])
    gate = torch.zeros(model.config.mlp_hidden)
    gate[keep] = 1
    handle = model.blocks[0].ffn.fc_out.register_forward_pre_hook(lambda m, inputs: (inputs[0] * gate,))
    zeroed = model(x)
    handle.remove()
    C.prune_channels_(model.blocks[0].ffn, keep)
    assert model.blocks[0].ffn.fc_in.out_features == 5
    assert torch.allclose(model(x), zeroed, atol=1e-5)


def test_head_importance_is_the_loss_of_removing_the_head():
    model, x = tiny_vit(), images(12)
    labels = torch.arange(12) % 3
    scores = C.head_importance(model, x, labels)
    base = F.cross_entropy(model(x), labels)
    pruned = tiny_vit()
    C.prune_heads_(pruned.blocks[0].attn, torch.tensor([0, 1, 3]))
    with torch.no_grad():
        assert torch.allclose(scores[0, 2], F.cross_entropy(pruned(x), labels) - base, atol=1e-5)


def test_channel_importance_is_the_gate_gradient():
    model, x = tiny_vit(), images(12)
    labels = torch.arange(12) % 3
    scores = C.channel_importance(model, x, labels)
    assert all(p.grad is None for p in model.parameters())
    gate = torch.ones(model.config.mlp_hidden, requires_grad=True)
    handle = model.blocks[1].ffn.fc_out.register_forward_pre_hook(lambda m, inputs: (inputs[0] * gate,))
    F.cross_entropy(model(x), labels).backward()
    handle.remove()
    assert torch.allclose(scores[1], gate.grad.abs(), atol=1e-6)


def test_prune_vit_counts_and_keeps_a_head_per_layer():
    model = tiny_vit()
    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    pruned = C.prune_vit(model, head_scores=scores, head_fraction=0.5)
    assert [b.attn.heads for b in pruned.blocks] == [1, 3]
    assert [b.attn.heads for b in model.blocks] == [4, 4]
    assert torch.allclose(C.prune_vit(model)(images()), model(images()))
    with pytest.raises(ValueError, match="head_fraction"):
        C.prune_vit(model, head_scores=scores, head_fraction=1.0)
    with pytest.raises(ValueError, match="keep"):
        C.prune_heads_(model.blocks[0].attn, torch.tensor([0, 0]))


def test_merge_tokens_conserves_mass_and_keeps_the_important():
    generator = torch.Generator().manual_seed(0)
    tokens, sizes = torch.randn(3, 9, 4, generator=generator), torch.randint(1, 4, (3, 9), generator=generator).float()
    importance = torch.rand(3, 9, generator=generator)
    merged, merged_sizes = C.merge_tokens(tokens, sizes, importance, 4)
    assert merged.shape == (3, 4, 4) and torch.allclose(merged_sizes.sum(1), sizes.sum(1))
    assert torch.allclose((merged * merged_sizes[..., None]).sum(1), (tokens * sizes[..., None]).sum(1), atol=1e-5)
    kept = importance.argsort(1, descending=True)[:, :4].sort(1).values
    dropped, dropped_sizes = C.merge_tokens(tokens, sizes, importance, 4, merge=False)
    assert torch.equal(dropped, tokens.gather(1, kept[..., None].expand(-1, -1, 4)))
    same, same_sizes = C.merge_tokens(tokens, sizes, importance, 9)
    assert torch.equal(same, tokens) and torch.equal(same_sizes, sizes)
    with pytest.raises(ValueError, match="keep=0"):
        C.merge_tokens(tokens, sizes, importance, 0)


def test_reduced_logits():
    model, x = tiny_vit(), images()
    patches = model.config.num_patches
    assert torch.allclose(C.reduced_logits(model, x, [patches, patches]), model(x), atol=1e-5)
    fewer = C.reduced_logits(model, x, [patches, 4])
    assert fewer.shape == (6, 3) and not torch.allclose(fewer, model(x), atol=1e-4)
    with pytest.raises(ValueError, match="non-increasing"):
        C.reduced_logits(model, x, [4, patches])
    with pytest.raises(ValueError, match="pool='cls'"):
        C.reduced_logits(tiny_vit(pool="mean"), x, [patches, 4])


def test_class_attention_matches_the_block():
    from course_lib.interpret import AttentionRecorder

    model, x = tiny_vit(), images()
    with AttentionRecorder(model) as record:
        model(x)
    tokens = model.embed(x)
    assert torch.allclose(C.class_attention(model.blocks[0], tokens), record.weights[0][:, :, 0, 1:].mean(1),
                          atol=1e-6)
