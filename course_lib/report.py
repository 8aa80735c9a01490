"""Headline results: each notebook records one with `report(...)`; `make course` gathers them into a table."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import torch


def runs_dir() -> Path:
    """`$COURSE_RUNS_DIR`, else `runs/` at the root of the course checkout above the working directory."""
    if os.environ.get("COURSE_RUNS_DIR"):
        return Path(os.environ["COURSE_RUNS_DIR"])
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "course_lib").is_dir():
            return folder / "runs"
    return here / "runs"


def _check_metrics(argument: str, metrics: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError(f"{argument}={metrics!r} is not a non-empty mapping of name to number")
    clean = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            value = value.item()
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{argument}[{key!r}]={value!r} is not a number")
        clean[str(key)] = float(value)
    return clean


def report(
    name: str,
    metrics: Mapping[str, float],
    baseline: Mapping[str, float] | None = None,
    *,
    profile: str,
    headline: str | None = None,
    seconds: float | None = None,
) -> Path:
    """Write `runs/<name>.json` with the notebook's headline metrics and the baseline measured beside them.

    `headline` names the metric the results table shows (the first one by default).
    """
    if not name or "/" in name:
        raise ValueError(f"name={name!r} is not a notebook name such as '01_attention'")
    metrics = _check_metrics("metrics", metrics)
    baseline = _check_metrics("baseline", baseline) if baseline is not None else {}
    headline = headline or next(iter(metrics))
    if headline not in metrics:
        raise ValueError(f"headline={headline!r} is not one of the metrics {sorted(metrics)}")
    record = {
        "notebook": name,
        "profile": profile,
        "headline": headline,
        "metrics": metrics,
        "baseline": baseline,
        "seconds": seconds,
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    folder = runs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    temporary.replace(path)  # atomic: a reader never sees half a record
    return path


def _format(metrics: Mapping[str, float], key: str) -> str:
    if key not in metrics:
        return "—"
    value = metrics[key]
    return f"{value:#.4g}"


def gather_results(folder: Path | None = None) -> str:
    """Collect every `runs/*.json` into `runs/RESULTS.md` (a Markdown table) and return its text."""
    folder = Path(folder) if folder is not None else runs_dir()
    rows = []
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        key = record["headline"]
        seconds = record.get("seconds")
        rows.append(
            f"| {record['notebook']} | {record['profile']} | {key} | "
            f"{_format(record['metrics'], key)} | {_format(record['baseline'], key)} | "
            f"{'—' if seconds is None else f'{seconds:.0f} s'} | {record['device']} | {record['written']} |"
        )
    table = "\n".join(
        [
            "# Results",
            "",
            "Written by `make course`: each notebook's headline metric and the baseline measured in the same run.",
            "",
            "| notebook | profile | metric | result | baseline | time | device | when |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "RESULTS.md").write_text(table)
    return table
