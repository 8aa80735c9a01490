"""Sharpness-aware minimisation (SAM): step with the gradient taken at the worst nearby point of the loss.

"Sharpness-Aware Minimization for Efficiently Improving Generalization" (Foret et al., 2021) replaces the
gradient g = ∇L(w) by ∇L(w + e) with e = rho · g / ‖g‖, the first-order worst point of the loss within a ball of
radius rho (‖g‖ is the L2 norm of all parameters' gradients together). A base optimiser then steps from w with
that gradient, so each step costs two forward-backward passes. SAMformer trains its small transformer with it.

Usage: the caller runs `loss.backward()` once (gradients at w), then `optimizer.step(closure)`, where `closure()`
recomputes the loss on the same batch and calls `backward()` on it (at the perturbed weights):

    loss_fn(model(x), y).backward()
    optimizer.step(lambda: loss_fn(model(x), y).backward())

SAM shares its `param_groups` with the base optimiser, so a learning-rate schedule (e.g. OneCycleLR) that drives
SAM drives the base optimiser too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["SAM", "sam_perturbation"]


def _check_rho(rho: object, argument: str = "rho") -> None:
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho <= 0:
        raise ValueError(f"{argument}={rho!r} must be a positive finite number (the radius of the perturbation)")


def sam_perturbation(grads: Sequence[Tensor], rho: float) -> list[Tensor]:
    """SAM's step to the worst nearby point: e = rho · g / (‖g‖ + 1e-12) for each tensor of g, where ‖g‖ is the
    L2 norm of all the gradients together (one ball around all the weights, not one per tensor)."""
    _check_rho(rho)
    if not grads:
        raise ValueError("grads is empty; expected the gradient of every parameter to perturb")
    dtype = grads[0].dtype
    for grad in grads[1:]:
        dtype = torch.promote_types(dtype, grad.dtype)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g).to(grads[0].device, dtype) for g in grads]))
    return [g * (rho / (total + 1e-12)).to(g.device, g.dtype) for g in grads]


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation around a `base` optimiser (AdamW unless told otherwise), radius `rho`;
    `base_kwargs` (lr, weight_decay, ...) go to the base optimiser."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]],
                 base: type[torch.optim.Optimizer] = torch.optim.AdamW, rho: float = 0.05, **base_kwargs: Any) -> None:
        _check_rho(rho)
        if not (isinstance(base, type) and issubclass(base, torch.optim.Optimizer)):
            raise ValueError(f"base={base!r} must be a torch.optim.Optimizer class, e.g. torch.optim.AdamW")
        self.base = base(params, **base_kwargs)
        # The groups are the base optimiser's own dicts (with "rho" added), so schedules and zero_grad reach both.
        super().__init__(self.base.param_groups, {**self.base.defaults, "rho": rho})
        self.param_groups = self.base.param_groups

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimiser (the two share their groups); the group may set its own "rho"."""
        _check_rho(param_group.setdefault("rho", self.defaults["rho"]), "param_group['rho']")
        if not any(param_group is group for group in self.base.param_groups):
            self.base.add_param_group(param_group)

    @torch.no_grad()
    def first_step(self) -> None:
        """Move each parameter that has a gradient from w to w + rho·g/(‖g‖ + 1e-12), ‖g‖ over all of them
        together; remember w and clear the gradients for the pass at the perturbed point."""
        with_grad = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not with_grad:
            raise RuntimeError("SAM.first_step found no gradients; call loss.backward() before stepping")
        # one global norm over every group's gradients; each group's own rho scales its part
        unit = sam_perturbation([p.grad for p in with_grad], 1.0)
        steps = {id(p): e for p, e in zip(with_grad, unit)}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["w"] = p.detach().clone()  # restoring a copy is exact; subtracting e is not
                p.add_(steps[id(p)] * group["rho"])
        self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def _restore(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                weights = self.state[p].pop("w", None)
                if weights is not None:
                    p.copy_(weights)

    @torch.no_grad()
    def second_step(self) -> None:
        """Put every perturbed parameter back at w exactly, then let the base optimiser step with the gradients
        now held (those computed at w + e)."""
        self._restore()
        self.base.step()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One SAM step from the gradients already computed at w; `closure()` must recompute the loss on the same
        batch and call `backward()` (SAM has cleared the gradients before it). Returns what `closure` returns."""
        if closure is None or not callable(closure):
            raise ValueError(f"closure={closure!r}: SAM.step needs a closure that recomputes the loss and calls "
                             "backward(), since it evaluates the gradient a second time at the perturbed weights")
        self.first_step()
        try:
            with torch.enable_grad():
                loss = closure()
        except BaseException:
            self._restore()  # never leave the model at the perturbed point
            raise
        if all(p.grad is None for group in self.param_groups for p in group["params"]):
            self._restore()
            raise RuntimeError("the closure computed no gradients; it must call backward() on the recomputed loss")
        self.second_step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimiser's state (its moments, and the groups with their "rho"); SAM keeps nothing between steps."""
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the base optimiser's state and share its (new) groups again."""
        self.base.load_state_dict(state_dict)
        self.param_groups = self.base.param_groups
