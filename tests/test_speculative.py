"""Speculative decoding keeps the target's distribution: greedy output equals the target's greedy decoding, and
sampled pairs of tokens follow the target's joint distribution, not the draft's."""

from __future__ import annotations

import pytest
import torch

from course_lib.models import GPT, GPTConfig
from course_lib.models.speculative import speculative_generate


def gpt(seed: int, vocab: int = 4, dim: int = 16) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, max_len=24, dim=dim, depth=1, heads=2, tie_weights=False)).eval()
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.4)  # a larger random head: distinct, fairly sharp distributions per seed
    return model


PROMPT = torch.tensor([[1, 2, 0]])


def test_greedy_equals_the_targets_greedy_decoding():
    target, draft = gpt(0, vocab=11), gpt(1, vocab=11)
    result = speculative_generate(target, draft, PROMPT, 12, lookahead=3, temperature=0)
    assert torch.equal(result.tokens, target.generate(PROMPT, 12, temperature=0))
    assert result.target_calls <= 12 and 0 <= result.accepted <= result.proposed


@torch.no_grad()
def joint(model: GPT) -> torch.Tensor:
    """Exact probability of each pair of next two tokens after PROMPT, (vocab, vocab)."""
    first = torch.softmax(model(PROMPT)[0, -1], dim=-1)
    rows = [torch.softmax(model(torch.cat([PROMPT, torch.tensor([[x]])], dim=1))[0, -1], dim=-1) for x in range(4)]
    return first[:, None] * torch.stack(rows)


def test_samples_follow_the_target_not_the_draft():
    target, draft = gpt(0), gpt(5)
    expected, drafts_own = joint(target), joint(draft)
    assert 0.5 * (expected - drafts_own).abs().sum() > 0.15  # the two models disagree: the test can fail
    generator, counts = torch.Generator().manual_seed(0), torch.zeros(4, 4)
    for _ in range(3000):
        pair = speculative_generate(target, draft, PROMPT, 2, lookahead=2, generator=generator).tokens[0, -2:]
        counts[pair[0], pair[1]] += 1
    total_variation = 0.5 * (counts / counts.sum() - expected).abs().sum().item()
    assert total_variation < 0.05, (total_variation, expected, counts / counts.sum())


@pytest.mark.parametrize("call, words", [
    (lambda t, d: speculative_generate(t, d, PROMPT.repeat(2, 1), 3), "one sequence"),
    (lambda t, d: speculative_generate(t, gpt(1, vocab=5), PROMPT, 3), "vocab_size"),
    (lambda t, d: speculative_generate(t, d, PROMPT, 3, lookahead=0), "lookahead=0"),
    (lambda t, d: speculative_generate(t, d, PROMPT, 30), "max_len"),
])
def test_bad_input_is_named(call, words):
    with pytest.raises(ValueError, match=words):
        call(gpt(0), gpt(1))

