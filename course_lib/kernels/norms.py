"""LayerNorm and RMSNorm over the last dimension: fused Triton kernels (forward and backward) and the
naive fp32 formulas they must match.

Blocking. Forward: one program per row loads the whole row once (BLOCK = next power of two >= dim,
tail lanes masked), reduces it to its mean and 1/std in fp32, writes the normalised row and saves
mean and rstd (two floats per row) for the backward, so the backward never recomputes them.
Backward: each program owns a contiguous run of rows. For each row it computes dx in registers
(dx needs only the row's own dot products, so rows are independent) and adds dy * x_hat (and dy) to
a dweight (and dbias) accumulator it keeps across its rows. Each program writes its accumulator
once to row `pid` of a (num_programs, dim) fp32 buffer; PyTorch sums that buffer over programs.
This avoids atomics and a (rows, dim) buffer of per-row partials.
"""

from __future__ import annotations

import torch
from torch import Tensor

from course_lib.kernels._triton import check_input, tl, triton

__all__ = ["layer_norm", "layer_norm_reference", "rms_norm", "rms_norm_reference"]

MAX_DIM = 16384  # one block holds the whole row; wider rows would spill registers


def layer_norm_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias, biased variance, in fp32, cast back to x's dtype."""
    x32 = x.float()
    mean = x32.mean(dim=-1, keepdim=True)
    var = ((x32 - mean) ** 2).mean(dim=-1, keepdim=True)
    y = (x32 - mean) / torch.sqrt(var + eps) * weight.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(mean(x**2) + eps) in fp32, cast to x's dtype, then times weight (the course's RMSNorm order)."""
    x32 = x.float()
    normed = x32 / torch.sqrt((x32 * x32).mean(dim=-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight


def _check(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> None:
    """Refuse inputs the kernels cannot take, naming the argument, before anything is launched."""
    check_input("x", x)
    check_input("weight", weight, ndim=1)
    if bias is not None:
        check_input("bias", bias, ndim=1)
    if x.ndim == 0:
        raise ValueError("x is a scalar (shape ()); a norm needs at least one dimension")
    dim = x.shape[-1]
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is None:
            continue
        if tuple(tensor.shape) != (dim,):
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected ({dim},), the last "
                             f"dimension of x (shape {tuple(x.shape)})")
        if tensor.device != x.device:
            raise ValueError(f"{name} is on {tensor.device} but x is on {x.device}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps={eps!r} must be a positive number (it keeps the division away from zero)")
    if dim > MAX_DIM:
        raise ValueError(f"x has last dimension {dim}; these kernels hold a row in one block, at most {MAX_DIM}")


def _launch_shape(x: Tensor) -> tuple[int, int, int, int]:
    """rows, dim, BLOCK and num_warps for a row-per-program launch over x's last dimension."""
    dim = x.shape[-1]
    block = triton.next_power_of_2(dim)
    num_warps = 4 if block <= 1024 else 8 if block <= 4096 else 16
    return x.numel() // dim, dim, block, num_warps


def _backward_programs(rows: int, device: torch.device) -> tuple[int, int]:
    """How many backward programs, and how many consecutive rows each one owns."""
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    rows_per_program = -(-rows // min(rows, target))
    return -(-rows // rows_per_program), rows_per_program


if triton is not None:

    @triton.jit
    def _layer_norm_fwd(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, dim, eps,
                        HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < dim
        x = tl.load(x_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / dim
        centred = tl.where(mask, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / dim + eps)
        y = centred * rstd * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y += tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * dim + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(mean_ptr + row, mean)
        tl.store(rstd_ptr + row, rstd)

    @triton.jit
    def _layer_norm_bwd(x_ptr, w_ptr, dy_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr,
                        rows, dim, rows_per_program, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < dim
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK], tl.float32)
        db = tl.zeros([BLOCK], tl.float32)
        first = pid * rows_per_program
        start = first.to(tl.int64) * dim  # pointers advance one row per step: 64-bit offsets throughout
        x_row, dy_row, dx_row = x_ptr + start, dy_ptr + start, dx_ptr + start
        for row in range(first, tl.minimum(first + rows_per_program, rows)):
            x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + row)
            x_hat = tl.where(mask, (x - tl.load(mean_ptr + row)) * rstd, 0.0)
            g = dy * w  # gradient with respect to x_hat
            # d/dx of (x - mean) * rstd: subtract g's mean and its projection on x_hat
            dx = (g - tl.sum(g, axis=0) / dim - x_hat * (tl.sum(g * x_hat, axis=0) / dim)) * rstd
            tl.store(dx_row + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            dw += dy * x_hat
            db += dy
            x_row += dim
            dy_row += dim
            dx_row += dim
        tl.store(dw_ptr + pid * dim + cols, dw, mask=mask)
        tl.store(db_ptr + pid * dim + cols, db, mask=mask)

    @triton.jit
    def _rms_norm_fwd(x_ptr, w_ptr, y_ptr, rstd_ptr, dim, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < dim
        x = tl.load(x_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / dim + eps)
        normed = (x * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)  # round to x's dtype before the scale
        y = normed * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * dim + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(rstd_ptr + row, rstd)

    @triton.jit
    def _rms_norm_bwd(x_ptr, w_ptr, dy_ptr, rstd_ptr, dx_ptr, dw_ptr, rows, dim, rows_per_program,
                      BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < dim
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK], tl.float32)
        first = pid * rows_per_program
        start = first.to(tl.int64) * dim  # pointers advance one row per step: 64-bit offsets throughout
        x_row, dy_row, dx_row = x_ptr + start, dy_ptr + start, dx_ptr + start
        for row in range(first, tl.minimum(first + rows_per_program, rows)):
            x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + row)
            x_hat = x * rstd
            g = (dy * w).to(x_ptr.dtype.element_ty).to(tl.float32)  # autograd rounds it to x's dtype at the cast
            dx = (g - x_hat * (tl.sum(g * x_hat, axis=0) / dim)) * rstd
            tl.store(dx_row + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            dw += dy * x_hat.to(x_ptr.dtype.element_ty).to(tl.float32)
            x_row += dim
            dy_row += dim
            dx_row += dim
        tl.store(dw_ptr + pid * dim + cols, dw, mask=mask)


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> Tensor:
        rows, dim, block, num_warps = _launch_shape(x)
        y = torch.empty_like(x)
        mean = torch.empty(rows, device=x.device, dtype=torch.float32)
        rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
        _layer_norm_fwd[(rows,)](x, weight, weight if bias is None else bias, y, mean, rstd, dim, eps,
                                 HAS_BIAS=bias is not None, BLOCK=block, num_warps=num_warps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.has_bias, ctx.bias_dtype = bias is not None, None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, Tensor, Tensor | None, None]:
        x, weight, mean, rstd = ctx.saved_tensors
        rows, dim, block, num_warps = _launch_shape(x)
        programs, rows_per_program = _backward_programs(rows, x.device)
        dx = torch.empty_like(x)
        dw = torch.empty(programs, dim, device=x.device, dtype=torch.float32)
        db = torch.empty_like(dw)
        _layer_norm_bwd[(programs,)](x, weight, dy.contiguous(), mean, rstd, dx, dw, db, rows, dim,
                                     rows_per_program, BLOCK=block, num_warps=num_warps)
        dbias = db.sum(dim=0).to(ctx.bias_dtype) if ctx.has_bias else None
        return dx, dw.sum(dim=0).to(weight.dtype), dbias, None


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        rows, dim, block, num_warps = _launch_shape(x)
        y = torch.empty(x.shape, device=x.device, dtype=torch.promote_types(x.dtype, weight.dtype))
        rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
        _rms_norm_fwd[(rows,)](x, weight, y, rstd, dim, eps, BLOCK=block, num_warps=num_warps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, Tensor, None]:
        x, weight, rstd = ctx.saved_tensors
        rows, dim, block, num_warps = _launch_shape(x)
        programs, rows_per_program = _backward_programs(rows, x.device)
        dx = torch.empty_like(x)
        dw = torch.empty(programs, dim, device=x.device, dtype=torch.float32)
        _rms_norm_bwd[(programs,)](x, weight, dy.contiguous(), rstd, dx, dw, rows, dim, rows_per_program,
                                   BLOCK=block, num_warps=num_warps)
        return dx, dw.sum(dim=0).to(weight.dtype), None


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last dimension of `x` (any leading shape), fused; differentiable in x, weight, bias.

    Statistics are computed in fp32; the output has x's dtype.
    """
    _check(x, weight, bias, eps)
    if x.numel() == 0:
        return torch.empty_like(x)
    return _LayerNorm.apply(x, weight, bias, float(eps))


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """RMSNorm over the last dimension of `x`, fused; differentiable in x and weight.

    Normalises in fp32, rounds to x's dtype, then scales by weight, like course_lib.nn.RMSNorm; the
    output dtype is x's and weight's promoted dtype, as there.
    """
    _check(x, weight, None, eps)
    if x.numel() == 0:
        return torch.empty(x.shape, device=x.device, dtype=torch.promote_types(x.dtype, weight.dtype))
    return _RMSNorm.apply(x, weight, float(eps))
