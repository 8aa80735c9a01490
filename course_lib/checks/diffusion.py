"""Checkers for the exercises of notebook 21_diffusion_transformers: DDPM's noising, sampling a flow with Euler
steps, classifier-free guidance, and MM-DiT's joint attention.

The references are the packaged functions of `course_lib.diffusion` and `course_lib.models.mmdit`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.diffusion import euler_step
from course_lib.diffusion import guide as reference_guide
from course_lib.models.mmdit import joint_attention as reference_joint_attention
from course_lib.nn import MultiHeadAttention


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- noisy_images(x0, noise, alpha_bar) ----------------------------------------------------------------------------


def reference_noisy_images(x0: Tensor, noise: Tensor, alpha_bar: Tensor) -> Tensor:
    """x_t = √ᾱ x_0 + √(1 − ᾱ) ε, with one ᾱ (B,) per image."""
    alpha_bar = alpha_bar.reshape(-1, *[1] * (x0.dim() - 1))
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


def _noisy_cases() -> list[Case]:
    cases = []
    for seed, shape in enumerate(((3, 1, 4, 4), (2, 3, 8, 8), (5, 2))):
        alpha_bar = torch.linspace(0.95, 0.05, shape[0])
        cases.append(Case(f"images of shape {shape}, ᾱ from 0.95 to 0.05", (_randn(*shape, seed=seed),
                                                                           _randn(*shape, seed=10 + seed), alpha_bar)))
    return cases


noisy_images = FunctionChecker(
    "noisy_images",
    reference_noisy_images,
    _noisy_cases,
    mistakes=[
        (lambda x0, noise, ab: reference_noisy_images(x0, noise, ab.sqrt()),
         "ᾱ is already the product of the (1 − β)s: the image is scaled by √ᾱ, not by √√ᾱ."),
        (lambda x0, noise, ab: ab.reshape(-1, *[1] * (x0.dim() - 1)) * x0
         + (1 - ab.reshape(-1, *[1] * (x0.dim() - 1))) * noise,
         "these are the weights of the variances; the image and the noise are scaled by their square roots, "
         "√ᾱ and √(1 − ᾱ), so that the variance stays 1."),
        (lambda x0, noise, ab: reference_noisy_images(noise, x0, ab),
         "the image and the noise are swapped: ᾱ is the share of the image left, near 1 at the first step."),
    ],
    hint="reshape alpha_bar to (B, 1, 1, 1) so it broadcasts per image, then alpha_bar.sqrt() * x0 + "
         "(1 - alpha_bar).sqrt() * noise",
)


# --- sample_with_euler(velocity, noise, steps) ---------------------------------------------------------------------


def reference_sample_with_euler(velocity: Callable[[Tensor, float], Tensor], noise: Tensor, steps: int) -> Tensor:
    """Carry `noise` from time 1 to time 0 with `steps` equal Euler steps of `velocity(x, s)`."""
    times = torch.linspace(1.0, 0.0, steps + 1).tolist()
    x = noise
    for s, s_next in zip(times[:-1], times[1:]):
        x = euler_step(velocity(x, s), s, s_next, x)
    return x


def _sample_forwards(velocity: Callable, noise: Tensor, steps: int) -> Tensor:
    x = noise
    for i in range(steps):
        x = x + velocity(x, i / steps) / steps
    return x


def _sample_at_end_times(velocity: Callable, noise: Tensor, steps: int) -> Tensor:
    x = noise
    for i in range(steps):
        x = x - velocity(x, 1 - (i + 1) / steps) / steps
    return x


def _euler_cases() -> list[Case]:
    towards = _randn(2, 3, seed=5)
    return [
        Case("a constant velocity, 4 steps", (lambda x, s: torch.ones_like(x), _randn(3, 2, seed=1), 4)),
        Case("the velocity of a point mass (x − x*) / s, 5 steps",
             (lambda x, s: (x - towards) / s, _randn(2, 3, seed=2), 5)),
        Case("a velocity that changes with time, 3 steps", (lambda x, s: x * s ** 2, _randn(4, 2, seed=3), 3)),
    ]


sample_with_euler = FunctionChecker(
    "sample_with_euler",
    reference_sample_with_euler,
    _euler_cases,
    mistakes=[
        (_sample_forwards, "sampling runs backwards in time, from noise at s = 1 to data at s = 0: each step "
         "subtracts (1/steps) · velocity, and the velocity is read at the step's start, 1, 1 − 1/steps, ..."),
        (_sample_at_end_times, "read the velocity at the time where the step starts (s = 1 first), not where it "
         "ends: an Euler step only knows the present."),
    ],
    hint="times = torch.linspace(1, 0, steps + 1); x = x + (s_next - s) * velocity(x, s) for each (s, s_next)",
)


# --- guide(conditional, unconditional, scale) ----------------------------------------------------------------------


def _guide_cases() -> list[Case]:
    return [Case(f"predictions of shape {shape}, scale {scale}", (_randn(*shape, seed=seed), _randn(*shape, seed=20 + seed),
                                                                scale))
            for seed, (shape, scale) in enumerate((((2, 3), 1.0), ((2, 3), 4.0), ((3, 1, 2, 2), 0.0), ((4,), 2.5)))]


guide = FunctionChecker(
    "guide",
    reference_guide,
    _guide_cases,
    mistakes=[
        (lambda c, u, w: c + w * (c - u), "start from the unconditional prediction: u + w (c − u), so that w = 1 "
         "gives the conditional prediction c itself."),
        (lambda c, u, w: w * c + (1 - w) * u if 0 <= w <= 1 else c, "guidance extrapolates: scales above 1 go past "
         "the conditional prediction, away from the unconditional one."),
        (lambda c, u, w: w * c, "scaling the conditional prediction alone is not guidance: the direction that "
         "matters is the difference c − u, what the label adds."),
    ],
    hint="unconditional + scale * (conditional - unconditional)",
)


# --- joint_attention(image, text, image_attn, text_attn) -----------------------------------------------------------


def _streams(seed: int, dim: int, heads: int, patches: int, words: int) -> tuple:
    torch.manual_seed(seed)
    image_attn, text_attn = MultiHeadAttention(dim, heads).eval(), MultiHeadAttention(dim, heads).eval()
    return _randn(2, patches, dim, seed=seed), _randn(2, words, dim, seed=seed + 1), image_attn, text_attn


def _joint_cases() -> list[Case]:
    return [Case(f"{patches} patches and {words} words of width {dim}, {heads} heads", _streams(seed, dim, heads, patches, words))
            for seed, (dim, heads, patches, words) in enumerate(((8, 2, 4, 3), (16, 4, 9, 5), (12, 1, 4, 4)))]


def _separate_attention(image: Tensor, text: Tensor, image_attn: MultiHeadAttention,
                        text_attn: MultiHeadAttention) -> tuple[Tensor, Tensor]:
    return image_attn(image), text_attn(text)


def _one_set_of_weights(image: Tensor, text: Tensor, image_attn: MultiHeadAttention,
                        text_attn: MultiHeadAttention) -> tuple[Tensor, Tensor]:
    joint = image_attn(torch.cat([image, text], dim=1))
    return joint[:, : image.shape[1]], joint[:, image.shape[1]:]


def _cross_attention_only(image: Tensor, text: Tensor, image_attn: MultiHeadAttention,
                          text_attn: MultiHeadAttention) -> tuple[Tensor, Tensor]:
    return image_attn(image, text), text_attn(text, image)


joint_attention = FunctionChecker(
    "joint_attention",
    reference_joint_attention,
    _joint_cases,
    mistakes=[
        (_separate_attention, "two self-attentions never let a patch read a word: concatenate both streams' queries, "
         "keys and values along the sequence and attend once."),
        (_one_set_of_weights, "the text tokens must be projected by text_attn's own to_q, to_k, to_v and to_out: "
         "MM-DiT keeps one set of weights per modality and shares only the attention."),
        (_cross_attention_only, "cross-attention lets patches read only words and words only patches; joint "
         "attention's keys are both streams, so each token also reads its own stream."),
    ],
    hint="split each projection into heads with rearrange(..., 'b l (h d) -> b h l d', h=image_attn.heads), "
         "torch.cat the two streams on dim 2, call scaled_dot_product_attention, merge the heads, then split at "
         "image.shape[1] and apply each stream's to_out",
)
