"""Solutions of a 1D partial differential equation from a small numpy solver: data for transformer surrogates
(notebook 21, and notebook 27's operators).

Viscous Burgers' equation, u_t + u u_x = ν u_xx, on the periodic interval [0, 2π): a wave that steepens into
shocks (the u u_x term) while viscosity smooths them (the ν u_xx term). The solver is pseudo-spectral: u is held
as Fourier coefficients, the diffusion is integrated exactly through an integrating factor and the nonlinear term
by classical fourth-order Runge-Kutta (as in Trefethen's "Spectral Methods in MATLAB"), with the upper third of
the modes zeroed in the product to avoid aliasing. It runs on a fine grid (`solver_points`) and the fields are kept
every `solver_points // points`-th point, so a shock is resolved by the solver even where the data are coarse.

Trajectory `i` of a split starts from a random sum of a few sine waves drawn from (seed, split, i) alone, so the
same trajectory comes back whatever `n` is, and the splits never share a start.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from course_lib.data.registry import SPLITS, check_int, check_split, register

__all__ = ["FieldTrajectories", "burgers_step", "initial_waves", "load_burgers", "solve_burgers"]

_SALT = 0xB0E65


class FieldTrajectories(Dataset):
    """`fields` (n, frames + 1, points) float32: the solution at `times` (frames + 1,) on the grid `grid` (points,);
    `dataset[i]` is trajectory i."""

    def __init__(self, fields: Tensor, grid: Tensor, times: Tensor, viscosity: float) -> None:
        self.fields, self.grid, self.times, self.viscosity = fields, grid, times, viscosity

    def __len__(self) -> int:
        return len(self.fields)

    def __getitem__(self, index: int) -> Tensor:
        return self.fields[index]

    def __repr__(self) -> str:
        n, frames, points = self.fields.shape
        return f"FieldTrajectories(n={n}, frames={frames}, points={points}, viscosity={self.viscosity})"


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
                             torch.linspace(0, duration, frames + 1), viscosity)
