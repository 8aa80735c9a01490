"""The checkers of notebook 26_inference: right answers pass, plausible wrong ones fail with a message naming the
mistake. Each correct answer is written here the way a learner would, independently of the packaged references."""

from __future__ import annotations

import math

import pytest
import torch
from checking import fails, passes

from course_lib.checks import inference as check
from course_lib.models import GPTConfig, KVCache

# --- kv_cache_bytes -------------------------------------------------------------------------------------------------


def kv_cache_bytes(*, batch, length, layers, heads, kv_heads, head_dim, bytes_per_value, share_every):
    return 2 * math.ceil(layers / share_every) * batch * kv_heads * length * head_dim * bytes_per_value


def test_kv_cache_bytes_right(capsys):
    passes(check.kv_cache_bytes, kv_cache_bytes, capsys)


def test_kv_cache_bytes_reference_is_what_the_cache_allocates():
    for kv_heads, share_every in ((4, 1), (2, 1), (1, 1), (2, 3)):
        config = GPTConfig(dim=32, heads=4, depth=5, kv_heads=kv_heads, kv_share_every=share_every)
        expected = check.reference_kv_cache_bytes(batch=2, length=9, layers=5, heads=4, kv_heads=kv_heads, head_dim=8,
                                                  bytes_per_value=4, share_every=share_every)
        assert KVCache(config, 2, 9).nbytes == expected


@pytest.mark.parametrize("wrong, message", [
    (lambda **k: kv_cache_bytes(**k) // 2, "only keys"),
    (lambda **k: kv_cache_bytes(**{**k, "kv_heads": k["heads"]}), "query heads are counted"),
    (lambda **k: kv_cache_bytes(**{**k, "share_every": 1}), "every layer is counted"),
    (lambda **k: 2 * (k["layers"] // k["share_every"]) * k["batch"] * k["kv_heads"] * k["length"] * k["head_dim"]
     * k["bytes_per_value"], "rounded down"),
])
def test_kv_cache_bytes_mistakes(wrong, message, capsys):
    fails(check.kv_cache_bytes, wrong, capsys, message)


def test_kv_cache_bytes_unknown_mistake_still_fails(capsys):
    message = fails(check.kv_cache_bytes, lambda **k: kv_cache_bytes(**k) + 1, capsys, r"output is \d+, expected")
    assert "It looks like" not in message


# --- document_mask --------------------------------------------------------------------------------------------------


def document_mask(segments):
    length = segments.shape[1]
    same = segments.unsqueeze(2) == segments.unsqueeze(1)
    causal = torch.tril(torch.ones(length, length)).bool()
    return (same & causal).unsqueeze(1)


def test_document_mask_right(capsys):
    passes(check.document_mask, document_mask, capsys)


def test_document_mask_not_causal(capsys):
    fails(check.document_mask, lambda s: (s.unsqueeze(2) == s.unsqueeze(1)).unsqueeze(1), capsys, "later tokens")


def test_document_mask_ignoring_documents(capsys):
    def wrong(segments):
        batch, length = segments.shape
        return torch.tril(torch.ones(batch, 1, length, length)).bool()

    fails(check.document_mask, wrong, capsys, "earlier documents")


def test_document_mask_flipped(capsys):
    def wrong(segments):
        length = segments.shape[1]
        return ((segments.unsqueeze(2) == segments.unsqueeze(1)) & torch.ones(length, length).triu(1).bool())[:, None]

    fails(check.document_mask, wrong, capsys, "tril, not triu")


def test_document_mask_wrong_shape(capsys):
    message = fails(check.document_mask, lambda s: document_mask(s)[:, 0], capsys, "shape")
    assert "expected (1, 1, 10, 10)" in message


# --- acceptance and residual ----------------------------------------------------------------------------------------


def acceptance(p, q, token):
    return torch.minimum(torch.tensor(1.0), p[token] / q[token])


def residual(p, q):
    difference = torch.where(p > q, p - q, torch.zeros_like(p))
    return difference / difference.sum()


def test_acceptance_right(capsys):
    passes(check.acceptance, acceptance, capsys)


@pytest.mark.parametrize("wrong, message", [
    (lambda p, q, x: torch.minimum(torch.tensor(1.0), q[x] / p[x]), "upside down"),
    (lambda p, q, x: p[x] / q[x], "not capped"),
    (lambda p, q, x: p[x], "divide by the draft"),
])
def test_acceptance_mistakes(wrong, message, capsys):
    fails(check.acceptance, wrong, capsys, message)


def test_residual_right(capsys):
    passes(check.residual, residual, capsys)


@pytest.mark.parametrize("wrong, message", [
    (lambda p, q: torch.where(p > q, p - q, torch.zeros_like(p)), "not normalised"),
    (lambda p, q: residual(q, p), r"max\(q - p, 0\)"),
    (lambda p, q: p.clone(), "redrawn from p itself"),
])
def test_residual_mistakes(wrong, message, capsys):
    fails(check.residual, wrong, capsys, message)


# --- exit_depth -----------------------------------------------------------------------------------------------------


def exit_depth(confidences, threshold):
    depth, batch = confidences.shape
    result = torch.full((batch,), depth)
    for image in range(batch):
        for d in range(depth):
            if confidences[d, image] >= threshold:
                result[image] = d + 1
                break
    return result


def test_exit_depth_right(capsys):
    passes(check.exit_depth, exit_depth, capsys)


def test_exit_depth_zero_based(capsys):
    fails(check.exit_depth, lambda c, t: exit_depth(c, t) - 1, capsys, "0-based")


def test_exit_depth_last_instead_of_first(capsys):
    def wrong(confidences, threshold):
        depth, batch = confidences.shape
        result = torch.full((batch,), depth)
        for image in range(batch):
            for d in range(depth):
                if confidences[d, image] >= threshold:
                    result[image] = d + 1  # no break: the last one wins
        return result

    fails(check.exit_depth, wrong, capsys, "last exit that reaches")


def test_exit_depth_strict(capsys):
    def wrong(confidences, threshold):
        reached = confidences > threshold
        reached[-1] = True
        return reached.int().argmax(dim=0) + 1

    fails(check.exit_depth, wrong, capsys, r"strict \(>\)")
