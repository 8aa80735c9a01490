"""The two ways notebook 21 turns noise into images, and classifier-free guidance.

- DDPM ("Denoising Diffusion Probabilistic Models"): `DDPMSchedule` holds a linear schedule of noise variances
  β_1..β_T and their products ᾱ_t. Training noises an image to a random step, x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε
  (`add_noise`), and teaches a model to predict ε; sampling walks back one step at a time from pure noise
  (`step`: the mean of q(x_{t−1} | x_t, x̂_0) plus noise of the posterior's variance).
- Rectified flow ("Flow Straight and Fast"): x_s = (1 − s) x_0 + s ε on a straight line for s in [0, 1], and a
  model learns the constant velocity ε − x_0 (`flow_pair`); sampling integrates it from s = 1 to 0 with Euler
  steps (`euler_step`).
- Classifier-free guidance: one model trained with and without its label (the label dropped at random) gives a
  conditional and an unconditional prediction; `guide` extrapolates from the second past the first.

Training and sampling work with any denoiser called as `model(noisy_images, times, condition)`: a class label per
image (`course_lib.models.DiT`) or a caption's token ids (`course_lib.models.MMDiT`). `DenoisingObjective` wraps
one as the model that `course_lib.train.loop.fit` trains (its forward returns the loss), and `sample_flow` and
`sample_ddpm` turn noise into images, with guidance. Flow times s in [0, 1] reach the model as 1000·s, so the
sinusoidal time features see the same range as DDPM's integer steps.

`DDPMSchedule.add_noise` and `step` equal `diffusers`' `DDPMScheduler` (epsilon prediction, fixed-small variance, no
clipping); `euler_step` equals `FlowMatchEulerDiscreteScheduler.step`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PROCESSES", "DDPMSchedule", "DenoisingObjective", "euler_step", "flow_pair", "guide", "guided_prediction",
           "sample_ddpm", "sample_flow"]

PROCESSES = ("flow", "ddpm")
FLOW_TIME_SCALE = 1000.0  # a flow time s in [0, 1] is given to the model as 1000·s


def _per_example(values: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, ...) to broadcast against `like`."""
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class DDPMSchedule:
    """A linear schedule of `steps` noise variances from `beta_start` to `beta_end` (DDPM's 1e-4 to 0.02)."""

    def __init__(self, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps={steps!r} must be an int >= 2")
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"beta_start={beta_start!r} and beta_end={beta_end!r} must satisfy 0 < start < end < 1")
        self.steps = steps
        self.betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float32)
        self.alpha_bars = torch.cumprod(1 - self.betas, dim=0)  # ᾱ_t: how much of x_0 is left at step t

    def _check_steps(self, t: Tensor) -> Tensor:
        if not isinstance(t, Tensor) or t.is_floating_point() or t.numel() == 0 or t.min() < 0 or t.max() >= self.steps:
            raise ValueError(f"t must be integer steps in [0, steps={self.steps}); got {t!r}")
        return t.long()

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, with `t` (B,) one step per example."""
        alpha_bar = _per_example(self.alpha_bars[self._check_steps(t).cpu()].to(x0.device), x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def step(self, predicted_noise: Tensor, t: int, x_t: Tensor, noise: Tensor | None = None, *,
             clip: bool = False) -> Tensor:
        """x_{t−1} from x_t and the model's ε̂ at step `t` (one int for the batch): the posterior mean given
        x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t, plus √β̃_t times `noise` (fresh N(0, I) when None; none at t = 0).
        `clip` clamps x̂_0 to the data's range [−1, 1] first, as DDPM's own sampler does: at high noise x̂_0 divides
        the noise estimate's errors by a small √ᾱ_t, and unclamped they can carry the sample far outside the data."""
        t = int(self._check_steps(torch.tensor([t]))[0])
        alpha_bar = self.alpha_bars[t]
        alpha_bar_before = self.alpha_bars[t - 1] if t > 0 else torch.tensor(1.0)
        beta = 1 - alpha_bar / alpha_bar_before  # β_t, from the products as diffusers does (equal in exact arithmetic)
        x0 = (x_t - (1 - alpha_bar).sqrt() * predicted_noise) / alpha_bar.sqrt()
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        mean = (alpha_bar_before.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - alpha_bar_before) * x_t) / (1 - alpha_bar)
        if t == 0:
            return mean
        variance = ((1 - alpha_bar_before) / (1 - alpha_bar) * beta).clamp(min=1e-20)  # β̃_t, the posterior's
        return mean + variance.sqrt() * (torch.randn_like(x_t) if noise is None else noise)


def flow_pair(x0: Tensor, noise: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """Rectified flow's training pair at times `s` (B,) in [0, 1]: the point x_s = (1 − s) x_0 + s ε on the straight
    line from data to noise, and the velocity ε − x_0 a model should predict there."""
    if not isinstance(s, Tensor) or not s.is_floating_point() or s.shape != x0.shape[:1] or s.min() < 0 or s.max() > 1:
        raise ValueError(f"s must be ({len(x0)},) float times in [0, 1]; got {s!r}")
    s = _per_example(s, x0)
    return (1 - s) * x0 + s * noise, noise - x0


def euler_step(velocity: Tensor, s: float, s_next: float, x: Tensor) -> Tensor:
    """One Euler step of the flow from time `s` to `s_next` (sampling goes from 1 down to 0)."""
    return x + (s_next - s) * velocity


def guide(conditional: Tensor, unconditional: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: unconditional + scale · (conditional − unconditional); scale 1 is the plain
    conditional prediction, larger scales push samples towards what the label makes more likely."""
    return unconditional + scale * (conditional - unconditional)


def _check_condition(condition: Tensor, null_condition: Tensor) -> None:
    if not isinstance(condition, Tensor) or not isinstance(null_condition, Tensor) or condition.dim() == 0 \
            or condition.shape[1:] != null_condition.shape:
        raise ValueError(f"condition (one row per image) and null_condition (one row) must agree after the batch "
                         f"axis; got {tuple(getattr(condition, 'shape', ()))} and "
                         f"{tuple(getattr(null_condition, 'shape', ()))}")


class DenoisingObjective(nn.Module):
    """`model` with its training loss, for `fit`: forward({"images": x_0, "condition": c}) draws a time and noise
    per image, noises the images and returns the mean squared error of the model's prediction, a scalar.

    `process="flow"`: the model predicts the velocity ε − x_0 at a uniform time s; `"ddpm"`: it predicts ε at a
    uniform step of `schedule`. While training, each condition is replaced by `null_condition` with probability
    `drop_condition`, so the same model also learns the unconditional prediction that guidance needs. Times, noise
    and drops come from a generator seeded with `seed`, so a run is repeatable."""

    def __init__(self, model: nn.Module, null_condition: Tensor, *, process: str = "flow",
                 schedule: DDPMSchedule | None = None, drop_condition: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        if process not in PROCESSES:
            raise ValueError(f"process={process!r}; expected one of {PROCESSES}")
        if (process == "ddpm") != (schedule is not None):
            raise ValueError(f"schedule={schedule!r}: process='ddpm' needs a DDPMSchedule, 'flow' takes none")
        if not 0 <= drop_condition < 1:
            raise ValueError(f"drop_condition={drop_condition!r} must lie in [0, 1)")
        self.model, self.process, self.schedule, self.drop_condition = model, process, schedule, drop_condition
        self.register_buffer("null_condition", null_condition.clone(), persistent=False)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        if not isinstance(inputs, Mapping) or set(inputs) != {"images", "condition"}:
            raise ValueError(f"inputs must be a mapping with keys 'images' and 'condition'; got "
                             f"{sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__}")
        return self.loss(inputs["images"], inputs["condition"], self.generator)

    def loss(self, images: Tensor, condition: Tensor, generator: torch.Generator) -> Tensor:
        """The objective on one batch with times, noise and drops from `generator` (a fixed one for held-out
        comparisons); conditions are dropped only in training mode."""
        _check_condition(condition, self.null_condition)
        batch = len(images)
        noise = torch.randn(images.shape, generator=generator).to(images.device)
        if self.training and self.drop_condition > 0:
            dropped = (torch.rand(batch, generator=generator) < self.drop_condition).to(images.device)
            condition = torch.where(dropped.reshape(-1, *[1] * (condition.dim() - 1)), self.null_condition, condition)
        if self.process == "flow":
            s = torch.rand(batch, generator=generator).to(images.device)
            noisy, target = flow_pair(images, noise, s)
            times = s * FLOW_TIME_SCALE
        else:
            times = torch.randint(self.schedule.steps, (batch,), generator=generator).to(images.device)
            noisy, target = self.schedule.add_noise(images, noise, times), noise
        return F.mse_loss(self.model(noisy, times, condition), target)


Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]  # (noisy images, times, condition) -> prediction


def guided_prediction(model: Denoiser, x: Tensor, times: Tensor, condition: Tensor, null_condition: Tensor,
                      guidance: float) -> Tensor:
    """The model's prediction with classifier-free guidance `guidance` (1: the plain conditional prediction, one
    forward pass; otherwise the conditional and unconditional ones in one batch of twice the size)."""
    if guidance == 1:
        return model(x, times, condition)
    null = null_condition.expand_as(condition)
    conditional, unconditional = model(torch.cat([x, x]), torch.cat([times, times]),
                                       torch.cat([condition, null])).chunk(2)
    return guide(conditional, unconditional, guidance)


def _start(condition: Tensor, null_condition: Tensor, shape: tuple[int, ...], guidance: float,
           generator: torch.Generator) -> Tensor:
    """Checks shared by the samplers, then pure noise of `shape` per condition (drawn on the CPU, repeatable)."""
    _check_condition(condition, null_condition)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or guidance < 0:
        raise ValueError(f"guidance={guidance!r} must be a number >= 0 (1: no guidance)")
    return torch.randn((len(condition), *shape), generator=generator).to(condition.device)


@torch.no_grad()
def sample_flow(model: Denoiser, condition: Tensor, null_condition: Tensor, *, shape: tuple[int, ...],
                steps: int = 32, guidance: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """One image of `shape` per condition: pure noise at s = 1 carried to s = 0 by `steps` equal Euler steps of
    the (guided) velocity."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive int")
    x = _start(condition, null_condition, shape, guidance, generator or torch.Generator().manual_seed(0))
    times = torch.linspace(1.0, 0.0, steps + 1).tolist()
    for s, s_next in zip(times[:-1], times[1:]):
        s_batch = torch.full((len(x),), s * FLOW_TIME_SCALE, device=x.device)
        x = euler_step(guided_prediction(model, x, s_batch, condition, null_condition, guidance), s, s_next, x)
    return x


@torch.no_grad()
def sample_ddpm(model: Denoiser, schedule: DDPMSchedule, condition: Tensor, null_condition: Tensor, *,
                shape: tuple[int, ...], guidance: float = 1.0, generator: torch.Generator | None = None,
                clip: bool = True) -> Tensor:
    """One image of `shape` per condition: pure noise at the last step walked back through every step of
    `schedule` with the (guided) noise prediction (DDPM's ancestral sampler; `clip`: x̂_0 clamped to [−1, 1] at
    every step, see `DDPMSchedule.step`)."""
    generator = generator or torch.Generator().manual_seed(0)
    x = _start(condition, null_condition, shape, guidance, generator)
    for t in reversed(range(schedule.steps)):
        t_batch = torch.full((len(x),), t, device=x.device, dtype=torch.long)
        predicted = guided_prediction(model, x, t_batch, condition, null_condition, guidance)
        x = schedule.step(predicted, t, x, torch.randn(x.shape, generator=generator).to(x.device), clip=clip)
    return x
