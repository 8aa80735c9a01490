"""The checkers of notebook 27_operators_and_science: right answers pass, plausible wrong ones fail with a message
naming the mistake. Each correct answer is written here the way a learner would, independently of the packaged
references."""

from __future__ import annotations

import math

import numpy as np
import torch
from checking import fails, passes

from course_lib.checks import operators as check
from course_lib.data.pde import solve_heat

# --- heat_solution ------------------------------------------------------------------------------------------------


def heat_solution(initial, diffusivity, time):
    points = initial.shape[-1]
    k = torch.fft.rfftfreq(points, 1 / points).to(initial.dtype)
    return torch.fft.irfft(torch.fft.rfft(initial) * torch.exp(-diffusivity * time * k * k), n=points)


def test_heat_right(capsys):
    passes(check.heat_solution, heat_solution, capsys)


def test_heat_with_the_full_fft_and_signed_wavenumbers(capsys):
    def full_fft(initial, diffusivity, time):
        k = torch.fft.fftfreq(initial.shape[-1], 1 / initial.shape[-1]).to(initial.dtype)
        return torch.fft.ifft(torch.fft.fft(initial) * torch.exp(-diffusivity * k ** 2 * time)).real

    passes(check.heat_solution, full_fft, capsys)


def test_heat_from_the_numpy_solver(capsys):
    def numpy_solver(initial, diffusivity, time):
        if time == 0:
            return initial.clone()
        solved = solve_heat(initial.double().numpy(), diffusivity=diffusivity, duration=time, frames=1)[:, -1]
        return torch.from_numpy(solved).to(initial.dtype)

    passes(check.heat_solution, numpy_solver, capsys)


def test_heat_k_not_squared(capsys):
    def wrong(initial, diffusivity, time):
        points = initial.shape[-1]
        k = torch.fft.rfftfreq(points, 1 / points).to(initial.dtype)
        return torch.fft.irfft(torch.fft.rfft(initial) * torch.exp(-diffusivity * time * k), n=points)

    fails(check.heat_solution, wrong, capsys, "k is squared")


def test_heat_without_n(capsys):
    def wrong(initial, diffusivity, time):
        k = torch.fft.rfftfreq(initial.shape[-1], 1 / initial.shape[-1]).to(initial.dtype)
        return torch.fft.irfft(torch.fft.rfft(initial) * torch.exp(-diffusivity * time * k ** 2))

    assert "shape" in fails(check.heat_solution, wrong, capsys, "pass n=P")


def test_heat_fft_indices_as_wavenumbers(capsys):
    def wrong(initial, diffusivity, time):
        j = torch.arange(initial.shape[-1]).to(initial.dtype)
        return torch.fft.ifft(torch.fft.fft(initial) * torch.exp(-diffusivity * j ** 2 * time)).real

    fails(check.heat_solution, wrong, capsys, "negative ones")


# --- periodic_interpolate -----------------------------------------------------------------------------------------


def periodic_interpolate(values, grid_size, points):
    grid = np.arange(grid_size) * 2 * np.pi / grid_size
    rows = np.broadcast_to(points.double().numpy(), (len(values), points.shape[-1]))
    out = [np.interp(p, grid, v, period=2 * np.pi) for p, v in zip(rows, values.double().numpy())]
    return torch.from_numpy(np.stack(out)).to(values.dtype)


def test_interpolate_right(capsys):
    passes(check.periodic_interpolate, periodic_interpolate, capsys)


def test_interpolate_clamped_at_the_seam(capsys):
    def wrong(values, grid_size, points):
        position = (points * grid_size / (2 * math.pi)).expand(len(values), -1)
        lower = position.floor().long()
        upper = torch.clamp(lower + 1, max=grid_size - 1)
        weight = position - lower
        return (1 - weight) * values.gather(1, lower) + weight * values.gather(1, upper)

    fails(check.periodic_interpolate, wrong, capsys, "periodic")


def test_interpolate_nearest(capsys):
    def wrong(values, grid_size, points):
        index = torch.round(points * grid_size / (2 * math.pi)).long() % grid_size
        return values.gather(1, index.expand(len(values), -1))

    fails(check.periodic_interpolate, wrong, capsys, "nearest grid value")


# --- nearest_neighbour ----------------------------------------------------------------------------------------------


def nearest_neighbour(train_inputs, train_targets, inputs):
    rows = []
    for x in inputs:
        distances = ((train_inputs - x) ** 2).sum(dim=1)
        rows.append(train_targets[distances.argmin()])
    return torch.stack(rows)


def test_neighbour_right(capsys):
    passes(check.nearest_neighbour, nearest_neighbour, capsys)


def test_neighbour_l1(capsys):
    def wrong(train_inputs, train_targets, inputs):
        distances = (inputs[:, None] - train_inputs[None]).abs().sum(-1)
        return train_targets[distances.argmin(dim=1)]

    fails(check.nearest_neighbour, wrong, capsys, "L1")


def test_neighbour_returns_the_input(capsys):
    def wrong(train_inputs, train_targets, inputs):
        return train_inputs[torch.cdist(inputs, train_inputs).argmin(dim=1)]

    fails(check.nearest_neighbour, wrong, capsys, "INPUT")


def test_neighbour_not_implemented(capsys):
    def stub(train_inputs, train_targets, inputs):
        raise NotImplementedError

    fails(check.nearest_neighbour, stub, capsys, "not implemented")
