"""Checkers for the exercises of notebook 23_scaling_laws: a GPT's forward FLOPs per token by formula, a power law
plus constant fitted by non-linear least squares, and the standard deviation of a prediction by the delta method.

The references are the packaged functions of `course_lib.scaling`.
"""

from __future__ import annotations

import math

import numpy as np

from course_lib.checks.core import Case, FunctionChecker
from course_lib.models.gpt import GPTConfig
from course_lib.scaling import fit_power_law as reference_fit_power_law
from course_lib.scaling import gpt_forward_flops_per_token, power_law
from course_lib.scaling import prediction_std as reference_prediction_std

# --- forward_flops_per_token(dim, depth, context, vocab) ------------------------------------------------------------


def reference_forward_flops_per_token(dim: int, depth: int, context: int, vocab: int) -> int:
    """Forward FLOPs per token of a plain GPT with an MLP four times as wide as the model."""
    return gpt_forward_flops_per_token(GPTConfig(vocab_size=vocab, max_len=context, dim=dim, depth=depth, heads=1),
                                       context)


def _flops_cases() -> list[Case]:
    shapes = ((16, 2, 64, 256), (48, 4, 128, 256), (8, 1, 16, 50), (256, 12, 1024, 50257))
    return [Case(f"dim {d}, depth {n}, context {t}, vocab {v}", (d, n, t, v)) for d, n, t, v in shapes]


flops_per_token = FunctionChecker(
    "forward_flops_per_token",
    reference_forward_flops_per_token,
    _flops_cases,
    mistakes=[
        (lambda d, n, t, v: 2 * 12 * n * d * d + 4 * n * t * d, "the output head is missing: 2·dim·vocab FLOPs per "
         "token, a large share for a small model."),
        (lambda d, n, t, v: 2 * 12 * n * d * d + 2 * d * v, "the attention itself is missing: the scores (q·k for "
         "every key) and the weighted sum of values cost 2·context·dim each per block."),
        (lambda d, n, t, v: 12 * n * d * d + 2 * n * t * d + d * v, "a multiply-add is two FLOPs: count 2 per weight "
         "and per multiplication in attention."),
        (lambda d, n, t, v: 2 * 12 * n * d * d + 2 * n * t * d + 2 * d * v, "attention is counted once; the scores "
         "(2·context·dim) and the weighted sum of values (another 2·context·dim) both cost FLOPs."),
    ],
    hint="2 · 12 · depth · dim² (attention projections 4·dim², MLP 8·dim² per block) + 4 · depth · context · dim "
         "+ 2 · dim · vocab",
)


# --- fit_power_law(x, y) -> (e, a, alpha) ---------------------------------------------------------------------------


def _fit_cases() -> list[Case]:
    cases = []
    for (e, a, alpha), x in (((1.5, 20.0, 0.3), np.geomspace(1e3, 1e5, 6)), ((0.8, 5.0, 0.5), np.geomspace(10, 1e4, 5)),
                             ((3.0, 100.0, 0.2), np.geomspace(1e4, 1e7, 7))):
        cases.append(Case(f"{len(x)} exact points of {e} + {a}·x^-{alpha}, x from {x[0]:g} to {x[-1]:g}",
                          (x, power_law(x, e, a, alpha))))
    return cases


def _fit_without_constant(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return 0.0, math.exp(intercept), -slope


fit_power_law = FunctionChecker(
    "fit_power_law",
    lambda x, y: reference_fit_power_law(x, y).params,
    _fit_cases,
    mistakes=[(_fit_without_constant, "this is a straight line in log-log axes, a pure power law: the constant E "
               "is missing, so the fitted slope is too shallow. Fit E + A·x^(−α) by non-linear least squares.")],
    hint="scipy.optimize.curve_fit(lambda x, e, log_a, alpha: e + np.exp(log_a - alpha * np.log(x)), x, y, "
         "p0=(min(y) - 0.1, 1.0, 0.3)); return e, exp(log_a), alpha",
    atol=1e-3, rtol=1e-3,
)


# --- prediction_std(x, params, covariance) --------------------------------------------------------------------------


def _std_cases() -> list[Case]:
    covariance = np.array([[4e-4, -1e-3, 2e-4], [-1e-3, 9.0, -0.02], [2e-4, -0.02, 1e-4]])
    return [Case(f"x = {x:g}, params {params}", (x, params, covariance))
            for x, params in ((1e5, (1.5, 20.0, 0.3)), (3e6, (2.0, 40.0, 0.25)), (50.0, (0.5, 3.0, 0.6)))]


def _std_without_log(x: float, params, covariance) -> float:
    e, a, alpha = params
    gradient = np.array([1.0, x ** -alpha, -a * x ** -alpha])
    return float(math.sqrt(gradient @ covariance @ gradient))


def _std_diagonal_only(x: float, params, covariance) -> float:
    return reference_prediction_std(x, params, np.diag(np.diag(covariance)))


prediction_std = FunctionChecker(
    "prediction_std",
    reference_prediction_std,
    _std_cases,
    mistakes=[
        (_std_without_log, "the derivative with respect to α is −A · x^(−α) · ln x: the logarithm is missing."),
        (_std_diagonal_only, "the parameters' errors are correlated: use the whole covariance, gᵀ Σ g, not only its "
         "diagonal."),
        (lambda x, p, c: reference_prediction_std(x, p, c) ** 2, "this is the variance; return its square root."),
    ],
    hint="g = [1, x**-alpha, -a * x**-alpha * log(x)]; return sqrt(g @ covariance @ g)",
)
