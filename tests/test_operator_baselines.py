"""The operator-learning baselines of notebook 27: the linear map recovers the heat equation's solution operator, the
interpolations match numpy's periodic `np.interp`, predictions at the training points are those on the grid, nearest
neighbour returns training targets exactly, and bad shapes are named."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from course_lib.data import load
from course_lib.data.pde import solve_heat
from course_lib.models import (
    LinearOperator,
    NearestNeighbour,
    interpolate_to_grid,
    periodic_interpolate,
    relative_l2,
)

TAU = 2 * math.pi


def grid(size: int) -> torch.Tensor:
    return torch.arange(size, dtype=torch.float64) * TAU / size


# --- the linear operator ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["heat", "advection"])
def test_the_linear_map_solves_a_linear_equation_on_held_out_trajectories(name):
    train, test = load(name, n=200, frames=2), load(name, split="test", n=50, frames=2)
    operator = LinearOperator().fit(train.fields[:, 0], train.fields[:, -1])
    error = relative_l2(operator.predict(test.fields[:, 0]), test.fields[:, -1])
    assert error < 1e-3, error
    assert relative_l2(NearestNeighbour().fit(train.fields[:, 0], train.fields[:, -1]).predict(test.fields[:, 0]),
                       test.fields[:, -1]) > 100 * error


def test_the_linear_map_is_the_heat_solution_operator_given_fields_of_every_mode():
    generator = np.random.default_rng(0)
    inputs = generator.normal(size=(200, 16))
    targets = solve_heat(inputs, diffusivity=0.1, duration=0.5, frames=1)[:, -1]
    exact = solve_heat(np.eye(16), diffusivity=0.1, duration=0.5, frames=1)[:, -1]  # row j: the image of e_j
    operator = LinearOperator(ridge=0.0).fit(torch.from_numpy(inputs), torch.from_numpy(targets))
    np.testing.assert_allclose(operator.weight.numpy(), exact, atol=1e-10)
    np.testing.assert_allclose(operator.bias.numpy(), 0.0, atol=1e-10)
    assert operator.weight.dtype == torch.float64


def test_a_large_ridge_shrinks_the_map_to_the_mean_target():
    inputs, targets = torch.randn(50, 8), torch.randn(50, 8) + 3.0
    operator = LinearOperator(ridge=1e8).fit(inputs, targets)
    torch.testing.assert_close(operator.predict(inputs[:3]), targets.mean(0).expand(3, -1), atol=1e-4, rtol=0)


def test_resolution_transfer_goes_through_linear_interpolation():
    train, fine = load("heat", n=200, frames=2, points=32), load("heat", split="test", n=50, frames=2, points=128)
    operator = LinearOperator().fit(train.fields[:, 0], train.fields[:, -1])
    prediction = operator.predict(fine.fields[:, 0], fine.grid)
    assert prediction.shape == (50, 128)
    assert 1e-5 < relative_l2(prediction, fine.fields[:, -1]) < 1e-2  # only the interpolation's error is left
    torch.testing.assert_close(prediction[:, ::4], operator.predict(fine.fields[:, 0, ::4]), atol=1e-5, rtol=0)


# --- interpolation ------------------------------------------------------------------------------------------------


def test_interpolation_is_exact_for_linear_functions_between_grid_points():
    size, slope = 10, torch.tensor([[0.5], [-2.0]], dtype=torch.float64)
    values = 1.0 + slope * grid(size)  # (2, 10): a ramp on each row
    points = torch.rand(2, 30, dtype=torch.float64) * TAU * (size - 1) / size  # before the last grid point
    torch.testing.assert_close(periodic_interpolate(values, size, points), 1.0 + slope * points)
    torch.testing.assert_close(periodic_interpolate(values, size, grid(size)), values)


def test_interpolation_wraps_around_the_seam():
    values = torch.tensor([[1.0, 2.0, 3.0, 5.0]], dtype=torch.float64)  # at 0, π/2, π, 3π/2
    seam = torch.tensor([1.75, 1.9, 2.0], dtype=torch.float64) * math.pi  # between the last grid point and 2π ≡ 0
    expected = torch.tensor([[3.0, 1.8, 1.0]], dtype=torch.float64)  # from 5 towards values[0] = 1, linearly
    torch.testing.assert_close(periodic_interpolate(values, 4, seam), expected)
    points = torch.rand(7, dtype=torch.float64) * TAU
    torch.testing.assert_close(periodic_interpolate(values, 4, points + TAU), periodic_interpolate(values, 4, points))
    torch.testing.assert_close(periodic_interpolate(values, 4, points - TAU), periodic_interpolate(values, 4, points))


@pytest.mark.parametrize("size, count", [(16, 40), (7, 3), (64, 64)])
def test_interpolation_matches_numpys_periodic_interp(size, count):
    generator = torch.Generator().manual_seed(size)
    values = torch.randn(3, size, dtype=torch.float64, generator=generator)
    points = torch.rand(3, count, dtype=torch.float64, generator=generator) * TAU
    expected = np.stack([np.interp(p, grid(size).numpy(), v, period=TAU)
                         for p, v in zip(points.numpy(), values.numpy())])
    torch.testing.assert_close(periodic_interpolate(values, size, points), torch.from_numpy(expected))
    shared = points[0]  # (P,): the same points for every row
    expected = np.stack([np.interp(shared.numpy(), grid(size).numpy(), v, period=TAU) for v in values.numpy()])
    torch.testing.assert_close(periodic_interpolate(values, size, shared), torch.from_numpy(expected))


@pytest.mark.parametrize("count, size", [(40, 16), (5, 32), (1, 4), (64, 64)])
def test_scattered_points_to_the_grid_match_numpys_periodic_interp(count, size):
    generator = torch.Generator().manual_seed(count)
    values = torch.randn(3, count, dtype=torch.float64, generator=generator)
    points = torch.rand(3, count, dtype=torch.float64, generator=generator) * TAU  # unsorted, scattered
    expected = np.stack([np.interp(grid(size).numpy(), p, v, period=TAU)
                         for p, v in zip(points.numpy(), values.numpy())])
    torch.testing.assert_close(interpolate_to_grid(values, points, size), torch.from_numpy(expected))
    on_grid = torch.randn(2, size, dtype=torch.float64, generator=generator)
    order = torch.randperm(size, generator=generator)
    assert torch.equal(interpolate_to_grid(on_grid[:, order], grid(size)[order], size), on_grid)


# --- predictions at points -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("baseline", [LinearOperator, NearestNeighbour])
def test_predictions_at_the_training_points_are_those_on_the_grid(baseline):
    data = load("heat", n=60, frames=1, points=32)
    fitted = baseline().fit(data.fields[:40, 0], data.fields[:40, -1])
    inputs = data.fields[40:, 0]
    on_grid = fitted.predict(inputs)
    torch.testing.assert_close(fitted.predict(inputs, data.grid), on_grid, atol=1e-5, rtol=0)
    order = torch.randperm(32)
    torch.testing.assert_close(fitted.predict(inputs[:, order], data.grid[order]), on_grid[:, order], atol=1e-5, rtol=0)
    torch.testing.assert_close(fitted.predict(inputs, data.grid.expand(20, -1)), on_grid, atol=1e-5, rtol=0)


def test_nearest_neighbour_returns_the_target_of_the_closest_input():
    generator = torch.Generator().manual_seed(3)
    inputs, targets = torch.randn(30, 12, generator=generator), torch.randn(30, 12, generator=generator)
    fitted = NearestNeighbour().fit(inputs, targets)
    assert torch.equal(fitted.predict(inputs), targets)  # a training input gets its own target, exactly
    queries = inputs[[4, 9, 4]] + 0.05 * torch.randn(3, 12, generator=generator)
    naive = torch.stack([targets[min(range(30), key=lambda i: float(((q - inputs[i]) ** 2).sum()))] for q in queries])
    assert torch.equal(fitted.predict(queries), naive)


def test_relative_l2_is_the_mean_of_per_sample_ratios():
    target = torch.tensor([[3.0, 4.0], [0.0, 10.0]])
    prediction = torch.tensor([[3.0, 5.0], [0.0, 5.0]])  # errors 1/5 and 5/10
    torch.testing.assert_close(relative_l2(prediction, target), torch.tensor(0.35))
    torch.testing.assert_close(relative_l2(7 * prediction, 7 * target), torch.tensor(0.35))
    assert relative_l2(target[None].expand(2, -1, -1), target[None].expand(2, -1, -1)) == 0


# --- bad arguments ------------------------------------------------------------------------------------------------


def test_bad_arguments_are_named():
    operator = LinearOperator()
    with pytest.raises(RuntimeError, match="fit"):
        operator.predict(torch.randn(2, 8))
    operator.fit(torch.randn(10, 8), torch.randn(10, 8))
    cases = [
        (lambda: operator.predict(torch.randn(2, 16)), "points="),
        (lambda: operator.predict(torch.randn(2, 16), torch.rand(8)), "points has shape"),
        (lambda: operator.predict(torch.randn(2, 16), torch.rand(3, 16)), r"\(batch, P\) = \(2, 16\)"),
        (lambda: operator.predict(torch.randn(8)), "inputs"),
        (lambda: operator.fit(torch.randn(10, 8), torch.randn(10, 9)), "targets"),
        (lambda: NearestNeighbour().fit(torch.randint(0, 3, (4, 8)), torch.randn(4, 8)), "inputs"),
        (lambda: LinearOperator(ridge=-1.0), "ridge=-1.0"),
        (lambda: periodic_interpolate(torch.randn(2, 8), 9, torch.rand(3)), "grid_size=9"),
        (lambda: periodic_interpolate(torch.randn(2, 8), 8, torch.rand(3, 5)), "points"),
        (lambda: interpolate_to_grid(torch.randn(2, 8), torch.rand(7), 8), "points"),
        (lambda: interpolate_to_grid(torch.randn(2, 8), torch.rand(8), 0), "grid_size=0"),
        (lambda: relative_l2(torch.randn(2, 8), torch.randn(2, 7)), "prediction"),
    ]
    for call, words in cases:
        with pytest.raises(ValueError, match=words):
            call()
