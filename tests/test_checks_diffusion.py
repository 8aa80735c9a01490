"""The checkers of notebook 21_diffusion_transformers: right answers pass, plausible wrong ones fail with a message
naming the mistake. Each correct answer is written here the way a learner would, independently of the packaged
references."""

from __future__ import annotations

import math

import torch
from checking import fails, passes

from course_lib.checks import diffusion as check


def noisy_images(x0, noise, alpha_bar):
    out = torch.empty_like(x0)
    for i in range(len(x0)):
        out[i] = math.sqrt(alpha_bar[i]) * x0[i] + math.sqrt(1 - alpha_bar[i]) * noise[i]
    return out


def test_noisy_images_right(capsys):
    passes(check.noisy_images, noisy_images, capsys)


def test_noisy_images_with_variance_weights(capsys):
    def wrong(x0, noise, alpha_bar):
        ab = alpha_bar.view(-1, *[1] * (x0.dim() - 1))
        return ab * x0 + (1 - ab) * noise

    fails(check.noisy_images, wrong, capsys, "square roots")


def sample_with_euler(velocity, noise, steps):
    x, dt = noise, 1.0 / steps
    for i in range(steps):
        x = x - dt * velocity(x, 1.0 - i * dt)
    return x


def test_euler_right(capsys):
    passes(check.sample_with_euler, sample_with_euler, capsys)


def test_euler_forwards_in_time(capsys):
    def wrong(velocity, noise, steps):
        x = noise
        for i in range(steps):
            x = x + velocity(x, i / steps) / steps
        return x

    fails(check.sample_with_euler, wrong, capsys, "backwards in time")


def test_euler_reading_the_end_of_each_step(capsys):
    def wrong(velocity, noise, steps):
        x = noise
        for i in range(1, steps + 1):
            x = x - velocity(x, 1 - i / steps) / steps
        return x

    fails(check.sample_with_euler, wrong, capsys, "where the step starts")


def test_guide_right(capsys):
    passes(check.guide, lambda c, u, w: (1 - w) * u + w * c, capsys)


def test_guide_from_the_conditional(capsys):
    fails(check.guide, lambda c, u, w: c + w * (c - u), capsys, "start from the unconditional")


def joint_attention(image, text, image_attn, text_attn):
    heads, n = image_attn.heads, image.shape[1]
    outputs = []
    for b in range(len(image)):
        q = torch.cat([image_attn.to_q(image[b]), text_attn.to_q(text[b])])
        k = torch.cat([image_attn.to_k(image[b]), text_attn.to_k(text[b])])
        v = torch.cat([image_attn.to_v(image[b]), text_attn.to_v(text[b])])
        width = q.shape[1] // heads
        per_head = []
        for h in range(heads):
            part = slice(h * width, (h + 1) * width)
            weights = torch.softmax(q[:, part] @ k[:, part].T / math.sqrt(width), dim=1)
            per_head.append(weights @ v[:, part])
        outputs.append(torch.cat(per_head, dim=1))
    out = torch.stack(outputs)
    return image_attn.to_out(out[:, :n]), text_attn.to_out(out[:, n:])


def test_joint_attention_right(capsys):
    passes(check.joint_attention, joint_attention, capsys)


def test_joint_attention_as_two_self_attentions(capsys):
    fails(check.joint_attention, lambda i, t, a, b: (a(i), b(t)), capsys, "never let a patch read a word")


def test_joint_attention_with_one_set_of_weights(capsys):
    def wrong(image, text, image_attn, text_attn):
        out = image_attn(torch.cat([image, text], dim=1))
        return out[:, : image.shape[1]], out[:, image.shape[1]:]

    fails(check.joint_attention, wrong, capsys, "own to_q")
