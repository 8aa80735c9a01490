"""Tests for course_lib.train.language: both model conventions are scored on the same targets, bits per token
equals a naive computation, training is deterministic for a seed and learns, and bad input is refused."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.models import GPT, MBLM, GPTConfig, MBLMConfig
from course_lib.train.language import (
    bits_per_token,
    fit_language_model,
    next_token_logits,
    windows_loss,
)


def _gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=7, max_len=16, dim=16, depth=1, heads=2))


def _mblm(seed: int = 0) -> MBLM:
    torch.manual_seed(seed)
    return MBLM(MBLMConfig(vocab_size=7, patch_size=4, max_patches=4, global_dim=16, global_depth=1, global_heads=2,
                           local_dim=8, local_depth=1, local_heads=2))


def test_next_token_logits_align_both_conventions():
    windows = torch.randint(0, 7, (3, 16), generator=torch.Generator().manual_seed(0))
    gpt, mblm = _gpt(), _mblm()
    with torch.no_grad():
        torch.testing.assert_close(next_token_logits(gpt, windows), gpt(windows[:, :-1]))
        torch.testing.assert_close(next_token_logits(mblm, windows), mblm(windows)[:, 1:])
        # the logits for target t must not depend on tokens >= t, for either convention
        for model in (gpt, mblm):
            changed = windows.clone()
            changed[:, 9:] = (changed[:, 9:] + 1) % 7
            torch.testing.assert_close(next_token_logits(model, windows)[:, :8],
                                       next_token_logits(model, changed)[:, :8], rtol=0, atol=1e-6)


@pytest.mark.parametrize("factory", [_gpt, _mblm])
def test_bits_per_token_equals_a_naive_sum_over_every_target(factory):
    model = factory().eval()
    stream = torch.randint(0, 7, (61,), generator=torch.Generator().manual_seed(1))
    length = 16
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(stream) - length + 1, length - 1):      # windows overlap by one token
            window = stream[start : start + length][None]
            log_probs = next_token_logits(model, window).log_softmax(-1)[0]
            total -= log_probs.gather(-1, window[0, 1:, None]).sum().item()
            count += length - 1
    assert count == 60                                                   # every token but the first, once
    assert bits_per_token(model, stream, length=length, batch=2) == pytest.approx(total / count / math.log(2))


def test_bits_per_token_on_rows_scores_every_row():
    model = _gpt().eval()
    rows = torch.randint(0, 7, (5, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = windows_loss(model, rows).item() / math.log(2)
    assert bits_per_token(model, rows, length=16, batch=2) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("factory", [_gpt, _mblm])
def test_training_is_deterministic_and_learns_a_repeating_stream(factory):
    stream = torch.arange(400) % 5                                        # perfectly predictable after one token
    first, second = factory(), factory()
    before = bits_per_token(first, stream, length=16)
    history = fit_language_model(first, stream, length=16, steps=60, lr=1e-2, batch=8, seed=3, val_data=stream,
                                 every=20)
    fit_language_model(second, stream, length=16, steps=60, lr=1e-2, batch=8, seed=3)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [step for step, _ in history["val"]] == [20, 40, 60] and len(history["train"]) == 60
    assert history["val"][-1][1] < 0.3 * before and not first.training


def test_mixed_precision_trains_like_full_precision():
    """bf16 autocast keeps the weights in float32 and lands close to the float32 run on the same batches."""
    stream = torch.arange(400) % 5
    full, mixed = _gpt(), _gpt()
    fit_language_model(full, stream, length=16, steps=60, lr=1e-2, batch=8, seed=3)
    history = fit_language_model(mixed, stream, length=16, steps=60, lr=1e-2, batch=8, seed=3, autocast=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in mixed.parameters())
    assert history["train"][-1] < 0.3 * history["train"][0]
    assert abs(bits_per_token(mixed, stream, length=16) - bits_per_token(full, stream, length=16)) < 0.1


@pytest.mark.parametrize("call,message", [
    (lambda m: fit_language_model(m, torch.zeros(10, dtype=torch.long), length=16, steps=5, lr=1e-3),
     "length=16 does not fit"),
    (lambda m: fit_language_model(m, torch.zeros(4, 15, dtype=torch.long), length=16, steps=5, lr=1e-3),
     "rows must be exactly"),
    (lambda m: fit_language_model(m, torch.zeros(40), length=16, steps=5, lr=1e-3), "integer tokens"),
    (lambda m: fit_language_model(m, torch.zeros(40, dtype=torch.long), length=1, steps=5, lr=1e-3), "length=1"),
    (lambda m: fit_language_model(m, torch.zeros(40, dtype=torch.long), length=16, steps=0, lr=1e-3), "steps=0"),
    (lambda m: fit_language_model(m, torch.zeros(40, dtype=torch.long), length=16, steps=5, lr=0), "lr=0"),
    (lambda m: fit_language_model(m, torch.zeros(40, dtype=torch.long), length=16, steps=5, lr=1e-3, every=-1),
     "every=-1"),
    (lambda m: bits_per_token(m, torch.zeros(2, 3, 16, dtype=torch.long), length=16), "1-D stream or 2-D rows"),
    (lambda m: fit_language_model(m, torch.zeros(40, dtype=torch.long), length=16, steps=5, lr=1e-3,
                                  autocast=torch.float64), "autocast=torch.float64"),
])
def test_bad_input_is_refused_before_any_work(call, message):
    model = _gpt()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        call(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
