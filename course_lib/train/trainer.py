"""`make_trainer(profile, ...)`: a Lightning Trainer set up the same way in every notebook.

CSV logs, a quiet progress bar, atomic checkpoints that resume exactly (model, optimiser, data
position and random state), and a throughput meter.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from course_lib.report import runs_dir
from course_lib.session import validate_profile
from course_lib.train.modules import written_this_step


class ThroughputCallback(Callback):
    """Measures training speed: samples/s, and tokens/s when inputs are token sequences.

    Timed from the start of one training batch to the start of the next, so data loading counts.
    """

    def __init__(self) -> None:
        self.samples = self.tokens = 0
        self.seconds = 0.0
        self._last: float | None = None
        self._pending: tuple[int, int] = (0, 0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.seconds += now - self._last
            self.samples += self._pending[0]
            self.tokens += self._pending[1]
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        is_tokens = not torch.is_floating_point(inputs) and inputs.dim() >= 2
        self._pending = (inputs.shape[0], inputs.numel() if is_tokens else 0)
        self._last = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.seconds > 0 and written_this_step(trainer, trainer.global_step):
            pl_module.log("samples_per_s", self.samples_per_second, on_step=True, on_epoch=False)
            if self.tokens:
                pl_module.log("tokens_per_s", self.tokens_per_second, on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._last = None  # the gap to the next epoch (validation, checkpoints) is not training time

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _numpy_state_to_tensors() -> dict[str, Any]:
    """NumPy's generator state in types that `torch.load(weights_only=True)` accepts."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _numpy_state_from_tensors(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["kind"], keys, state["position"], state["has_gauss"], state["gauss"]


class RandomStateCallback(Callback):
    """Saves Python's, NumPy's and torch's random states in each checkpoint and restores them on resume,
    so dropout and sampling after a resume draw the same numbers as an uninterrupted run."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["random_state"] = {
            "python": random.getstate(),
            "numpy": _numpy_state_to_tensors(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("random_state")
        if state is None:
            return
        random.setstate(state["python"])
        np.random.set_state(_numpy_state_from_tensors(state["numpy"]))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def make_trainer(
    profile: str,
    *,
    max_steps: int,
    name: str = "run",
    log_dir: str | Path | None = None,
    val_every_n_steps: int | None = None,
    checkpoint_every_n_steps: int | None = None,
    progress_bar: bool = True,
    callbacks: Sequence[Callback] = (),
    **options: Any,
) -> L.Trainer:
    """A Trainer for `max_steps` optimiser steps, logging to `<log_dir>/<name>/version_N/metrics.csv`.

    `full` on a GPU trains in bf16 mixed precision; everything else in fp32. `options` go to `L.Trainer`.
    """
    validate_profile(profile)
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps={max_steps!r} must be a positive int")
    for argument, value in (("val_every_n_steps", val_every_n_steps), ("checkpoint_every_n_steps", checkpoint_every_n_steps)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{argument}={value!r} must be a positive int or None")
    logger = CSVLogger(save_dir=str(log_dir or runs_dir() / "logs"), name=name)
    checkpoint = ModelCheckpoint(
        dirpath=Path(logger.log_dir) / "checkpoints", save_last=True, save_top_k=0,
        every_n_train_steps=checkpoint_every_n_steps,
    )
    all_callbacks = [checkpoint, ThroughputCallback(), RandomStateCallback(), *callbacks]
    if progress_bar:
        all_callbacks.append(TQDMProgressBar(refresh_rate=max(1, max_steps // 20)))
    bf16 = profile == "full" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    settings: dict[str, Any] = {
        "accelerator": "auto",
        "devices": 1,
        "max_steps": max_steps,
        "max_epochs": -1,
        "precision": "bf16-mixed" if bf16 else "32-true",
        "logger": logger,
        "callbacks": all_callbacks,
        "enable_progress_bar": progress_bar,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": max(1, min(50, max_steps // 20)),
    }
    if val_every_n_steps is not None:
        settings.update(val_check_interval=val_every_n_steps, check_val_every_n_epoch=None)
    settings.update(options)
    return L.Trainer(**settings)


def find_callback(trainer: L.Trainer, kind: type[Callback]) -> Callback:
    """The trainer's callback of type `kind` (for example its ThroughputCallback)."""
    for callback in trainer.callbacks:
        if isinstance(callback, kind):
            return callback
    raise ValueError(f"the trainer has no {kind.__name__}")
