"""Checkers for the exercises of notebook 13_multiscale_sequences: the causal moving average behind WaveletGPT's
multi-rate channels, the per-head window mask of multi-scale self-attention, and residual vector quantisation.

The references are the packaged functions: `course_lib.nn.causal_moving_average`, `course_lib.nn.multiscale_mask`
and `course_lib.data.codec.ResidualQuantizer.encode`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.data.codec import ResidualQuantizer
from course_lib.nn import causal_moving_average as reference_causal_moving_average
from course_lib.nn import multiscale_mask as reference_multiscale_mask

# --- causal_moving_average(x, window) -------------------------------------------------------------------


def _average_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(13)
    cases = [Case("x = [[[1], [2], [3], [4]]], window 2", (torch.tensor([[[1.0], [2.0], [3.0], [4.0]]]), 2))]
    for shape, window in [((1, 6, 2), 1), ((2, 9, 3), 4), ((2, 5, 4), 8), ((3, 17, 2), 16)]:
        cases.append(Case(f"x {shape}, window {window}",
                          (torch.randn(*shape, generator=generator, dtype=torch.float64), window)))
    return cases


def _average_centred(x: Tensor, window: int) -> Tensor:
    length = x.shape[1]
    return torch.stack([x[:, max(0, t - window // 2) : min(length, t + (window - 1) // 2 + 1)].mean(dim=1)
                        for t in range(length)], dim=1)


def _average_zero_padded(x: Tensor, window: int) -> Tensor:
    padded = F.pad(x.transpose(1, 2), (window - 1, 0))
    return F.avg_pool1d(padded, window, stride=1).transpose(1, 2)


def _average_one_too_many(x: Tensor, window: int) -> Tensor:
    return reference_causal_moving_average(x, window + 1)


def _average_excluding_current(x: Tensor, window: int) -> Tensor:
    shifted = torch.cat([x[:, :1], x[:, :-1]], dim=1)
    return reference_causal_moving_average(shifted, window)


causal_moving_average = FunctionChecker(
    "causal_moving_average",
    reference_causal_moving_average,
    _average_cases,
    mistakes=[
        (_average_centred, "the window is centred on t, so it reads tokens after t; a causal model may only "
         "average positions t - window + 1 .. t."),
        (_average_zero_padded, "the first positions are divided by `window` although fewer than `window` values "
         "exist there; divide by the number of positions actually averaged, min(window, t + 1)."),
        (_average_one_too_many, "the window holds window + 1 positions; it should hold t - window + 1 .. t."),
        (_average_excluding_current, "position t itself is left out; the average includes the current token."),
    ],
    hint="totals = F.pad(x.cumsum(1), (0, 0, 1, 0)); for t, start = max(0, t + 1 - window): "
    "(totals[:, t + 1] - totals[:, start]) / (t + 1 - start).",
)


# --- multiscale_mask(length, radii) ---------------------------------------------------------------------


def _mask_cases() -> list[Case]:
    return [
        Case("length 4, radii [1]", (4, [1])),
        Case("length 6, radii [1, 2, None]", (6, [1, 2, None])),
        Case("length 9, radii [1, 1, 3, 8]", (9, [1, 1, 3, 8])),
        Case("length 5, radii [None, 2]", (5, [None, 2])),
    ]


def _mask_strict(length: int, radii: list) -> Tensor:
    positions = torch.arange(length)
    distance = (positions[:, None] - positions[None, :]).abs()
    return torch.stack([distance < (length if r is None else r) for r in radii])


def _mask_one_sided(length: int, radii: list) -> Tensor:
    positions = torch.arange(length)
    offset = positions[:, None] - positions[None, :]
    return torch.stack([(offset >= 0) & (offset <= (length if r is None else r)) for r in radii])


def _none_as_zero(length: int, radii: list) -> Tensor:
    positions = torch.arange(length)
    distance = (positions[:, None] - positions[None, :]).abs()
    return torch.stack([distance <= (0 if r is None else r) for r in radii])


multiscale_mask = FunctionChecker(
    "multiscale_mask",
    reference_multiscale_mask,
    _mask_cases,
    mistakes=[
        (_mask_strict, "the window stops one short: a radius r includes the tokens at distance exactly r "
         "(|i - j| <= r)."),
        (_mask_one_sided, "only the past is seen; a classifier's windows reach r tokens on both sides of i."),
        (_none_as_zero, "a radius of None should mean a global head (every key), not a window of size zero."),
    ],
    hint="positions = torch.arange(length); distance = (positions[:, None] - positions[None, :]).abs(); "
    "stack one (distance <= r) per head, all True for None.",
)


# --- residual_quantize(x, codebooks) --------------------------------------------------------------------


def _reference_residual_quantize(x: Tensor, codebooks: Tensor) -> Tensor:
    return ResidualQuantizer(codebooks).encode(x)


def _quantize_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(31)
    first = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [[-0.1, 0.1], [0.9, 0.1], [1.9, 0.1]]])
    cases = [Case("x = [[0.9, 0.1]], codebooks [[[1, 0], [0, 1], [0, 0]], [[-0.1, 0.1], [0.9, 0.1], [1.9, 0.1]]]",
                  (torch.tensor([[0.9, 0.1]]), first))]
    for n, levels, k, dim in [(5, 1, 4, 3), (20, 3, 8, 4), (50, 4, 16, 6)]:
        scales = 0.5 ** torch.arange(levels, dtype=torch.float64)                     # finer levels, smaller codewords
        codebooks = torch.randn(levels, k, dim, generator=generator, dtype=torch.float64) * scales[:, None, None]
        cases.append(Case(f"{n} vectors of {dim}, {levels} levels of {k} codewords",
                          (torch.randn(n, dim, generator=generator, dtype=torch.float64), codebooks)))
    return cases


def _quantize_without_residual(x: Tensor, codebooks: Tensor) -> Tensor:
    return torch.stack([torch.cdist(x, book).argmin(dim=-1) for book in codebooks], dim=-1)


def _quantize_residual_added(x: Tensor, codebooks: Tensor) -> Tensor:
    residual, codes = x, []
    for book in codebooks:
        code = torch.cdist(residual, book).argmin(dim=-1)
        codes.append(code)
        residual = residual + book[code]
    return torch.stack(codes, dim=-1)


def _quantize_by_dot_product(x: Tensor, codebooks: Tensor) -> Tensor:
    residual, codes = x, []
    for book in codebooks:
        code = (residual @ book.T).argmax(dim=-1)
        codes.append(code)
        residual = residual - book[code]
    return torch.stack(codes, dim=-1)


residual_quantize = FunctionChecker(
    "residual_quantize",
    _reference_residual_quantize,
    _quantize_cases,
    mistakes=[
        (_quantize_without_residual, "every level quantises x itself; each level must quantise what the levels "
         "before it left over (residual = residual - codeword)."),
        (_quantize_residual_added, "the chosen codeword is added to the residual; subtract it."),
        (_quantize_by_dot_product, "the codeword with the largest dot product is not the nearest one unless all "
         "codewords have the same length; take the smallest Euclidean distance."),
    ],
    hint="residual = x; per level: code = torch.cdist(residual, book).argmin(-1); residual = residual - book[code]; "
    "stack the codes on the last axis.",
)
