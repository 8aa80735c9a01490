"""Checkers for the exercises of notebook 24_distributed_and_efficient_training: gradients accumulated over
micro-batches, the memory of model states per GPU under DDP and ZeRO, and a nested (MatFormer) MLP at a smaller
width.

The references are the packaged functions of `course_lib.train` and `course_lib.models.matformer`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.checks.core import Case, FunctionChecker
from course_lib.models.matformer import NestedMLP
from course_lib.nn.feedforward import MLP
from course_lib.train.efficiency import accumulated_gradients as reference_accumulated_gradients
from course_lib.train.memory import BytesPerParameter, model_state_bytes_per_gpu


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(24)


# --- accumulated_gradients(model, loss, inputs, targets, micro_batches) ---------------------------------------------


def _classifier_loss(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(model(inputs), targets)


def _accumulation_cases() -> list[Case]:
    generator, cases = _generator(), []
    for batch, pieces in ((6, 2), (7, 3), (5, 5), (4, 1)):
        torch.manual_seed(batch)
        model = nn.Linear(4, 3)
        inputs, targets = torch.randn(batch, 4, generator=generator), torch.randint(0, 3, (batch,), generator=generator)
        cases.append(Case(f"a batch of {batch} in {pieces} micro-batches", (model, _classifier_loss, inputs, targets,
                                                                           pieces)))
    return cases


def _accumulate(model, loss, inputs, targets, micro_batches, weight, zero=True) -> list[Tensor]:
    if zero:
        model.zero_grad(set_to_none=True)
    for piece_inputs, piece_targets in zip(inputs.tensor_split(micro_batches), targets.tensor_split(micro_batches)):
        (loss(model, piece_inputs, piece_targets) * weight(len(piece_inputs), len(inputs), micro_batches)).backward()
    return [p.grad.clone() for p in model.parameters()]


accumulated_gradients = FunctionChecker(
    "accumulated_gradients",
    reference_accumulated_gradients,
    _accumulation_cases,
    mistakes=[
        (lambda m, f, x, y, k: _accumulate(m, f, x, y, k, lambda n, total, k: 1.0),
         "the micro-batches' mean losses are added up: the gradient is k times too large. Weight each by its share "
         "of the batch (its size / the batch size)."),
        (lambda m, f, x, y, k: _accumulate(m, f, x, y, k, lambda n, total, k: 1 / k),
         "each micro-batch counts 1/k, which is right only when all have the same size; weight each by its size / "
         "the batch size."),
        (lambda m, f, x, y, k: _accumulate(m, f, x, y, k, lambda n, total, k: n / total, zero=False),
         "the gradients left from before are added to: zero them first (model.zero_grad())."),
    ],
    hint="model.zero_grad(); for each piece of inputs.tensor_split(k) (and targets): (loss(model, piece_x, piece_y) "
         "* len(piece_x) / len(inputs)).backward(); return [p.grad.clone() for p in model.parameters()]",
)


# --- bytes_per_gpu(parameters, gpus, stage) -------------------------------------------------------------------------


def _memory_cases() -> list[Case]:
    return [Case(f"{p:,} parameters on {n} GPUs, {stage}", (p, n, stage))
            for p, n in ((7_000_000_000, 8), (1_000_000, 4)) for stage in ("ddp", "zero-1", "zero-2", "zero-3")]


def _staged(parameters: int, gpus: int, stage: str, shard_from: tuple[int, int, int]) -> float:
    level = ("ddp", "zero-1", "zero-2", "zero-3").index(stage)
    weight, gradient, optimizer = (b / (gpus if level >= s else 1) for b, s in zip((2, 2, 12), shard_from))
    return parameters * (weight + gradient + optimizer)


bytes_per_gpu = FunctionChecker(
    "bytes_per_gpu",
    lambda parameters, gpus, stage: model_state_bytes_per_gpu(parameters, gpus, stage),
    _memory_cases,
    mistakes=[
        (lambda p, n, stage: _staged(p, n, stage, (2, 2, 1)), "stage 2 shards the gradients, not yet the weights: "
         "weights are sharded from stage 3 on."),
        (lambda p, n, stage: _staged(p, n, stage, (3, 1, 2)), "the stages are in the wrong order: stage 1 shards the "
         "optimiser state (the largest part), stage 2 the gradients, stage 3 the weights."),
        (lambda p, n, stage: model_state_bytes_per_gpu(p, n, stage, BytesPerParameter(2, 2, 8)),
         "mixed-precision Adam keeps 12 bytes of optimiser state per parameter: the two moments and an fp32 master "
         "copy of the weight (4 + 4 + 4)."),
    ],
    hint="bytes = parameters * (2 / (gpus if stage 3) + 2 / (gpus if stage >= 2) + 12 / (gpus if stage >= 1))",
)


# --- nested_mlp(mlp, x, active) -------------------------------------------------------------------------------------


def reference_nested_mlp(mlp: MLP, x: Tensor, active: int) -> Tensor:
    """The MLP's output using only its first `active` hidden units."""
    nested = copy.deepcopy(mlp)
    nested.__class__ = NestedMLP  # what `matformer.nest` does to every MLP of a GPT
    nested.active = active
    return nested(x)


def _nested_cases() -> list[Case]:
    generator, cases = _generator(), []
    for dim, hidden, active in ((8, 32, 8), (6, 24, 12), (4, 16, 16), (5, 10, 1)):
        torch.manual_seed(dim)
        cases.append(Case(f"dim {dim}, {hidden} hidden units, the first {active}",
                          (MLP(dim, hidden), torch.randn(3, dim, generator=generator), active)))
    return cases


def _last_units(mlp: MLP, x: Tensor, active: int) -> Tensor:
    hidden = mlp.act(F.linear(x, mlp.fc_in.weight[-active:], mlp.fc_in.bias[-active:]))
    return F.linear(hidden, mlp.fc_out.weight[:, -active:], mlp.fc_out.bias)


def _rescaled(mlp: MLP, x: Tensor, active: int) -> Tensor:
    return reference_nested_mlp(mlp, x, active) * (mlp.fc_in.out_features / active)


nested_mlp = FunctionChecker(
    "nested_mlp",
    reference_nested_mlp,
    _nested_cases,
    mistakes=[
        (_last_units, "these are the last hidden units; MatFormer nests the first ones (fc_in's first rows, fc_out's "
         "first columns)."),
        (_rescaled, "the output is rescaled; a sub-model is simply the smaller MLP, trained to work as it is."),
    ],
    hint="hidden = act(F.linear(x, fc_in.weight[:active], fc_in.bias[:active])); return F.linear(hidden, "
         "fc_out.weight[:, :active], fc_out.bias)",
)
