"""Checkers for the exercises of notebook 27_operators_and_science: the heat equation solved exactly in Fourier
space, linear interpolation on a periodic grid, and the nearest-neighbour baseline.

The references: `reference_heat_solution` here (rfft, decay, irfft), `course_lib.models.operator_baselines.
periodic_interpolate`, and `reference_nearest_neighbour` here (the same rule as `NearestNeighbour` on the grid).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.models.operator_baselines import (
    periodic_interpolate as reference_periodic_interpolate,
)


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(27)


def _grid(points: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.arange(points, dtype=dtype) * 2 * math.pi / points


# --- heat_solution(initial, diffusivity, time) ------------------------------------------------------------------


def reference_heat_solution(initial: Tensor, diffusivity: float, time: float) -> Tensor:
    """(B, P) fields on the periodic grid -> the exact solution of u_t = κ u_xx at `time`: mode k decays by
    exp(−κ k² t)."""
    points = initial.shape[-1]
    k = torch.arange(points // 2 + 1, dtype=initial.dtype)  # the rfft's wavenumbers 0, 1, ..., P // 2
    decay = torch.exp(-diffusivity * k ** 2 * time)
    return torch.fft.irfft(torch.fft.rfft(initial) * decay, n=points)


def _heat_cases() -> list[Case]:
    generator = _generator()
    x = _grid(16)
    cases = [Case("initial sin(3x) on 16 points, diffusivity 0.1, time 1.0", (torch.sin(3 * x)[None], 0.1, 1.0)),
             Case("initial 1 + cos(x) on 16 points, diffusivity 0.5, time 0.3", (1 + torch.cos(x)[None], 0.5, 0.3))]
    for shape, diffusivity, time, dtype in [((3, 32), 0.05, 2.0, torch.float32), ((2, 15), 0.2, 0.5, torch.float32),
                                            ((4, 17), 0.02, 1.5, torch.float64), ((1, 9), 0.3, 0.0, torch.float32)]:
        initial = torch.randn(*shape, generator=generator, dtype=dtype)
        cases.append(Case(f"{dtype} initial {shape}, diffusivity {diffusivity}, time {time}",
                          (initial, diffusivity, time)))
    return cases


def _heat_k_not_squared(initial: Tensor, diffusivity: float, time: float) -> Tensor:
    k = torch.arange(initial.shape[-1] // 2 + 1, dtype=initial.dtype)
    return torch.fft.irfft(torch.fft.rfft(initial) * torch.exp(-diffusivity * k * time), n=initial.shape[-1])


def _heat_without_n(initial: Tensor, diffusivity: float, time: float) -> Tensor:
    k = torch.arange(initial.shape[-1] // 2 + 1, dtype=initial.dtype)
    return torch.fft.irfft(torch.fft.rfft(initial) * torch.exp(-diffusivity * k ** 2 * time))


def _heat_fft_indices(initial: Tensor, diffusivity: float, time: float) -> Tensor:
    j = torch.arange(initial.shape[-1], dtype=initial.dtype)  # 0 .. P-1, where the top half stands for −P/2 .. −1
    return torch.fft.ifft(torch.fft.fft(initial) * torch.exp(-diffusivity * j ** 2 * time)).real


heat_solution = FunctionChecker(
    "heat_solution",
    reference_heat_solution,
    _heat_cases,
    mistakes=[
        (_heat_k_not_squared, "each mode decays by exp(−κ k² t): the wavenumber k is squared, since u_xx brings "
         "down (ik)² = −k² for the mode e^{ikx}."),
        (_heat_without_n, "with an odd number of points, irfft cannot know the length: pass n=P "
         "(torch.fft.irfft(..., n=initial.shape[-1])), or it returns P − 1 points."),
        (_heat_fft_indices, "the indices 0 .. P−1 of the full fft are not the wavenumbers: its top half stands for "
         "the negative ones, −P/2 .. −1, which decay like their positive twins. Use rfft, whose index k is the "
         "wavenumber k = 0 .. P//2 (torch.fft.rfftfreq(P, 1 / P)), or torch.fft.fftfreq for the full fft."),
    ],
    hint="P = initial.shape[-1]; k = torch.arange(P // 2 + 1); "
         "torch.fft.irfft(torch.fft.rfft(initial) * torch.exp(-diffusivity * k**2 * time), n=P)",
)


# --- periodic_interpolate(values, grid_size, points) -------------------------------------------------------------


def _interpolate_cases() -> list[Case]:
    generator = _generator()
    ramp = torch.arange(8.0)[None]  # values 0 .. 7 at 2πj/8
    seam = torch.tensor([7.25, 7.5, 7.9]) * 2 * math.pi / 8  # between the last grid point and 2π
    cases = [Case("values [[0, 1, ..., 7]] on 8 grid points, points between them",
                  (ramp, 8, torch.tensor([0.3, 2.0, 4.1]))),
             Case("values [[0, 1, ..., 7]] on 8 grid points, points past the last one (7.25, 7.5, 7.9 steps)",
                  (ramp, 8, seam))]
    for batch, size, shape, dtype in [(3, 16, (20,), torch.float32), (2, 10, (2, 7), torch.float32),
                                      (4, 32, (4, 50), torch.float64)]:
        values = torch.randn(batch, size, generator=generator, dtype=dtype)
        points = torch.rand(*shape, generator=generator, dtype=dtype) * 2 * math.pi
        cases.append(Case(f"{dtype} values ({batch}, {size}), points {shape} in [0, 2π)", (values, size, points)))
    return cases


def _positions(values: Tensor, grid_size: int, points: Tensor) -> Tensor:
    return (points.to(values.dtype) * grid_size / (2 * math.pi)).expand(len(values), -1)


def _interpolate_clamped(values: Tensor, grid_size: int, points: Tensor) -> Tensor:
    position = _positions(values, grid_size, points)
    lower = position.floor().long().clamp(0, grid_size - 1)
    upper = (lower + 1).clamp(max=grid_size - 1)  # no wrap: past the last grid point it stays there
    fraction = position - lower
    left, right = values.gather(1, lower), values.gather(1, upper)
    return left + fraction * (right - left)


def _interpolate_nearest(values: Tensor, grid_size: int, points: Tensor) -> Tensor:
    nearest = _positions(values, grid_size, points).round().long() % grid_size
    return values.gather(1, nearest)


periodic_interpolate = FunctionChecker(
    "periodic_interpolate",
    reference_periodic_interpolate,
    _interpolate_cases,
    mistakes=[
        (_interpolate_clamped, "past the last grid point the field goes on towards the FIRST one (at 2π ≡ 0): "
         "the grid is periodic, so take the right neighbour as (lower + 1) % grid_size instead of clamping."),
        (_interpolate_nearest, "this is the nearest grid value; interpolate linearly between the two grid points on "
         "either side: left + fraction · (right − left)."),
    ],
    hint="position = points * grid_size / (2π); lower = floor(position); fraction = position − lower; "
         "values.gather(1, lower) and values.gather(1, (lower + 1) % grid_size), mixed by fraction",
)


# --- nearest_neighbour(train_inputs, train_targets, inputs) --------------------------------------------------------


def reference_nearest_neighbour(train_inputs: Tensor, train_targets: Tensor, inputs: Tensor) -> Tensor:
    """(B, P) fields -> (B, P): for each row, the target of the training input nearest to it in L2."""
    return train_targets[torch.cdist(inputs, train_inputs).argmin(dim=1)]


def _neighbour_cases() -> list[Case]:
    generator = _generator()
    # the L2-nearest of 0 is [0.5, 0.5, 0.5, 0.5] (distance 1, but 2 in L1); the L1-nearest is [1.1, 0, 0, 0]
    train = torch.tensor([[1.1, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5], [2.0, 2.0, 2.0, 2.0]])
    cases = [Case("3 training fields of 4 points, input 0", (train, 10 * train.flip(1), torch.zeros(1, 4)))]
    for count, batch, points in [(50, 10, 16), (200, 7, 32), (5, 3, 8)]:
        train_inputs = torch.randn(count, points, generator=generator)
        train_targets = torch.randn(count, points, generator=generator)
        inputs = torch.randn(batch, points, generator=generator)
        cases.append(Case(f"{count} training fields of {points} points, {batch} inputs",
                          (train_inputs, train_targets, inputs)))
    return cases


def _neighbour_l1(train_inputs: Tensor, train_targets: Tensor, inputs: Tensor) -> Tensor:
    return train_targets[torch.cdist(inputs, train_inputs, p=1).argmin(dim=1)]


def _neighbour_input(train_inputs: Tensor, train_targets: Tensor, inputs: Tensor) -> Tensor:
    return train_inputs[torch.cdist(inputs, train_inputs).argmin(dim=1)]


nearest_neighbour = FunctionChecker(
    "nearest_neighbour",
    reference_nearest_neighbour,
    _neighbour_cases,
    mistakes=[
        (_neighbour_l1, "the distance is L1 (sum of absolute differences); use L2, the square root of the sum of "
         "squared differences (torch.cdist's default, p=2)."),
        (_neighbour_input, "this returns the nearest training INPUT; return its target, the solution it leads to."),
    ],
    hint="nearest = torch.cdist(inputs, train_inputs).argmin(dim=1); return train_targets[nearest]",
)
