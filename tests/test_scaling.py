"""Scaling-law tools: a GPT's FLOPs by formula against PyTorch's counter, and power-law fits with intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib.measure import count_flops
from course_lib.models import GPT, GPTConfig
from course_lib.scaling import (
    fit_power_law,
    gpt_forward_flops_per_token,
    gpt_non_embedding_parameters,
    power_law,
    prediction_std,
)


@pytest.mark.parametrize("dim, depth, heads, context", [(16, 2, 1, 64), (48, 3, 3, 32), (32, 4, 2, 128)])
def test_flops_formula_equals_the_flop_counter(dim, depth, heads, context):
    config = GPTConfig(vocab_size=256, max_len=128, dim=dim, depth=depth, heads=heads)
    tokens = torch.randint(0, 256, (2, context))
    assert count_flops(GPT(config).eval(), tokens) == gpt_forward_flops_per_token(config, context) * tokens.numel()


def test_non_embedding_parameters_are_the_blocks_matrices():
    config = GPTConfig(vocab_size=256, max_len=64, dim=32, depth=3, heads=2)
    matrices = sum(p.numel() for name, p in GPT(config).named_parameters() if "blocks" in name and p.dim() == 2)
    assert gpt_non_embedding_parameters(config) == matrices == 3 * 12 * 32 * 32


def test_flops_formula_rejects_what_it_does_not_model():
    with pytest.raises(ValueError, match="context=65"):
        gpt_forward_flops_per_token(GPTConfig(max_len=64), 65)
    with pytest.raises(ValueError, match="plain GPT"):
        gpt_forward_flops_per_token(GPTConfig(kv_heads=1), 16)


def test_fit_recovers_an_exact_law_and_its_interval_covers_noisy_runs():
    x = np.geomspace(1e3, 3e5, 6)
    fit = fit_power_law(x, power_law(x, 2.0, 30.0, 0.4))
    np.testing.assert_allclose(fit.params, (2.0, 30.0, 0.4), rtol=1e-6)
    rng, hits = np.random.default_rng(0), 0
    for _ in range(200):  # 95% intervals from five noisy points should hold the sixth about 95% of the time
        y = power_law(x, 2.0, 30.0, 0.4) + rng.normal(0, 0.01, len(x))
        low, high = fit_power_law(x[:5], y[:5]).interval(x[5])
        hits += low <= y[5] <= high
    assert 0.88 <= hits / 200 <= 1.0


def test_prediction_std_matches_sampled_parameters():
    params, covariance = (1.5, 20.0, 0.3), np.array([[4e-4, -1e-3, 2e-5], [-1e-3, 1.0, -1e-3], [2e-5, -1e-3, 1e-5]])
    draws = np.random.default_rng(1).multivariate_normal(params, covariance, 200_000)
    sampled = power_law(1e5, draws[:, 0], draws[:, 1], draws[:, 2]).std()
    assert prediction_std(1e5, params, covariance) == pytest.approx(sampled, rel=0.02)


def test_fit_needs_four_positive_points():
    with pytest.raises(ValueError, match="at least 4"):
        fit_power_law([1, 2, 3], [3, 2, 1])
    with pytest.raises(ValueError, match="x > 0"):
        fit_power_law([0, 1, 2, 3], [4, 3, 2, 1])
