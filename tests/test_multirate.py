"""Tests for course_lib.nn.multirate and GPT's `wavelet_levels`: the causal averages against a naive loop, causality,
the channel layout, and the GPT with multi-rate structure against a hand-written forward."""

from __future__ import annotations

import pytest
import torch

from course_lib.models import GPT, GPTConfig
from course_lib.nn import causal_moving_average, multirate_causal_average, multirate_windows


def _naive_average(x: torch.Tensor, window: int) -> torch.Tensor:
    out = torch.empty_like(x)
    for t in range(x.shape[1]):
        out[:, t] = x[:, max(0, t - window + 1) : t + 1].mean(dim=1)
    return out


@pytest.mark.parametrize("shape,window", [((1, 1, 1), 1), ((2, 7, 3), 1), ((2, 7, 3), 2), ((3, 20, 4), 5),
                                          ((1, 5, 2), 16)])
def test_causal_moving_average_equals_a_naive_loop(shape, window):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(window), dtype=torch.float64)
    torch.testing.assert_close(causal_moving_average(x, window), _naive_average(x, window), rtol=1e-12, atol=1e-12)


def test_causal_moving_average_reads_only_the_past():
    x = torch.randn(1, 12, 3)
    changed = x.clone()
    changed[:, 7:] += 5.0
    before, after = causal_moving_average(x, 4), causal_moving_average(changed, 4)
    torch.testing.assert_close(before[:, :7], after[:, :7], rtol=0, atol=0)
    assert not torch.allclose(before[:, 7:], after[:, 7:])


def test_windows_layout():
    assert multirate_windows(16, 4) == [1] * 8 + [2, 2, 4, 4, 8, 8, 16, 16]
    assert multirate_windows(7, 3) == [1, 1, 1, 1, 2, 4, 8]
    assert multirate_windows(4, 1) == [1, 1, 2, 2]


def test_multirate_average_leaves_half_the_channels_and_averages_each_group():
    x = torch.randn(2, 30, 10, dtype=torch.float64)
    out = multirate_causal_average(x, 3)
    for channel, window in enumerate(multirate_windows(10, 3)):
        torch.testing.assert_close(out[..., channel], _naive_average(x[..., channel : channel + 1], window)[..., 0])
    assert torch.equal(out[..., :5], x[..., :5])


def test_gradients_flow_through_every_channel():
    x = torch.randn(1, 9, 8, requires_grad=True)
    multirate_causal_average(x, 2).sum().backward()
    assert (x.grad != 0).all()


@pytest.mark.parametrize("call,message", [
    (lambda: causal_moving_average(torch.zeros(1, 3, 2), 0), "window=0"),
    (lambda: causal_moving_average(torch.zeros(3, 2), 2), "expected \\(batch, time, channels\\)"),
    (lambda: multirate_windows(8, 5), "levels=5"),
    (lambda: multirate_windows(1, 1), "dim=1"),
    (lambda: multirate_causal_average(torch.zeros(1, 3, 8), 0), "levels=0"),
    (lambda: GPTConfig(dim=8, heads=2, wavelet_levels=5), "wavelet_levels=5"),
])
def test_bad_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _tiny_gpt(levels: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, max_len=16, dim=16, depth=2, heads=2, wavelet_levels=levels)).eval()


def test_gpt_with_wavelet_levels_equals_a_forward_written_by_hand():
    model, plain = _tiny_gpt(3), _tiny_gpt(0)
    plain.load_state_dict(model.state_dict())          # the same parameters: the structure adds none
    tokens = torch.randint(0, 11, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = plain.position(plain.embed(tokens))
        kv = None
        for index, block in enumerate(plain.blocks):
            x, kv = block(x, shared_kv=kv, rope=None, offset=0, cache=None, index=index)
            x = multirate_causal_average(x, 3)
        expected = plain.head(plain.final_norm(x))
        torch.testing.assert_close(model(tokens), expected, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(plain(tokens), expected, atol=1e-4)


def test_gpt_with_wavelet_levels_stays_causal():
    model = _tiny_gpt(4)
    tokens = torch.randint(0, 11, (1, 16), generator=torch.Generator().manual_seed(2))
    changed = tokens.clone()
    changed[0, 9:] = (changed[0, 9:] + 1) % 11
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[:, :9], model(changed)[:, :9], rtol=0, atol=1e-6)


def test_wavelet_gpt_refuses_a_cache_and_generates_without_one():
    model = _tiny_gpt(2)
    prompt = torch.randint(0, 11, (2, 4), generator=torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="KV cache cannot serve wavelet_levels"):
        model.generate(prompt, 3, use_cache=True)
    generated = model.generate(prompt, 3, temperature=0)
    expected = prompt
    with torch.no_grad():
        for _ in range(3):
            expected = torch.cat([expected, model(expected)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, expected)
