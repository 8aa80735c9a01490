"""The checkers of notebook 14_time_series: right answers pass, plausible wrong ones fail with a message naming the
mistake. Each correct answer is written here the way a learner would, independently of the packaged references."""

from __future__ import annotations

import math

import torch
from checking import fails, passes

from course_lib.checks import forecasting as check

# --- seasonal_naive ---------------------------------------------------------------------------------------


def seasonal_naive(contexts, horizon, period):
    length = contexts.shape[1]
    steps = [contexts[:, length - 1 + h - period * math.ceil(h / period)] for h in range(1, horizon + 1)]
    return torch.stack(steps, dim=1)


def test_seasonal_naive_right(capsys):
    passes(check.seasonal_naive, seasonal_naive, capsys)


def test_seasonal_naive_by_tiling(capsys):
    def by_tiling(contexts, horizon, period):
        season = contexts[:, -period:]
        repeats = math.ceil(horizon / period)
        return torch.cat([season] * repeats, dim=1)[:, :horizon]

    passes(check.seasonal_naive, by_tiling, capsys)


def test_seasonal_naive_last_value(capsys):
    fails(check.seasonal_naive, lambda c, h, p: c[:, -1:].expand(-1, h) if c.dim() == 2 else c[:, -1:].expand(-1, h, -1),
          capsys, "repeats the last value")


def test_seasonal_naive_first_season(capsys):
    fails(check.seasonal_naive, lambda c, h, p: c[:, torch.arange(h) % p], capsys, "start of the context")


def test_seasonal_naive_one_season_only(capsys):
    def one_season(contexts, horizon, period):
        length = contexts.shape[1]
        return contexts[:, [min(length - period + h, length - 1) for h in range(horizon)]]

    fails(check.seasonal_naive, one_season, capsys, "whole number of seasons")


# --- patchify_series ----------------------------------------------------------------------------------------


def patchify_series(x, patch, stride):
    starts = list(range(x.shape[-1] - patch, -1, -stride))[::-1]
    return torch.stack([x[..., s : s + patch] for s in starts], dim=-2)


def test_patchify_right(capsys):
    passes(check.patchify_series, patchify_series, capsys)


def test_patchify_from_the_start(capsys):
    fails(check.patchify_series, lambda x, p, s: x.unfold(-1, p, s), capsys, "last patch ends at the last value")


def test_patchify_without_overlap(capsys):
    fails(check.patchify_series, lambda x, p, s: patchify_series(x, p, p), capsys, "`stride` steps apart")


# --- standardise ------------------------------------------------------------------------------------------


def standardise(x):
    loc = x.sum(dim=1, keepdim=True) / x.shape[1]
    variance = ((x - loc) ** 2).sum(dim=1, keepdim=True) / x.shape[1]
    scale = torch.sqrt(variance + 1e-5)
    return (x - loc) / scale, loc, scale


def test_standardise_right(capsys):
    passes(check.standardise, standardise, capsys)


def test_standardise_unbiased(capsys):
    def unbiased(x):
        loc = x.mean(dim=1, keepdim=True)
        scale = (((x - loc) ** 2).sum(dim=1, keepdim=True) / (x.shape[1] - 1) + 1e-5).sqrt()
        return (x - loc) / scale, loc, scale

    fails(check.standardise, unbiased, capsys, "L - 1")


def test_standardise_across_channels(capsys):
    def across(x):
        loc = x.mean(dim=-1, keepdim=True)
        scale = (x.var(dim=-1, keepdim=True, unbiased=False) + 1e-5).sqrt()
        return (x - loc) / scale, loc, scale

    fails(check.standardise, across, capsys, "across channels")


def test_standardise_shape_is_checked(capsys):
    fails(check.standardise, lambda x: (x, x.mean(), x.std()), capsys, "output\\[0\\]")


# --- sam_perturbation ---------------------------------------------------------------------------------------


def sam_perturbation(grads, rho):
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    return [rho * g / (norm + 1e-12) for g in grads]


def test_sam_right(capsys):
    passes(check.sam_perturbation, sam_perturbation, capsys)


def test_sam_per_tensor_norm(capsys):
    fails(check.sam_perturbation, lambda grads, rho: [rho * g / g.norm() for g in grads], capsys, "ONE norm")


def test_sam_downhill(capsys):
    fails(check.sam_perturbation, lambda grads, rho: [-e for e in sam_perturbation(grads, rho)], capsys, "UP the gradient")


def test_sam_not_normalised(capsys):
    fails(check.sam_perturbation, lambda grads, rho: [rho * g for g in grads], capsys, "length rho whatever")
