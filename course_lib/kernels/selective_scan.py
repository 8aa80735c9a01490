"""The Mamba selective scan (forward only): a Triton kernel and the sequential PyTorch loop it must match.

For each batch element, channel d and state n, with input-dependent step sizes delta and matrices B, C:

    h_t = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B[n, t] * u_t
    y_t = sum_n C[n, t] * h_t[n] + D[d] * u_t

Shapes follow the reference implementation of the Mamba paper: u, delta (batch, dim, L); A (dim, N);
B, C (batch, N, L); D, delta_bias (dim,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from course_lib.kernels._triton import check_input, tl, triton

__all__ = ["selective_scan", "selective_scan_reference"]

BLOCK_D = 16  # channels per program: their states are independent, so a block is pure parallelism


def _check(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
           delta_bias: Tensor | None, *, kernel: bool) -> None:
    """Refuse inconsistent shapes (and, for the kernel, tensors it cannot take) before any work is done."""
    for name, tensor, ndim in (("u", u, 3), ("delta", delta, 3), ("A", A, 2), ("B", B, 3), ("C", C, 3),
                               ("D", D, 1), ("delta_bias", delta_bias, 1)):
        if tensor is None:
            continue
        if kernel:
            check_input(name, tensor, ndim=ndim)
        elif not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        elif tensor.ndim != ndim:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected {ndim} dimensions")
    batch, dim, length = u.shape
    n_state = A.shape[1]
    expected = {"delta": (delta, (batch, dim, length)), "A": (A, (dim, n_state)),
                "B": (B, (batch, n_state, length)), "C": (C, (batch, n_state, length)),
                "D": (D, (dim,)), "delta_bias": (delta_bias, (dim,))}
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected {shape} "
                             f"(from u of shape (batch, dim, L) = {tuple(u.shape)} and A of shape (dim, N) = "
                             f"{tuple(A.shape)})")
    if kernel and any(t is not None and t.device != u.device for t in (delta, A, B, C, D, delta_bias)):
        raise ValueError(f"all inputs must be on u's device ({u.device})")


def selective_scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                             *, delta_bias: Tensor | None = None, delta_softplus: bool = False) -> Tensor:
    """The recurrence, one time step after another in fp32: slow, obviously right, the kernel's yardstick."""
    _check(u, delta, A, B, C, D, delta_bias, kernel=False)
    out_dtype = u.dtype
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)                       # (batch, dim, N)
        drive = (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        h = decay * h + drive
        ys.append((h * C[:, None, :, t]).sum(-1))                         # (batch, dim)
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.float()[:, None] * u
    return y.to(out_dtype)


if triton is not None:

    @triton.jit
    def _selective_scan_kernel(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, y_ptr,
                               dim, length, n_state,
                               HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                               BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
        batch = tl.program_id(0)
        channels = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        states = tl.arange(0, BLOCK_N)
        channel_ok = channels < dim
        state_ok = states < n_state
        a = tl.load(a_ptr + channels[:, None] * n_state + states[None, :],
                    mask=channel_ok[:, None] & state_ok[None, :], other=0.0).to(tl.float32)
        if HAS_D:
            d_skip = tl.load(d_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)
        row = batch * dim * length + channels * length   # start of each channel's sequence in u, delta, y
        bc_row = batch * n_state * length + states * length
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # padded states stay 0: their B is masked to 0
        for t in range(0, length):
            u = tl.load(u_ptr + row + t, mask=channel_ok, other=0.0).to(tl.float32)
            dt = tl.load(delta_ptr + row + t, mask=channel_ok, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:  # same threshold as F.softplus: above 20, softplus(x) == x in fp32
                dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
            b = tl.load(b_ptr + bc_row + t, mask=state_ok, other=0.0).to(tl.float32)
            c = tl.load(c_ptr + bc_row + t, mask=state_ok, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * a) * h + (dt * u)[:, None] * b[None, :]
            y = tl.sum(h * c[None, :], axis=1)
            if HAS_D:
                y = y + d_skip * u
            tl.store(y_ptr + row + t, y.to(y_ptr.dtype.element_ty), mask=channel_ok)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   *, delta_bias: Tensor | None = None, delta_softplus: bool = False) -> Tensor:
    """The selective scan as one Triton kernel; returns y of shape (batch, dim, L) in u's dtype.

    Blocking: one program per (batch element, block of BLOCK_D channels). Channels never interact, so
    each program keeps its (BLOCK_D, N) state in registers, in fp32, with N padded to a power of two
    (padded states are masked to zero), and reads u, delta, B, C once and writes y once: the state never
    touches global memory. Time is stepped through sequentially inside the program because h_t needs
    h_{t-1}; that is simple and exact, but leaves parallelism along L unused. Because the update
    h -> a * h + b composes associatively, a parallel (associative) scan over time is possible:
    that is the subject of Part III's notebook.
    """
    _check(u, delta, A, B, C, D, delta_bias, kernel=True)
    batch, dim, length = u.shape
    n_state = A.shape[1]
    y = torch.empty_like(u)
    if y.numel() == 0:
        return y
    grid = (batch, triton.cdiv(dim, BLOCK_D))
    _selective_scan_kernel[grid](
        u, delta, A, B, C, D if D is not None else u, delta_bias if delta_bias is not None else u, y,
        dim, length, n_state,
        HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        BLOCK_D=BLOCK_D, BLOCK_N=triton.next_power_of_2(n_state))
    return y
