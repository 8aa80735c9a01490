"""Sharpness-aware minimisation against its definition, w ← w - lr·∇L(w + rho·g/‖g‖) with one norm over all
parameters, through `SAM` directly and through `fit(sam_rho=...)`; `sam_rho=0` leaves `fit` exactly as it was."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from course_lib.train import SAM
from course_lib.train.loop import fit, one_cycle


def mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).to(dtype)


def regression(n: int = 64, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator, dtype=dtype)
    weights = torch.tensor([[1.0, -2.0], [0.5, 1.0], [-1.5, 0.3]], dtype=dtype)
    return x, x @ weights + 0.1 * torch.randn(n, 2, generator=generator, dtype=dtype)


def gradient_at(model: nn.Module, weights: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """∇ of the MSE of `model` with its parameters replaced by `weights`, without touching the model."""
    names = [name for name, _ in model.named_parameters()]
    leaves = [w.detach().clone().requires_grad_() for w in weights]
    return list(torch.autograd.grad(F.mse_loss(functional_call(model, dict(zip(names, leaves)), (x,)), y), leaves))


def sam_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rho: float) -> list[torch.Tensor]:
    """The definition: ∇L(w + rho·g/‖g‖), g = ∇L(w), ‖g‖ the norm of all of g at once."""
    w = [p.detach() for p in model.parameters()]
    g = gradient_at(model, w, x, y)
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    return gradient_at(model, [wi + rho * gi / (norm + 1e-12) for wi, gi in zip(w, g)], x, y)


def sam_step(optimizer: SAM, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad()
    F.mse_loss(model(x), y).backward()
    optimizer.step(lambda: F.mse_loss(model(x), y).backward())


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_one_step_with_sgd_is_the_definition():
    x, y = regression(16)
    model, lr, rho = mlp(), 0.3, 0.2
    w = weights(model)
    expected = [wi - lr * gi for wi, gi in zip(w, sam_gradient(model, x, y, rho))]
    sam_step(SAM(model.parameters(), base=torch.optim.SGD, rho=rho, lr=lr), model, x, y)
    for got, want in zip(model.parameters(), expected):
        torch.testing.assert_close(got.detach(), want, rtol=0, atol=1e-12)
    plain = [wi - lr * gi for wi, gi in zip(w, gradient_at(model, w, x, y))]
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(expected, plain))  # SAM is not plain SGD here


def test_steps_with_adamw_are_adamw_fed_the_perturbed_gradient():
    x, y = regression(16)
    model, rho = mlp(1), 0.1
    reference = copy.deepcopy(model)
    optimizer = SAM(model.parameters(), rho=rho, lr=0.05, weight_decay=0.1)
    adamw = torch.optim.AdamW(reference.parameters(), lr=0.05, weight_decay=0.1)
    for _ in range(3):  # several steps, so the moments AdamW keeps are checked too
        for p, g in zip(reference.parameters(), sam_gradient(reference, x, y, rho)):
            p.grad = g
        adamw.step()
        sam_step(optimizer, model, x, y)
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_fit_with_sam_equals_a_hand_written_loop():
    """`fit`'s batches, schedule and AdamW, with the gradient of the definition, on the same batch twice."""
    x, y = regression(40)
    steps, lr, batch, rho = 5, 0.02, 8, 0.05
    trained = fit(mlp(2), x, y, steps=steps, lr=lr, batch=batch, loss=F.mse_loss, sam_rho=rho)
    reference = mlp(2)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(reference.parameters(), lr=lr, weight_decay=0.05)
    schedule = one_cycle(optimizer, lr, steps)
    for _ in range(steps):
        index = torch.randint(len(x), (batch,), generator=generator)
        for p, g in zip(reference.parameters(), sam_gradient(reference, x[index], y[index], rho)):
            p.grad = g
        optimizer.step()
        schedule.step()
    for got, want in zip(trained.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_the_weights_are_restored_exactly_before_the_base_step():
    x, y = regression(16, dtype=torch.float32)
    model = mlp(3, torch.float32)
    before = weights(model)
    seen = []

    def closure() -> torch.Tensor:
        seen.append(weights(model))
        value = F.mse_loss(model(x), y)
        value.backward()
        return value

    optimizer = SAM(model.parameters(), base=torch.optim.SGD, rho=0.5, lr=0.0)
    F.mse_loss(model(x), y).backward()
    optimizer.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))  # bit for bit, not w + e - e
    assert all(not torch.equal(a, b) for a, b in zip(seen[0], before))  # the closure ran at the perturbed point


def test_the_perturbation_has_radius_rho_over_all_parameters_together():
    """Normalising each tensor on its own would move each of the four by rho, and all of them by 2·rho."""
    x, y = regression(16)
    model, rho = mlp(4), 0.3
    w = weights(model)
    g = gradient_at(model, w, x, y)
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    optimizer = SAM(model.parameters(), base=torch.optim.SGD, rho=rho, lr=0.1)
    F.mse_loss(model(x), y).backward()
    optimizer.first_step()
    moves = [p.detach() - wi for p, wi in zip(model.parameters(), w)]
    assert torch.sqrt(sum((m**2).sum() for m in moves)).item() == pytest.approx(rho, rel=1e-9)
    for move, gi in zip(moves, g):
        torch.testing.assert_close(move, rho * gi / norm, rtol=1e-9, atol=1e-14)
    assert all(p.grad is None for p in model.parameters())  # cleared for the second pass
    F.mse_loss(model(x), y).backward()
    optimizer.second_step()
    assert not any(torch.equal(p, wi) for p, wi in zip(model.parameters(), w))


def test_fit_with_sam_rho_zero_is_the_plain_adamw_loop_bit_for_bit():
    x, y = regression(48, dtype=torch.float32)
    steps, lr, batch = 12, 0.01, 8
    trained = fit(mlp(5, torch.float32), x, y, steps=steps, lr=lr, batch=batch, loss=F.mse_loss, sam_rho=0.0)
    reference = mlp(5, torch.float32).train()
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(reference.parameters(), lr=lr, weight_decay=0.05)
    schedule = one_cycle(optimizer, lr, steps)
    for _ in range(steps):  # the loop `fit` was before SAM
        index = torch.randint(len(x), (batch,), generator=generator)
        value = F.mse_loss(reference(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        schedule.step()
    assert all(torch.equal(a, b) for a, b in zip(trained.parameters(), reference.parameters()))


def test_fit_with_sam_learns_a_regression_and_ends_elsewhere_than_adamw():
    x, y = regression(128, dtype=torch.float32)
    untrained = F.mse_loss(mlp(6, torch.float32)(x), y).item()
    options = dict(steps=150, lr=0.02, batch=32, loss=F.mse_loss)
    with_sam = fit(mlp(6, torch.float32), x, y, sam_rho=0.05, **options)
    without = fit(mlp(6, torch.float32), x, y, sam_rho=0.0, **options)
    assert not all(torch.equal(a, b) for a, b in zip(with_sam.parameters(), without.parameters()))
    with torch.no_grad():
        assert F.mse_loss(with_sam(x), y).item() < 0.1 * untrained, untrained


def test_sam_with_one_cycle_converges_to_the_minimum_of_a_convex_quadratic():
    """L(w) = ½(w-c)ᵀA(w-c); the schedule also drives the base optimiser, which shares SAM's groups."""
    curvature = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    centre = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    w = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    optimizer = SAM([w], base=torch.optim.SGD, rho=0.1, lr=0.2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.2, total_steps=300, cycle_momentum=False)
    assert optimizer.base.param_groups is optimizer.param_groups
    rates = []

    def closure() -> torch.Tensor:
        value = 0.5 * (curvature * (w - centre) ** 2).sum()
        value.backward()
        return value

    for _ in range(300):
        optimizer.zero_grad()
        closure()
        optimizer.step(closure)
        schedule.step()
        rates.append(optimizer.base.param_groups[0]["lr"])
    assert max(rates) == pytest.approx(0.2, rel=1e-3) and rates[-1] < 1e-4
    assert torch.linalg.vector_norm(w.detach() - centre).item() < 1e-4


def test_state_dict_round_trip_keeps_the_base_moments_and_shared_groups():
    x, y = regression(16)
    model = mlp(7)
    optimizer = SAM(model.parameters(), rho=0.1, lr=0.01)
    sam_step(optimizer, model, x, y)
    saved = copy.deepcopy(optimizer.state_dict())
    again = SAM(model.parameters(), rho=0.5, lr=0.3)
    again.load_state_dict(saved)
    assert again.param_groups is again.base.param_groups
    assert again.param_groups[0]["rho"] == 0.1 and again.param_groups[0]["lr"] == 0.01
    first = next(iter(model.parameters()))
    assert torch.equal(again.base.state[first]["exp_avg"], optimizer.base.state[first]["exp_avg"])


@pytest.mark.parametrize("rho, message", [(0, "rho=0"), (-0.1, "rho=-0.1"), (float("nan"), "rho=nan"), (True, "rho=True")])
def test_sam_refuses_a_radius_that_is_not_positive(rho, message):
    with pytest.raises(ValueError, match=message):
        SAM(mlp().parameters(), rho=rho)


def test_sam_refuses_a_step_without_closure_and_a_base_that_is_not_an_optimiser():
    x, y = regression(8)
    model = mlp()
    optimizer = SAM(model.parameters(), lr=0.1)
    F.mse_loss(model(x), y).backward()
    with pytest.raises(ValueError, match="closure=None"):
        optimizer.step()
    with pytest.raises(ValueError, match="base="):
        SAM(model.parameters(), base=torch.optim.lr_scheduler.StepLR)


def test_a_failing_or_empty_closure_leaves_the_weights_where_they_were():
    x, y = regression(8)
    model = mlp()
    before = weights(model)
    optimizer = SAM(model.parameters(), base=torch.optim.SGD, lr=0.1)

    def broken() -> None:
        raise KeyError("no batch")

    F.mse_loss(model(x), y).backward()
    with pytest.raises(KeyError):
        optimizer.step(broken)
    F.mse_loss(model(x), y).backward()
    with pytest.raises(RuntimeError, match="backward"):
        optimizer.step(lambda: F.mse_loss(model(x), y))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


@pytest.mark.parametrize("sam_rho", [-0.1, float("inf"), "0.05", True])
def test_fit_refuses_a_bad_sam_rho_by_name(sam_rho):
    x, y = regression(8)
    with pytest.raises(ValueError, match="sam_rho="):
        fit(mlp(), x, y, steps=1, lr=1e-3, loss=F.mse_loss, sam_rho=sam_rho)
