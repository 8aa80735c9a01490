"""Masked (discrete) diffusion over captions and codes (towards notebook 22): the loss against its draws written
out, both modalities reading each other, generation filling exactly the hidden tokens, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib.models.masked_diffusion import (
    MaskedDiffusion,
    MaskedDiffusionConfig,
    most_confident,
)


def model() -> MaskedDiffusion:
    torch.manual_seed(0)
    return MaskedDiffusion(MaskedDiffusionConfig(text_vocab=10, text_length=4, image_vocab=6, image_length=5, dim=32,
                                                 depth=2, heads=2)).eval()


def tokens(batch: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(10, (batch, 4), generator=generator), torch.randint(6, (batch, 5), generator=generator)


def test_loss_is_the_cross_entropy_of_the_hidden_tokens_at_per_modality_rates():
    net, (text, codes) = model(), tokens(8)
    word_loss, code_loss = net.loss(text, codes, torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)  # the draws in the loss's order: two rates per example, then masks
    rates = torch.rand(8, 2, generator=generator)
    hidden_text = torch.rand(text.shape, generator=generator) < rates[:, :1]
    hidden_codes = torch.rand(codes.shape, generator=generator) < rates[:, 1:]
    words, code_logits = net(text.masked_fill(hidden_text, 10), codes.masked_fill(hidden_codes, 6))
    torch.testing.assert_close(word_loss, F.cross_entropy(words[hidden_text], text[hidden_text]))
    torch.testing.assert_close(code_loss, F.cross_entropy(code_logits[hidden_codes], codes[hidden_codes]))


def test_words_read_the_codes_and_codes_read_the_words():
    net, (text, codes) = model(), tokens()
    words, code_logits = net(text, codes)
    assert (net(text, (codes + 1) % 6)[0] - words).abs().max() > 1e-4
    assert (net((text + 1) % 10, codes)[1] - code_logits).abs().max() > 1e-4


@pytest.mark.parametrize("rounds", [1, 3])
def test_generation_fills_exactly_the_hidden_tokens(rounds):
    net, (text, codes) = model(), tokens()
    hidden_text, hidden_codes = torch.zeros_like(text, dtype=torch.bool), torch.ones_like(codes, dtype=torch.bool)
    hidden_text[0, 2:] = True  # also part of one caption
    written_text, written_codes = net.generate(text.masked_fill(hidden_text, 10), codes.masked_fill(hidden_codes, 6),
                                               rounds=rounds, generator=torch.Generator().manual_seed(1))
    assert torch.equal(written_text[~hidden_text], text[~hidden_text])  # what was given stays
    assert written_text.max() < 10 and written_codes.max() < 6 and written_codes.min() >= 0
    again = net.generate(text.masked_fill(hidden_text, 10), codes.masked_fill(hidden_codes, 6), rounds=rounds,
                         generator=torch.Generator().manual_seed(1))
    assert torch.equal(again[0], written_text) and torch.equal(again[1], written_codes)


def test_guidance_zero_draws_from_the_unconditional_model():
    """At guidance 0 the logits are those read with the given caption hidden, so one round of drawing codes for a
    caption equals drawing them with nothing given (the draws use the same generator)."""
    net, (text, codes) = model(), tokens()
    hidden_codes = torch.full_like(codes, 6)
    guided = net.generate(text, hidden_codes, rounds=1, guidance=0.0, generator=torch.Generator().manual_seed(3))
    unconditional = net.generate(torch.full_like(text, 10), hidden_codes, rounds=1,
                                 generator=torch.Generator().manual_seed(3))
    conditional = net.generate(text, hidden_codes, rounds=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(guided[1], unconditional[1]) and torch.equal(guided[0], text)
    assert not torch.equal(conditional[1], unconditional[1])


@pytest.mark.parametrize("call, words", [
    (lambda m, t, c: m(t[:, :3], c), "text"),
    (lambda m, t, c: m(t, c.float()), "codes"),
    (lambda m, t, c: m(t, c + 7), "codes"),
    (lambda m, t, c: m(t[:2], c), "same number"),
    (lambda m, t, c: m.generate(t, c, rounds=0), "rounds"),
    (lambda m, t, c: m.generate(t, c, guidance=-1.0), "guidance"),
])
def test_bad_input_is_named(call, words):
    with pytest.raises(ValueError, match=words):
        call(model(), *tokens())


def test_most_confident_keeps_the_highest_hidden_positions_per_row():
    confidence = torch.tensor([[0.9, 0.1, 0.5, 0.7], [0.2, 0.8, 0.6, 0.4]])
    hidden = torch.tensor([[False, True, True, True], [True, True, True, True]])
    chosen = most_confident(confidence, hidden, torch.tensor([2, 1]))
    assert chosen.tolist() == [[False, False, True, True], [False, True, False, False]]  # 0.9 is not hidden
    assert not most_confident(confidence, hidden, torch.tensor([0, 0])).any()
    assert torch.equal(most_confident(confidence, hidden, torch.tensor([4, 4])), hidden)


def test_fixed_rates_hide_all_or_nothing():
    net, (text, codes) = model(), tokens()
    word_loss, code_loss = net.loss(text, codes, torch.Generator().manual_seed(0), rates=(0.0, 1.0))
    words, code_logits = net(text, torch.full_like(codes, 6))  # caption given, image hidden: text-to-image
    assert word_loss.item() == 0.0
    torch.testing.assert_close(code_loss, F.cross_entropy(code_logits.flatten(0, 1), codes.flatten()))
    with pytest.raises(ValueError, match="rates"):
        net.loss(text, codes, torch.Generator(), rates=(0.5, 1.5))
