"""Activation checkpointing (same outputs and gradients, less memory in a training step) and gradient accumulation
(the same gradient as the whole batch), and the training-step memory measure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib.measure import peak_training_memory
from course_lib.models import GPT, GPTConfig
from course_lib.train.efficiency import accumulated_gradients, checkpoint_blocks


def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, max_len=64, dim=32, depth=3, heads=2))


def next_token_loss(model, inputs, targets):
    return F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())


WINDOWS = torch.randint(0, 64, (8, 65), generator=torch.Generator().manual_seed(2))


def gradients(model):
    model.zero_grad(set_to_none=True)
    next_token_loss(model, WINDOWS[:, :-1], WINDOWS[:, 1:]).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_checkpointing_changes_no_number_and_saves_memory():
    plain, checkpointed = gpt(), checkpoint_blocks(gpt())
    torch.testing.assert_close(checkpointed(WINDOWS[:, :-1]), plain(WINDOWS[:, :-1]))
    for ours, theirs in zip(gradients(checkpointed), gradients(plain)):
        torch.testing.assert_close(ours, theirs)
    assert peak_training_memory(gradients, checkpointed) < 0.7 * peak_training_memory(gradients, plain)
    assert checkpoint_blocks(checkpointed) is checkpointed and len(checkpointed.blocks) == 3  # not wrapped twice


@pytest.mark.parametrize("micro_batches", [1, 2, 3, 8])
def test_accumulation_equals_the_whole_batch(micro_batches):
    model = gpt()
    accumulated = accumulated_gradients(model, next_token_loss, WINDOWS[:, :-1], WINDOWS[:, 1:], micro_batches)
    for ours, whole in zip(accumulated, gradients(model)):
        torch.testing.assert_close(ours, whole, atol=1e-6, rtol=1e-5)


def test_bad_micro_batches_are_named():
    with pytest.raises(ValueError, match="micro_batches=9"):
        accumulated_gradients(gpt(), next_token_loss, WINDOWS[:, :-1], WINDOWS[:, 1:], 9)
    with pytest.raises(ValueError, match="not callable"):
        peak_training_memory(None)
