"""A ten-line training loop for the many small image models that Part II compares.

Notebooks 05-10 train dozens of tiny models side by side; Lightning's checkpoints and logs (notebook 03)
would cost more than the models. `fit` is AdamW with a one-cycle schedule (warm-up, then cosine decay) on
random mini-batches for a fixed number of steps, so two models trained with the same `seed` see the same
batches in the same order. Its loss is cross-entropy on class labels unless another `loss(output, target)` is
given: per-pixel classes for segmentation, clean images for restoration, the images themselves for a masked
autoencoder. With `sam_rho > 0` AdamW is wrapped in sharpness-aware minimisation (`course_lib.train.sam.SAM`),
which takes each step with the gradient at a nearby worst point (two forward-backward passes per step).
`predict` and `accuracy` run a model in chunks, so a large test set never meets the memory of one batch.

The inputs may be one tensor, or a mapping from names to equally long tensors (the modalities of one set of
examples, notebook 16): a batch is then the same rows of every tensor, and the model gets the mapping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.train.sam import SAM

__all__ = ["accuracy", "fit", "one_cycle", "predict"]

Inputs = Tensor | Mapping[str, Tensor]  # one tensor, or several modalities of the same examples


def _check_positive(argument: str, value: object, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
        raise ValueError(f"{argument}={value!r} must be a positive {kind.__name__}")


def _check_images(images: Inputs) -> None:
    if isinstance(images, Mapping):
        shapes = {name: tuple(getattr(value, "shape", ())) for name, value in images.items()}
        if not images or not all(isinstance(value, Tensor) and value.dim() >= 1 for value in images.values()) \
                or len({shape[0] for shape in shapes.values()}) != 1:
            raise ValueError(f"images as a mapping must hold tensors with one equally long batch axis; got {shapes}")
        return
    if not isinstance(images, Tensor) or images.dim() < 2:
        raise ValueError(f"images must be a tensor with a batch axis; got {type(images).__name__} "
                         f"of shape {tuple(getattr(images, 'shape', ()))}")


def _length(images: Inputs) -> int:
    return len(next(iter(images.values()))) if isinstance(images, Mapping) else len(images)


def _take(images: Inputs, index: Tensor | slice) -> Inputs:
    """The rows `index` of the inputs (of every modality)."""
    return {name: value[index] for name, value in images.items()} if isinstance(images, Mapping) else images[index]


def _move(images: Inputs, device: torch.device) -> Inputs:
    return {name: value.to(device) for name, value in images.items()} if isinstance(images, Mapping) \
        else images.to(device)


def _check_targets(images: Inputs, targets: Tensor) -> None:
    """Any tensor of targets, one per image (a custom loss decides what they mean)."""
    _check_images(images)
    if not isinstance(targets, Tensor) or targets.dim() < 1:
        raise ValueError(f"targets must be a tensor with a batch axis; got {type(targets).__name__}")
    if _length(images) != len(targets) or len(targets) == 0:
        raise ValueError(f"images ({_length(images)}) and targets ({len(targets)}) must be equally long and not empty")


def _check_pairs(images: Inputs, labels: Tensor) -> None:
    _check_images(images)
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype != torch.long:
        raise ValueError(f"labels must be a 1-D tensor of class indices (torch.long); got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} of shape {tuple(getattr(labels, 'shape', ()))}")
    if _length(images) != len(labels) or len(labels) == 0:
        raise ValueError(f"images ({_length(images)}) and labels ({len(labels)}) must be equally long and not empty")


def _backward(model: nn.Module, loss: Callable[[Tensor, Tensor], Tensor], inputs: Inputs, targets: Tensor) -> Tensor:
    """The loss of `model` on one batch, with its gradients: SAM's second pass at the perturbed weights."""
    value = loss(model(inputs), targets)
    value.backward()
    return value


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """The course's schedule for `steps` steps: warm-up over the first 10%, then cosine decay (PyTorch's OneCycleLR).

    OneCycleLR divides by zero when its warm-up ends on the very first step (10% of 10 steps), so 10 steps warm
    up over two.
    """
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.2 if steps == 10 else 0.1)


def fit(model: nn.Module, images: Inputs, labels: Tensor, *, steps: int, lr: float, batch: int = 64, seed: int = 0,
        weight_decay: float = 0.05, device: torch.device | str | None = None,
        augment: Callable[[Inputs, torch.Generator], Inputs] | None = None,
        loss: Callable[[Tensor, Tensor], Tensor] | None = None, sam_rho: float = 0.0) -> nn.Module:
    """Train `model` for `steps` AdamW steps on mini-batches of (`images`, `labels`) drawn with `seed`; returns it
    in eval mode. `augment(batch, generator)`, if given, transforms each batch of images (e.g. a random resize).

    `loss(model(images), labels)` defaults to cross-entropy on class indices (then `labels` must be a 1-D long
    tensor); with another `loss`, `labels` is any tensor with one entry per image: (B, H, W) classes per pixel,
    (B, C, H, W) clean images, or the images themselves for a model that computes its own target.

    `sam_rho > 0` wraps AdamW in SAM with that radius: each step recomputes the loss on the same batch at the
    perturbed weights (twice the cost); `sam_rho=0` is plain AdamW."""
    if loss is None:
        _check_pairs(images, labels)
        loss = F.cross_entropy
    elif not callable(loss):
        raise ValueError(f"loss={loss!r} is not callable; expected loss(output, target) -> scalar tensor")
    else:
        _check_targets(images, labels)
    _check_positive("steps", steps)
    _check_positive("batch", batch)
    _check_positive("lr", lr, float)
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay!r} must be >= 0")
    if isinstance(sam_rho, bool) or not isinstance(sam_rho, (int, float)) or not math.isfinite(sam_rho) or sam_rho < 0:
        raise ValueError(f"sam_rho={sam_rho!r} must be a finite real number >= 0 (0 turns SAM off)")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    if sam_rho > 0:
        optimizer = SAM(model.parameters(), base=torch.optim.AdamW, rho=sam_rho, lr=lr, weight_decay=weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = one_cycle(optimizer, lr, steps)
    model.to(device).train()
    for _ in range(steps):
        index = torch.randint(_length(images), (batch,), generator=generator)
        inputs = _take(images, index) if augment is None else augment(_take(images, index), generator)
        inputs, targets = _move(inputs, device), labels[index].to(device)
        value = loss(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if sam_rho > 0:  # the same (augmented) batch again, at the perturbed weights
            optimizer.step(partial(_backward, model, loss, inputs, targets))
        else:
            optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: Inputs, *, batch: int = 500, device: torch.device | str | None = None,
            **forward_kwargs) -> Tensor:
    """`model(images)` in eval mode, `batch` images at a time, concatenated on the CPU; the mode is restored."""
    _check_images(images)
    _check_positive("batch", batch)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = (_take(images, slice(start, start + batch)) for start in range(0, _length(images), batch))
    outputs = torch.cat([model(_move(chunk, device), **forward_kwargs).cpu() for chunk in chunks])
    model.train(was_training)
    return outputs


def accuracy(model: nn.Module, images: Inputs, labels: Tensor, *, batch: int = 500,
             device: torch.device | str | None = None, **forward_kwargs) -> float:
    """Fraction of `images` whose highest logit is at their label; keyword arguments go to `model`'s forward."""
    _check_pairs(images, labels)
    logits = predict(model, images, batch=batch, device=device, **forward_kwargs)
    return (logits.argmax(dim=-1) == labels).sum().item() / len(labels)
