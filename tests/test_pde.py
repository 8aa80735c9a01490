"""Burgers' equation from the pseudo-spectral solver (notebook 21's surrogate data): equal to the exact Cole-Hopf
solution, the heat equation in the small-amplitude limit, the mean conserved, trajectories a function of
(seed, split, index) alone. The heat equation and linear advection (notebook 27's operators): a mode decays as
exp(−κk²t), a field moves to u0(x − ct), the mean is conserved, a coarse grid is the fine one subsampled."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from course_lib.data import load
from course_lib.data.pde import initial_waves, solve_advection, solve_burgers, solve_heat


def cole_hopf(points: int, viscosity: float, times: np.ndarray) -> np.ndarray:
    """Exact solution from u0 = sin x: u = -2ν φ_x / φ with φ solving the heat equation from exp(cos x / 2ν)."""
    x = np.arange(points) * 2 * np.pi / points
    k = np.fft.rfftfreq(points, 1 / points)
    phi0 = np.fft.rfft(np.exp(np.cos(x) / (2 * viscosity)))
    rows = []
    for t in times:
        decayed = phi0 * np.exp(-viscosity * k ** 2 * t)
        rows.append(-2 * viscosity * np.fft.irfft(1j * k * decayed, n=points) / np.fft.irfft(decayed, n=points))
    return np.stack(rows)


def test_solver_equals_the_cole_hopf_solution():
    x = np.arange(128) * 2 * np.pi / 128
    solved = solve_burgers(np.sin(x)[None], viscosity=0.1, duration=1.5, frames=3)[0]
    assert np.abs(solved[-1] - solved[0]).max() > 0.3  # the wave steepened and decayed
    np.testing.assert_allclose(solved, cole_hopf(128, 0.1, np.linspace(0, 1.5, 4)), atol=1e-6)


def test_a_tiny_wave_diffuses_like_the_heat_equation():
    x = np.arange(64) * 2 * np.pi / 64
    initial = 1e-6 * (np.sin(2 * x) + 0.5 * np.cos(5 * x))
    solved = solve_burgers(initial[None], viscosity=0.05, duration=1.0, frames=1)[0, -1]
    heat = 1e-6 * (np.exp(-0.05 * 4) * np.sin(2 * x) + 0.5 * np.exp(-0.05 * 25) * np.cos(5 * x))
    np.testing.assert_allclose(solved, heat, atol=1e-11)  # u² is 1e-12: the nonlinear term is below it


def test_the_mean_is_conserved_and_the_energy_decays():
    fields = solve_burgers(initial_waves(range(8), "val", 0, 64) + 0.3, viscosity=0.05, duration=2.0, frames=10)
    np.testing.assert_allclose(fields.mean(axis=-1), fields[:, :1].mean(axis=-1).repeat(11, axis=1), atol=1e-12)
    energy = (fields - fields.mean(axis=-1, keepdims=True)) ** 2
    energy = energy.mean(axis=-1)
    assert (energy[:, 1:] < energy[:, :-1]).all()


def test_trajectories_depend_on_seed_split_and_index_only():
    few, many = load("burgers", n=3, frames=2), load("burgers", n=6, frames=2)
    assert torch.equal(few.fields, many.fields[:3])
    test = load("burgers", split="test", n=3, frames=2)
    assert not torch.allclose(few.fields[:, 0], test.fields[:, 0])
    waves = initial_waves(range(4), "train", 0, 64)
    assert np.allclose(np.abs(waves).max(axis=1), 1)


@pytest.mark.parametrize("options, words", [(dict(points=60, solver_points=256), "solver_points"),
                                            (dict(n=0), "n="), (dict(frames=0), "frames"),
                                            (dict(viscosity=0.0), "viscosity"), (dict(split="dev"), "split")])
def test_bad_options_are_named(options, words):
    with pytest.raises(ValueError, match=words):
        load("burgers", **options)


# --- the heat equation and linear advection: exact spectral solutions ---------------------------------------------


def test_one_sine_mode_decays_as_exp_minus_kappa_k_squared_t():
    x = np.arange(32) * 2 * np.pi / 32
    initial = np.stack([np.sin(3 * x), np.cos(x) + 0.5, np.sin(16 * x + 0.0) + np.cos(16 * x)])  # 16: the Nyquist mode
    solved = solve_heat(initial, diffusivity=0.07, duration=1.5, frames=3)
    times = np.linspace(0, 1.5, 4)[:, None]
    np.testing.assert_allclose(solved[0], np.exp(-0.07 * 9 * times) * np.sin(3 * x), atol=1e-14)
    np.testing.assert_allclose(solved[1], np.exp(-0.07 * times) * np.cos(x) + 0.5, atol=1e-14)
    np.testing.assert_allclose(solved[2], np.exp(-0.07 * 256 * times) * np.cos(16 * x), atol=1e-14)


def test_advection_moves_a_smooth_field_exactly():
    x = np.arange(64) * 2 * np.pi / 64
    speed, times = -1.3, np.linspace(0, 2.5, 6)
    solved = solve_advection(np.exp(np.sin(x))[None], speed=speed, duration=2.5, frames=5)[0]
    exact = np.exp(np.sin(x[None] - speed * times[:, None]))  # u0(x − c t)
    np.testing.assert_allclose(solved, exact, atol=1e-12)
    once_round = solve_advection(np.exp(np.sin(x))[None], speed=2.0, duration=np.pi, frames=2)[0]
    np.testing.assert_allclose(once_round[-1], once_round[0], atol=1e-12)  # 2π / c later it is back


@pytest.mark.parametrize("solve, options", [(solve_heat, dict(diffusivity=0.2)), (solve_advection, dict(speed=0.7))])
def test_the_mean_is_conserved_by_the_linear_equations(solve, options):
    fields = solve(initial_waves(range(6), "val", 0, 48) + 0.3, duration=2.0, frames=10, **options)
    np.testing.assert_allclose(fields.mean(axis=-1), np.full((6, 11), 1.0) * fields[:, :1].mean(axis=-1), atol=1e-14)
    assert np.abs(fields[:, -1] - fields[:, 0]).max() > 0.1  # and the field did change


@pytest.mark.parametrize("name", ["heat", "advection"])
def test_linear_equations_depend_on_seed_split_and_index_only(name):
    few, many = load(name, n=3, frames=2), load(name, n=6, frames=2)
    assert torch.equal(few.fields, many.fields[:3])
    assert not torch.allclose(few.fields[:, 0], load(name, split="test", n=3, frames=2).fields[:, 0])
    assert not torch.allclose(few.fields[:, 0], load(name, seed=1, n=3, frames=2).fields[:, 0])
    assert few.fields.shape == (3, 3, 64) and few.fields.dtype == torch.float32
    torch.testing.assert_close(few.times, torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(few.grid, torch.arange(64) * 2 * math.pi / 64)


@pytest.mark.parametrize("name", ["heat", "advection"])
@pytest.mark.parametrize("coarse, points", [(16, 64), (32, 64), (9, 27), (12, 48), (64, 512)])
def test_a_coarser_grid_is_the_fine_one_subsampled(name, coarse, points):
    fine, low = load(name, n=4, points=points, frames=3), load(name, n=4, points=coarse, frames=3)
    torch.testing.assert_close(low.fields, fine.fields[..., ::points // coarse], atol=2e-6, rtol=0)


def test_all_three_equations_share_their_starting_fields():
    burgers = load("burgers", n=4, frames=1, points=32)
    for name in ("heat", "advection"):
        torch.testing.assert_close(load(name, n=4, frames=1, points=32).fields[:, 0], burgers.fields[:, 0],
                                   atol=2e-6, rtol=0)


def test_coefficients_are_kept_where_they_are_read():
    assert load("heat", n=1, frames=1, diffusivity=0.3).diffusivity == 0.3
    assert load("advection", n=1, frames=1, speed=-2.0).speed == -2.0
    burgers = load("burgers", n=1, frames=1, viscosity=0.1)
    assert burgers.viscosity == 0.1 and burgers.equation == "burgers" and burgers.coefficients == {"viscosity": 0.1}
    assert "frames=1" in repr(burgers) and "viscosity=0.1" in repr(burgers)


@pytest.mark.parametrize("name, options, words", [
    ("heat", dict(diffusivity=0.0), "diffusivity"), ("heat", dict(diffusivity=float("inf")), "diffusivity"),
    ("heat", dict(duration=-1.0), "duration"), ("heat", dict(frames=0), "frames"), ("heat", dict(n=0), "n="),
    ("heat", dict(points=8), "points"), ("heat", dict(split="dev"), "split"), ("heat", dict(speed=1.0), "speed"),
    ("advection", dict(speed=float("nan")), "speed"), ("advection", dict(duration=0), "duration"),
    ("advection", dict(points=6.5), "points"), ("advection", dict(viscosity=0.1), "viscosity"),
])
def test_bad_options_of_the_linear_equations_are_named(name, options, words):
    with pytest.raises(ValueError, match=words):
        load(name, **options)


@pytest.mark.parametrize("solve, options", [(solve_heat, dict(diffusivity=0.1)), (solve_advection, dict(speed=1.0))])
def test_bad_initial_fields_are_named(solve, options):
    with pytest.raises(ValueError, match="initial"):
        solve(np.zeros(16), duration=1.0, frames=2, **options)
