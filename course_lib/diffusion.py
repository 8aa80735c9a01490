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

`DDPMSchedule.add_noise` and `step` equal `diffusers`' `DDPMScheduler` (epsilon prediction, fixed-small variance, no
clipping); `euler_step` equals `FlowMatchEulerDiscreteScheduler.step`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["DDPMSchedule", "euler_step", "flow_pair", "guide"]


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

    def step(self, predicted_noise: Tensor, t: int, x_t: Tensor, noise: Tensor | None = None) -> Tensor:
        """x_{t−1} from x_t and the model's ε̂ at step `t` (one int for the batch): the posterior mean given
        x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t, plus √β̃_t times `noise` (fresh N(0, I) when None; none at t = 0)."""
        t = int(self._check_steps(torch.tensor([t]))[0])
        alpha_bar = self.alpha_bars[t]
        alpha_bar_before = self.alpha_bars[t - 1] if t > 0 else torch.tensor(1.0)
        beta = 1 - alpha_bar / alpha_bar_before  # β_t, from the products as diffusers does (equal in exact arithmetic)
        x0 = (x_t - (1 - alpha_bar).sqrt() * predicted_noise) / alpha_bar.sqrt()
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
