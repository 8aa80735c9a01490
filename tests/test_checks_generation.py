"""The checkers of notebook 22_unified_generation: right answers pass, plausible wrong ones fail with a message
naming the mistake. Each correct answer is written here the way a learner would, independently of the packaged
references."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from checking import fails, passes

from course_lib.checks import generation as check


def mixed_modal_mask(segments):
    n = len(segments)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            mask[q, k] = k <= q or (segments[q] > 0 and segments[q] == segments[k])
    return mask


def test_mixed_modal_mask_right(capsys):
    passes(check.mixed_modal_mask, mixed_modal_mask, capsys)


def test_mixed_modal_mask_with_bidirectional_text(capsys):
    def wrong(segments):
        n = len(segments)
        return torch.ones(n, n, dtype=torch.bool).tril() | (segments[:, None] == segments[None, :])

    fails(check.mixed_modal_mask, wrong, capsys, "segment 0")


def test_mixed_modal_mask_purely_causal(capsys):
    fails(check.mixed_modal_mask, lambda s: torch.ones(len(s), len(s), dtype=torch.bool).tril(), capsys,
          "causal everywhere")


def most_confident(confidence, hidden, count):
    chosen = torch.zeros_like(hidden)
    for row in range(len(confidence)):
        candidates = [i for i in range(confidence.shape[1]) if hidden[row, i]]
        candidates.sort(key=lambda i: -confidence[row, i].item())
        chosen[row, candidates[: int(count[row])]] = True
    return chosen


def test_most_confident_right(capsys):
    passes(check.most_confident, most_confident, capsys)


def test_most_confident_ranking_revealed_positions(capsys):
    def wrong(confidence, hidden, count):
        rank = confidence.argsort(dim=1, descending=True).argsort(dim=1)
        return hidden & (rank < count[:, None])

    fails(check.most_confident, wrong, capsys, "-inf")


def test_most_confident_least(capsys):
    fails(check.most_confident, lambda c, h, n: most_confident(-c, h, n), capsys, "least confident")


def next_scale_inputs(quantizer, codes):
    inputs = []
    for k in range(1, min(len(codes), len(quantizer.scales) - 1) + 1):
        latent = quantizer.lookup(codes[:k])
        pooled = F.adaptive_avg_pool2d(latent, quantizer.scales[k])
        inputs.append(pooled.flatten(2).transpose(1, 2))
    return torch.cat(inputs, dim=1)


def test_next_scale_inputs_right(capsys):
    passes(check.next_scale_inputs, next_scale_inputs, capsys)


def test_next_scale_inputs_nearest(capsys):
    def wrong(quantizer, codes):
        inputs = []
        for k in range(1, min(len(codes), len(quantizer.scales) - 1) + 1):
            latent = F.interpolate(quantizer.lookup(codes[:k]), size=quantizer.scales[k])
            inputs.append(latent.flatten(2).transpose(1, 2))
        return torch.cat(inputs, dim=1)

    fails(check.next_scale_inputs, wrong, capsys, "average it down")


def test_next_scale_inputs_previous_scale_only(capsys):
    def wrong(quantizer, codes):
        inputs = []
        for k in range(1, min(len(codes), len(quantizer.scales) - 1) + 1):
            previous = quantizer.quantizer.lookup(codes[k - 1]).permute(0, 3, 1, 2)
            latent = F.interpolate(previous, size=quantizer.scales[k], mode="bilinear")
            inputs.append(latent.flatten(2).transpose(1, 2))
        return torch.cat(inputs, dim=1)

    fails(check.next_scale_inputs, wrong, capsys, "everything drawn so far")
