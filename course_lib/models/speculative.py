"""Speculative decoding: a small draft model proposes a few tokens, the large target model checks them all in one
forward pass, and a rejection rule keeps the output distributed exactly as the target's own sampling (notebook 26).

For each proposed token x, drawn from the draft's distribution q, the target's distribution p at that position
accepts it with probability min(1, p(x) / q(x)). The first rejected token is replaced by a draw from the residual
max(0, p − q), renormalised; if every proposal is accepted, the target's distribution after the last one gives one
more token for free. Together these make each emitted token a draw from p: accepted with q(x)·min(1, p/q) =
min(q, p), and otherwise from the residual, whose mass is exactly what acceptance leaves of p. At temperature 0 (both
distributions one-hot at their argmax) the output equals the target's greedy decoding.

One prompt at a time, and every forward pass reads the whole sequence (no cache), to keep the rule in plain view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from course_lib.models.gpt import GPT

__all__ = ["SpeculativeResult", "speculative_generate"]


@dataclass(frozen=True)
class SpeculativeResult:
    """The prompt and its continuation (1, T + new), how many draft proposals were accepted out of how many were
    made, and how many forward passes the target ran."""

    tokens: Tensor
    accepted: int
    proposed: int
    target_calls: int


def _distribution(logits: Tensor, temperature: float) -> Tensor:
    """Softmax at `temperature`, or one-hot at the argmax for temperature 0."""
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
    return torch.softmax(logits / temperature, dim=-1)


def _draw(probabilities: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.multinomial(probabilities.cpu(), 1, generator=generator).to(probabilities.device)[..., 0]


@torch.no_grad()
def speculative_generate(target: GPT, draft: GPT, prompt: Tensor, max_new_tokens: int, *, lookahead: int = 4,
                         temperature: float = 1.0, generator: torch.Generator | None = None) -> SpeculativeResult:
    """Continue a (1, T) `prompt` by `max_new_tokens` tokens distributed as `target`'s sampling at `temperature`,
    with `draft` proposing `lookahead` tokens per round."""
    if prompt.dim() != 2 or prompt.shape[0] != 1:
        raise ValueError(f"prompt must be one sequence of shape (1, T); got {tuple(prompt.shape)}")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"the draft's vocab_size={draft.config.vocab_size} differs from the target's "
                         f"{target.config.vocab_size}")
    for name, value in (("max_new_tokens", max_new_tokens), ("lookahead", lookahead)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature!r} must be >= 0")
    total = prompt.shape[1] + max_new_tokens
    if total > min(target.config.max_len, draft.config.max_len):
        raise ValueError(f"prompt + max_new_tokens = {total} exceeds a model's max_len")
    target.eval(), draft.eval()
    tokens, accepted, proposed, calls = prompt, 0, 0, 0
    while tokens.shape[1] < total:
        k = min(lookahead, total - tokens.shape[1])
        drafted, draft_probabilities = tokens, []
        for _ in range(k):  # the draft proposes k tokens, one at a time
            q = _distribution(draft(drafted)[0, -1], temperature)
            drafted = torch.cat([drafted, _draw(q, generator).view(1, 1)], dim=1)
            draft_probabilities.append(q)
        p_all = _distribution(target(drafted)[0, tokens.shape[1] - 1:], temperature)  # k + 1 positions, one pass
        calls += 1
        proposed += k
        for i in range(k):
            x, p, q = drafted[0, tokens.shape[1]], p_all[i], draft_probabilities[i]
            ratio = (p[x] / q[x]).clamp(max=1.0)
            if torch.rand((), generator=generator).item() < ratio.item():
                tokens = torch.cat([tokens, x.view(1, 1)], dim=1)
                accepted += 1
                continue
            residual = (p - q).clamp(min=0)
            residual = residual if residual.sum() > 0 else p  # p == q up to rounding: the residual is empty
            replacement = _draw(residual / residual.sum(), generator)
            tokens = torch.cat([tokens, replacement.view(1, 1)], dim=1)
            break
        else:  # every proposal accepted: the target's next distribution gives one more token
            if tokens.shape[1] < total:
                tokens = torch.cat([tokens, _draw(p_all[k], generator).view(1, 1)], dim=1)
    return SpeculativeResult(tokens, accepted, proposed, calls)
