"""Attention recording and relevance maps (notebook 19): the recorder against weights computed by hand, rollout and
relevance against their definitions written as loops, co-attention's rule, and the two mask scores."""

from __future__ import annotations

import pytest
import torch

from course_lib.interpret import (
    AttentionRecorder,
    attention_rollout,
    co_attention_update,
    gradient_weighted,
    mass_inside,
    pointing_game,
    relevance_propagation,
    self_attention_update,
)
from course_lib.nn import MultiHeadAttention, TransformerEncoder


def test_the_recorder_keeps_every_layer_weights_and_gradients_and_leaves_outputs_alone():
    torch.manual_seed(0)
    encoder = TransformerEncoder(3, 16, 4).eval()
    x = torch.randn(2, 5, 16)
    expected = encoder(x)
    with AttentionRecorder(encoder) as record:
        out = encoder(x)
        out[:, 0].sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert len(record.weights) == 3 and all(w.shape == (2, 4, 5, 5) for w in record.weights)
    torch.testing.assert_close(record.weights[0].sum(-1), torch.ones(2, 4, 5))
    assert all(g.shape == w.shape for g, w in zip(record.gradients, record.weights))
    encoder(x)  # the hooks are gone: nothing more is recorded
    assert len(record.weights) == 3
    other = TransformerEncoder(1, 16, 4)
    with AttentionRecorder(encoder) as record:
        other(x)  # another model's attention, in the same block, is not this model's
        encoder(x)
    assert len(record.weights) == 3 and record.names == ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"]


def test_recorded_weights_are_the_softmax_of_the_scores():
    torch.manual_seed(1)
    attention = MultiHeadAttention(8, 2)
    x = torch.randn(1, 4, 8)
    with AttentionRecorder(attention) as record:
        attention(x)
    q = attention.to_q(x).reshape(1, 4, 2, 4).transpose(1, 2)
    k = attention.to_k(x).reshape(1, 4, 2, 4).transpose(1, 2)
    torch.testing.assert_close(record.weights[0], (q @ k.transpose(-1, -2) / 2).softmax(-1))


def test_a_caller_that_asks_for_weights_still_gets_them():
    attention = MultiHeadAttention(8, 2)
    with AttentionRecorder(attention):
        out, weights = attention(torch.randn(1, 3, 8), return_weights=True)
    assert weights.shape == (1, 2, 3, 3)


def test_gradients_before_backward_are_refused():
    attention = MultiHeadAttention(8, 2)
    with AttentionRecorder(attention) as record:
        attention(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="backward"):
        _ = record.gradients
    with AttentionRecorder(torch.nn.Linear(2, 2)) as nothing:
        torch.nn.Linear(2, 2)(torch.randn(1, 2))
    with pytest.raises(ValueError, match="no attention was recorded"):
        _ = nothing.gradients
    with pytest.raises(ValueError, match="model must be"):
        AttentionRecorder("gpt")


@pytest.mark.parametrize("family", ["gpt", "vit", "unified-mot"])
def test_models_that_call_the_attention_function_directly_are_recorded_too(family):
    from course_lib.models.gpt import GPT, GPTConfig
    from course_lib.models.unified import UnifiedConfig, UnifiedTransformer
    from course_lib.models.vit import ViT, ViTConfig
    from course_lib.nn.attention import WEIGHTS_RECORDER

    torch.manual_seed(0)
    if family == "gpt":  # grouped-query attention, fused by default
        model, inputs = GPT(GPTConfig(vocab_size=11, max_len=8, dim=16, depth=2, heads=4, kv_heads=2)), (torch.randint(11, (2, 6)),)
        shape, names = (2, 4, 6, 6), ["blocks.0.attn", "blocks.1.attn"]
    elif family == "vit":
        model = ViT(ViTConfig(image_size=16, patch_size=8, dim=16, depth=2, heads=2, num_classes=3))
        inputs, shape, names = (torch.randn(2, 3, 16, 16),), (2, 2, 5, 5), None
    else:
        model = UnifiedTransformer(UnifiedConfig(vocab_size=9, kind="mot", image_size=16, patch_size=8, context_length=4,
                                                 dim=16, heads=2, depth=2))
        inputs, shape, names = (torch.randn(2, 3, 16, 16), torch.randint(9, (2, 3))), (2, 2, 7, 7), ["blocks.0", "blocks.1"]
    model.eval()
    expected = model(*inputs)
    with AttentionRecorder(model) as record:
        out = model(*inputs)
        out.sum().backward()
    assert WEIGHTS_RECORDER.get() is None
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert len(record.weights) == 2 and all(w.shape == shape for w in record.weights)
    assert all(g.shape == shape for g in record.gradients)
    if names:
        assert record.names == names


def random_maps(layers: int, batch: int = 2, heads: int = 3, length: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.rand(batch, heads, length, length, generator=generator).softmax(-1) for _ in range(layers)]
    gradients = [torch.randn(batch, heads, length, length, generator=generator) for _ in range(layers)]
    return weights, gradients


def test_rollout_is_the_product_of_residual_mixed_attention():
    weights, _ = random_maps(3)
    expected = torch.eye(5).repeat(2, 1, 1)
    for layer in weights:
        mixed = 0.5 * layer.mean(1) + 0.5 * torch.eye(5)
        expected = torch.stack([(mixed[b] / mixed[b].sum(1, keepdim=True)) @ expected[b] for b in range(2)])
    torch.testing.assert_close(attention_rollout(weights), expected)
    torch.testing.assert_close(attention_rollout(weights).sum(-1), torch.ones(2, 5))  # rows stay distributions


def test_relevance_accumulates_gradient_weighted_attention():
    weights, gradients = random_maps(3, seed=1)
    relevance = torch.eye(5).repeat(2, 1, 1)
    for w, g in zip(weights, gradients):
        weighted = torch.zeros(2, 5, 5)
        for h in range(3):
            weighted += torch.clamp(w[:, h] * g[:, h], min=0) / 3
        relevance = relevance + weighted @ relevance
    torch.testing.assert_close(relevance_propagation(weights, gradients), relevance)
    torch.testing.assert_close(self_attention_update(torch.eye(5).repeat(2, 1, 1), weights[0], gradients[0]),
                               torch.eye(5) + (weights[0] * gradients[0]).clamp(min=0).mean(1))


def test_zero_gradients_leave_relevance_at_the_identity():
    weights, gradients = random_maps(2)
    torch.testing.assert_close(relevance_propagation(weights, [torch.zeros_like(g) for g in gradients]),
                               torch.eye(5).repeat(2, 1, 1))


def test_co_attention_rule():
    generator = torch.Generator().manual_seed(2)
    s, q = 3, 4
    r_ss = torch.eye(s)[None] + 0.2 * torch.rand(1, s, s, generator=generator)
    r_sq, r_qs = torch.rand(1, s, q, generator=generator), torch.rand(1, q, s, generator=generator)
    r_qq = torch.eye(q)[None] + 0.1 * torch.rand(1, q, q, generator=generator)
    weights = torch.rand(1, 2, s, q, generator=generator).softmax(-1)
    gradient = torch.randn(1, 2, s, q, generator=generator)
    bar = (weights * gradient).clamp(min=0).mean(1)[0]

    def normalised(r):
        accumulated = r - torch.eye(len(r))
        return accumulated / accumulated.sum(1, keepdim=True) + torch.eye(len(r))

    new_ss, new_sq = co_attention_update(r_ss, r_sq, r_qs, r_qq, weights, gradient)
    torch.testing.assert_close(new_ss[0], r_ss[0] + bar @ r_qs[0])
    torch.testing.assert_close(new_sq[0], r_sq[0] + normalised(r_ss[0]).T @ bar @ normalised(r_qq[0]))


def test_gradient_weighted_is_grad_cam_over_tokens():
    tokens, gradient = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    expected = torch.stack([torch.relu(tokens[b] @ gradient[b].mean(0)) for b in range(2)])
    torch.testing.assert_close(gradient_weighted(tokens, gradient), expected)


def test_pointing_game_and_mass_inside():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :2, :2] = True  # inside patch 0 of a 2x2 grid (patches of 4x4 pixels), a quarter of it
    masks[1, 4:, 4:] = True  # all of patch 3
    relevance = torch.tensor([[1.0, 3.0, 0.0, 0.0], [0.0, 0.0, 1.0, 3.0]])
    assert pointing_game(relevance, masks).tolist() == [False, True]
    torch.testing.assert_close(mass_inside(relevance, masks), torch.tensor([0.25 * 1 / 4, 3 / 4]))
    with pytest.raises(ValueError, match="square grid"):
        pointing_game(torch.ones(2, 3), masks)
    with pytest.raises(ValueError, match="divisible by grid"):
        mass_inside(torch.ones(2, 9), masks)


def test_maps_of_different_shapes_are_refused():
    weights, gradients = random_maps(2)
    with pytest.raises(ValueError, match="same shape"):
        attention_rollout([weights[0], weights[1][:, :, :4, :4]])
    with pytest.raises(ValueError, match="gradients must match"):
        relevance_propagation(weights, gradients[:1])
