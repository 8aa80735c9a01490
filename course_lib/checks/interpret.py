"""Checkers for the exercises of notebook 19_interpretability: attention rollout, relevance propagation through
self-attention, and the pointing game.

The references are the packaged functions of `course_lib.interpret`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.interpret import attention_rollout as reference_rollout
from course_lib.interpret import pointing_game as reference_pointing
from course_lib.interpret import relevance_propagation as reference_relevance


def _maps(layers: int, batch: int, heads: int, length: int, seed: int) -> tuple[list[Tensor], list[Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    weights = [(3 * torch.randn(batch, heads, length, length, generator=generator)).softmax(-1) for _ in range(layers)]
    gradients = [torch.randn(batch, heads, length, length, generator=generator) for _ in range(layers)]
    return weights, gradients


def _map_cases(with_gradients: bool) -> list[Case]:
    cases = []
    for seed, (layers, batch, heads, length) in enumerate(((1, 1, 2, 3), (2, 2, 3, 5), (3, 1, 4, 6), (4, 2, 2, 4))):
        weights, gradients = _maps(layers, batch, heads, length, seed)
        args = (weights, gradients) if with_gradients else (weights,)
        cases.append(Case(f"{layers} layers of {heads} heads over {length} tokens, batch {batch}", args))
    return cases


# --- attention_rollout(weights) ------------------------------------------------------------------------------------


def _rollout_without_residual(weights: list[Tensor]) -> Tensor:
    rollout = torch.eye(weights[0].shape[-1]).expand(weights[0].shape[0], -1, -1)
    for layer in weights:
        rollout = layer.mean(dim=1) @ rollout
    return rollout


def _rollout_reversed(weights: list[Tensor]) -> Tensor:
    rollout = torch.eye(weights[0].shape[-1]).expand(weights[0].shape[0], -1, -1)
    for layer in weights:
        rollout = rollout @ ((layer.mean(dim=1) + torch.eye(layer.shape[-1])) / 2)
    return rollout


def _rollout_max_heads(weights: list[Tensor]) -> Tensor:
    rollout = torch.eye(weights[0].shape[-1]).expand(weights[0].shape[0], -1, -1)
    for layer in weights:
        mixed = layer.amax(dim=1) + torch.eye(layer.shape[-1])
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    return rollout


attention_rollout = FunctionChecker(
    "attention_rollout",
    reference_rollout,
    lambda: _map_cases(False),
    mistakes=[
        (_rollout_without_residual, "the residual connection is missing: each layer mixes (A + I) / 2, half the "
         "attention and half the token itself, or the product washes every token out."),
        (_rollout_reversed, "the layers are multiplied in the wrong order: a later layer acts on what the earlier ones "
         "produced, so it goes on the left, R <- A_layer @ R."),
        (_rollout_max_heads, "the heads are combined by their maximum; rollout averages them."),
    ],
    hint="R = I; for A in weights: mixed = (A.mean(dim=1) + I) / 2; R = (mixed / mixed.sum(-1, keepdim=True)) @ R",
)


# --- relevance_propagation(weights, gradients) ---------------------------------------------------------------------


def _relevance(weights: list[Tensor], gradients: list[Tensor], combine) -> Tensor:
    relevance = torch.eye(weights[0].shape[-1]).expand(weights[0].shape[0], -1, -1)
    for layer, gradient in zip(weights, gradients):
        relevance = relevance + combine(layer, gradient) @ relevance
    return relevance


def _relevance_unclipped(weights: list[Tensor], gradients: list[Tensor]) -> Tensor:
    return _relevance(weights, gradients, lambda a, g: (a * g).mean(dim=1))


def _relevance_attention_only(weights: list[Tensor], gradients: list[Tensor]) -> Tensor:
    return _relevance(weights, gradients, lambda a, g: a.mean(dim=1))


def _relevance_clip_after_mean(weights: list[Tensor], gradients: list[Tensor]) -> Tensor:
    return _relevance(weights, gradients, lambda a, g: (a * g).mean(dim=1).clamp(min=0))


relevance_propagation = FunctionChecker(
    "relevance_propagation",
    reference_relevance,
    lambda: _map_cases(True),
    mistakes=[
        (_relevance_unclipped, "negative contributions are kept: clip (gradient * attention) at zero, so that only "
         "what raised the score counts."),
        (_relevance_attention_only, "the gradients are ignored: weighting each head's attention by its gradient is what "
         "makes the map about this score rather than about where the model looks in general."),
        (_relevance_clip_after_mean, "the clipping comes after the mean over heads; clip each head's (gradient * "
         "attention) first, then average, so one head's negative part cannot cancel another's positive part."),
    ],
    hint="R = I; for A, G in zip(weights, gradients): R = R + (G * A).clamp(min=0).mean(dim=1) @ R",
)


# --- pointing_game(relevance, masks) -------------------------------------------------------------------------------


def _pointing_cases() -> list[Case]:
    cases = []
    for seed, (batch, grid, size) in enumerate(((4, 2, 8), (6, 4, 16), (5, 4, 32))):
        generator = torch.Generator().manual_seed(40 + seed)
        masks = torch.zeros(batch, size, size, dtype=torch.bool)
        for b in range(batch):  # one rectangle per image, anywhere
            y, x = torch.randint(size - 2, (2,), generator=generator).tolist()
            height, width = torch.randint(1, 1 + size // 3, (2,), generator=generator).tolist()
            masks[b, y : y + height, x : x + width] = True
        relevance = torch.rand(batch, grid * grid, generator=generator)
        cases.append(Case(f"{batch} images of {size}x{size}, a {grid}x{grid} grid", (relevance, masks)))
    return cases


def _pointing_transposed(relevance: Tensor, masks: Tensor) -> Tensor:
    grid = round(relevance.shape[1] ** 0.5)
    flipped = relevance.reshape(-1, grid, grid).transpose(1, 2).reshape(relevance.shape)
    return reference_pointing(flipped, masks)


def _pointing_least_relevant(relevance: Tensor, masks: Tensor) -> Tensor:
    return reference_pointing(-relevance, masks)


def _pointing_whole_patch(relevance: Tensor, masks: Tensor) -> Tensor:
    grid = round(relevance.shape[1] ** 0.5)
    inside = torch.nn.functional.avg_pool2d(masks[:, None].float(), masks.shape[1] // grid).flatten(1)
    return inside[torch.arange(len(masks)), relevance.argmax(dim=1)] == 1


pointing_game = FunctionChecker(
    "pointing_game",
    reference_pointing,
    _pointing_cases,
    mistakes=[
        (_pointing_transposed, "rows and columns are swapped: patch p of a row-major grid sits at row p // grid, "
         "column p % grid."),
        (_pointing_least_relevant, "the least relevant patch is taken; the game points at the most relevant one."),
        (_pointing_whole_patch, "a hit needs the whole patch inside the mask; a patch that touches the object (any of "
         "its pixels inside) is a hit."),
    ],
    hint="p = relevance.argmax(1); row, col = p // grid, p % grid; hit if masks[b, row*s:(row+1)*s, col*s:(col+1)*s]"
         ".any() with s = H // grid",
)
