"""A linear probe: how much of a task frozen features already hold, read out by one linear layer.

Self-supervised encoders are compared this way: the encoder stays frozen, its pooled features are standardised
with the training set's statistics, and a linear classifier is trained on them with the course's `fit`. Same
features, same seed: same accuracy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from course_lib.train.loop import fit

__all__ = ["linear_probe", "standardise"]


def _check_split(name: str, features: object, labels: object) -> None:
    if not isinstance(features, Tensor) or features.dim() != 2 or not features.is_floating_point():
        raise ValueError(f"{name}_features must be a (samples, dim) float tensor; got "
                         f"{getattr(features, 'dtype', type(features).__name__)} of shape "
                         f"{tuple(getattr(features, 'shape', ()))}")
    if not isinstance(labels, Tensor) or labels.dtype != torch.long or labels.shape != features.shape[:1]:
        raise ValueError(f"{name}_labels must be a ({len(features)},) torch.long tensor of classes; got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} of shape "
                         f"{tuple(getattr(labels, 'shape', ()))}")


def standardise(train: Tensor, *others: Tensor, eps: float = 1e-6) -> tuple[Tensor, ...]:
    """Every feature minus the training set's mean, over its (biased) std + eps; the same map for `others`."""
    mean, std = train.mean(dim=0), train.std(dim=0, unbiased=False) + eps
    return tuple((x - mean) / std for x in (train, *others))


def linear_probe(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor, *,
                 steps: int = 300, lr: float = 1e-2, batch: int = 256, weight_decay: float = 1e-4,
                 seed: int = 0) -> float:
    """Test accuracy of a linear classifier trained with `fit` on standardised frozen features."""
    _check_split("train", train_features, train_labels)
    _check_split("test", test_features, test_labels)
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(f"test_features has dim {test_features.shape[1]}; expected train's {train_features.shape[1]}")
    train_x, test_x = standardise(train_features.detach().float().cpu(), test_features.detach().float().cpu())
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(train_x.shape[1], classes)
    with torch.no_grad():  # the initial weights from `seed`, not from the global generator
        bound = train_x.shape[1] ** -0.5
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.zero_()
    fit(head, train_x, train_labels.cpu(), steps=steps, lr=lr, batch=batch, seed=seed, weight_decay=weight_decay,
        device="cpu")
    with torch.no_grad():
        hits = (head(test_x).argmax(dim=-1) == test_labels.cpu()).sum().item()
    return hits / len(test_labels)
