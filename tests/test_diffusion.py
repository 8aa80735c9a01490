"""DDPM and rectified flow (towards notebook 21): noising and denoising steps against diffusers' schedulers, the
flow's straight line and velocity, guidance's two ends."""

from __future__ import annotations

import pytest
import torch

from course_lib.diffusion import DDPMSchedule, euler_step, flow_pair, guide

diffusers = pytest.importorskip("diffusers")


def ddpm_reference():
    return diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                   clip_sample=False, variance_type="fixed_small", prediction_type="epsilon")


def test_add_noise_equals_diffusers():
    x0, noise, t = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(DDPMSchedule().add_noise(x0, noise, t), ddpm_reference().add_noise(x0, noise, t))


@pytest.mark.parametrize("t", [0, 1, 37, 500, 999])
def test_a_denoising_step_equals_diffusers(t):
    x_t, predicted = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    reference = ddpm_reference()
    reference.set_timesteps(1000)
    generator = torch.Generator().manual_seed(t)
    expected = reference.step(predicted, t, x_t, generator=generator).prev_sample
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t))
    torch.testing.assert_close(DDPMSchedule().step(predicted, t, x_t, noise), expected, rtol=1e-5, atol=1e-5)


def test_flow_pair_and_euler_step_equal_diffusers_flow_matching():
    x0, noise, s = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor([0.0, 0.3, 1.0])
    point, velocity = flow_pair(x0, noise, s)
    torch.testing.assert_close(point[0], x0[0]), torch.testing.assert_close(point[2], noise[2])
    torch.testing.assert_close(velocity, noise - x0)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(10)
    x = torch.randn(1, 2, 4, 4)
    predicted = torch.randn(1, 2, 4, 4)
    expected = scheduler.step(predicted, scheduler.timesteps[0], x).prev_sample
    sigmas = scheduler.sigmas
    torch.testing.assert_close(euler_step(predicted, float(sigmas[0]), float(sigmas[1]), x), expected)
    # the exact velocity carries a point on the line to the data in one step
    torch.testing.assert_close(euler_step(velocity, 0.3, 0.0, point)[1], x0[1], rtol=1e-5, atol=1e-6)


def test_guidance_interpolates_and_extrapolates():
    conditional, unconditional = torch.tensor([2.0]), torch.tensor([1.0])
    assert guide(conditional, unconditional, 0.0).item() == 1.0
    assert guide(conditional, unconditional, 1.0).item() == 2.0
    assert guide(conditional, unconditional, 4.0).item() == 5.0


@pytest.mark.parametrize("call, words", [
    (lambda: DDPMSchedule(steps=1), "steps"),
    (lambda: DDPMSchedule(beta_start=0.1, beta_end=0.01), "beta_start"),
    (lambda: DDPMSchedule().add_noise(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([1000])), "t must be"),
    (lambda: flow_pair(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0.5, 1.5])), "s must be"),
])
def test_bad_arguments_are_named(call, words):
    with pytest.raises(ValueError, match=words):
        call()
