"""The checkers of notebook 24_distributed_and_efficient_training: right answers pass, plausible wrong ones fail
with a message naming the mistake. Each correct answer is written here the way a learner would, independently of
the packaged references."""

from __future__ import annotations

import torch
from checking import fails, passes

from course_lib.checks import efficient_training as check


def accumulated_gradients(model, loss, inputs, targets, micro_batches):
    for p in model.parameters():
        p.grad = None
    start = 0
    for size in [len(piece) for piece in inputs.tensor_split(micro_batches)]:
        piece = slice(start, start + size)
        (loss(model, inputs[piece], targets[piece]) * size / len(inputs)).backward()
        start += size
    return [p.grad.clone() for p in model.parameters()]


def test_accumulation_right(capsys):
    passes(check.accumulated_gradients, accumulated_gradients, capsys)


def test_accumulation_equal_weights(capsys):
    def wrong(model, loss, inputs, targets, micro_batches):
        model.zero_grad()
        for x, y in zip(inputs.tensor_split(micro_batches), targets.tensor_split(micro_batches)):
            (loss(model, x, y) / micro_batches).backward()
        return [p.grad.clone() for p in model.parameters()]

    fails(check.accumulated_gradients, wrong, capsys, "same size")


def bytes_per_gpu(parameters, gpus, stage):
    weight, gradient, optimizer = 2, 2, 12
    if stage in ("zero-1", "zero-2", "zero-3"):
        optimizer /= gpus
    if stage in ("zero-2", "zero-3"):
        gradient /= gpus
    if stage == "zero-3":
        weight /= gpus
    return parameters * (weight + gradient + optimizer)


def test_bytes_right(capsys):
    passes(check.bytes_per_gpu, bytes_per_gpu, capsys)


def test_bytes_without_master_weights(capsys):
    def wrong(parameters, gpus, stage):  # Adam's two moments only: 8 bytes of optimiser state
        return bytes_per_gpu(parameters, gpus, stage) - 4 * parameters / (1 if stage == "ddp" else gpus)

    fails(check.bytes_per_gpu, wrong, capsys, "master")


def nested_mlp(mlp, x, active):
    hidden = mlp.act(x @ mlp.fc_in.weight[:active].T + mlp.fc_in.bias[:active])
    return hidden @ mlp.fc_out.weight[:, :active].T + mlp.fc_out.bias


def test_nested_right(capsys):
    passes(check.nested_mlp, nested_mlp, capsys)


def test_nested_last_units(capsys):
    def wrong(mlp, x, active):
        hidden = mlp.act(x @ mlp.fc_in.weight[-active:].T + mlp.fc_in.bias[-active:])
        return hidden @ mlp.fc_out.weight[:, -active:].T + mlp.fc_out.bias

    fails(check.nested_mlp, wrong, capsys, "last hidden units")
    assert torch.is_grad_enabled()
