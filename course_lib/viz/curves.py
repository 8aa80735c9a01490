"""Training curves from the CSV log that `make_trainer` writes."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def read_metrics(source) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} from a trainer (its logger's metrics.csv) or a path to that file."""
    path = Path(source.logger.log_dir) / "metrics.csv" if hasattr(source, "logger") else Path(source)
    if not path.exists():
        raise ValueError(f"no metrics log at {path}; train first, or pass the path of a metrics.csv")
    series: dict[str, list[tuple[int, float]]] = {}
    with path.open() as file:
        for row in csv.DictReader(file):
            step = int(row["step"])
            for key, value in row.items():
                if key not in ("step", "epoch") and value not in ("", None):
                    series.setdefault(key, []).append((step, float(value)))
    return series


def training_curves(runs: dict[str, object], metrics: Sequence[str] = ("train_loss", "val_loss"), *, title: str = "", log_y: bool = False) -> Figure:
    """One panel per metric, one line per run: `runs` maps a label to a trainer or a metrics.csv path."""
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, source in runs.items():
            points = read_metrics(source).get(metric, [])
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=label, marker="o" if len(points) < 20 else None)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(metric.replace("_", " "))
        if log_y:
            ax.set_yscale("log")
        ax.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return figure
