"""The checkers of notebook 23_scaling_laws: right answers pass, plausible wrong ones fail with a message naming the
mistake. Each correct answer is written here the way a learner would, independently of the packaged references."""

from __future__ import annotations

import math

import numpy as np
from checking import fails, passes
from scipy.optimize import least_squares

from course_lib.checks import scaling as check


def forward_flops_per_token(dim, depth, context, vocab):
    per_block = 2 * (4 * dim * dim + 8 * dim * dim) + 2 * context * dim + 2 * context * dim
    return depth * per_block + 2 * dim * vocab


def test_flops_right(capsys):
    passes(check.flops_per_token, forward_flops_per_token, capsys)


def test_flops_without_head(capsys):
    fails(check.flops_per_token, lambda d, n, t, v: forward_flops_per_token(d, n, t, v) - 2 * d * v, capsys,
          "output head")


def fit_power_law(x, y):
    def residuals(p):
        return p[0] + np.exp(p[1]) * x ** -p[2] - y
    e, log_a, alpha = least_squares(residuals, x0=[min(y) - 0.5, 0.0, 0.5], xtol=1e-14, ftol=1e-14).x
    return e, math.exp(log_a), alpha


def test_fit_right(capsys):
    passes(check.fit_power_law, fit_power_law, capsys)


def test_fit_without_constant(capsys):
    def wrong(x, y):
        slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
        return 0.0, math.exp(intercept), -slope

    fails(check.fit_power_law, wrong, capsys, "constant E")


def prediction_std(x, params, covariance):
    e, a, alpha = params
    g = np.array([1.0, x ** -alpha, -a * x ** -alpha * np.log(x)])
    return float(np.sqrt(g @ covariance @ g))


def test_prediction_std_right(capsys):
    passes(check.prediction_std, prediction_std, capsys)


def test_prediction_std_diagonal(capsys):
    def wrong(x, params, covariance):
        return prediction_std(x, params, np.diag(np.diag(covariance)))

    fails(check.prediction_std, wrong, capsys, "correlated")
