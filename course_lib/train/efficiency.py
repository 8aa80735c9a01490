"""Trading compute for memory and batch size in training (notebook 24): activation checkpointing of a GPT's blocks,
and the gradient of one large batch accumulated over micro-batches."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from course_lib.models.gpt import GPT

__all__ = ["CheckpointedBlock", "accumulated_gradients", "checkpoint_blocks"]


class CheckpointedBlock(nn.Module):
    """A block that keeps only its input for the backward pass and runs its forward again there, instead of keeping
    every activation inside it (PyTorch's non-reentrant checkpointing)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor, **options):
        if not torch.is_grad_enabled():
            return self.block(x, **options)  # nothing is kept without gradients: no need to recompute
        return checkpoint(self.block, x, use_reentrant=False, **options)


def checkpoint_blocks(model: GPT) -> GPT:
    """Checkpoint every block of `model`, in place (outputs and gradients unchanged; the weights keep their names
    under `.block`)."""
    model.blocks = nn.ModuleList(b if isinstance(b, CheckpointedBlock) else CheckpointedBlock(b) for b in model.blocks)
    return model


def accumulated_gradients(model: nn.Module, loss: Callable[[nn.Module, Tensor, Tensor], Tensor], inputs: Tensor,
                          targets: Tensor, micro_batches: int) -> list[Tensor]:
    """The gradient of the mean loss over the whole batch, computed `micro_batches` pieces at a time: each piece's
    mean loss is weighted by its share of the examples before its backward pass, so that the gradients add up to the
    whole batch's. `loss(model, inputs, targets)` is a mean over examples. Returns a copy of every parameter's
    gradient (None for parameters without one)."""
    if isinstance(micro_batches, bool) or not isinstance(micro_batches, int) or not 1 <= micro_batches <= len(inputs):
        raise ValueError(f"micro_batches={micro_batches!r} must be an int from 1 to the batch size ({len(inputs)})")
    model.zero_grad(set_to_none=True)
    for piece_inputs, piece_targets in zip(inputs.tensor_split(micro_batches), targets.tensor_split(micro_batches)):
        (loss(model, piece_inputs, piece_targets) * len(piece_inputs) / len(inputs)).backward()
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]
