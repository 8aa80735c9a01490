"""Attention maps at three scales: every head of one layer, one map per layer, and the whole model.

All take weights of shape (heads, queries, keys) for one example, or lists of them per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor


def _check_layer(weights: Tensor, argument: str = "weights") -> Tensor:
    weights = weights.detach().float().cpu()
    if weights.dim() != 3:
        raise ValueError(f"{argument} has shape {tuple(weights.shape)}; expected (heads, queries, keys) for one example")
    return weights


def _draw(ax, matrix: Tensor, title: str, labels: Sequence[str] | None, *, ylabel: bool = True):
    image = ax.imshow(matrix.numpy(), vmin=0.0, vmax=max(1e-6, float(matrix.max())), cmap="viridis")
    ax.set_title(title)
    ax.set_xlabel("key position")
    if ylabel:
        ax.set_ylabel("query position")
    ax.grid(False)
    if labels is not None:
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    return image


def attention_heads(weights: Tensor, *, title: str = "", labels: Sequence[str] | None = None, columns: int = 4) -> Figure:
    """A grid with one map per head of one layer: which key each query reads from."""
    weights = _check_layer(weights)
    heads = weights.shape[0]
    columns = min(columns, heads)
    rows = (heads + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 3.0 * rows), squeeze=False)
    for head, ax in enumerate(axes.flat):
        if head < heads:
            image = _draw(ax, weights[head], f"head {head}", labels, ylabel=head % columns == 0)
        else:
            ax.axis("off")
    figure.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    figure.suptitle(title)
    return figure


def attention_layers(layers: Sequence[Tensor], *, title: str = "", labels: Sequence[str] | None = None) -> Figure:
    """One map per layer, averaged over heads: how the pattern changes with depth."""
    maps = [_check_layer(w, f"layers[{i}]").mean(0) for i, w in enumerate(layers)]
    figure, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.2), squeeze=False)
    for i, (ax, matrix) in enumerate(zip(axes[0], maps)):
        image = _draw(ax, matrix, f"layer {i} (mean of heads)", labels, ylabel=i == 0)
    figure.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    figure.suptitle(title)
    return figure


def attention_rollout(layers: Sequence[Tensor], *, residual: bool = True) -> Tensor:
    """How much each output position draws on each input position through the whole stack.

    Multiplies the head-averaged maps of successive layers; with `residual`, each layer's map is
    mixed half and half with the identity to account for the skip connection.
    """
    rollout = None
    for i, weights in enumerate(layers):
        layer = _check_layer(weights, f"layers[{i}]").mean(0)  # (L, L)
        if residual:
            layer = 0.5 * layer + 0.5 * torch.eye(layer.shape[-1])
            layer = layer / layer.sum(-1, keepdim=True)
        rollout = layer if rollout is None else layer @ rollout
    if rollout is None:
        raise ValueError("layers is empty; expected one (heads, queries, keys) tensor per layer")
    return rollout


def model_attention(layers: Sequence[Tensor], *, title: str = "", labels: Sequence[str] | None = None) -> Figure:
    """The whole model at once: attention rollout through every layer."""
    figure, ax = plt.subplots(figsize=(4.0, 4.0))
    image = _draw(ax, attention_rollout(layers), "attention rollout (all layers)", labels)
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of input")
    figure.suptitle(title)
    return figure
