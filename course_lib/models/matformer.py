"""Nested feed-forward layers (MatFormer, "MatFormer: Nested Transformer for Elastic Inference"; notebook 24).

A MatFormer block's MLP is trained so that its first m hidden units, for a few chosen m, already make a good MLP
on their own. One training run then holds several models: at inference time each block may use any of the nested
widths, and a smaller model can be cut out and served alone, without retraining. Training makes the nesting work
by using a random one of the widths at each step (`NestedTraining`), so that the first units learn to carry the
most.

`nest(gpt)` turns a course GPT's MLPs into `NestedMLP`s sharing their weights; `granularity(model, fraction)`
picks the width every nested MLP uses; `extract(model, fraction)` returns a plain, smaller GPT with those weights,
whose outputs equal the nested model's at that width.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.models.gpt import GPT
from course_lib.nn.feedforward import MLP

__all__ = ["NestedMLP", "NestedTraining", "extract", "granularity", "nest", "nested_width"]


def nested_width(hidden: int, fraction: float) -> int:
    """The number of hidden units a nested MLP of `hidden` units uses at `fraction` (at least one)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} must lie in (0, 1]")
    return max(1, math.ceil(fraction * hidden))


class NestedMLP(MLP):
    """An MLP whose first `active` hidden units (all when None) make the layer: fc_in's first rows and fc_out's
    first columns."""

    active: int | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.active is None:
            return super().forward(x)
        m = self.active
        hidden = self.act(F.linear(x, self.fc_in.weight[:m], None if self.fc_in.bias is None else self.fc_in.bias[:m]))
        return self.dropout(F.linear(hidden, self.fc_out.weight[:, :m], self.fc_out.bias))


def _nested_mlps(model: nn.Module) -> list[NestedMLP]:
    found = [module for module in model.modules() if isinstance(module, NestedMLP)]
    if not found:
        raise ValueError("model has no NestedMLP; call nest(model) first")
    return found


def nest(model: GPT) -> GPT:
    """Make every plain MLP of `model` nested, in place and with the same weights (outputs unchanged); MLPs already
    nested are left as they are."""
    for block in model.blocks:
        if isinstance(block.ffn, NestedMLP):
            continue
        if type(block.ffn) is not MLP or not isinstance(block.ffn.fc_out, nn.Linear):
            raise ValueError(f"nest needs plain MLP feed-forwards (ffn='mlp', no experts); found "
                             f"{type(block.ffn).__name__}")
        block.ffn.__class__ = NestedMLP
    return model


@contextmanager
def granularity(model: nn.Module, fraction: float) -> Iterator[nn.Module]:
    """Within the block, every nested MLP of `model` uses its first ⌈fraction · hidden⌉ units."""
    mlps = _nested_mlps(model)
    for mlp in mlps:
        mlp.active = nested_width(mlp.fc_in.out_features, fraction)
    try:
        yield model
    finally:
        for mlp in mlps:
            mlp.active = None


def extract(model: GPT, fraction: float) -> GPT:
    """A plain GPT whose MLPs keep the first ⌈fraction · hidden⌉ units of `model`'s nested MLPs: a smaller model,
    cut out without training, equal to `model` at that granularity."""
    _nested_mlps(model)
    hidden = nested_width(model.config.ffn_hidden, fraction)
    small = GPT(replace(model.config, ffn_hidden=hidden))
    weights = copy.deepcopy(model.state_dict())
    for name in list(weights):
        if name.endswith("ffn.fc_in.weight") or name.endswith("ffn.fc_in.bias"):
            weights[name] = weights[name][:hidden]
        elif name.endswith("ffn.fc_out.weight"):
            weights[name] = weights[name][:, :hidden]
    small.load_state_dict(weights)
    return small.to(next(model.parameters()).device).eval()


class NestedTraining(nn.Module):
    """`model` (nested) trained at a random one of `fractions` per forward call, drawn from a generator seeded with
    `seed`: the model `fit_language_model` trains for a MatFormer."""

    def __init__(self, model: GPT, fractions: Sequence[float], seed: int = 0) -> None:
        super().__init__()
        for fraction in fractions:
            nested_width(model.config.ffn_hidden, fraction)  # checks each
        if not fractions:
            raise ValueError("fractions is empty; give at least one width, e.g. (0.25, 0.5, 1.0)")
        self.model, self.fractions = nest(model), tuple(fractions)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, tokens: Tensor) -> Tensor:
        fraction = self.fractions[int(torch.randint(len(self.fractions), (), generator=self.generator))]
        with granularity(self.model, fraction):
            return self.model(tokens)
