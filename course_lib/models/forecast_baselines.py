"""The baselines a time-series transformer has to beat: seasonal naive, one linear map, ETS and ARIMA.

"Are Transformers Effective for Time Series Forecasting?" (Zeng et al., 2023) found that one linear map from the
context window to the horizon ("NLinear": subtract the last value, map, add it back) beats many forecasting
transformers; SAMformer compares against it too. The statistical models are the classics from statsmodels:
- `seasonal_naive` repeats the last season (the last value when `period=1`);
- `LinearForecaster` is NLinear, shared across channels; `fit_least_squares` solves it in closed form;
- `ets_forecasts` and `arima_forecasts` fit their parameters once on `series[:train_end]`, then forecast from
  each origin with those parameters fixed, reading only the values before that origin.

Windows are `contexts` (N, L) or (N, L, C) with channels last; forecasts are (N, H) or (N, H, C).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn

from course_lib.models._common import check_positive
from course_lib.models.forecasting import check_windows

__all__ = ["LinearForecaster", "arima_forecasts", "ets_forecasts", "seasonal_naive"]


def _season_offsets(horizon: int, period: int) -> Tensor:
    """(horizon,) offsets from the last observed step: step h (1-based) repeats h - period·ceil(h / period) <= 0."""
    h = torch.arange(1, horizon + 1)
    return h - period * torch.div(h + period - 1, period, rounding_mode="floor")


def seasonal_naive(contexts: Tensor, horizon: int, period: int) -> Tensor:
    """Forecast step h as the value `period`·ceil(h / period) steps before it: the last season repeated
    (`period=1`: the last value). (N, L[, C]) -> (N, horizon[, C])."""
    check_windows("contexts", contexts)
    check_positive("horizon", horizon)
    check_positive("period", period)
    if period > contexts.shape[1]:
        raise ValueError(f"period={period} is longer than the context ({contexts.shape[1]} steps); "
                         "expected period <= L")
    index = contexts.shape[1] - 1 + _season_offsets(horizon, period).to(contexts.device)
    return contexts[:, index]


class LinearForecaster(nn.Module):
    """NLinear: one (context -> horizon) linear map applied to the window minus its last value, which is added
    back; the same map for every channel (channel independence)."""

    def __init__(self, context: int, horizon: int) -> None:
        super().__init__()
        check_positive("context", context)
        check_positive("horizon", horizon)
        self.context, self.horizon = context, horizon
        self.linear = nn.Linear(context, horizon)

    def forward(self, contexts: Tensor) -> Tensor:
        """(N, L) -> (N, H), or (N, L, C) -> (N, H, C)."""
        check_windows("contexts", contexts)
        if contexts.shape[1] != self.context:
            raise ValueError(f"contexts has {contexts.shape[1]} steps; this forecaster expects context={self.context}")
        last = contexts[:, -1:]  # (N, 1[, C])
        if contexts.dim() == 2:
            return self.linear(contexts - last) + last
        shifted = rearrange(contexts - last, "n l c -> n c l")
        return rearrange(self.linear(shifted), "n c h -> n h c") + last

    @classmethod
    def fit_least_squares(cls, contexts: Tensor, targets: Tensor, ridge: float = 1e-3) -> LinearForecaster:
        """The forecaster minimising mean squared error + `ridge`·‖weights‖² (bias not penalised) on these windows,
        in closed form: the normal equations solved in float64. Every channel of every window is one example."""
        check_windows("contexts", contexts)
        check_windows("targets", targets)
        if (targets.dim() != contexts.dim() or len(targets) != len(contexts)
                or targets.shape[2:] != contexts.shape[2:] or len(contexts) == 0):
            raise ValueError(f"contexts {tuple(contexts.shape)} and targets {tuple(targets.shape)} must be "
                             "(N, L) and (N, H), or (N, L, C) and (N, H, C), with N > 0")
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not math.isfinite(ridge) or ridge < 0:
            raise ValueError(f"ridge={ridge!r} must be a finite number >= 0")
        context, horizon = contexts.shape[1], targets.shape[1]
        x, y = contexts.detach().double().cpu(), targets.detach().double().cpu()
        if x.dim() == 3:
            x, y = rearrange(x, "n l c -> (n c) l"), rearrange(y, "n h c -> (n c) h")
        last = x[:, -1:]
        # The last column of x - last is always zero: leave it out, so that the system stays regular.
        design = torch.cat([x[:, :-1] - last, torch.ones_like(last)], dim=1)  # (M, L) = L-1 weights and the bias
        penalty = torch.full((context,), float(ridge), dtype=torch.float64)
        penalty[-1] = 0.0
        gram = design.T @ design / len(design) + torch.diag(penalty)
        solution = torch.linalg.solve(gram, design.T @ (y - last) / len(design))  # (L, H)
        model = cls(context, horizon)
        with torch.no_grad():
            model.linear.weight.zero_()
            model.linear.weight[:, :-1] = solution[:-1].T.to(model.linear.weight.dtype)
            model.linear.bias.copy_(solution[-1])
        return model.to(contexts.device)


def _origins(series: Tensor, origins: Tensor | Sequence[int], horizon: int, train_end: int,
             minimum: int) -> tuple[np.ndarray, np.ndarray]:
    """Checked arguments as (series as float64 numpy, origins as int numpy)."""
    if not isinstance(series, Tensor) or series.dim() != 1 or not series.is_floating_point():
        raise ValueError(f"series must be a 1-D float tensor; got {getattr(series, 'dtype', type(series).__name__)} "
                         f"of shape {tuple(getattr(series, 'shape', ()))}")
    check_positive("horizon", horizon)
    check_positive("train_end", train_end)
    if not minimum <= train_end <= len(series):
        raise ValueError(f"train_end={train_end} must lie in {minimum}..{len(series)} (enough values to fit the "
                         f"model, and no more than the series holds)")
    points = torch.as_tensor(origins)
    if points.dim() != 1 or len(points) == 0 or points.is_floating_point() or points.dtype == torch.bool:
        raise ValueError(f"origins must be a non-empty 1-D sequence of ints; got {origins!r}")
    if points.min() < train_end or points.max() > len(series):
        raise ValueError(f"origins span {int(points.min())}..{int(points.max())}; expected train_end={train_end} <= "
                         f"origin <= len(series)={len(series)}, so that no forecast target was used for fitting")
    values = series.detach().double().cpu().numpy()
    end = int(points.max())
    bad = np.flatnonzero(~np.isfinite(values[:end]))
    if len(bad):
        raise ValueError(f"series[{bad[0]}] is {values[bad[0]]}, before origin {end}; the values each forecast "
                         "reads must be finite")
    return values, points.numpy().astype(np.int64)


def ets_forecasts(series: Tensor, origins: Tensor | Sequence[int], horizon: int, *, train_end: int, period: int,
                  trend: bool = True, damped: bool = True) -> Tensor:
    """(len(origins), horizon) float32 forecasts of an ETS model (additive error, additive `damped` trend if
    `trend`, additive seasonality if `period` > 1) fitted once on `series[:train_end]`, each from `series[:origin]`."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    check_positive("period", period)
    values, points = _origins(series, origins, horizon, train_end, max(10, 2 * period))
    options = dict(error="add", trend="add" if trend else None, damped_trend=bool(trend and damped),
                   seasonal="add" if period > 1 else None, seasonal_periods=period if period > 1 else None)
    with warnings.catch_warnings():
        _silence_statsmodels()
        params = ETSModel(values[:train_end], **options).fit(disp=False).params
        # One pass of the filter with the parameters fixed: the states after step o - 1 depend on series[:o] only,
        # and are what ETSModel(series[:o]).smooth(params) ends with (its forecast would also cost a Hessian).
        model = ETSModel(values[:points.max()], **options)
        _, states = model.smooth(params, return_raw=True)  # (T, level[, trend][, seasonal])
    states = np.asarray(states)
    steps = np.arange(1, horizon + 1)
    forecasts = states[points - 1, :1]  # (origins, 1) the level
    if trend:
        damping = params[model.param_names.index("damping_trend")] if damped else 1.0
        forecasts = forecasts + states[points - 1, 1:2] * np.cumsum(damping**steps)
    if period > 1:
        offsets = _season_offsets(horizon, period).numpy()
        forecasts = forecasts + states[points[:, None] - 1 + offsets, -1]
    return torch.from_numpy(np.broadcast_to(forecasts, (len(points), horizon)).copy()).float()


def arima_forecasts(series: Tensor, origins: Tensor | Sequence[int], horizon: int, *, train_end: int,
                    order: tuple[int, int, int] = (2, 1, 1),
                    seasonal_order: tuple[int, int, int, int] = (0, 0, 0, 0)) -> Tensor:
    """(len(origins), horizon) float32 forecasts of a (seasonal) ARIMA fitted once on `series[:train_end]`, each
    from the Kalman filter run over `series[:origin]` with the parameters fixed."""
    from statsmodels.tsa.arima.model import ARIMA

    period = seasonal_order[3] if len(seasonal_order) == 4 else 0
    values, points = _origins(series, origins, horizon, train_end, max(10, 2 * period))
    with warnings.catch_warnings():
        _silence_statsmodels()
        fitted = ARIMA(values[:train_end], order=tuple(order), seasonal_order=tuple(seasonal_order)).fit()
        forecasts = [np.asarray(fitted.apply(values[:origin]).forecast(horizon)) for origin in points]
    return torch.from_numpy(np.stack(forecasts)).float()


def _silence_statsmodels() -> None:
    """Inside `warnings.catch_warnings()`: ignore statsmodels' notes on convergence, dates and start parameters."""
    from statsmodels.tools.sm_exceptions import ConvergenceWarning, ValueWarning

    warnings.simplefilter("ignore", ConvergenceWarning)
    warnings.simplefilter("ignore", ValueWarning)
    warnings.filterwarnings("ignore", message="Non-(stationary|invertible) starting", category=UserWarning)
