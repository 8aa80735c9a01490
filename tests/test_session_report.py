"""`course_lib.setup`, `course_lib.report` / `gather_results`, and the figures of `course_lib.viz`."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import course_lib
from course_lib import session as session_module
from course_lib.viz import (
    attention_heads,
    attention_layers,
    attention_rollout,
    model_attention,
    read_metrics,
    training_curves,
)

matplotlib.use("Agg")  # no display: draw into memory


@pytest.fixture
def isolated():
    """setup() changes process-wide state (threads, plot style, warning filters): put it back afterwards."""
    threads = torch.get_num_threads()
    with matplotlib.rc_context(), warnings.catch_warnings():
        yield
    torch.set_num_threads(threads)


# --- setup ---------------------------------------------------------------------------------------


def test_unknown_profile_lists_the_valid_ones(isolated):
    with pytest.raises(ValueError, match=r"profile='fast'.*\('smoke', 'default', 'full'\)"):
        course_lib.setup("fast")


def test_bad_threads_and_seed(isolated):
    with pytest.raises(ValueError, match=r"threads=0"):
        course_lib.setup("smoke", threads=0)
    with pytest.raises(ValueError, match=r"seed=-1"):
        course_lib.setup("smoke", seed=-1)


def test_printed_line_names_profile_device_and_torch(isolated, capsys):
    session = course_lib.setup("smoke", seed=3, threads=1)
    line = capsys.readouterr().out.strip()
    assert line == str(session)
    assert "profile smoke" in line and f"device {session.device}" in line
    assert f"torch {torch.__version__}" in line and "kernels:" in line and "seed 3" in line
    assert session.profile == session.requested_profile == "smoke"
    assert torch.get_num_threads() == 1


def test_full_without_gpu_falls_back_to_default(isolated, capsys, monkeypatch):
    """No CUDA: 'full' runs as 'default' and says so, both in a sentence and in the session line."""
    monkeypatch.setattr(session_module, "pick_device", lambda: torch.device("cpu"))
    session = course_lib.setup("full", threads=1)
    assert (session.profile, session.requested_profile) == ("default", "full")
    out = capsys.readouterr().out
    assert "'full' profile needs one" in out and "uses 'default'" in out
    assert "profile default (asked for full)" in out and "device cpu" in out
    assert session.kernels == "PyTorch reference paths"


def test_full_with_gpu_keeps_full(isolated, capsys, monkeypatch):
    monkeypatch.setattr(session_module, "pick_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(session_module, "kernel_backend", lambda device: "Triton")
    session = course_lib.setup("full", threads=1)
    assert session.profile == "full"
    assert "asked for" not in capsys.readouterr().out


def test_same_seed_same_numbers(isolated, capsys):
    """torch, NumPy and Python's random all replay after setup with the same seed, and differ with another."""

    def draw(seed):
        course_lib.setup("smoke", seed=seed, threads=1)
        return torch.randn(4), np.random.rand(2), random.random()

    first, again, other = draw(7), draw(7), draw(8)
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
    assert not torch.equal(first[0], other[0]) and first[2] != other[2]


# --- report --------------------------------------------------------------------------------------


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "runs"
    monkeypatch.setenv("COURSE_RUNS_DIR", str(folder))
    return folder


def test_report_writes_json_under_course_runs_dir(runs):
    path = course_lib.report("01_attention", {"acc": 0.8125, "loss": torch.tensor(0.5)}, {"acc": 0.25},
                             profile="smoke", headline="acc", seconds=12.5)
    assert path == runs / "01_attention.json"
    record = json.loads(path.read_text())
    assert record["notebook"] == "01_attention" and record["profile"] == "smoke"
    assert record["metrics"] == {"acc": 0.8125, "loss": 0.5} and record["baseline"] == {"acc": 0.25}
    assert record["headline"] == "acc" and record["seconds"] == 12.5 and record["torch"] == torch.__version__
    assert [p.name for p in runs.iterdir()] == ["01_attention.json"]  # no temporary file left behind


def test_report_headline_defaults_to_first_metric(runs):
    path = course_lib.report("02_x", {"bleu": 20.0, "loss": 1.0}, profile="default")
    assert json.loads(path.read_text())["headline"] == "bleu"


def test_report_is_atomic(runs, monkeypatch):
    """If writing dies half way, the previous record is still whole: the new one goes to a temporary file first."""
    path = course_lib.report("01_attention", {"acc": 0.5}, profile="smoke")
    before = path.read_text()
    original_write = Path.write_text

    def dies_half_way(self, text, *args, **kwargs):
        original_write(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        course_lib.report("01_attention", {"acc": 0.9}, profile="smoke")
    monkeypatch.undo()
    assert path.read_text() == before
    assert json.loads(path.read_text())["metrics"] == {"acc": 0.5}


@pytest.mark.parametrize(
    ("metrics", "baseline", "message"),
    [
        ({"acc": "high"}, None, r"metrics\['acc'\]='high' is not a number"),
        ({"acc": True}, None, r"metrics\['acc'\]=True is not a number"),
        ({}, None, r"metrics=\{\} is not a non-empty mapping"),
        ([("acc", 0.5)], None, r"metrics=\[\('acc', 0.5\)\] is not a non-empty mapping"),
        ({"acc": 0.5}, {"acc": None}, r"baseline\['acc'\]=None is not a number"),
    ],
)
def test_report_rejects_bad_metrics(runs, metrics, baseline, message):
    with pytest.raises(ValueError, match=message):
        course_lib.report("01_attention", metrics, baseline, profile="smoke")
    assert not runs.exists() or not list(runs.iterdir())


def test_report_rejects_bad_name_and_headline(runs):
    with pytest.raises(ValueError, match=r"name='a/b'"):
        course_lib.report("a/b", {"acc": 1.0}, profile="smoke")
    with pytest.raises(ValueError, match=r"headline='f1' is not one of the metrics \['acc'\]"):
        course_lib.report("01_attention", {"acc": 1.0}, profile="smoke", headline="f1")


def test_gather_results_writes_a_table(runs):
    course_lib.report("02_vit", {"top1": 0.625}, profile="default", seconds=61.0)
    course_lib.report("01_attention", {"loss": 0.1, "acc": 0.8125}, {"acc": 0.0625}, profile="smoke", headline="acc")
    text = course_lib.gather_results()
    assert (runs / "RESULTS.md").read_text() == text
    rows = [line for line in text.splitlines() if line.startswith("| 0")]
    assert len(rows) == 2 and rows[0].startswith("| 01_attention |") and rows[1].startswith("| 02_vit |")
    assert "| acc | 0.8125 | 0.06250 |" in rows[0] and "| smoke |" in rows[0]
    assert "| top1 | 0.6250 | — | 61 s |" in rows[1]


# --- viz -----------------------------------------------------------------------------------------


def random_weights(heads: int, length: int, seed: int = 0) -> torch.Tensor:
    """(heads, L, L) row-stochastic maps, as attention gives."""
    return torch.randn(heads, length, length, generator=torch.Generator().manual_seed(seed)).softmax(-1)


def test_attention_figures_are_figures():
    layers = [random_weights(3, 5, seed) for seed in range(2)]
    for figure, panels in [
        (attention_heads(layers[0], title="heads", labels=list("abcde"), columns=2), 3),
        (attention_layers(layers, title="layers"), 2),
        (model_attention(layers, title="model"), 1),
    ]:
        assert isinstance(figure, Figure)
        images = [ax for ax in figure.axes if ax.images]
        assert len(images) == panels
        assert all(ax.get_xlabel() == "key position" for ax in images)
        plt.close(figure)


def test_attention_figures_reject_batched_weights():
    with pytest.raises(ValueError, match=r"weights has shape \(2, 3, 5, 5\)"):
        attention_heads(torch.rand(2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"layers\[1\] has shape \(5, 5\)"):
        attention_layers([random_weights(2, 5), torch.rand(5, 5)])
    with pytest.raises(ValueError, match=r"layers is empty"):
        attention_rollout([])


@pytest.mark.parametrize("residual", [True, False])
def test_rollout_rows_sum_to_one(residual):
    rollout = attention_rollout([random_weights(4, 6, seed) for seed in range(3)], residual=residual)
    assert rollout.shape == (6, 6) and (rollout >= 0).all()
    torch.testing.assert_close(rollout.sum(-1), torch.ones(6), atol=1e-5, rtol=0)


def test_rollout_composes_layers_in_order():
    """Without the residual, rollout = mean_heads(L2) @ mean_heads(L1); with it, identity mixed in half and half."""
    first, second = random_weights(2, 4, 1), random_weights(2, 4, 2)
    expected = second.mean(0) @ first.mean(0)
    torch.testing.assert_close(attention_rollout([first, second], residual=False), expected)
    half = [0.5 * w.mean(0) + 0.5 * torch.eye(4) for w in (first, second)]
    torch.testing.assert_close(attention_rollout([first, second]), half[1] @ half[0])


def test_training_curves_from_a_metrics_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train_loss,val_loss\n0,0,2.0,\n0,1,1.5,\n0,1,,1.7\n1,3,1.0,\n")
    assert read_metrics(path) == {"train_loss": [(0, 2.0), (1, 1.5), (3, 1.0)], "val_loss": [(1, 1.7)]}
    figure = training_curves({"run": path}, log_y=True, title="loss")
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    assert [len(ax.lines) for ax in figure.axes] == [1, 1]
    assert figure.axes[0].get_xlabel() == "optimiser step" and figure.axes[0].get_yscale() == "log"
    plt.close(figure)
    with pytest.raises(ValueError, match=r"no metrics log"):
        read_metrics(tmp_path / "missing.csv")
