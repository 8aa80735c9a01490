"""What does the course trainer cost over a plain PyTorch loop? Same model, data, optimiser and schedule.

    python benchmarks/bench_trainer.py [--steps 600] [--repeats 5] [--threads 1]

Prints steady-state steps/s of both (the first steps are warm-up and not timed), alternating them so
that both see the same machine load, each repeat's ratio, and the median ratio over the repeats.
Target: the trainer costs at most 15% (a median ratio of at most 1.15).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import tempfile
import time
import warnings

import lightning as L
import torch

import course_lib
from course_lib.data import SequenceDataModule
from course_lib.models import SequenceTransformer, SequenceTransformerConfig
from course_lib.train import ClassificationModule, classification_metrics, make_trainer

WARMUP = 20


def build(seed: int):
    course_lib.seed_everything(seed)
    data = SequenceDataModule("reverse", n_train=8000, n_val=64, batch_size=64, length=12, vocab_size=10, seed=seed)
    model = SequenceTransformer(SequenceTransformerConfig(vocab_size=10, max_len=12, dim=64, depth=2, heads=4))
    return data, model


def plain_loop(steps: int, seed: int) -> float:
    """Steps/s of a hand-written loop: the same AdamW groups and LR schedule as the course module."""
    data, model = build(seed)
    module = ClassificationModule(model, lr=1e-3, warmup_steps=50, max_steps=steps)
    config = module.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    model.train()
    step, started = 0, None
    while step < steps:
        for inputs, targets in data.train_dataloader():
            if step == WARMUP:
                started = time.perf_counter()
            loss = classification_metrics(model(inputs), targets)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step == steps:
                break
    return (steps - WARMUP) / (time.perf_counter() - started)


class StepTimer(L.Callback):
    """Times the trainer over the same window of steps as the plain loop."""

    def __init__(self) -> None:
        self.started = self.ended = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == WARMUP:
            self.started = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.ended = time.perf_counter()


def course_trainer(steps: int, seed: int, progress_bar: bool) -> float:
    data, model = build(seed)
    module = ClassificationModule(model, lr=1e-3, warmup_steps=50, max_steps=steps)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as logs:
        trainer = make_trainer("default", max_steps=steps, log_dir=logs, progress_bar=progress_bar,
                               callbacks=[timer], limit_val_batches=0)
        with contextlib.redirect_stdout(io.StringIO()):  # the bar is drawn, only not shown here
            trainer.fit(module, data)
    return (steps - WARMUP) / (timer.ended - timer.started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 keeps the timing steady on a small machine")
    args = parser.parse_args()
    if args.steps <= WARMUP:
        raise SystemExit(f"--steps={args.steps} must exceed the {WARMUP} warm-up steps")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, lightning {L.__version__}, {torch.get_num_threads()} threads, "
          f"{args.steps} steps ({WARMUP} warm-up) of a 2-layer d=64 encoder, batch 64 x 12 tokens")
    print(f"{'repeat':>6} {'plain steps/s':>14} {'trainer steps/s':>16} {'+ progress bar':>15} {'overhead':>9} {'with bar':>9}")
    ratios, ratios_with_bar = [], []
    for repeat in range(args.repeats):
        plain = plain_loop(args.steps, seed=repeat)
        quiet = course_trainer(args.steps, seed=repeat, progress_bar=False)
        bar = course_trainer(args.steps, seed=repeat, progress_bar=True)
        ratios.append(plain / quiet)
        ratios_with_bar.append(plain / bar)
        print(f"{repeat:>6} {plain:>14.1f} {quiet:>16.1f} {bar:>15.1f} {ratios[-1]:>8.2f}x {ratios_with_bar[-1]:>8.2f}x", flush=True)
    median, median_bar = statistics.median(ratios), statistics.median(ratios_with_bar)
    print(f"median: the course trainer takes {median:.2f}x the plain loop's time per step "
          f"({median_bar:.2f}x with its progress bar); target at most 1.15x")


if __name__ == "__main__":
    main()
