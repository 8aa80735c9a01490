"""The checkers of notebook 20_tokenizers: right answers pass, plausible wrong ones fail with a message naming the
mistake. Each correct answer is written here the way a learner would, independently of the packaged references."""

from __future__ import annotations

import math

import torch
from checking import fails, passes

from course_lib.checks import tokenizers as check


def nearest_codes(vectors, codebook):
    return torch.stack([((codebook - v) ** 2).sum(dim=1).argmin() for v in vectors])


def test_nearest_right(capsys):
    passes(check.nearest_codes, nearest_codes, capsys)


def test_nearest_by_dot_product(capsys):
    fails(check.nearest_codes, lambda v, c: (v @ c.T).argmax(1), capsys, "dot product")


def residual_codes(vectors, codebooks):
    codes = torch.zeros(len(vectors), len(codebooks), dtype=torch.long)
    for n, vector in enumerate(vectors):
        left = vector.clone()
        for level, codebook in enumerate(codebooks):
            best = int(((codebook - left) ** 2).sum(dim=1).argmin())
            codes[n, level] = best
            left = left - codebook[best]
    return codes


def test_residual_right(capsys):
    passes(check.residual_codes, residual_codes, capsys)


def test_residual_on_the_original_vector(capsys):
    fails(check.residual_codes, lambda v, books: torch.stack([nearest_codes(v, b) for b in books], 1), capsys,
          "residual")


def perplexity(codes, codebook_size):
    counts = {}
    for code in codes.flatten().tolist():
        counts[code] = counts.get(code, 0) + 1
    total = codes.numel()
    return math.exp(-sum(c / total * math.log(c / total) for c in counts.values()))


def test_perplexity_right(capsys):
    passes(check.perplexity, perplexity, capsys)


def test_perplexity_as_used_codes(capsys):
    fails(check.perplexity, lambda codes, k: float(len(codes.unique())), capsys, "used at least once")


def test_perplexity_as_entropy(capsys):
    fails(check.perplexity, lambda codes, k: math.log(perplexity(codes, k)), capsys, "entropy")
