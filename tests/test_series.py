"""Forecasting series: the real series as statsmodels ships them, windows cut without leakage, sliding
windows against a loop, procedural components that are what the recipe says, refused arguments."""

import numpy as np
import pytest
import torch
from statsmodels import datasets

import course_lib.data.series as series
from course_lib.data.registry import load

REAL = ["co2", "sunspots", "elnino", "nile", "macro"]
SPLIT_NAMES = ["train", "val", "test"]
SHAPES = [(8, 4, 1), (13, 1, 3), (5, 7, 4)]  # (context, horizon, stride)


def day(text: str) -> np.datetime64:
    return np.datetime64(text, "D")


# ---------------------------------------------------------------- the real series


def test_co2_is_2284_weeks_with_the_gaps_filled_linearly():
    values, times = series.real_series("co2")
    raw = datasets.co2.load_pandas().data["co2"].to_numpy()
    assert values.shape == (2284,) and values.dtype == torch.float32 and np.isnan(raw).sum() == 59
    assert times[0] == day("1958-03-29") and times[-1] == day("2001-12-29")
    assert (np.diff(times) == np.timedelta64(7, "D")).all()
    assert not values.isnan().any()
    known = ~np.isnan(raw)
    assert torch.equal(values[known], torch.tensor(raw[known], dtype=torch.float32))
    measured = np.flatnonzero(known)
    for t in np.flatnonzero(~known):
        before, after = measured[measured < t].max(), measured[measured > t].min()
        low, high = sorted([raw[before], raw[after]])
        assert low - 1e-4 <= values[t].item() <= high + 1e-4
        expected = raw[before] + (raw[after] - raw[before]) * (t - before) / (after - before)
        assert values[t].item() == pytest.approx(expected, abs=1e-4)


def test_sunspots_nile_elnino_and_macro_are_the_statsmodels_tables():
    values, times = series.real_series("sunspots")
    assert values.shape == (309,) and times[0] == day("1700-01-01") and times[-1] == day("2008-01-01")
    assert torch.equal(values, torch.tensor(datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(),
                                            dtype=torch.float32))

    values, times = series.real_series("nile")
    assert values.shape == (100,) and times[0] == day("1871-01-01") and times[-1] == day("1970-01-01")
    assert values[0] == 1120 and values[-1] == 740

    values, times = series.real_series("elnino")
    table = datasets.elnino.load_pandas().data
    assert values.shape == (732,) and times[0] == day("1950-01-01") and times[-1] == day("2010-12-01")
    assert torch.equal(values[:12], torch.tensor(table.iloc[0, 1:].to_numpy(dtype=float), dtype=torch.float32))
    assert values[12 * 5 + 6].item() == pytest.approx(table.loc[5, "JUL"])  # July 1955

    values, times = series.real_series("macro")
    frame = datasets.macrodata.load_pandas().data
    columns = ["realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "pop"]
    assert series.MACRO_CHANNELS == tuple(columns)
    assert values.shape == (203, 8) and times[0] == day("1959-01-01") and times[-1] == day("2009-07-01")
    assert times[1] == day("1959-04-01")
    torch.testing.assert_close(values, torch.tensor(np.log(frame[columns].to_numpy()), dtype=torch.float32),
                               atol=0, rtol=0)


@pytest.mark.parametrize("name, step, period", [("co2", "week", 52), ("sunspots", "year", 11),
                                                ("elnino", "month", 12), ("nile", "year", 1),
                                                ("macro", "quarter", 4)])
def test_metadata(name, step, period):
    data = load(name, "val", context=4, horizon=2)
    assert (data.name, data.split, data.step, data.period) == (name, "val", step, period)
    assert data.channels == (series.MACRO_CHANNELS if name == "macro" else ("value",))
    assert data.contexts.dtype == data.targets.dtype == data.history.dtype == torch.float32
    assert data.origins.dtype == torch.int64
    assert len(data) == len(data.origins) and name in repr(data)
    context, target = data[len(data) - 1]
    assert torch.equal(context, data.contexts[-1]) and torch.equal(target, data.targets[-1])


# ---------------------------------------------------------------- windows and splits


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("context, horizon, stride", SHAPES)
def test_windows_are_slices_of_the_series_at_their_origins(name, context, horizon, stride):
    full, _ = series.real_series(name)
    T = len(full)
    train_end, val_end = round(0.7 * T), round(0.8 * T)
    segments = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, T)}
    for split in SPLIT_NAMES:
        data = load(name, split, context=context, horizon=horizon, stride=stride)
        assert (data.train_end, data.val_end) == (train_end, val_end)
        start, end = segments[split]
        # the origins: every stride-th one counted back from the last, in increasing order
        last = end - horizon
        expected = [o for o in range(last, max(start, context) - 1, -stride)][::-1]
        assert data.origins.tolist() == expected
        shape = (len(expected),) if full.dim() == 1 else (len(expected), 8)
        assert data.contexts.shape == (shape[0], context, *shape[1:])
        assert data.targets.shape == (shape[0], horizon, *shape[1:])
        for o, x, y in zip(data.origins.tolist(), data.contexts, data.targets):
            assert torch.equal(x, full[o - context:o]) and torch.equal(y, full[o:o + horizon])
        assert torch.equal(data.history, full[:end])


@pytest.mark.parametrize("name", REAL)
def test_no_target_leaks_across_splits(name):
    context, horizon, stride = 6, 3, 1
    found = {split: load(name, split, context=context, horizon=horizon, stride=stride) for split in SPLIT_NAMES}
    T = len(series.real_series(name)[0])
    indices = {}
    for split, data in found.items():
        targets = data.origins[:, None] + torch.arange(horizon)  # (N, horizon) index of every target value
        indices[split] = set(targets.flatten().tolist())
        contexts = data.origins[:, None] + torch.arange(-context, 0)
        if split == "train":
            assert targets.max() < data.train_end and contexts.min() >= 0
        elif split == "val":
            assert targets.min() >= data.train_end and targets.max() < data.val_end
        else:
            assert targets.min() >= data.val_end and targets.max() == T - 1
            assert data.origins[-1] + horizon == T  # the last test window ends at the final value
        assert data.origins[-1] + horizon == len(data.history)  # the most recent window is always there
    assert not indices["train"] & indices["val"] and not indices["train"] & indices["test"]
    assert not indices["val"] & indices["test"]


@pytest.mark.parametrize("name", REAL)
def test_mean_and_std_come_from_the_train_segment(name):
    full, _ = series.real_series(name)
    train = full[:round(0.7 * len(full))].numpy().astype(np.float64)
    for split in SPLIT_NAMES:
        data = load(name, split, context=4, horizon=2)
        if name == "macro":
            assert data.mean.shape == data.std.shape == (8,)
            np.testing.assert_allclose(data.mean.numpy(), train.mean(0), rtol=1e-6)
            np.testing.assert_allclose(data.std.numpy(), train.std(0, ddof=1), rtol=1e-5)
        else:
            assert isinstance(data.mean, float) and isinstance(data.std, float)
            assert data.mean == pytest.approx(train.mean(), rel=1e-9)
            assert data.std == pytest.approx(train.std(ddof=1), rel=1e-9)


def test_windows_are_deterministic_and_feed_a_dataloader():
    a = load("elnino", "test", context=24, horizon=6, stride=2)
    b = load("elnino", "test", context=24, horizon=6, stride=2)
    assert torch.equal(a.contexts, b.contexts) and torch.equal(a.targets, b.targets)
    x, y = next(iter(torch.utils.data.DataLoader(a, batch_size=5)))
    assert x.shape == (5, 24) and y.shape == (5, 6) and torch.equal(x, a.contexts[:5])


@pytest.mark.parametrize("name, split, context, horizon", [("nile", "val", 4, 11), ("nile", "test", 96, 5),
                                                           ("nile", "train", 70, 1)])
def test_a_split_too_short_for_one_window_is_refused(name, split, context, horizon):
    with pytest.raises(ValueError, match=rf"'{name}'.*{split}.*context={context}, horizon={horizon}"):
        load(name, split, context=context, horizon=horizon)


def test_the_longest_windows_that_fit_are_accepted():
    assert len(load("nile", "val", context=4, horizon=10)) == 1  # val has 10 values
    assert len(load("nile", "train", context=69, horizon=1)) == 1  # train has 70
    assert len(load("nile", "test", context=80, horizon=20)) == 1  # context reaches back to the start


@pytest.mark.parametrize("options, name", [
    (dict(context=0, horizon=1), "context"), (dict(context=4, horizon=0), "horizon"),
    (dict(context=4, horizon=1, stride=0), "stride"), (dict(context=4.0, horizon=1), "context"),
    (dict(context=True, horizon=1), "context"),
])
def test_bad_window_options_are_refused_by_name(options, name):
    with pytest.raises(ValueError, match=rf"{name}="):
        series.load_co2("train", **options)
    with pytest.raises(ValueError, match="split="):
        series.load_co2("dev", context=4, horizon=1)


# ---------------------------------------------------------------- sliding_windows


def naive_windows(values, context, horizon, stride):
    xs, ys = [], []
    for o in range(context, len(values) - horizon + 1, stride):
        xs.append(values[o - context:o])
        ys.append(values[o:o + horizon])
    return torch.stack(xs), torch.stack(ys)


@pytest.mark.parametrize("shape", [(30,), (30, 3), (7,), (9, 1)])
@pytest.mark.parametrize("context, horizon, stride", [(3, 2, 1), (4, 1, 2), (2, 3, 5), (5, 2, 100)])
def test_sliding_windows_match_a_loop(shape, context, horizon, stride):
    values = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x, y = series.sliding_windows(values, context, horizon, stride)
    nx, ny = naive_windows(values, context, horizon, stride)
    assert torch.equal(x, nx) and torch.equal(y, ny)
    x += 1  # copies, not views of `values`
    y += 1
    assert torch.equal(values[:context], nx[0]) and torch.equal(values[context:context + horizon], ny[0])


def test_sliding_windows_refuses_bad_input():
    with pytest.raises(ValueError, match="values"):
        series.sliding_windows(torch.zeros(2, 3, 4), 1, 1)
    with pytest.raises(ValueError, match="values has 4 steps"):
        series.sliding_windows(torch.zeros(4), 3, 2)
    with pytest.raises(ValueError, match="stride="):
        series.sliding_windows(torch.zeros(9), 3, 2, stride=0)


# ---------------------------------------------------------------- procedural series


def regime_of(change_points: torch.Tensor, length: int) -> torch.Tensor:
    return torch.searchsorted(change_points, torch.arange(length), right=True)


def test_components_sum_to_the_values():
    data = load("multiscale_series", "train", n=20, length=256, periods=(8, 64), regimes=2, noise=0.2, seed=1)
    assert set(data.components) == {"trend", "seasonal_8", "seasonal_64", "noise"}
    assert data.values.shape == (20, 256) and data.values.dtype == torch.float32
    total = sum(data.components.values(), torch.zeros(20, 256))
    torch.testing.assert_close(total, data.values, atol=1e-5, rtol=0)
    assert torch.equal(data.periods, torch.tensor([[8, 64]] * 20))
    assert data.change_points.shape == (20, 2) and data.change_points.dtype == torch.int64
    noise = data.components["noise"]
    assert abs(noise.std().item() - 0.2) < 0.01
    correlation = torch.corrcoef(noise)  # (20, 20): every series has its own noise
    assert (correlation - torch.eye(20)).abs().max() < 0.35
    assert len(data) == 20 and torch.equal(data[3], data.values[3]) and "seasonal_64" in repr(data)


def test_change_points_are_sorted_and_leave_long_regimes():
    length, regimes = 512, 3
    data = load("multiscale_series", "val", n=50, length=length, regimes=regimes)
    cp = data.change_points
    bounds = torch.cat([torch.zeros(50, 1, dtype=torch.int64), cp, torch.full((50, 1), length)], dim=1)
    assert (bounds.diff(dim=1) >= length // (2 * (regimes + 1))).all()


def test_seasonal_parts_repeat_with_their_period_inside_a_regime():
    length = 384
    data = load("multiscale_series", "test", n=12, length=length, periods=(5, 12, 48), regimes=3, seed=2)
    harmonics = []
    for p in (5, 12, 48):
        part = data.components[f"seasonal_{p}"]
        for i in range(12):
            regime = regime_of(data.change_points[i], length)
            same = regime[:-p] == regime[p:]
            torch.testing.assert_close(part[i, p:][same], part[i, :-p][same], atol=1e-6, rtol=0)
            assert (~same).any()  # the regimes do change
            # the dominant frequency of the longest regime: its length / p
            bounds = [0, *data.change_points[i].tolist(), length]
            a, b = max(zip(bounds, bounds[1:]), key=lambda r: r[1] - r[0])
            b = a + (b - a) // p * p  # whole periods, so the peak falls on one bin
            spectrum = torch.fft.rfft(part[i, a:b].double()).abs()
            assert spectrum.argmax().item() == (b - a) // p
            harmonics.append((spectrum[2 * (b - a) // p] / spectrum.max()).item())
    # not a pure sine: a second harmonic of strength ~ U(0, 0.5) relative to the fundamental
    harmonics = torch.tensor(harmonics)
    assert harmonics.max() < 0.5 and harmonics.median() > 0.05


def test_amplitudes_change_at_regime_changes():
    data = load("multiscale_series", "train", n=30, length=256, periods=(16,), regimes=1, noise=0.0)
    part = data.components["seasonal_16"]
    ratios = []
    for i in range(30):
        c = data.change_points[i].item()
        before, after = part[i, c - 16:c].abs().max(), part[i, c:c + 16].abs().max()
        ratios.append((after / before).item())
    ratios = torch.tensor(ratios)
    assert (ratios > 0.55).all() and (ratios < 1.45).all() and (ratios - 1).abs().max() > 0.1


def test_trend_is_linear_between_change_points():
    length = 256
    data = load("multiscale_series", "train", n=20, length=length, regimes=3, seed=4)
    trend = data.components["trend"].double()
    second = trend[:, 2:] - 2 * trend[:, 1:-1] + trend[:, :-2]  # at t = 1 .. length - 2
    kinks = 0
    for i in range(20):
        regime = regime_of(data.change_points[i], length)
        inside = (regime[:-2] == regime[2:])  # t - 1, t, t + 1 in one regime
        assert second[i][inside].abs().max() < 1e-5
        kinks += (second[i][~inside].abs() > 1e-5).sum().item()
    assert kinks > 0  # the slope does change at change points
    assert 0.1 < (trend[:, -1] - trend[:, 0]).abs().mean() < 5  # it moves by O(1) over the series


def test_procedural_series_are_deterministic_prefixes_and_split_specific():
    options = dict(length=128, periods=(4, 16), regimes=1)
    a = load("multiscale_series", "train", n=10, **options)
    b = load("multiscale_series", "train", n=50, **options)
    again = load("multiscale_series", "train", n=10, **options)
    for key in a.components:
        assert torch.equal(a.components[key], b.components[key][:10])
        assert torch.equal(a.components[key], again.components[key])
    assert torch.equal(a.values, b.values[:10]) and torch.equal(a.change_points, b.change_points[:10])
    test = load("multiscale_series", "test", n=10, **options)
    other_seed = load("multiscale_series", "train", n=10, seed=1, **options)
    for other in (test, other_seed):
        assert not torch.isclose(a.values, other.values).all(dim=1).any()  # no series is shared


def test_random_periods():
    data = load("multiscale_series", "train", n=200, length=256, periods=None, regimes=1)
    assert set(data.components) == {"trend", "seasonal", "noise"}
    torch.testing.assert_close(sum(data.components.values(), torch.zeros(200, 256)), data.values, atol=1e-5, rtol=0)
    periods = data.periods
    assert periods.dtype == torch.int64 and periods.shape == (200, 3)
    count = (periods > 0).sum(1)
    assert set(count.tolist()) == {1, 2, 3}
    drawn = periods[periods > 0]
    assert drawn.min() >= 4 and drawn.max() <= 96 and drawn.max() > 48
    for row, k in zip(periods.tolist(), count.tolist()):
        assert row[k:] == [0] * (3 - k) and len(set(row[:k])) == k  # padded with 0, distinct
    # a series with one period repeats with it inside a regime
    i = int((count == 1).nonzero()[0])
    p = int(periods[i, 0])
    regime = regime_of(data.change_points[i], 256)
    same = regime[:-p] == regime[p:]
    part = data.components["seasonal"][i]
    torch.testing.assert_close(part[p:][same], part[:-p][same], atol=1e-6, rtol=0)


def test_short_series_and_no_regimes_or_seasons():
    data = load("multiscale_series", "val", n=4, length=16, periods=None, regimes=0, noise=0.0)
    assert data.change_points.shape == (4, 0)
    assert data.periods.max() <= 7  # periods stay below length / 2
    assert torch.equal(data.components["noise"], torch.zeros(4, 16))
    plain = load("multiscale_series", "val", n=3, length=64, periods=(), regimes=1, noise=0.0)
    assert set(plain.components) == {"trend", "noise"} and plain.periods.shape == (3, 0)
    torch.testing.assert_close(plain.values, plain.components["trend"])


@pytest.mark.parametrize("options, name", [
    (dict(n=0), "n"), (dict(length=15), "length"), (dict(length=64.0), "length"),
    (dict(periods=(1,)), "periods"), (dict(periods=(8, 256)), "periods"), (dict(periods=(8, 8)), "periods"),
    (dict(periods=(8.0,)), "periods"), (dict(periods=8), "periods"),
    (dict(regimes=-1), "regimes"), (dict(regimes=16), "regimes"), (dict(length=64, periods=(8,), regimes=2), "regimes"),
    (dict(noise=-0.1), "noise"), (dict(noise=float("nan")), "noise"), (dict(noise="0.1"), "noise"),
    (dict(seed=-1), "seed"), (dict(n=True), "n"),
])
def test_bad_procedural_options_are_refused_by_name(options, name):
    with pytest.raises(ValueError, match=rf"{name}="):
        series.load_multiscale_series("train", **options)
    with pytest.raises(ValueError, match="split="):
        series.load_multiscale_series("dev")
