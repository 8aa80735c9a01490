"""Forecasting baselines against naive loops, numpy's least squares, statsmodels' own per-origin route and series
whose future is known exactly; no forecast reads a value at or after its origin."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.models import LinearForecaster, arima_forecasts, ets_forecasts, seasonal_naive
from course_lib.train.loop import fit


def windows(series: torch.Tensor, context: int, horizon: int, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, context) contexts and (N, horizon) targets cut from a 1-D series (or (T, C) -> (N, ·, C))."""
    starts = range(0, len(series) - context - horizon + 1, stride)
    return (torch.stack([series[s:s + context] for s in starts]),
            torch.stack([series[s + context:s + context + horizon] for s in starts]))


def ar_series(n: int, phi: float, mean: float, seed: int = 0) -> torch.Tensor:
    generator = np.random.default_rng(seed)
    values = np.zeros(n)
    for t in range(1, n):
        values[t] = phi * values[t - 1] + generator.standard_normal()
    return torch.tensor(values + mean)


def trend_and_season(n: int, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    t = np.arange(n, dtype=np.float64)
    values = 5 + 0.1 * t + 2 * np.sin(2 * np.pi * t / 12)
    return torch.tensor(values + noise * np.random.default_rng(seed).standard_normal(n))


# Seasonal naive

@pytest.mark.parametrize("period, horizon", [(1, 5), (4, 3), (4, 4), (4, 9), (7, 20)])
@pytest.mark.parametrize("channels", [None, 3])
def test_seasonal_naive_repeats_the_last_season(period, horizon, channels):
    generator = torch.Generator().manual_seed(period + horizon)
    shape = (5, 10) if channels is None else (5, 10, channels)
    contexts = torch.randn(shape, generator=generator)
    forecasts = seasonal_naive(contexts, horizon, period)
    assert forecasts.shape == (5, horizon, *shape[2:])
    last = contexts.shape[1] - 1
    for h in range(1, horizon + 1):
        assert torch.equal(forecasts[:, h - 1], contexts[:, last + h - period * math.ceil(h / period)])
    if period == 1:
        assert torch.equal(forecasts, contexts[:, -1:].expand_as(forecasts))


def test_seasonal_naive_is_exact_on_a_periodic_series_and_refuses_a_period_longer_than_the_context():
    series = torch.sin(2 * torch.pi * torch.arange(60.0) / 6)
    contexts, targets = windows(series, context=12, horizon=15)
    torch.testing.assert_close(seasonal_naive(contexts, 15, 6), targets, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="period=13"):
        seasonal_naive(contexts, 3, 13)
    with pytest.raises(ValueError, match="horizon=0"):
        seasonal_naive(contexts, 0, 2)


# Linear forecaster (NLinear)

def test_linear_forecaster_is_one_map_shared_by_the_channels_and_follows_a_level_shift():
    torch.manual_seed(0)
    model = LinearForecaster(8, 3)
    contexts = torch.randn(4, 8, 2)
    out = model(contexts)
    assert out.shape == (4, 3, 2)
    for c in range(2):
        torch.testing.assert_close(out[..., c], model(contexts[..., c]))
    expected = (contexts[..., 0] - contexts[:, -1:, 0]) @ model.linear.weight.T + model.linear.bias + contexts[:, -1:, 0]
    torch.testing.assert_close(out[..., 0], expected)
    torch.testing.assert_close(model(contexts + 10.0), out + 10.0)  # the subtracted last value
    with pytest.raises(ValueError, match="context=8"):
        model(torch.randn(4, 7))


def test_least_squares_equals_numpy_lstsq_when_the_ridge_vanishes():
    series = ar_series(400, 0.8, 3.0, seed=1).float()
    contexts, targets = windows(series, context=12, horizon=4)
    model = LinearForecaster.fit_least_squares(contexts, targets, ridge=1e-12)
    x, y = contexts.double().numpy(), targets.double().numpy()
    design = np.concatenate([x - x[:, -1:], np.ones((len(x), 1))], axis=1)  # its last-value column is all zero
    solution = np.linalg.lstsq(design, y - x[:, -1:], rcond=None)[0]  # the minimum-norm solution
    np.testing.assert_allclose(model.linear.weight.detach().numpy(), solution[:-1].T, atol=2e-5)
    np.testing.assert_allclose(model.linear.bias.detach().numpy(), solution[-1], atol=2e-5)
    np.testing.assert_allclose(model(contexts).detach().numpy(), design @ solution + x[:, -1:], atol=1e-4)


def test_least_squares_recovers_an_exact_linear_rule_over_channels_and_the_ridge_shrinks_it():
    generator = torch.Generator().manual_seed(2)
    rule, bias = torch.randn(5, 6, generator=generator, dtype=torch.float64), torch.randn(5, generator=generator,
                                                                                     dtype=torch.float64)
    rule[:, -1] = 0  # the weight of the last value is never identified: x - last is zero there
    contexts = torch.randn(200, 6, 3, generator=generator, dtype=torch.float64)
    last = contexts[:, -1:]
    targets = torch.einsum("hl,nlc->nhc", rule, contexts - last) + bias[:, None] + last
    model = LinearForecaster.fit_least_squares(contexts.float(), targets.float(), ridge=0.0)
    torch.testing.assert_close(model.linear.weight.detach().double(), rule, rtol=0, atol=1e-4)
    torch.testing.assert_close(model.linear.bias.detach().double(), bias, rtol=0, atol=1e-4)
    torch.testing.assert_close(model(contexts.float()).double(), targets, rtol=0, atol=1e-4)
    shrunk = LinearForecaster.fit_least_squares(contexts.float(), targets.float(), ridge=10.0)
    assert shrunk.linear.weight.norm() < 0.5 * model.linear.weight.norm()


def test_gradient_training_with_fit_approaches_the_closed_form_loss():
    series = ar_series(600, 0.9, 0.0, seed=3).float()
    contexts, targets = windows(series, context=16, horizon=4)
    closed = F.mse_loss(LinearForecaster.fit_least_squares(contexts, targets)(contexts), targets).item()
    torch.manual_seed(0)
    model = LinearForecaster(16, 4)
    start = F.mse_loss(model(contexts), targets).item()
    fit(model, contexts, targets, steps=400, lr=0.02, batch=64, weight_decay=0.0, loss=F.mse_loss)
    with torch.no_grad():
        trained = F.mse_loss(model(contexts), targets).item()
    assert closed <= trained < closed * 1.05 < start, (closed, trained, start)


@pytest.mark.parametrize("bad, message", [
    (dict(targets=torch.zeros(9, 4)), "targets"), (dict(ridge=-1.0), "ridge=-1.0"),
    (dict(contexts=torch.zeros(10, 8, dtype=torch.long)), "float tensor"),
])
def test_least_squares_refuses_bad_arguments(bad, message):
    arguments = {**dict(contexts=torch.zeros(10, 8), targets=torch.zeros(10, 4)), **bad}
    with pytest.raises(ValueError, match=message):
        LinearForecaster.fit_least_squares(**arguments)


# ETS and ARIMA

def test_ets_without_damping_continues_a_trend_and_a_season_exactly():
    series = trend_and_season(180)
    origins = torch.tensor([120, 133, 150, 168])
    forecasts = ets_forecasts(series, origins, 12, train_end=120, period=12, damped=False)
    expected = torch.stack([series[o:o + 12] for o in origins]).float()
    assert forecasts.shape == (4, 12) and forecasts.dtype == torch.float32
    torch.testing.assert_close(forecasts, expected, rtol=0, atol=1e-3)
    damped = ets_forecasts(series, origins, 12, train_end=120, period=12)  # the damping bends the trend a little
    assert (damped - expected).abs().max() < 0.5 and (damped - expected).abs().max() > 1e-3


def test_ets_equals_statsmodels_forecasting_from_each_origin_and_reads_nothing_after_it():
    """statsmodels' own route: ETSModel(series[:o]).smooth(fitted params).forecast(h), one origin at a time."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    series = trend_and_season(160, noise=0.3, seed=4)
    origins = [100, 117, 141]
    forecasts = ets_forecasts(series, origins, 15, train_end=100, period=12)
    options = dict(error="add", trend="add", damped_trend=True, seasonal="add", seasonal_periods=12)
    values = series.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = ETSModel(values[:100], **options).fit(disp=False).params
        for row, origin in zip(forecasts, origins):
            expected = ETSModel(values[:origin], **options).smooth(params).forecast(15)
            np.testing.assert_allclose(row.numpy(), expected, rtol=1e-5, atol=1e-4)
    hidden = series.clone()
    hidden[117:] = float("nan")
    torch.testing.assert_close(ets_forecasts(hidden, [117], 15, train_end=100, period=12)[0], forecasts[1])
    seasonless = ets_forecasts(series, origins, 3, train_end=100, period=1, trend=False)  # simple smoothing
    assert torch.equal(seasonless[:, 0:1].expand(-1, 3), seasonless)


def test_arima_recovers_an_ar1_process_and_forecasts_with_its_parameters():
    from statsmodels.tsa.arima.model import ARIMA

    series = ar_series(700, 0.7, 5.0, seed=5)
    origins = torch.arange(500, 700, 10)
    forecasts = arima_forecasts(series, origins, 3, train_end=500, order=(1, 0, 0))
    # 1-step forecasts are mean + phi·(last - mean): a line in the last value, whose slope is the fitted phi
    last = series[origins - 1].numpy()
    slope, intercept = np.polyfit(last, forecasts[:, 0].double().numpy(), 1)
    assert abs(slope - 0.7) < 0.1 and abs(intercept / (1 - slope) - 5.0) < 0.5, (slope, intercept)
    mean, phi = ARIMA(series[:500].numpy(), order=(1, 0, 0)).fit().params[:2]
    for h in (1, 2, 3):
        expected = mean + phi**h * (last - mean)
        np.testing.assert_allclose(forecasts[:, h - 1].double().numpy(), expected, rtol=1e-5)
    hidden = series.clone()
    hidden[600:] = float("nan")
    torch.testing.assert_close(arima_forecasts(hidden, [600], 3, train_end=500, order=(1, 0, 0))[0], forecasts[10])


def test_arima_with_the_default_order_follows_a_random_walk_with_drift():
    generator = np.random.default_rng(6)
    series = torch.tensor(np.cumsum(0.5 + 0.1 * generator.standard_normal(300)))
    forecasts = arima_forecasts(series, [250, 280], 5, train_end=250)
    expected = torch.stack([series[250:255], series[280:285]]).float()
    assert forecasts.shape == (2, 5) and forecasts.dtype == torch.float32
    assert (forecasts - expected).abs().max() < 1.5


@pytest.mark.parametrize("bad, message", [
    (dict(origins=[99]), "origins span 99"), (dict(origins=[161]), "origin <= len"), (dict(origins=[]), "origins"),
    (dict(train_end=5), "train_end=5"), (dict(horizon=0), "horizon=0"), (dict(period=0), "period=0"),
    (dict(series=torch.arange(160)), "1-D float"),
])
def test_ets_refuses_bad_arguments_by_name(bad, message):
    arguments = {**dict(series=trend_and_season(160), origins=[100], horizon=3, train_end=100, period=12), **bad}
    series, origins, horizon = arguments.pop("series"), arguments.pop("origins"), arguments.pop("horizon")
    with pytest.raises(ValueError, match=message):
        ets_forecasts(series, origins, horizon, **arguments)


def test_a_missing_value_before_an_origin_is_refused():
    series = ar_series(200, 0.5, 0.0)
    series[150] = float("nan")
    with pytest.raises(ValueError, match=r"series\[150\] is nan"):
        arima_forecasts(series, [120, 160], 2, train_end=100, order=(1, 0, 0))
