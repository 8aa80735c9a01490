"""Scaling laws: the compute of a GPT by formula, and power-law fits with their uncertainty (notebook 23).

The fits are non-linear least squares of loss = E + A · x^(−α) (a power law plus a constant: the constant is the
loss no amount of x removes, for a language model the entropy of the text, or a floor set by a fixed budget of
something else). `scipy.optimize.curve_fit` fits it in log space for A (A = exp(log_a)), which keeps A positive
and the problem well scaled across decades of x, and returns the covariance of the parameters. A prediction at a
new x then has two sources of error: the parameters' (by the delta method, through the gradient of the law) and
the scatter of single runs about the law (the residual variance); the interval uses Student's t with the fit's
degrees of freedom, because with a handful of runs the residual variance is itself uncertain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from course_lib.models.gpt import GPTConfig

__all__ = ["PowerLawFit", "fit_power_law", "gpt_forward_flops_per_token", "gpt_non_embedding_parameters",
           "power_law", "prediction_std"]


def gpt_non_embedding_parameters(config: GPTConfig) -> int:
    """The weights of a GPT's blocks, the count scaling laws use: 4·dim² in attention and 2·dim·ffn_hidden in the
    MLP per block (biases and norms, a few per cent at this size, and the embeddings left out)."""
    hidden = config.ffn_hidden or 4 * config.dim
    return config.depth * (4 * config.dim ** 2 + 2 * config.dim * hidden)


def gpt_forward_flops_per_token(config: GPTConfig, context: int) -> int:
    """Forward FLOPs per token of a plain GPT (MHA, MLP, no sharing) reading windows of `context` tokens: 2 per
    weight of the blocks, 4·context·dim per block for the attention scores and the weighted sum of values, and
    2·dim·vocab for the output head. Training costs about three times this (the backward pass twice the forward)."""
    if isinstance(context, bool) or not isinstance(context, int) or not 1 <= context <= config.max_len:
        raise ValueError(f"context={context!r} must be an int from 1 to max_len={config.max_len}")
    if config.kv_heads not in (None, config.heads) or config.kv_share_every != 1 or config.ffn != "mlp" \
            or config.moe_experts:
        raise ValueError("the formula is for a plain GPT: kv_heads=None, kv_share_every=1, ffn='mlp', no experts")
    return 2 * gpt_non_embedding_parameters(config) + 4 * config.depth * context * config.dim \
        + 2 * config.dim * config.vocab_size


def power_law(x: np.ndarray | float, e: float, a: float, alpha: float) -> np.ndarray | float:
    """E + A · x^(−α)."""
    return e + a * np.power(x, -alpha)


def _log_form(x: np.ndarray, e: float, log_a: float, alpha: float) -> np.ndarray:
    return e + np.exp(log_a - alpha * np.log(x))


@dataclass(frozen=True)
class PowerLawFit:
    """A fitted E + A · x^(−α): the parameters (e, a, alpha), their covariance, the residual variance of single
    runs about the law, and the degrees of freedom left (points − 3)."""

    params: tuple[float, float, float]
    covariance: np.ndarray
    residual_variance: float
    dof: int

    def predict(self, x: np.ndarray | float) -> np.ndarray | float:
        return power_law(x, *self.params)

    def interval(self, x: float, level: float = 0.95) -> tuple[float, float]:
        """The interval in which a new run at `x` should land with probability `level`: the prediction ± t ·
        sqrt(parameter variance + residual variance)."""
        if not 0 < level < 1:
            raise ValueError(f"level={level!r} must lie in (0, 1)")
        spread = math.sqrt(prediction_std(x, self.params, self.covariance) ** 2 + self.residual_variance)
        half = stats.t.ppf(0.5 + level / 2, self.dof) * spread
        centre = float(self.predict(x))
        return centre - half, centre + half


def prediction_std(x: float, params: Sequence[float], covariance: np.ndarray) -> float:
    """Standard deviation of E + A·x^(−α) at `x` from the parameters' covariance, by the delta method: the
    gradient g of the law with respect to (E, A, α), then sqrt(gᵀ Σ g)."""
    e, a, alpha = params
    power = x ** -alpha
    gradient = np.array([1.0, power, -a * power * math.log(x)])
    return float(math.sqrt(gradient @ np.asarray(covariance) @ gradient))


def _starting_point(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(E, log A, α) to start the non-linear fit from: for each α on a grid the best E and A are a linear least
    squares problem, so the grid's best α (with A > 0) starts the search near the minimum."""
    best, start = math.inf, (0.5 * float(y.min()), 0.0, 0.3)
    for alpha in np.geomspace(0.01, 3.0, 80):
        design = np.stack([np.ones_like(x), np.power(x, -alpha)], axis=1)
        (e, a), *_ = np.linalg.lstsq(design, y, rcond=None)
        error = float(np.sum((design @ np.array([e, a]) - y) ** 2))
        if a > 0 and 0 <= e <= y.min() and error < best:
            best, start = error, (float(e), math.log(a), float(alpha))
    return start


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLawFit:
    """Least-squares fit of y = E + A · x^(−α) to at least four points (x > 0, y > 0), with 0 <= E <= min(y)
    and 0 <= α <= 5, and the parameters' covariance scaled by the residual variance. Points without curvature
    (a straight line in log-log axes) put E at 0: a pure power law."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 4 or not (x > 0).all() or not (np.isfinite(y) & (y > 0)).all():
        raise ValueError(f"x and y must be matching 1-D sequences of at least 4 points with x > 0 and finite y > 0; got "
                         f"shapes {x.shape} and {y.shape}")
    floor = float(y.min())  # the constant lies between 0 and the lowest loss seen
    bounds = ([0.0, -np.inf, 0.0], [floor, np.inf, 5.0])
    (e, log_a, alpha), log_covariance = optimize.curve_fit(_log_form, x, y, p0=_starting_point(x, y), bounds=bounds,
                                                           maxfev=20000)
    a = math.exp(log_a)
    jacobian = np.diag([1.0, a, 1.0])  # from (E, log A, α) to (E, A, α)
    residuals = y - _log_form(x, e, log_a, alpha)
    dof = len(x) - 3
    return PowerLawFit((float(e), a, float(alpha)), jacobian @ log_covariance @ jacobian,
                       float(residuals @ residuals / dof), dof)
