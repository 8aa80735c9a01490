"""Checkers for the exercises of notebook 20_tokenizers: the nearest codeword, residual quantisation's codes, and
the perplexity of code usage.

The references are the packaged functions of `course_lib.nn.quantize`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.nn.quantize import nearest_codes as reference_nearest
from course_lib.nn.quantize import perplexity as reference_perplexity


def _points(rows: int, dim: int, seed: int, scale: float = 1.0) -> Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)) * scale


# --- nearest_codes(vectors, codebook) ------------------------------------------------------------------------------


def _nearest_cases() -> list[Case]:
    cases = [Case(f"{n} vectors of width {d}, {k} codewords", (_points(n, d, seed), _points(k, d, 50 + seed, scale)))
             for seed, (n, d, k, scale) in enumerate(((6, 2, 4, 1.0), (20, 8, 16, 3.0), (9, 3, 5, 0.2)))]
    long_codeword = torch.tensor([[0.0, 0.0], [10.0, 0.0]])  # a far, long codeword wins a dot product, not a distance
    cases.append(Case("a short and a long codeword", (torch.tensor([[1.0, 0.5], [6.0, 0.0]]), long_codeword)))
    return cases


def _nearest_by_dot_product(vectors: Tensor, codebook: Tensor) -> Tensor:
    return (vectors @ codebook.T).argmax(dim=1)


def _nearest_by_cosine(vectors: Tensor, codebook: Tensor) -> Tensor:
    unit = torch.nn.functional.normalize
    return (unit(vectors, dim=1) @ unit(codebook, dim=1).T).argmax(dim=1)


def _nearest_farthest(vectors: Tensor, codebook: Tensor) -> Tensor:
    return torch.cdist(vectors, codebook).argmax(dim=1)


nearest_codes = FunctionChecker(
    "nearest_codes",
    reference_nearest,
    _nearest_cases,
    mistakes=[
        (_nearest_by_dot_product, "the codeword with the largest dot product is not the nearest: a long codeword far "
         "away can win it. Compare squared distances |v|² - 2 v·e + |e|²."),
        (_nearest_by_cosine, "cosine similarity ignores the codewords' lengths; the quantiser needs the Euclidean "
         "distance, since the decoder sees the codeword itself."),
        (_nearest_farthest, "this is the farthest codeword: take the argmin of the distances."),
    ],
    hint="torch.cdist(vectors, codebook).argmin(dim=1)",
)


# --- residual_codes(vectors, codebooks) ----------------------------------------------------------------------------


def reference_residual_codes(vectors: Tensor, codebooks: Tensor) -> Tensor:
    """(N, D) vectors, (levels, K, D) codebooks -> (N, levels) codes, each level coding the previous residual."""
    residual, codes = vectors, []
    for codebook in codebooks:
        level = reference_nearest(residual, codebook)
        residual = residual - codebook[level]
        codes.append(level)
    return torch.stack(codes, dim=1)


def _residual_cases() -> list[Case]:
    cases = []
    for seed, (n, d, levels, k) in enumerate(((5, 2, 2, 4), (12, 4, 3, 8), (8, 3, 4, 6))):
        shrinking = torch.stack([_points(k, d, 70 + seed * 10 + level, 2.0 ** -level) for level in range(levels)])
        cases.append(Case(f"{n} vectors, {levels} levels of {k} codewords", (_points(n, d, seed), shrinking)))
    return cases


def _residual_same_vector(vectors: Tensor, codebooks: Tensor) -> Tensor:
    return torch.stack([reference_nearest(vectors, codebook) for codebook in codebooks], dim=1)


def _residual_added(vectors: Tensor, codebooks: Tensor) -> Tensor:
    residual, codes = vectors, []
    for codebook in codebooks:
        level = reference_nearest(residual, codebook)
        residual = residual + codebook[level]
        codes.append(level)
    return torch.stack(codes, dim=1)


residual_codes = FunctionChecker(
    "residual_codes",
    reference_residual_codes,
    _residual_cases,
    mistakes=[
        (_residual_same_vector, "every level quantises the original vector; each level must code what the levels "
         "before it left over, the residual."),
        (_residual_added, "the chosen codeword is added to the residual; subtract it: residual = residual - "
         "codebook[level]."),
    ],
    hint="residual = vectors; for codebook in codebooks: c = nearest(residual, codebook); residual = residual - "
         "codebook[c]; keep c",
)


# --- perplexity(codes, codebook_size) ------------------------------------------------------------------------------


def _perplexity_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(90)
    return [Case("every code once", (torch.arange(8), 8)),
            Case("one code only", (torch.full((10,), 3), 16)),
            Case("two codes, 3:1", (torch.tensor([1, 1, 1, 5]), 8)),
            Case("random codes over a (4, 6) grid", (torch.randint(12, (4, 6), generator=generator), 12)),
            Case("skewed codes", ((torch.rand(200, generator=generator) ** 3 * 32).long(), 32))]


def _perplexity_used_codes(codes: Tensor, codebook_size: int) -> float:
    return float(len(codes.unique()))


def _perplexity_bits(codes: Tensor, codebook_size: int) -> float:
    return math.log(reference_perplexity(codes, codebook_size)) / math.log(2)


def _perplexity_entropy(codes: Tensor, codebook_size: int) -> float:
    return math.log(reference_perplexity(codes, codebook_size))


perplexity = FunctionChecker(
    "perplexity",
    reference_perplexity,
    _perplexity_cases,
    mistakes=[
        (_perplexity_used_codes, "this counts the codes used at least once; perplexity weighs them by how often "
         "they are used: exp(-Σ p log p)."),
        (_perplexity_bits, "this is the entropy in bits; perplexity is exp of the entropy in nats (or 2 to the "
         "power of the entropy in bits)."),
        (_perplexity_entropy, "this is the entropy; perplexity is its exponential."),
    ],
    hint="p = torch.bincount(codes.flatten(), minlength=K) / codes.numel(); exp(-(p * log p).sum()) over p > 0",
    atol=1e-6, rtol=1e-6,
)
