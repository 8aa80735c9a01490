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
