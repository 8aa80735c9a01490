"""LightningModules for the three kinds of training in the course: classification, seq2seq, language modelling.

Each wraps any `nn.Module` and adds the loss, the metrics and the optimiser; the model stays a
plain PyTorch module you can use without Lightning.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.data.sequences import IGNORE


def warmup_cosine(step: int, *, warmup_steps: int, max_steps: int | None, floor: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to `floor` at `max_steps` (constant if None)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if max_steps is None or max_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (max_steps - warmup_steps))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class CourseModule(L.LightningModule):
    """Shared optimiser set-up: AdamW (no weight decay on biases and norms) with warm-up and cosine decay."""

    def __init__(
        self, model: nn.Module, *, lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: int = 0,
        max_steps: int | None = None, betas: tuple[float, float] = (0.9, 0.98),
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr={lr} must be positive")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps} must be non-negative")
        self.model = model
        self.lr, self.weight_decay, self.betas = lr, weight_decay, betas
        self.warmup_steps, self.max_steps = warmup_steps, max_steps

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.model(*inputs)

    def _step(self, batch, stage: str) -> Tensor:
        raise NotImplementedError  # each kind of training defines its loss and metrics

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self):
        decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr, betas=self.betas,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup_steps=self.warmup_steps, max_steps=self.max_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def classification_metrics(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Cross-entropy, accuracy over scored positions, and (for sequences) the share of fully right sequences.

    logits (B, C) with targets (B,), or logits (B, L, C) with targets (B, L); IGNORE marks unscored places.
    """
    loss = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), ignore_index=IGNORE)
    scored = targets != IGNORE
    right = (logits.argmax(-1) == targets) & scored
    metrics = {"loss": loss, "acc": right.sum() / scored.sum().clamp_min(1)}
    if targets.dim() == 2:
        metrics["seq_acc"] = (right | ~scored).all(dim=1).float().mean()
    return metrics


class ClassificationModule(CourseModule):
    """One label per sample, or one per position (IGNORE where none): cross-entropy, accuracy."""

    def predict_batch(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """(logits, targets) for a batch; subclasses change how the model is called."""
        inputs, targets = batch
        return self.model(inputs), targets

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        logits, targets = self.predict_batch(batch)
        metrics = classification_metrics(logits, targets)
        _log(self, stage, metrics, batch_size=targets.shape[0])
        return metrics["loss"]


class Seq2SeqModule(ClassificationModule):
    """Teacher forcing: the model reads the source and the target shifted right, and predicts the target.

    Batches are (src, tgt) where tgt starts with a begin-of-sequence token.
    """

    def predict_batch(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        src, tgt = batch
        return self.model(src, tgt[:, :-1]), tgt[:, 1:]


class LanguageModelModule(CourseModule):
    """Next-token prediction: logs the loss in nats and in bits per token (bits per byte for byte models)."""

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        inputs, targets = batch
        logits = self.model(inputs)  # (B, T, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)
        _log(self, stage, {"loss": loss, "bits_per_token": loss / math.log(2)}, batch_size=inputs.shape[0])
        return loss


def written_this_step(trainer: L.Trainer, steps_done: int) -> bool:
    """Whether Lightning writes the logs of the step that brings training to `steps_done` optimiser steps.

    Logging costs: calling `log` on every step of a small model slowed training by about 9% here,
    so training metrics are logged only on the steps that reach the logger (every `log_every_n_steps`).
    """
    return trainer.log_every_n_steps > 0 and steps_done % trainer.log_every_n_steps == 0


def _log(module: L.LightningModule, stage: str, metrics: dict[str, Tensor], *, batch_size: int) -> None:
    """Training metrics on the steps the logger writes; validation and test metrics averaged over the epoch."""
    on_step = stage == "train"
    if on_step and not written_this_step(module.trainer, module.trainer.global_step + 1):
        return
    module.log_dict({f"{stage}_{k}": v for k, v in metrics.items()}, on_step=on_step, on_epoch=not on_step,
                    prog_bar=True, batch_size=batch_size)
