"""Checkers for the exercises of notebook 14_time_series: the seasonal-naive baseline, patches of a series,
per-window standardisation, and the perturbation of sharpness-aware minimisation.

The references are the packaged functions: `course_lib.models.forecast_baselines.seasonal_naive`,
`course_lib.models.forecasting.patchify_series` and `standardise`, and `course_lib.train.sam_perturbation`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.models.forecast_baselines import seasonal_naive as reference_seasonal_naive
from course_lib.models.forecasting import patchify_series as reference_patchify_series
from course_lib.models.forecasting import standardise as reference_standardise
from course_lib.train.sam import sam_perturbation as reference_sam_perturbation


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(14)


# --- seasonal_naive(contexts, horizon, period) -------------------------------------------------------------


def _naive_cases() -> list[Case]:
    generator = _generator()
    ramp = torch.arange(1.0, 9.0)[None]  # [[1, ..., 8]]
    cases = [Case("contexts [[1, 2, ..., 8]], horizon 3, period 4", (ramp, 3, 4)),
             Case("contexts [[1, 2, ..., 8]], horizon 6, period 4 (more than one season ahead)", (ramp, 6, 4))]
    for shape, horizon, period in [((3, 12), 5, 1), ((2, 24), 13, 12), ((4, 10), 7, 3), ((2, 16, 3), 9, 4)]:
        cases.append(Case(f"contexts {shape}, horizon {horizon}, period {period}",
                          (torch.randn(*shape, generator=generator), horizon, period)))
    return cases


def _naive_last_value(contexts: Tensor, horizon: int, period: int) -> Tensor:
    return reference_seasonal_naive(contexts, horizon, 1)


def _naive_first_season(contexts: Tensor, horizon: int, period: int) -> Tensor:
    index = torch.arange(horizon) % period
    return contexts[:, index]


def _naive_one_season_back(contexts: Tensor, horizon: int, period: int) -> Tensor:
    length = contexts.shape[1]
    index = (length - period + torch.arange(horizon)).clamp(max=length - 1)
    return contexts[:, index]


seasonal_naive = FunctionChecker(
    "seasonal_naive",
    reference_seasonal_naive,
    _naive_cases,
    mistakes=[
        (_naive_last_value, "every step repeats the last value; step h should repeat the value one season "
         "(period steps) before it."),
        (_naive_first_season, "the season is taken from the start of the context; repeat the LAST `period` values."),
        (_naive_one_season_back, "steps more than one season ahead repeat the last value; they should go back a "
         "whole number of seasons, period * ceil(h / period) steps."),
    ],
    hint="last = L - 1; step h (1-based) reads index last + h - period * ceil(h / period); "
    "contexts[:, index] keeps any channel axis.",
)


# --- patchify_series(x, patch, stride) -----------------------------------------------------------------------


def _patch_cases() -> list[Case]:
    generator = _generator()
    cases = [Case("x = [[0, 1, ..., 7]], patch 4, stride 4", (torch.arange(8.0)[None], 4, 4)),
             Case("x = [[0, 1, ..., 9]], patch 4, stride 4 (two values left over)", (torch.arange(10.0)[None], 4, 4))]
    for shape, patch, stride in [((2, 16), 4, 2), ((3, 20), 6, 3), ((2, 3, 17), 5, 4), ((1, 9), 9, 1)]:
        cases.append(Case(f"x {shape}, patch {patch}, stride {stride}",
                          (torch.randn(*shape, generator=generator), patch, stride)))
    return cases


def _patches_from_the_start(x: Tensor, patch: int, stride: int) -> Tensor:
    return x.unfold(-1, patch, stride)


def _patches_ignoring_stride(x: Tensor, patch: int, stride: int) -> Tensor:
    return reference_patchify_series(x, patch, patch)


patchify_series = FunctionChecker(
    "patchify_series",
    reference_patchify_series,
    _patch_cases,
    mistakes=[
        (_patches_from_the_start, "the patches start at the first value, so the most recent values can be left "
         "out; drop the leftover values at the START, so that the last patch ends at the last value."),
        (_patches_ignoring_stride, "the patches do not overlap; consecutive patches start `stride` steps apart."),
    ],
    hint="count = (L - patch) // stride + 1; start = L - (patch + stride * (count - 1)); "
    "x[..., start:].unfold(-1, patch, stride).",
)


# --- standardise(x) ---------------------------------------------------------------------------------------------


def _standardise_cases() -> list[Case]:
    generator = _generator()
    return [Case(f"x {shape} (batch, length, channels)", (torch.randn(*shape, generator=generator) * 4 + 3,))
            for shape in [(1, 5, 1), (3, 12, 2), (2, 30, 4)]]


def _standardise_unbiased(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    loc = x.mean(dim=1, keepdim=True)
    scale = (x.var(dim=1, keepdim=True) + 1e-5).sqrt()
    return (x - loc) / scale, loc, scale


def _standardise_over_channels(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    loc = x.mean(dim=2, keepdim=True)
    scale = (x.var(dim=2, keepdim=True, unbiased=False) + 1e-5).sqrt()
    return (x - loc) / scale, loc, scale


def _standardise_whole_batch(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    loc = x.mean(dim=(0, 1), keepdim=True).expand(x.shape[0], 1, x.shape[2])
    scale = (x.var(dim=(0, 1), keepdim=True, unbiased=False) + 1e-5).sqrt().expand(x.shape[0], 1, x.shape[2])
    return (x - loc) / scale, loc, scale


standardise = FunctionChecker(
    "standardise",
    reference_standardise,
    _standardise_cases,
    mistakes=[
        (_standardise_unbiased, "the variance divides by L - 1; use the biased variance (unbiased=False), as "
         "PatchTST and Hugging Face do."),
        (_standardise_over_channels, "the statistics are taken across channels; take them over time (dim 1), "
         "per window and per channel."),
        (_standardise_whole_batch, "the statistics are shared by the whole batch; every window needs its own."),
    ],
    hint="loc = x.mean(1, keepdim=True); scale = (x.var(1, keepdim=True, unbiased=False) + 1e-5).sqrt(); "
    "return (x - loc) / scale, loc, scale.",
)


# --- sam_perturbation(grads, rho) ------------------------------------------------------------------------------


def _sam_cases() -> list[Case]:
    generator = _generator()
    cases = [Case("grads [tensor([3., 4.])], rho 1", ([torch.tensor([3.0, 4.0])], 1.0)),
             Case("grads [tensor([3.]), tensor([4.])], rho 0.5 (two tensors)", ([torch.tensor([3.0]), torch.tensor([4.0])], 0.5))]
    for shapes, rho in [([(4, 3), (3,)], 0.05), ([(2, 2), (5,), (1, 3, 2)], 2.0)]:
        cases.append(Case(f"grads of shapes {shapes}, rho {rho}",
                          ([torch.randn(*shape, generator=generator) for shape in shapes], rho)))
    return cases


def _sam_per_tensor(grads: list[Tensor], rho: float) -> list[Tensor]:
    return [rho * g / (g.norm() + 1e-12) for g in grads]


def _sam_unnormalised(grads: list[Tensor], rho: float) -> list[Tensor]:
    return [rho * g for g in grads]


def _sam_downhill(grads: list[Tensor], rho: float) -> list[Tensor]:
    return [-e for e in reference_sam_perturbation(grads, rho)]


sam_perturbation = FunctionChecker(
    "sam_perturbation",
    reference_sam_perturbation,
    _sam_cases,
    mistakes=[
        (_sam_per_tensor, "each tensor is divided by its own norm; divide every tensor by the ONE norm of all the "
         "gradients together, so that the whole step has length rho."),
        (_sam_unnormalised, "the gradient is not divided by its norm; the step must have length rho whatever the "
         "size of the gradient."),
        (_sam_downhill, "the step goes downhill; SAM steps UP the gradient, to the worst nearby point."),
    ],
    hint="norm = torch.sqrt(sum((g ** 2).sum() for g in grads)); return [rho * g / (norm + 1e-12) for g in grads].",
)
