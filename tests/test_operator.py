"""The field transformer (notebook 21's PDE surrogate): points are a set, so permuting them with their coordinates
permutes the output; the default coordinates are the uniform periodic grid; bad input is named. With
attention="multipole" (notebook 27) every block attends with `multipole_attention`, checked against the forward pass
written out by hand; the default still attends with softmax over all points."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from einops import rearrange

from course_lib.models.operator import FieldTransformer, FieldTransformerConfig, fourier_features
from course_lib.nn import multipole_attention


def model() -> FieldTransformer:
    torch.manual_seed(0)
    return FieldTransformer(FieldTransformerConfig(in_channels=2, out_channels=3, dim=32, depth=2)).eval()


def test_permuting_points_with_their_coordinates_permutes_the_output():
    net, values, coordinates = model(), torch.randn(2, 10, 2), torch.rand(10) * 2 * math.pi
    order = torch.randperm(10)
    torch.testing.assert_close(net(values[:, order], coordinates[order]), net(values, coordinates)[:, order],
                               rtol=1e-5, atol=1e-5)


def test_default_coordinates_are_the_uniform_grid_and_matter():
    net, values = model(), torch.randn(2, 8, 2)
    grid = torch.arange(8) * 2 * math.pi / 8
    torch.testing.assert_close(net(values), net(values, grid))
    torch.testing.assert_close(net(values), net(values, grid.expand(2, -1)))
    assert (net(values) - net(values, grid.roll(1))).abs().max() > 1e-4


def test_fourier_features_are_periodic():
    x = torch.tensor([0.3, 1.7])
    torch.testing.assert_close(fourier_features(x, 4), fourier_features(x + 2 * math.pi, 4), atol=1e-5, rtol=0)
    assert fourier_features(x, 4).shape == (2, 8)


@pytest.mark.parametrize("call, words", [
    (lambda m: m(torch.randn(2, 8, 1)), "in_channels=2"),
    (lambda m: m(torch.randint(0, 3, (2, 8, 2))), "float"),
    (lambda m: m(torch.randn(0, 8, 2)), "batch"),
    (lambda m: m(torch.randn(2, 8, 2), torch.zeros(7)), "coordinates"),
])
def test_bad_input_is_named(call, words):
    with pytest.raises(ValueError, match=words):
        call(model())


# --- multipole attention in place of softmax attention -----------------------------------------------------------


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


def by_hand(net: FieldTransformer, values: torch.Tensor, attend) -> torch.Tensor:
    """The field transformer's forward pass on the uniform grid, written out, with `attend(q, k, v)` as attention."""
    c = net.config
    grid = torch.arange(values.shape[1]) * 2 * math.pi / values.shape[1]
    features = fourier_features(grid, c.frequencies).expand(len(values), -1, -1)
    tokens = rearrange(torch.cat([values, features], dim=-1), "b (n p) f -> b n (p f)", p=c.patch_size)
    x = net.embed(tokens)
    for block in net.encoder.blocks:
        attention, h = block.attn, block.attn_norm(x)
        q, k, v = (rearrange(layer(h), "b l (h d) -> b h l d", h=c.heads)
                   for layer in (attention.to_q, attention.to_k, attention.to_v))
        x = x + attention.to_out(rearrange(attend(q, k, v), "b h l d -> b l (h d)"))
        x = x + block.ffn(block.ffn_norm(x))
    out = net.head(net.encoder.final_norm(x))
    return rearrange(out, "b n (p c) -> b (n p) c", p=c.patch_size)


def multipole_model(**options) -> FieldTransformer:
    torch.manual_seed(0)
    config = dict(in_channels=2, out_channels=1, dim=16, depth=2, heads=2, attention="multipole") | options
    return FieldTransformer(FieldTransformerConfig(**config)).eval()


@pytest.mark.parametrize("window, levels, patch_size, points", [(4, 2, 1, 32), (2, 3, 2, 64), (4, 1, 1, 24)])
def test_multipole_blocks_attend_with_multipole_attention(window, levels, patch_size, points):
    net, values = multipole_model(window=window, levels=levels, patch_size=patch_size), torch.randn(3, points, 2)
    attend = partial(multipole_attention, window=window, levels=levels)
    with torch.no_grad():
        torch.testing.assert_close(net(values), by_hand(net, values, attend), atol=1e-5, rtol=1e-5)
        x = torch.randn(3, points // patch_size, 16)
        block, h = net.encoder.blocks[0], net.encoder.blocks[0].attn_norm(x)
        a = block.attn
        q, k, v = (rearrange(layer(h), "b l (h d) -> b h l d", h=2) for layer in (a.to_q, a.to_k, a.to_v))
        attended = x + a.to_out(rearrange(attend(q, k, v), "b h l d -> b l (h d)"))
        torch.testing.assert_close(block(x), attended + block.ffn(block.ffn_norm(attended)), atol=1e-5, rtol=1e-5)
        full = FieldTransformer(FieldTransformerConfig(**{**vars(net.config), "attention": "full"})).eval()
        full.load_state_dict(net.state_dict())  # the same weights: only the attention differs
        assert (full(values) - net(values)).abs().max() > 1e-3


def test_the_default_attention_is_unchanged_softmax_over_all_points():
    net, values = model(), torch.randn(2, 12, 2)
    assert net.config.attention == "full" and all(block.attn.attention is None for block in net.encoder.blocks)
    with torch.no_grad():
        torch.testing.assert_close(net(values), by_hand(net, values, softmax_attention), atol=1e-5, rtol=1e-5)


def test_one_cell_of_multipole_attention_is_full_attention():
    net, values = multipole_model(window=16, levels=1), torch.randn(2, 16, 2)
    full = FieldTransformer(FieldTransformerConfig(**{**vars(net.config), "attention": "full"})).eval()
    full.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(net(values), full(values), atol=1e-5, rtol=1e-5)


def test_a_tiny_multipole_model_trains():
    net = multipole_model(in_channels=1, window=4, levels=2).train()
    x = torch.linspace(0, 2 * math.pi, 33)[:-1]
    values = torch.sin(x[None] + torch.rand(8, 1) * 6)[..., None]  # (8, 32, 1)
    targets = values.roll(3, dims=1)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.mse_loss(net(values, x), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.5 * losses[0], losses
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("options, words", [(dict(attention="sparse"), "attention='sparse'"),
                                            (dict(window=0), "window=0"), (dict(levels=1.5), "levels=1.5")])
def test_bad_attention_options_are_named(options, words):
    with pytest.raises(ValueError, match=words):
        FieldTransformerConfig(**options)


def test_multipole_needs_a_multiple_of_its_largest_cell():
    net = multipole_model(window=4, levels=3, patch_size=2)
    net(torch.randn(1, 32, 2))  # 16 tokens: a multiple of 4·2² = 16
    with pytest.raises(ValueError, match=r"multiple of window·2\^\(levels−1\) = 16 tokens"):
        net(torch.randn(1, 48, 2))  # 24 tokens


def test_attention_functions_refuse_masks_and_weights():
    from course_lib.nn import MultiHeadAttention

    layer = MultiHeadAttention(8, 2, attention=partial(multipole_attention, window=2, levels=1))
    x = torch.randn(1, 4, 8)
    for options in (dict(mask=torch.ones(4, 4, dtype=torch.bool)), dict(causal=True), dict(return_weights=True)):
        with pytest.raises(ValueError, match="attention="):
            layer(x, **options)
    with pytest.raises(ValueError, match="dropout"):
        MultiHeadAttention(8, 2, attention=softmax_attention, dropout=0.1)
