"""DDPM and rectified flow (notebook 21): noising and denoising steps against diffusers' schedulers, the flow's
straight line and velocity, guidance's two ends, the training objective against its draws written out, and both
samplers landing exactly on the data when the model is exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.diffusion import (
    DDPMSchedule,
    DenoisingObjective,
    euler_step,
    flow_pair,
    guide,
    guided_prediction,
    sample_ddpm,
    sample_flow,
)

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


@pytest.mark.parametrize("t", [3, 999])
def test_a_clipped_step_equals_diffusers_with_clip_sample(t):
    x_t, predicted = 3 * torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    reference = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True,
                                        variance_type="fixed_small", prediction_type="epsilon")
    reference.set_timesteps(1000)
    expected = reference.step(predicted, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t))
    got = DDPMSchedule().step(predicted, t, x_t, noise, clip=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - DDPMSchedule().step(predicted, t, x_t, noise)).abs().max() > 1e-3  # the clamp mattered


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


class Recorder(nn.Module):
    """A denoiser that remembers what it was called with and predicts a linear function of its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(0.5))
        self.calls = []

    def forward(self, x, times, condition):
        self.calls.append((x, times, condition))
        return self.weight * x + condition.float().reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("process", ["flow", "ddpm"])
def test_the_objective_is_the_squared_error_of_its_draws(process):
    images, labels = torch.randn(6, 3, 4, 4), torch.arange(6)
    schedule = DDPMSchedule() if process == "ddpm" else None
    model = Recorder()
    objective = DenoisingObjective(model, torch.tensor(9), process=process, schedule=schedule, drop_condition=0.5,
                                   seed=3)
    value = objective({"images": images, "condition": labels})
    generator = torch.Generator().manual_seed(3)  # the draws in the objective's order: noise, drops, times
    noise = torch.randn(images.shape, generator=generator)
    dropped = torch.rand(6, generator=generator) < 0.5
    condition = torch.where(dropped, torch.tensor(9), labels)
    if process == "flow":
        s = torch.rand(6, generator=generator)
        noisy, target, times = (1 - s[:, None, None, None]) * images + s[:, None, None, None] * noise, noise - images, s * 1000
    else:
        times = torch.randint(1000, (6,), generator=generator)
        noisy, target = schedule.add_noise(images, noise, times), noise
    x, seen_times, seen_condition = model.calls[0]
    torch.testing.assert_close(x, noisy), torch.testing.assert_close(seen_times, times)
    assert torch.equal(seen_condition, condition) and 0 < dropped.sum() < 6
    torch.testing.assert_close(value, F.mse_loss(0.5 * noisy + condition.float().reshape(-1, 1, 1, 1), target))


def test_conditions_are_dropped_only_in_training_and_the_draws_repeat():
    images, labels = torch.randn(64, 1, 2, 2), torch.zeros(64, dtype=torch.long)
    objective = DenoisingObjective(Recorder(), torch.tensor(7), drop_condition=0.3, seed=1)
    objective({"images": images, "condition": labels})
    dropped = (objective.model.calls[-1][2] == 7).float().mean().item()
    assert 0.15 < dropped < 0.45
    objective.eval()
    objective({"images": images, "condition": labels})
    assert (objective.model.calls[-1][2] == 0).all()
    first = objective.loss(images, labels, torch.Generator().manual_seed(5))
    assert torch.equal(first, objective.loss(images, labels, torch.Generator().manual_seed(5)))


def test_a_caption_condition_is_replaced_row_by_row():
    captions, null = torch.ones(32, 5, dtype=torch.long), torch.tensor([2, 1, 0, 0, 0])
    objective = DenoisingObjective(Recorder(), null, drop_condition=0.5, seed=0)
    objective.model.forward = lambda x, times, condition: objective.model.calls.append(condition) or x
    objective({"images": torch.randn(32, 1, 2, 2), "condition": captions})
    seen = objective.model.calls[-1]
    is_null = (seen == null).all(dim=1)
    assert 0 < is_null.sum() < 32 and ((seen == 1).all(dim=1) | is_null).all()


class PointMass(nn.Module):
    """The exact denoiser when all the data is one image `target`: any noisy point came from it."""

    def __init__(self, target, process, schedule=None):
        super().__init__()
        self.target, self.process, self.schedule = target, process, schedule

    def forward(self, x, times, condition):
        if self.process == "flow":  # x_s = (1 - s) x* + s ε, so the velocity ε - x* is (x_s - x*) / s
            return (x - self.target) / (times / 1000).reshape(-1, 1, 1, 1)
        alpha_bar = self.schedule.alpha_bars[times].reshape(-1, 1, 1, 1)
        return (x - alpha_bar.sqrt() * self.target) / (1 - alpha_bar).sqrt()


def test_both_samplers_land_on_the_data_when_the_model_is_exact():
    target = torch.rand(3, 4, 4) * 2 - 1  # in the data's range, where clipping x̂_0 changes nothing
    labels, null = torch.zeros(5, dtype=torch.long), torch.tensor(1)
    flow = sample_flow(PointMass(target, "flow"), labels, null, shape=(3, 4, 4), steps=7)
    torch.testing.assert_close(flow, target.expand(5, -1, -1, -1), rtol=1e-4, atol=1e-4)
    schedule = DDPMSchedule(steps=50, beta_start=1e-3, beta_end=0.2)
    ddpm = sample_ddpm(PointMass(target, "ddpm", schedule), schedule, labels, null, shape=(3, 4, 4))
    torch.testing.assert_close(ddpm, target.expand(5, -1, -1, -1), rtol=1e-4, atol=1e-4)


def test_samples_repeat_with_the_generator_and_guidance_mixes_two_predictions():
    model, labels, null = Recorder(), torch.tensor([1, 2]), torch.tensor(0)
    first = sample_flow(model, labels, null, shape=(1, 2, 2), steps=3, guidance=3.0,
                        generator=torch.Generator().manual_seed(4))
    again = sample_flow(model, labels, null, shape=(1, 2, 2), steps=3, guidance=3.0,
                        generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    x, times = torch.randn(2, 1, 2, 2), torch.zeros(2)
    guided = guided_prediction(model, x, times, labels, null, 3.0)
    torch.testing.assert_close(guided, 0.5 * x + 3 * labels.float().reshape(-1, 1, 1, 1))  # null adds 0
    calls = len(model.calls)
    guided_prediction(model, x, times, labels, null, 1.0)
    assert len(model.calls) == calls + 1 and len(model.calls[-1][0]) == 2  # no unconditional pass at guidance 1


@pytest.mark.parametrize("call, words", [
    (lambda: DenoisingObjective(Recorder(), torch.tensor(0), process="score"), "process"),
    (lambda: DenoisingObjective(Recorder(), torch.tensor(0), process="ddpm"), "schedule"),
    (lambda: DenoisingObjective(Recorder(), torch.tensor(0), drop_condition=1.0), "drop_condition"),
    (lambda: DenoisingObjective(Recorder(), torch.tensor(0))(torch.zeros(2, 1, 2, 2)), "inputs"),
    (lambda: DenoisingObjective(Recorder(), torch.tensor(0))({"images": torch.zeros(2, 1, 2, 2),
                                                              "condition": torch.zeros(2, 3)}), "condition"),
    (lambda: sample_flow(Recorder(), torch.tensor([1]), torch.tensor(0), shape=(1, 2, 2), steps=0), "steps"),
    (lambda: sample_flow(Recorder(), torch.tensor([1]), torch.tensor(0), shape=(1, 2, 2), guidance=-1.0), "guidance"),
])
def test_bad_training_and_sampling_arguments_are_named(call, words):
    with pytest.raises(ValueError, match=words):
        call()
