"""The small training loop of Part II: deterministic for a seed, it learns, and `accuracy` counts what a naive loop
counts; bad arguments are refused before any step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from course_lib.train.loop import accuracy, fit, one_cycle


def separable(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points in 2-D labelled by the side of a line: any linear model can reach 100%."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(n, 2, generator=generator)
    return points, (points[:, 0] + 0.5 * points[:, 1] > 0).long()


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.GELU(), nn.Linear(16, 2))


def test_the_same_seed_gives_the_same_weights_and_another_seed_does_not():
    x, y = separable()
    runs = [fit(model(), x, y, steps=20, lr=1e-2, batch=16, seed=seed) for seed in (3, 3, 4)]
    first, again, other = ([p.detach().clone() for p in run.parameters()] for run in runs)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_it_learns_a_separable_problem_and_returns_the_model_in_eval_mode():
    x, y = separable()
    untrained = accuracy(model(), x, y)
    trained = fit(model(), x, y, steps=200, lr=1e-2, batch=32)
    assert not trained.training
    assert accuracy(trained, x, y) > 0.97 > untrained, untrained


def test_augment_sees_every_batch_with_the_loop_generator():
    x, y = separable(64)
    seen = []

    def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seen.append((images.shape, type(generator)))
        return images + 0.01 * torch.randn(images.shape, generator=generator)

    fit(model(), x, y, steps=5, lr=1e-2, batch=8, augment=augment)
    assert seen == [(torch.Size([8, 2]), torch.Generator)] * 5


@pytest.mark.parametrize("batch", [1, 7, 500])
def test_accuracy_counts_what_a_naive_loop_counts_and_keeps_the_mode(batch):
    x, y = separable(50, seed=1)
    net = model(2).train()
    naive = sum(int(net(point[None]).argmax() == label) for point, label in zip(x, y)) / len(y)
    assert accuracy(net, x, y, batch=batch) == pytest.approx(naive)
    assert net.training


def test_accuracy_passes_keyword_arguments_to_the_model():
    class Scaled(nn.Module):
        def forward(self, x: torch.Tensor, *, flip: bool = False) -> torch.Tensor:
            return torch.stack([x[:, 0], -x[:, 0]], dim=1) * (-1 if flip else 1)

    x = torch.tensor([[1.0], [2.0], [-1.0]])
    y = torch.tensor([0, 0, 1])
    net = Scaled()
    net.register_parameter("unused", nn.Parameter(torch.zeros(1)))
    assert accuracy(net, x, y) == 1.0 and accuracy(net, x, y, flip=True) == 0.0


@pytest.mark.parametrize("options, message", [
    (dict(steps=0), "steps=0"), (dict(steps=2.5), "steps=2.5"), (dict(batch=-1), "batch=-1"), (dict(lr=0), "lr=0"),
    (dict(weight_decay=-0.1), "weight_decay=-0.1"),
])
def test_fit_refuses_bad_arguments_by_name(options, message):
    x, y = separable(8)
    with pytest.raises(ValueError, match=message):
        fit(model(), x, y, **{"steps": 1, "lr": 1e-3, **options})


def test_fit_refuses_mismatched_or_wrongly_typed_labels():
    x, y = separable(8)
    with pytest.raises(ValueError, match="equally long"):
        fit(model(), x, y[:5], steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="torch.long"):
        fit(model(), x, y.float(), steps=1, lr=1e-3)


@pytest.mark.parametrize("steps", [1, 2, 9, 10, 11, 20])
def test_every_step_count_trains(steps):
    """OneCycleLR alone divides by zero at 10 steps (a one-step warm-up); `one_cycle` must not."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    fit(nn.Linear(4, 2), x, y, steps=steps, lr=1e-2, batch=8)
    optimizer = torch.optim.AdamW(nn.Linear(4, 2).parameters(), lr=1e-2)
    schedule = one_cycle(optimizer, 1e-2, steps)
    rates = []
    for _ in range(steps):
        optimizer.step()
        schedule.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert all(math.isfinite(rate) and 0 <= rate <= 1e-2 * (1 + 1e-9) for rate in rates)
