"""Checkers for the exercises of notebook 12_state_space_models: the linear recurrence step by step, the same
recurrence by a parallel (Hillis-Steele) scan, and the zero-order-hold discretisation of a diagonal SSM.

The references are the packaged functions of `course_lib.models.mamba`: an answer that passes here computes
what `linear_scan_sequential` and `linear_scan_parallel` compute, and the (decay, input weight) pair that
`mamba_scan` and `S4DMixer` use before their simplifications.
"""

from __future__ import annotations

import torch
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.models.mamba import linear_scan_parallel, linear_scan_sequential


def _scan_cases(seed: int) -> list[Case]:
    generator = torch.Generator().manual_seed(seed)
    cases = [Case("a = [[1, 1, 1]], b = [[1, 2, 3]] (a running sum)",
                  (torch.ones(1, 3, dtype=torch.float64), torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)))]
    for shape in [(1, 5), (2, 7, 3), (3, 16, 2, 4), (2, 13, 5)]:
        a = torch.rand(*shape, generator=generator, dtype=torch.float64) * 1.5 - 0.5   # decays in [-0.5, 1)
        b = torch.randn(*shape, generator=generator, dtype=torch.float64)
        cases.append(Case(f"a, b {shape}", (a, b)))
    return cases


# --- linear_scan(a, b) ----------------------------------------------------------------------------------


def reference_linear_scan(a: Tensor, b: Tensor) -> Tensor:
    """Every state h_t = a_t * h_{t-1} + b_t along axis 1 of (batch, L, ...), from h_{-1} = 0."""
    return linear_scan_sequential(a, b)


def _scan_without_decay(a: Tensor, b: Tensor) -> Tensor:
    return b.cumsum(dim=1)


def _scan_last_only(a: Tensor, b: Tensor) -> Tensor:
    return linear_scan_sequential(a, b)[:, -1]


def _scan_decay_after(a: Tensor, b: Tensor) -> Tensor:
    h, states = torch.zeros_like(b[:, 0]), []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1), strict=True):
        h = a_t * (h + b_t)
        states.append(h)
    return torch.stack(states, dim=1)


def _scan_exclusive(a: Tensor, b: Tensor) -> Tensor:
    states = linear_scan_sequential(a, b)
    return torch.cat([torch.zeros_like(states[:, :1]), states[:, :-1]], dim=1)


linear_scan = FunctionChecker(
    "linear_scan",
    reference_linear_scan,
    lambda: _scan_cases(21),
    mistakes=[
        (_scan_without_decay, "the decay a is missing (this is a running sum of b); multiply the previous state "
         "by a_t before adding b_t."),
        (_scan_last_only, "only the last state is returned; collect every h_t and stack them on axis 1."),
        (_scan_decay_after, "the decay multiplies the new input too, h_t = a_t (h_{t-1} + b_t); it multiplies the "
         "previous state only: h_t = a_t h_{t-1} + b_t."),
        (_scan_exclusive, "the states are shifted by one step (h_{t-1} where h_t belongs); append h after "
         "updating it with step t."),
    ],
    hint="h = zeros_like(b[:, 0]); for a_t, b_t in zip(a.unbind(1), b.unbind(1)): h = a_t * h + b_t, "
    "append h; torch.stack(states, dim=1).",
)


# --- parallel_scan(a, b) --------------------------------------------------------------------------------


def reference_parallel_scan(a: Tensor, b: Tensor) -> Tensor:
    """The same states as `linear_scan`, by composing affine maps in ceil(log2 L) doubling steps."""
    return linear_scan_parallel(a, b)


def _parallel_with(*, wrong_order: bool = False, one_step: bool = False, forget_a: bool = False):
    def scan(a: Tensor, b: Tensor) -> Tensor:
        offset = 1
        while offset < a.shape[1]:
            a_now, a_back, b_back = a[:, offset:], a[:, :-offset], b[:, :-offset]
            combined = a_back * b[:, offset:] + b_back if wrong_order else a_now * b_back + b[:, offset:]
            b = torch.cat([b[:, :offset], combined], dim=1)
            if not forget_a:
                a = torch.cat([a[:, :offset], a_now * a_back], dim=1)
            offset *= 2
            if one_step:
                break
        return b
    return scan


parallel_scan = FunctionChecker(
    "parallel_scan",
    reference_parallel_scan,
    lambda: _scan_cases(22),
    mistakes=[
        (_parallel_with(wrong_order=True), "the maps compose in the wrong order: the later map acts last, so "
         "b_new = a_now * b_back + b_now (not a_back * b_now + b_back)."),
        (_parallel_with(forget_a=True), "a is never updated: after each step element t spans more steps, so "
         "its decay is the product a_now * a_back as well."),
        (_parallel_with(one_step=True), "only one doubling step ran; repeat with offset 1, 2, 4, ... while "
         "offset < L."),
    ],
    hint="offset = 1; while offset < L: b = cat([b[:, :offset], a[:, offset:] * b[:, :-offset] + b[:, offset:]], 1); "
    "a = cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], 1) (with the old a and b on the right); offset *= 2.",
)


# --- zoh(A, B, dt) --------------------------------------------------------------------------------------


def reference_zoh(A: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order hold of the diagonal SSM h' = A h + B u: (exp(dt A), (exp(dt A) - 1) / A * B), each (dim, N).

    A (dim, N) negative, B (dim, N), dt (dim,) positive; the input is held constant over each step.
    """
    dtA = dt[:, None] * A
    return torch.exp(dtA), torch.expm1(dtA) / A * B


def _zoh_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(23)
    cases = [Case("A = [[-1]], B = [[1]], dt = [1]", (torch.tensor([[-1.0]], dtype=torch.float64),
                                                      torch.tensor([[1.0]], dtype=torch.float64),
                                                      torch.tensor([1.0], dtype=torch.float64)))]
    for dim, n in [(2, 3), (4, 8), (3, 16)]:
        A = -torch.rand(dim, n, generator=generator, dtype=torch.float64) * 4 - 0.1
        B = torch.randn(dim, n, generator=generator, dtype=torch.float64)
        dt = torch.rand(dim, generator=generator, dtype=torch.float64) * 0.9 + 0.1
        cases.append(Case(f"A, B ({dim}, {n}), dt ({dim},)", (A, B, dt)))
    return cases


zoh = FunctionChecker(
    "zoh",
    reference_zoh,
    _zoh_cases,
    mistakes=[
        (lambda A, B, dt: (1 + dt[:, None] * A, dt[:, None] * B),
         "this is Euler's step (1 + dt A, dt B), exact only for tiny dt; the zero-order hold is exact for an "
         "input held constant: exp(dt A) and (exp(dt A) - 1) / A * B."),
        (lambda A, B, dt: (torch.exp(dt[:, None] * A), dt[:, None] * B),
         "the decay is right but B̄ = dt B is Mamba's simplification; the exact hold is (exp(dt A) - 1) / A * B."),
        (lambda A, B, dt: (torch.exp(dt[:, None] * A), torch.expm1(dt[:, None] * A) * B),
         "B̄ is missing the division by A: (exp(dt A) - 1) / A * B (for a diagonal A the inverse is 1 / A)."),
        (lambda A, B, dt: (torch.exp(A / dt[:, None]), torch.expm1(A / dt[:, None]) / A * B),
         "dt divides A; it multiplies it: exp(dt A)."),
    ],
    hint="dtA = dt[:, None] * A; return torch.exp(dtA), torch.expm1(dtA) / A * B.",
)
