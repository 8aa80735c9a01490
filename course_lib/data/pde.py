"""Solutions of 1D partial differential equations from small numpy solvers: data for transformer surrogates
(notebook 21) and neural operators (notebook 27).

Three equations on the periodic interval [0, 2π), all from the same starting fields (`initial_waves`):
- Burgers' equation, u_t + u u_x = ν u_xx (`load("burgers")`): a wave that steepens into shocks (the u u_x term)
  while viscosity smooths them (the ν u_xx term). The solver is pseudo-spectral: u is held as Fourier
  coefficients, the diffusion is integrated exactly through an integrating factor and the nonlinear term by
  classical fourth-order Runge-Kutta (as in Trefethen's "Spectral Methods in MATLAB"), with the upper third of the
  modes zeroed in the product to avoid aliasing. It runs on a fine grid (`solver_points`) and the fields are kept
  every `solver_points // points`-th point, so a shock is resolved by the solver even where the data are coarse.
- the heat equation, u_t = κ u_xx (`load("heat")`): each Fourier mode k decays by exp(−κ k² t); linear, so one
  matrix maps u(0) to u(t) exactly.
- linear advection, u_t + c u_x = 0 (`load("advection")`): the field moves unchanged, u(x, t) = u0(x − c t), a
  phase shift exp(−i k c t) of each mode; linear too.
The heat and advection solutions are exact in Fourier space, at any time and on any grid: the starting fields hold
four modes only, so their samples on any grid of more than 8 points determine them.

Trajectory `i` of a split starts from a random sum of a few sine waves drawn from (seed, split, i) alone, so the
same trajectory comes back whatever `n` is, and the splits never share a start; the three equations share these
starts, sampled from the same 256-point grid (Burgers' default `solver_points`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from course_lib.data.registry import SPLITS, check_int, check_split, register

__all__ = ["FieldTrajectories", "burgers_step", "initial_waves", "load_advection", "load_burgers", "load_heat",
           "solve_advection", "solve_burgers", "solve_heat"]

_SALT = 0xB0E65
_START_POINTS = 256  # the grid the starting fields are drawn on, whatever grid the data are kept on


class FieldTrajectories(Dataset):
    """`fields` (n, frames + 1, points) float32: the solution of `equation` at `times` (frames + 1,) on the grid
    `grid` (points,); `dataset[i]` is trajectory i. The equation's constants are in `coefficients` and also
    attributes: `data.viscosity` (Burgers), `data.diffusivity` (heat), `data.speed` (advection)."""

    def __init__(self, fields: Tensor, grid: Tensor, times: Tensor, equation: str, **coefficients: float) -> None:
        self.fields, self.grid, self.times = fields, grid, times
        self.equation, self.coefficients = equation, dict(coefficients)
        for name, value in coefficients.items():
            setattr(self, name, value)

    def __len__(self) -> int:
        return len(self.fields)

    def __getitem__(self, index: int) -> Tensor:
        return self.fields[index]

    def __repr__(self) -> str:
        n, times, points = self.fields.shape
        constants = "".join(f", {name}={value}" for name, value in self.coefficients.items())
        return f"FieldTrajectories({self.equation}, n={n}, frames={times - 1}, points={points}{constants})"


def initial_waves(indices: range, split: str, seed: int, points: int, modes: int = 4) -> np.ndarray:
    """(len(indices), points) starting fields: Σ_k a_k sin(k x + φ_k) for k = 1..modes, a_k ~ N(0, 1) / k, each
    field scaled so that its largest value is 1 in magnitude."""
    check_split(split)
    x = np.arange(points) * 2 * np.pi / points
    fields = np.empty((len(indices), points))
    for row, index in enumerate(indices):
        rng = np.random.default_rng([_SALT, seed, SPLITS.index(split), index])
        k = np.arange(1, modes + 1)
        amplitudes, phases = rng.normal(size=modes) / k, rng.uniform(0, 2 * np.pi, size=modes)
        wave = (amplitudes[:, None] * np.sin(k[:, None] * x[None] + phases[:, None])).sum(0)
        fields[row] = wave / np.abs(wave).max()
    return fields


def _nonlinear(coefficients: np.ndarray, wavenumbers: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Fourier coefficients of −(u²/2)_x, the product taken on the grid with the top third of modes zeroed."""
    u = np.fft.irfft(coefficients * keep, axis=-1)
    return -0.5j * wavenumbers * np.fft.rfft(u * u, axis=-1) * keep


def burgers_step(coefficients: np.ndarray, viscosity: float, dt: float) -> np.ndarray:
    """One integrating-factor RK4 step of `dt` for the rfft coefficients (n, points // 2 + 1) of u."""
    points = 2 * (coefficients.shape[-1] - 1)
    wavenumbers = np.arange(coefficients.shape[-1])
    keep = wavenumbers < points / 3  # 2/3 dealiasing
    half = np.exp(-viscosity * wavenumbers ** 2 * dt / 2)  # diffusion over half a step, exactly
    a = dt * _nonlinear(coefficients, wavenumbers, keep)
    b = dt * _nonlinear(half * (coefficients + a / 2), wavenumbers, keep)
    c = dt * _nonlinear(half * coefficients + b / 2, wavenumbers, keep)
    d = dt * _nonlinear(half ** 2 * coefficients + half * c, wavenumbers, keep)
    return half ** 2 * coefficients + (half ** 2 * a + 2 * half * (b + c) + d) / 6


def solve_burgers(initial: np.ndarray, *, viscosity: float, duration: float, frames: int,
                  dt: float = 1e-2) -> np.ndarray:
    """(n, frames + 1, points) solution of Burgers' equation from `initial` (n, points), kept at `frames` + 1 equally
    spaced times from 0 to `duration`, with solver steps of at most `dt`."""
    if not viscosity > 0 or not duration > 0 or not dt > 0:
        raise ValueError(f"viscosity={viscosity!r}, duration={duration!r} and dt={dt!r} must be positive")
    check_int("frames", frames, 1)
    per_frame = max(1, int(np.ceil(duration / frames / dt)))
    step = duration / frames / per_frame
    coefficients = np.fft.rfft(initial, axis=-1)
    out = [initial]
    for _ in range(frames):
        for _ in range(per_frame):
            coefficients = burgers_step(coefficients, viscosity, step)
        out.append(np.fft.irfft(coefficients, n=initial.shape[-1], axis=-1))
    return np.stack(out, axis=1)


@register("burgers")
def load_burgers(split: str, n: int = 500, points: int = 64, frames: int = 20, duration: float = 2.0,
                 viscosity: float = 0.05, solver_points: int = 256, seed: int = 0) -> FieldTrajectories:
    """`n` solutions of Burgers' equation on `points` grid points, `frames` + 1 times from 0 to `duration`."""
    check_int("n", n, 1)
    check_int("points", points, 8)
    check_int("solver_points", solver_points, points)
    if solver_points % points:
        raise ValueError(f"solver_points={solver_points} must be a multiple of points={points}")
    fine = solve_burgers(initial_waves(range(n), split, seed, solver_points), viscosity=viscosity,
                         duration=duration, frames=frames)
    stride = solver_points // points
    grid = torch.arange(points, dtype=torch.float32) * 2 * np.pi / points
    return FieldTrajectories(torch.from_numpy(fine[..., ::stride]).float(), grid,
                             torch.linspace(0, duration, frames + 1), "burgers", viscosity=viscosity)


def _check_initial(initial: np.ndarray) -> np.ndarray:
    initial = np.asarray(initial)
    if initial.ndim != 2 or initial.shape[-1] < 2 or not np.isrealobj(initial):
        raise ValueError(f"initial has shape {initial.shape}; expected real (n, points) fields with points >= 2")
    return initial


def _times(duration: float, frames: int) -> np.ndarray:
    """(frames + 1,) equally spaced times from 0 to `duration`, after checking both."""
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 < duration < np.inf:
        raise ValueError(f"duration={duration!r} must be a positive finite number")
    check_int("frames", frames, 1)
    return np.linspace(0, duration, frames + 1)


def _evolve(initial: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """(n, frames + 1, points): the rfft coefficients of `initial` (n, points) multiplied by `factors`
    (frames + 1, points // 2 + 1), back on the grid."""
    coefficients = np.fft.rfft(initial, axis=-1)  # (n, modes)
    return np.fft.irfft(coefficients[:, None] * factors[None], n=initial.shape[-1], axis=-1)


def solve_heat(initial: np.ndarray, *, diffusivity: float, duration: float, frames: int) -> np.ndarray:
    """(n, frames + 1, points) exact solution of the heat equation u_t = κ u_xx from `initial` (n, points) on the
    periodic grid, at `frames` + 1 equally spaced times from 0 to `duration`: mode k decays by exp(−κ k² t)."""
    initial = _check_initial(initial)
    if isinstance(diffusivity, bool) or not isinstance(diffusivity, (int, float)) or not 0 < diffusivity < np.inf:
        raise ValueError(f"diffusivity={diffusivity!r} must be a positive finite number")
    times = _times(duration, frames)
    k = np.fft.rfftfreq(initial.shape[-1], 1 / initial.shape[-1])  # wavenumbers 0, 1, ..., points // 2
    return _evolve(initial, np.exp(-diffusivity * k[None] ** 2 * times[:, None]))


def solve_advection(initial: np.ndarray, *, speed: float, duration: float, frames: int) -> np.ndarray:
    """(n, frames + 1, points) exact solution of u_t + c u_x = 0 from `initial` (n, points) on the periodic grid,
    at `frames` + 1 equally spaced times from 0 to `duration`: u0(x − c t), mode k turned by exp(−i k c t)."""
    initial = _check_initial(initial)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not np.isfinite(speed):
        raise ValueError(f"speed={speed!r} must be a finite number")
    times = _times(duration, frames)
    k = np.fft.rfftfreq(initial.shape[-1], 1 / initial.shape[-1])
    return _evolve(initial, np.exp(-1j * k[None] * speed * times[:, None]))


def _starts(split: str, n: int, points: int, seed: int) -> np.ndarray:
    """(n, points) starting fields: `initial_waves` drawn on the 256-point grid (so each is scaled the same way
    whatever `points` is), then resampled exactly onto `points` through their Fourier coefficients."""
    check_int("n", n, 1)
    check_int("points", points, 9, " (more than twice the 4 modes of the starting fields, to hold them exactly)")
    fine = np.fft.rfft(initial_waves(range(n), split, seed, _START_POINTS), axis=-1) / _START_POINTS
    modes = points // 2 + 1
    coefficients = np.zeros((n, modes), dtype=complex)
    shared = min(modes, _START_POINTS // 2)  # the starts hold 4 modes only: those above are zero
    coefficients[:, :shared] = fine[:, :shared]
    if points % 2 == 0:  # on `points` samples, mode points/2 and its conjugate fall on one coefficient
        coefficients[:, -1] *= 2
    return np.fft.irfft(coefficients * points, n=points, axis=-1)


def _trajectories(fields: np.ndarray, duration: float, frames: int, equation: str,
                  **coefficients: float) -> FieldTrajectories:
    points = fields.shape[-1]
    grid = torch.arange(points, dtype=torch.float32) * 2 * np.pi / points
    return FieldTrajectories(torch.from_numpy(fields).float(), grid, torch.linspace(0, duration, frames + 1),
                             equation, **coefficients)


@register("heat")
def load_heat(split: str, n: int = 500, points: int = 64, frames: int = 20, duration: float = 2.0,
              diffusivity: float = 0.1, seed: int = 0) -> FieldTrajectories:
    """`n` exact solutions of the heat equation on `points` grid points, `frames` + 1 times from 0 to `duration`."""
    fields = solve_heat(_starts(split, n, points, seed), diffusivity=diffusivity, duration=duration, frames=frames)
    return _trajectories(fields, duration, frames, "heat", diffusivity=diffusivity)


@register("advection")
def load_advection(split: str, n: int = 500, points: int = 64, frames: int = 20, duration: float = 2.0,
                   speed: float = 1.0, seed: int = 0) -> FieldTrajectories:
    """`n` exact solutions of linear advection at `speed` on `points` grid points, `frames` + 1 times from 0 to
    `duration`."""
    fields = solve_advection(_starts(split, n, points, seed), speed=speed, duration=duration, frames=frames)
    return _trajectories(fields, duration, frames, "advection", speed=speed)
