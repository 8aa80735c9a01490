"""A grid of shapes-world scenes with their captions, and optionally their semantic masks."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable

import matplotlib.pyplot as plt
import numpy as np
from einops import rearrange
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

# Background light grey, then the Okabe-Ito colour-blind-safe palette, one colour per shape class.
MASK_COLOURS = ListedColormap(["#e8e8e8", "#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7"])


def show_scenes(scenes: Iterable, *, masks: bool = True, cols: int | None = None, ax=None, wrap: int = 28) -> Figure:
    """Draw each scene with its caption as title; with `masks`, its semantic mask beneath it.

    `scenes` is any iterable of `Scene` (a ShapesDataset, a list, a slice). `ax`, if given, is an
    array of at least rows x cols axes to draw into (rows doubled with `masks`); its figure is returned.
    """
    scenes = list(scenes)
    if not scenes:
        raise ValueError("scenes is empty; pass at least one Scene")
    cols = cols or min(len(scenes), 8)
    if not isinstance(cols, int) or cols < 1:
        raise ValueError(f"cols={cols!r} must be a positive int")
    rows = math.ceil(len(scenes) / cols) * (2 if masks else 1)
    if ax is None:
        figure, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), squeeze=False)
    else:
        axes = np.asarray(ax, dtype=object).reshape(-1)
        if axes.size < rows * cols:
            raise ValueError(f"ax holds {axes.size} axes; {rows} x {cols} = {rows * cols} are needed")
        axes, figure = axes[: rows * cols].reshape(rows, cols), axes[0].figure
    step = 2 if masks else 1
    for panel in axes.reshape(-1):
        panel.axis("off")
    for i, scene in enumerate(scenes):
        row, col = (i // cols) * step, i % cols
        image_ax = axes[row, col]
        image_ax.imshow(rearrange(scene.image, "c h w -> h w c").numpy(), interpolation="nearest")
        image_ax.set_title("\n".join(textwrap.wrap(scene.caption, wrap)), fontsize=7)
        if masks:
            axes[row + 1, col].imshow(scene.semantic.numpy(), cmap=MASK_COLOURS, vmin=0,
                                      vmax=MASK_COLOURS.N - 1, interpolation="nearest")
            axes[row + 1, col].set_title("semantic mask", fontsize=7)
    figure.tight_layout()
    return figure


def picture_grid(pictures, rows: int, title: str, row_names: list[str] | None = None) -> Figure:
    """Generated or real pictures (N, C, H, W) in [-1, 1] as a grid of `rows` rows (a whole number of pictures per
    row; the rest is left out), each row labelled by `row_names` if given (notebooks 21-22)."""
    if not isinstance(rows, int) or isinstance(rows, bool) or not 1 <= rows <= len(pictures):
        raise ValueError(f"rows={rows!r} must be an int from 1 to the number of pictures ({len(pictures)})")
    if row_names is not None and len(row_names) != rows:
        raise ValueError(f"row_names has {len(row_names)} names for rows={rows}")
    side = pictures.shape[-2]
    shown = ((pictures.clamp(-1, 1) + 1) / 2)[: len(pictures) // rows * rows]
    grid = rearrange(shown, "(r c) ch h w -> (r h) (c w) ch", r=rows)
    cell = 0.45 if rows > 4 else 0.8  # inches per picture: few rows get larger pictures
    figure, ax = plt.subplots(figsize=(grid.shape[1] / side * cell + 1.5, rows * cell + 0.6), layout="constrained")
    ax.imshow(grid.numpy(), interpolation="nearest")
    ax.set_xticks([]), ax.grid(False)
    ax.set_yticks([side * r + side // 2 for r in range(rows)] if row_names else [], row_names or [], fontsize=7)
    ax.set_title(title, fontsize=10)
    return figure
