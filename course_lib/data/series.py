"""Time series for forecasting (notebook 14), all offline: five real series that ship with statsmodels, cut
into (context, target) windows, and procedural multi-scale signals whose components are known.

Real series, `load(name, split, context=..., horizon=..., stride=1)` -> `ForecastWindows`:

| name     | what (units)                                          | T    | step    | period |
|----------|-------------------------------------------------------|------|---------|--------|
| co2      | weekly Mauna Loa CO2 (ppmv), 1958-03-29 .. 2001-12-29 | 2284 | week    | 52     |
| sunspots | yearly sunspot number, 1700 .. 2008                   | 309  | year    | 11     |
| elnino   | monthly sea-surface temperature off Peru (deg C), 1950-01 .. 2010-12 | 732 | month | 12 |
| nile     | yearly Nile flow at Aswan (10^8 m^3), 1871 .. 1970    | 100  | year    | 1      |
| macro    | 8 US macro series (log), 1959Q1 .. 2009Q3             | 203  | quarter | 4      |

- co2 misses 59 weeks: they are filled by linear interpolation in time between the nearest measured weeks
  (the weeks are evenly spaced, so this is linear interpolation in the week index).
- sunspots: 11 years is the mean solar cycle; single cycles last about 9 to 14 years, so it is approximate.
- elnino: the statsmodels table has one row per year and one column per month; it is read row by row.
- nile: no seasonality (period 1); it has a famous change point near 1898 (the Aswan dam).
- macro: channels `MACRO_CHANNELS`, each the natural log of the statsmodels column; the data are seasonally
  adjusted, so period 4 is nominal.

Splits are chronological and never leak. With T values, train = [0, train_end), val = [train_end, val_end),
test = [val_end, T), where train_end = round(0.7 T) and val_end = round(0.8 T). A window (context values
[o - context, o), target values [o, o + horizon), o its origin) belongs to a split when all its targets lie
in that split's segment; its context may reach back into earlier segments (those values are known at the
origin), so a train window lies wholly inside train. Origins are spaced by `stride` counting back from the
last possible origin, so the most recent window is always there. `mean` and `std` come from the train
segment only, whatever the split, so standardising with them leaks nothing.

Procedural series, `load("multiscale_series", split, n=..., length=..., ...)` -> `ProceduralSeries`:
values = trend + seasonal parts + noise, each part returned as well:
- regimes: `regimes` change points split each series into regimes + 1 regimes, each at least
  length // (2 (regimes + 1)) steps long (at least 16), positions uniform otherwise;
- trend: piecewise linear, a slope ~ N(0, 1) / length per regime (so it moves by O(1) over the series),
  starting level ~ N(0, 0.5^2); at each change point the slope changes, and with probability 1/2 the level
  jumps by ~ N(0, 0.5^2) (otherwise the trend is continuous);
- seasonality of period p: A_r * (sin(2 pi t / p + phi) + b sin(4 pi t / p + psi)) with A_0 ~ U(0.5, 1.5),
  phases ~ U(0, 2 pi), second-harmonic strength b ~ U(0, 0.5); at each change point the amplitude is
  multiplied by a factor ~ U(0.6, 1.4), the shape and phase stay (so x[t + p] = x[t] inside a regime);
- noise: Gaussian with standard deviation `noise`.
With `periods=None` each series draws 1 to 3 distinct integer periods log-uniformly from
[4, min(96, (length - 1) // 2)] (the pretraining corpus); the seasonal parts are then summed into one
"seasonal" component and `periods` is padded with 0. Series i of a split depends only on (seed, split, i),
so n=10 gives the first 10 of n=100, and no series is shared between splits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from torch.utils.data import Dataset

from course_lib.data.registry import SPLITS, check_int, check_split, register

TRAIN_FRACTION, VAL_FRACTION = 0.7, 0.1
MACRO_CHANNELS = ("realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "pop")
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
# name -> (step, period, channels)
REAL_SERIES: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "co2": ("week", 52, ("value",)),
    "sunspots": ("year", 11, ("value",)),
    "elnino": ("month", 12, ("value",)),
    "nile": ("year", 1, ("value",)),
    "macro": ("quarter", 4, MACRO_CHANNELS),
}
RANDOM_PERIODS = (4, 96)  # range of the log-uniform periods drawn when periods=None
_SALT = 0x5E41E5  # separates these streams from any other dataset's


@dataclass(frozen=True, eq=False, repr=False)
class ForecastWindows(Dataset):
    """(context, target) windows of one split of a real series; `dataset[i]` is (contexts[i], targets[i]).

    Univariate: contexts (N, context), targets (N, horizon), mean and std floats. Multivariate (C channels):
    contexts (N, context, C), targets (N, horizon, C), mean and std (C,) tensors. All in original units.
    """

    name: str
    split: str
    step: str  # the time between two values: "week", "month", "quarter" or "year"
    period: int  # the seasonal period in steps (1: none)
    channels: tuple[str, ...]  # ("value",) for a univariate series
    contexts: Tensor  # (N, context[, C]) float32
    targets: Tensor  # (N, horizon[, C]) float32
    origins: Tensor  # (N,) int64: index in the full series of each window's first target value
    history: Tensor  # (split_end[, C]) float32: the series from its start to the end of this split
    train_end: int  # train = [0, train_end)
    val_end: int  # val = [train_end, val_end), test = [val_end, len(times))
    mean: float | Tensor  # of the train segment (per channel when multivariate)
    std: float | Tensor  # of the train segment, with Bessel's correction (torch.std's default)
    times: np.ndarray  # (T,) datetime64[D]: the date of every value of the FULL series (for plotting)

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.contexts[index], self.targets[index]

    def __repr__(self) -> str:
        return (f"ForecastWindows(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"context={self.contexts.shape[1]}, horizon={self.targets.shape[1]}, channels={len(self.channels)})")


@dataclass(frozen=True, eq=False, repr=False)
class ProceduralSeries(Dataset):
    """n procedural series with their known components; `dataset[i]` is values[i], a (length,) tensor."""

    values: Tensor  # (n, length) float32: the sum of the components, in the order of `components`
    components: dict[str, Tensor]  # each (n, length): "trend", "seasonal_<p>" per period (or "seasonal"), "noise"
    periods: Tensor  # (n, k) int64: each series' periods (padded with 0 when periods=None)
    change_points: Tensor  # (n, regimes) int64: the first index of every regime after the first, sorted
    split: str

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> Tensor:
        return self.values[index]

    def __repr__(self) -> str:
        return (f"ProceduralSeries(split={self.split!r}, n={len(self)}, length={self.values.shape[1]}, "
                f"components={list(self.components)})")


def sliding_windows(values: Tensor, context: int, horizon: int, stride: int = 1) -> tuple[Tensor, Tensor]:
    """values (T,) or (T, C) -> contexts (N, context[, C]), targets (N, horizon[, C]) of every window that
    fits, origins (index of the first target) at context, context + stride, ..."""
    check_int("context", context, 1)
    check_int("horizon", horizon, 1)
    check_int("stride", stride, 1)
    if not isinstance(values, Tensor) or values.dim() not in (1, 2):
        raise ValueError(f"values must be a tensor of shape (T,) or (T, C); got "
                         f"{type(values).__name__} of shape {tuple(getattr(values, 'shape', ()))}")
    if len(values) < context + horizon:
        raise ValueError(f"values has {len(values)} steps, fewer than context + horizon = {context + horizon}")
    windows = values.unfold(0, context + horizon, stride)  # (N, context + horizon) or (N, C, context + horizon)
    if values.dim() == 2:
        windows = rearrange(windows, "n c w -> n w c")
    # copies, not views of `values` (.contiguous() alone returns a view when there is one window)
    return (windows[:, :context].clone(memory_format=torch.contiguous_format),
            windows[:, context:].clone(memory_format=torch.contiguous_format))


def split_bounds(length: int) -> tuple[int, int]:
    """(train_end, val_end) of a series of `length` values: round(0.7 length), round(0.8 length)."""
    return round(TRAIN_FRACTION * length), round((TRAIN_FRACTION + VAL_FRACTION) * length)


def _years(years) -> np.ndarray:
    return np.array([str(int(y)) for y in years], dtype="datetime64[Y]").astype("datetime64[D]")


@cache
def _real_series(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values (T,) or (T, C) float64, dates (T,) datetime64[D]) of a statsmodels series, read once."""
    from statsmodels import datasets  # slow import: only when used

    if name == "co2":
        frame = datasets.co2.load_pandas().data
        raw = frame["co2"].to_numpy(dtype=np.float64)
        known = ~np.isnan(raw)
        weeks = np.arange(len(raw))  # evenly spaced weeks: linear in the index is linear in time
        values = np.interp(weeks, weeks[known], raw[known])
        dates = frame.index.to_numpy().astype("datetime64[D]")
    elif name == "sunspots":
        frame = datasets.sunspots.load_pandas().data
        values, dates = frame["SUNACTIVITY"].to_numpy(dtype=np.float64), _years(frame["YEAR"])
    elif name == "elnino":
        frame = datasets.elnino.load_pandas().data
        values = rearrange(frame[list(MONTHS)].to_numpy(dtype=np.float64), "year month -> (year month)")
        first = np.datetime64(f"{int(frame['YEAR'].iloc[0])}-01", "M")
        dates = (first + np.arange(len(values))).astype("datetime64[D]")
    elif name == "nile":
        frame = datasets.nile.load_pandas().data
        values, dates = frame["volume"].to_numpy(dtype=np.float64), _years(frame["year"])
    elif name == "macro":
        frame = datasets.macrodata.load_pandas().data
        values = np.log(frame[list(MACRO_CHANNELS)].to_numpy(dtype=np.float64))  # (T, 8)
        months = (frame["year"].to_numpy().astype(np.int64) - 1970) * 12 + 3 * (frame["quarter"].to_numpy().astype(np.int64) - 1)
        dates = months.astype("datetime64[M]").astype("datetime64[D]")  # the first day of each quarter
    else:
        raise ValueError(f"name={name!r}; expected one of {tuple(REAL_SERIES)}")
    return values, dates


def real_series(name: str) -> tuple[Tensor, np.ndarray]:
    """The whole series `name` (one of REAL_SERIES): values (T,) or (T, C) float32, and dates (T,) datetime64[D]."""
    values, dates = _real_series(name)
    return torch.tensor(values, dtype=torch.float32), dates.copy()  # a copy: the cache stays intact


def forecast_windows(name: str, split: str, context: int, horizon: int, stride: int = 1) -> ForecastWindows:
    """The (context, horizon) windows of `split` of real series `name`, origins every `stride` counted back
    from the last one (see the module docstring for the split rules)."""
    if name not in REAL_SERIES:
        raise ValueError(f"name={name!r}; expected one of {tuple(REAL_SERIES)}")
    check_split(split)
    check_int("context", context, 1)
    check_int("horizon", horizon, 1)
    check_int("stride", stride, 1)
    values, times = real_series(name)
    train_end, val_end = split_bounds(len(values))
    start, end = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, len(values))}[split]
    first, last = max(start, context), end - horizon  # the range of possible origins
    if last < first:
        raise ValueError(f"series {name!r}, split={split!r}: its {end - start} values (and the {start} before "
                         f"them) are too few for one window of context={context}, horizon={horizon}")
    first = last - stride * ((last - first) // stride)  # counted back from the last origin
    contexts, targets = sliding_windows(values[first - context:end], context, horizon, stride)
    origins = torch.arange(first, last + 1, stride)
    train = values[:train_end].double()
    mean, std = train.mean(0), train.std(0)
    if values.dim() == 1:
        mean, std = mean.item(), std.item()
    else:
        mean, std = mean.float(), std.float()
    step, period, channels = REAL_SERIES[name]
    return ForecastWindows(name, split, step, period, channels, contexts, targets, origins, values[:end].clone(),
                           train_end, val_end, mean, std, times)


@register("co2")
def load_co2(split: str = "train", *, context: int, horizon: int, stride: int = 1) -> ForecastWindows:
    """Weekly Mauna Loa CO2 (ppmv) 1958-2001, 2284 weeks (59 missing filled linearly), period 52."""
    return forecast_windows("co2", split, context, horizon, stride)


@register("sunspots")
def load_sunspots(split: str = "train", *, context: int, horizon: int, stride: int = 1) -> ForecastWindows:
    """Yearly sunspot numbers 1700-2008, 309 years, period 11 (the solar cycle, approximately)."""
    return forecast_windows("sunspots", split, context, horizon, stride)


@register("elnino")
def load_elnino(split: str = "train", *, context: int, horizon: int, stride: int = 1) -> ForecastWindows:
    """Monthly sea-surface temperature (deg C) off Peru 1950-2010, 732 months, period 12."""
    return forecast_windows("elnino", split, context, horizon, stride)


@register("nile")
def load_nile(split: str = "train", *, context: int, horizon: int, stride: int = 1) -> ForecastWindows:
    """Yearly Nile flow at Aswan (10^8 m^3) 1871-1970, 100 years, no seasonality (period 1)."""
    return forecast_windows("nile", split, context, horizon, stride)


@register("macro")
def load_macro(split: str = "train", *, context: int, horizon: int, stride: int = 1) -> ForecastWindows:
    """Eight log US macro series (MACRO_CHANNELS), quarterly 1959Q1-2009Q3, 203 quarters, period 4."""
    return forecast_windows("macro", split, context, horizon, stride)


def _check_procedural(split: str, n: int, length: int, periods, regimes: int, noise: float, seed: int) -> None:
    check_split(split)
    check_int("n", n, 1)
    check_int("length", length, 16)
    if periods is not None:
        ok = isinstance(periods, (tuple, list)) and all(
            isinstance(p, int) and not isinstance(p, bool) and 2 <= p < length / 2 for p in periods)
        if not ok or len(set(periods)) != len(periods):
            raise ValueError(f"periods={periods!r} must be None or a tuple of distinct ints of at least 2 and "
                             f"below length/2={length / 2}")
    check_int("regimes", regimes, 0, f" and below length/32={length / 32}")
    if regimes >= length / 32:
        raise ValueError(f"regimes={regimes} must be an int of at least 0 and below length/32={length / 32}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < math.inf:
        raise ValueError(f"noise={noise!r} must be a finite number of at least 0 (the noise's standard deviation)")
    check_int("seed", seed, 0)


def _one_series(rng: np.random.Generator, length: int, periods: tuple[int, ...] | None, regimes: int,
                noise: float) -> tuple[dict[str, np.ndarray], list[int], np.ndarray]:
    """Components (float64, (length,) each), periods and change points of one series (module docstring)."""
    t = np.arange(length)
    shortest = length // (2 * (regimes + 1))  # every regime is at least this long
    slack = length - (regimes + 1) * shortest
    change_points = shortest * np.arange(1, regimes + 1) + np.sort(rng.integers(0, slack + 1, regimes))
    regime = np.searchsorted(change_points, t, side="right")  # (length,) regime of every step
    starts = np.concatenate([[0], change_points])

    slopes = rng.normal(0.0, 1.0, regimes + 1) / length
    jumps = rng.normal(0.0, 0.5, regimes + 1) * (rng.random(regimes + 1) < 0.5)
    levels = np.empty(regimes + 1)
    levels[0] = rng.normal(0.0, 0.5)
    for r in range(1, regimes + 1):  # continuous at each change point, plus the jump
        levels[r] = levels[r - 1] + slopes[r - 1] * (starts[r] - starts[r - 1]) + jumps[r]
    components = {"trend": levels[regime] + slopes[regime] * (t - starts[regime])}

    if periods is None:
        low, high = RANDOM_PERIODS[0], min(RANDOM_PERIODS[1], (length - 1) // 2)
        drawn: list[int] = []
        for _ in range(int(rng.integers(1, 4))):
            while (p := int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))) in drawn:
                pass
            drawn.append(p)
        periods = tuple(sorted(drawn))
    for p in periods:
        amplitude = rng.uniform(0.5, 1.5) * np.cumprod(np.concatenate([[1.0], rng.uniform(0.6, 1.4, regimes)]))
        phase, phase2, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.5)
        angle = 2 * np.pi * (t % p) / p  # t mod p keeps the angle exact, so x[t + p] = x[t] to the last bit
        shape = np.sin(angle + phase) + strength * np.sin(2 * angle + phase2)
        components[f"seasonal_{p}"] = amplitude[regime] * shape
    components["noise"] = noise * rng.standard_normal(length)
    return components, list(periods), change_points


@register("multiscale_series")
def load_multiscale_series(split: str = "train", *, n: int = 256, length: int = 512,
                           periods: tuple[int, ...] | None = (8, 64), regimes: int = 2, noise: float = 0.1,
                           seed: int = 0) -> ProceduralSeries:
    """`n` series of `length` steps = piecewise-linear trend + seasonalities of `periods` (random when None),
    whose amplitudes change at `regimes` change points, + Gaussian `noise` (module docstring)."""
    _check_procedural(split, n, length, periods, regimes, noise, seed)
    fixed = None if periods is None else tuple(periods)
    parts, all_periods, all_changes = [], [], []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), i, _SALT]))
        components, drawn, changes = _one_series(rng, length, fixed, regimes, noise)
        if fixed is None:  # sum the seasonal parts, whose periods differ from series to series
            seasonal = sum((components.pop(f"seasonal_{p}") for p in drawn), np.zeros(length))
            components = {"trend": components["trend"], "seasonal": seasonal, "noise": components["noise"]}
        parts.append(components)
        all_periods.append(drawn)
        all_changes.append(changes)
    components = {key: torch.from_numpy(np.stack([c[key] for c in parts])).float() for key in parts[0]}
    values = sum(components.values(), torch.zeros(n, length))
    k = max(len(p) for p in all_periods)
    padded = torch.zeros(n, k, dtype=torch.int64)
    for i, p in enumerate(all_periods):
        padded[i, :len(p)] = torch.tensor(p, dtype=torch.int64)
    change_points = torch.from_numpy(np.stack(all_changes).astype(np.int64)).reshape(n, regimes)
    return ProceduralSeries(values, components, padded, change_points, split)
