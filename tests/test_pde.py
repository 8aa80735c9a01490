"""Burgers' equation from the pseudo-spectral solver (notebook 21's surrogate data): equal to the exact Cole-Hopf
solution, the heat equation in the small-amplitude limit, the mean conserved, trajectories a function of
(seed, split, index) alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib.data import load
from course_lib.data.pde import initial_waves, solve_burgers


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
