"""Training: reproducibility, exact resume from a mid-epoch checkpoint, throughput, schedule, modules.

Every run is a tiny SequenceTransformer on the "reverse" task: 64 training sequences in batches of
16 (4 steps per epoch), 10 steps, well under a second each.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, TensorDataset

import course_lib
from course_lib.data import IGNORE, SequenceDataModule, load
from course_lib.models import (
    Seq2SeqTransformer,
    Seq2SeqTransformerConfig,
    SequenceTransformer,
    SequenceTransformerConfig,
)
from course_lib.train import (
    ClassificationModule,
    LanguageModelModule,
    RandomStateCallback,
    Seq2SeqModule,
    ThroughputCallback,
    classification_metrics,
    find_callback,
    make_trainer,
    warmup_cosine,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Lightning's advice about workers and loggers
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),  # a deprecation inside Lightning
]

LENGTH, STEPS, CHECKPOINT_STEP, STEPS_PER_EPOCH = 6, 10, 6, 4
DETERMINISTIC_METRICS = ("train_loss", "train_acc", "train_seq_acc", "val_loss", "val_acc", "val_seq_acc")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second thread buys nothing, and on a busy 2-core machine OpenMP's
    thread hand-offs can make each step a hundred times slower. One thread, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_module(seed: int, *, dropout: float = 0.2) -> ClassificationModule:
    course_lib.seed_everything(seed)
    config = SequenceTransformerConfig(vocab_size=5, max_len=LENGTH, dim=16, depth=1, heads=2, dropout=dropout)
    return ClassificationModule(SequenceTransformer(config), lr=3e-3, warmup_steps=2, max_steps=STEPS)


def datamodule() -> SequenceDataModule:
    return SequenceDataModule("reverse", n_train=64, n_val=16, batch_size=16, length=LENGTH, vocab_size=5)


def fit(module, log_dir: Path, name: str, *, max_steps: int = STEPS, ckpt_path=None, **options):
    trainer = make_trainer("default", max_steps=max_steps, log_dir=log_dir, name=name, progress_bar=False,
                           checkpoint_every_n_steps=CHECKPOINT_STEP, **options)
    trainer.fit(module, datamodule(), ckpt_path=ckpt_path)
    return trainer


def logged(trainer) -> dict[str, list[tuple[str, str]]]:
    """The deterministic metrics of a run's metrics.csv as {name: [(step, value), ...]}."""
    rows = list(csv.DictReader((Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()))
    return {key: [(row["step"], row[key]) for row in rows if row.get(key)]
            for key in DETERMINISTIC_METRICS}


def weights(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One uninterrupted 10-step run with seed 0 (it writes last.ckpt at step 6, mid-epoch 2)."""
    log_dir = tmp_path_factory.mktemp("baseline")
    module = build_module(0)
    trainer = fit(module, log_dir, "uninterrupted")
    return trainer, module


def test_same_seed_same_metrics_and_weights(baseline, tmp_path):
    """A second run with the same seed logs the same losses and ends with bit-identical weights."""
    trainer, module = baseline
    again = build_module(0)
    trainer_again = fit(again, tmp_path, "again")
    assert trainer_again.global_step == trainer.global_step == STEPS
    first, second = logged(trainer), logged(trainer_again)
    assert len(first["train_loss"]) >= 2 and first["val_loss"]
    assert first == second
    assert same_weights(weights(module), weights(again))
    other = build_module(1)
    fit(other, tmp_path, "other_seed")
    assert not same_weights(weights(module), weights(other))


def test_resume_mid_epoch_matches_uninterrupted_run(baseline, tmp_path, monkeypatch):
    """Resuming from last.ckpt (step 6, half way through epoch 2, dropout on) gives the same weights.

    The resumed run is seeded differently first, so only the checkpoint can make the dropout masks
    and the data order agree; as a control, the same resume without restoring the random state differs.
    """
    trainer, module = baseline
    checkpoint_path = Path(trainer.logger.log_dir) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    assert checkpoint["global_step"] == CHECKPOINT_STEP
    assert CHECKPOINT_STEP % STEPS_PER_EPOCH != 0  # not an epoch boundary
    assert "random_state" in checkpoint

    resumed = build_module(12345)
    resumed_trainer = fit(resumed, tmp_path, "resumed", ckpt_path=checkpoint_path)
    assert resumed_trainer.global_step == STEPS
    assert same_weights(weights(module), weights(resumed))

    monkeypatch.setattr(RandomStateCallback, "on_load_checkpoint", lambda *args: None)
    control = build_module(12345)
    fit(control, tmp_path, "resumed_without_random_state", ckpt_path=checkpoint_path)
    assert not same_weights(weights(module), weights(control))


def test_throughput_callback(baseline):
    """Positive samples/s and tokens/s; each sample is LENGTH tokens, so their ratio is LENGTH."""
    trainer, _ = baseline
    meter = find_callback(trainer, ThroughputCallback)
    assert meter.samples_per_second > 0 and meter.tokens_per_second > 0
    assert meter.tokens_per_second / meter.samples_per_second == pytest.approx(LENGTH)
    assert meter.samples > 0 and meter.samples % 16 == 0
    assert "samples_per_s" in trainer.logged_metrics and "tokens_per_s" in trainer.logged_metrics
    with pytest.raises(ValueError, match=r"no TQDMProgressBar"):  # progress_bar=False
        find_callback(trainer, TQDMProgressBar)


def test_throughput_counts_no_tokens_for_float_inputs():
    """Float inputs (images, features) are samples, not tokens."""
    meter = ThroughputCallback()
    for _ in range(3):
        meter.on_train_batch_start(None, None, (torch.randn(4, 3, 8), torch.zeros(4)), 0)
    assert meter.samples == 8 and meter.tokens == 0 and meter.seconds > 0


def test_warmup_cosine():
    """Linear warm-up to 1, cosine down to the floor at max_steps, then the floor; constant without max_steps."""
    values = [warmup_cosine(step, warmup_steps=4, max_steps=14, floor=0.1) for step in range(20)]
    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert values[4] == pytest.approx(1.0)
    assert values[9] == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert values[14] == pytest.approx(0.1) and values[19] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[3:], values[4:]))
    assert warmup_cosine(100, warmup_steps=0, max_steps=None) == 1.0
    assert warmup_cosine(0, warmup_steps=0, max_steps=10, floor=0.0) == pytest.approx(1.0)
    assert warmup_cosine(10, warmup_steps=0, max_steps=10, floor=0.0) == pytest.approx(0.0)
    assert warmup_cosine(5, warmup_steps=0, max_steps=10, floor=0.0) == pytest.approx(0.5)


def test_optimiser_groups_and_schedule():
    """Weight decay on matrices only; the scheduler follows warmup_cosine."""
    module = build_module(0)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(module.model.parameters()))
    for step in range(STEPS):
        expected = 3e-3 * warmup_cosine(step, warmup_steps=2, max_steps=STEPS)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
        optimizer.step()
        scheduler.step()


def test_make_trainer_validates(tmp_path):
    with pytest.raises(ValueError, match=r"profile='turbo'.*'smoke', 'default', 'full'"):
        make_trainer("turbo", max_steps=10, log_dir=tmp_path)
    with pytest.raises(ValueError, match=r"max_steps=0"):
        make_trainer("default", max_steps=0, log_dir=tmp_path)
    with pytest.raises(ValueError, match=r"max_steps=2.5"):
        make_trainer("default", max_steps=2.5, log_dir=tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint_every_n_steps=0"):
        make_trainer("default", max_steps=10, checkpoint_every_n_steps=0, log_dir=tmp_path)
    with pytest.raises(ValueError, match=r"val_every_n_steps=-1"):
        make_trainer("default", max_steps=10, val_every_n_steps=-1, log_dir=tmp_path)


def test_course_module_validates():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"lr=0"):
        ClassificationModule(model, lr=0)
    with pytest.raises(ValueError, match=r"warmup_steps=-1"):
        ClassificationModule(model, warmup_steps=-1)


def _loss_on(model, batch) -> float:
    """Cross-entropy of `model` on a fixed batch, in eval mode (no dropout)."""
    with torch.no_grad():
        model.eval()
        inputs, targets = batch
        logits = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
        model.train()
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE).item()


def test_language_model_module_learns(tmp_path):
    """A causal byte model's loss on a fixed batch falls after 30 steps; bits = nats / ln 2."""
    course_lib.seed_everything(0)
    dataset = load("python_text", split="train", block_size=16, max_bytes=2000)
    config = SequenceTransformerConfig(vocab_size=256, max_len=16, dim=32, depth=1, heads=2, causal=True)
    model = SequenceTransformer(config)
    batch = (torch.stack([dataset[i][0] for i in range(16)]), torch.stack([dataset[i][1] for i in range(16)]))
    before = _loss_on(model, batch)
    trainer = make_trainer("default", max_steps=30, log_dir=tmp_path, name="lm", progress_bar=False)
    loader = DataLoader(dataset, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    trainer.fit(LanguageModelModule(model, lr=3e-3), loader)
    after = _loss_on(model, batch)
    assert after < before - 0.5, (before, after)
    metrics = trainer.logged_metrics
    assert metrics["train_bits_per_token"].item() == pytest.approx(metrics["train_loss"].item() / math.log(2))


def test_seq2seq_module_feeds_the_shifted_target():
    """Teacher forcing: the model reads tgt[:, :-1] and is scored on tgt[:, 1:]."""
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, src, tgt_in):
            seen["src"], seen["tgt_in"] = src, tgt_in
            return torch.zeros(*tgt_in.shape, 3)

    module = Seq2SeqModule(Recorder())
    src, tgt = torch.tensor([[1, 2]]), torch.tensor([[0, 5, 6, 7]])
    logits, targets = module.predict_batch((src, tgt))
    assert torch.equal(seen["src"], src) and torch.equal(seen["tgt_in"], tgt[:, :-1])
    assert torch.equal(targets, tgt[:, 1:]) and logits.shape == (1, 3, 3)


def test_seq2seq_module_learns(tmp_path):
    """An encoder-decoder learns to reverse: the teacher-forced loss on a fixed batch falls in 40 steps."""
    course_lib.seed_everything(0)
    data = load("reverse", n=256, length=5, vocab_size=6)
    bos = 6
    tgt = torch.cat([torch.full((256, 1), bos), data.targets], dim=1)
    dataset = TensorDataset(data.inputs, tgt)
    config = Seq2SeqTransformerConfig(src_vocab_size=6, tgt_vocab_size=7, max_len=8, dim=32, depth=1, heads=2)
    model = Seq2SeqTransformer(config)
    batch = ((data.inputs[:32], tgt[:32, :-1]), tgt[:32, 1:])
    before = _loss_on(model, batch)
    trainer = make_trainer("default", max_steps=40, log_dir=tmp_path, name="s2s", progress_bar=False)
    loader = DataLoader(dataset, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    trainer.fit(Seq2SeqModule(model, lr=3e-3), loader)
    after = _loss_on(model, batch)
    assert after < before - 0.3, (before, after)
    assert "train_acc" in trainer.logged_metrics and "train_seq_acc" in trainer.logged_metrics


def test_classification_metrics_by_hand():
    """Accuracy counts only scored positions; seq_acc needs every scored position right."""
    # predictions (argmax):  row 0 -> [1, 2, 0], row 1 -> [3, 3, 1]
    logits = torch.full((2, 3, 4), -5.0)
    for b, row in enumerate([[1, 2, 0], [3, 3, 1]]):
        for t, c in enumerate(row):
            logits[b, t, c] = 5.0
    targets = torch.tensor([[1, 2, IGNORE], [3, 0, IGNORE]])  # row 0 right where scored, row 1 one miss
    metrics = classification_metrics(logits, targets)
    assert metrics["acc"].item() == pytest.approx(3 / 4)
    assert metrics["seq_acc"].item() == pytest.approx(1 / 2)
    scored = targets != IGNORE
    expected_loss = -torch.log_softmax(logits, -1)[scored].gather(1, targets[scored][:, None]).mean()
    assert metrics["loss"].item() == pytest.approx(expected_loss.item(), rel=1e-6)

    # the ignored position being wrong does not matter; making it the only wrong one keeps seq_acc 1
    all_right = torch.tensor([[1, 2, IGNORE], [3, 3, IGNORE]])
    assert classification_metrics(logits, all_right)["seq_acc"].item() == 1.0
    assert classification_metrics(logits, all_right)["acc"].item() == 1.0


def test_classification_metrics_one_label_per_sample():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    metrics = classification_metrics(logits, torch.tensor([0, 0, IGNORE]))
    assert metrics["acc"].item() == pytest.approx(1 / 2)
    assert "seq_acc" not in metrics


class LossRecorder(L.Callback):
    """The loss of every training batch, by batch index (what the CSV's step column counts)."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step - 1] = outputs["loss"].item()


def test_training_metrics_reach_the_log_on_every_logging_step(tmp_path):
    """Metrics are logged only on the steps the logger writes (a speed-up). Every written row must hold
    that very step's loss, not a stale one from an earlier step, and no logging step may be skipped."""
    steps, every = 24, 4
    recorder = LossRecorder()
    module = build_module(0, dropout=0.0)
    trainer = fit(module, tmp_path, "cadence", max_steps=steps, log_every_n_steps=every, callbacks=[recorder])
    rows = list(csv.DictReader((Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()))
    written = {int(row["step"]): float(row["train_loss"]) for row in rows if row.get("train_loss")}
    assert sorted(written) == list(range(every - 1, steps, every))
    for step, loss in written.items():
        assert loss == pytest.approx(recorder.losses[step], rel=1e-6), step
    throughput_steps = sorted(int(row["step"]) for row in rows if row.get("samples_per_s"))
    assert throughput_steps == list(range(every - 1, steps, every))
