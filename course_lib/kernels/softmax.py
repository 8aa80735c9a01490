"""Row softmax over the last dimension: a fused Triton kernel and the plain PyTorch formula it must match.

Blocking: one program per row. A row that fits in one block (BLOCK = next power of two >= width,
up to MAX_BLOCK) is loaded once into registers; the program takes its max, exponentiates, sums and
stores, so memory sees 1 read + 1 write of the row. Eager PyTorch (max, subtract, exp, sum, divide)
reads and writes the row several times. A wider row is walked in BLOCK-wide tiles twice: a first
pass keeps a running max and a running sum of exp(x - max) (the "online softmax" rescaling), a second
pass writes exp(x - max) / sum: 2 reads + 1 write. Masked tail lanes read -inf, so they add exp(-inf) = 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from course_lib.kernels._triton import check_input, tl, triton

__all__ = ["softmax", "softmax_reference"]

MAX_BLOCK = 4096  # widest tile held in registers; wider rows take the two-pass loop


def softmax_reference(x: Tensor) -> Tensor:
    """Softmax over the last dimension, computed in fp32 and cast back: the kernel's yardstick."""
    return torch.softmax(x.float(), dim=-1).to(x.dtype)


if triton is not None:

    @triton.jit
    def _softmax_kernel(x_ptr, y_ptr, width, BLOCK: tl.constexpr, ONE_BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * width
        y_row = y_ptr + row * width
        cols = tl.arange(0, BLOCK)
        if ONE_BLOCK:
            mask = cols < width
            x = tl.load(x_row + cols, mask=mask, other=-float("inf")).to(tl.float32)
            e = tl.exp(x - tl.max(x, axis=0))
            tl.store(y_row + cols, (e / tl.sum(e, axis=0)).to(y_ptr.dtype.element_ty), mask=mask)
        else:
            # pass 1: each lane keeps its own running max m and sum s of exp(x - m)
            m = tl.full([BLOCK], -float("inf"), tl.float32)
            s = tl.zeros([BLOCK], tl.float32)
            for start in range(0, width, BLOCK):
                mask = start + cols < width
                x = tl.load(x_row + start + cols, mask=mask, other=-float("inf")).to(tl.float32)
                m_new = tl.maximum(m, x)
                m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # a lane that saw only -inf stays at s = 0
                s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
                m = m_new
            row_max = tl.max(m, axis=0)
            row_sum = tl.sum(s * tl.exp(m - row_max), axis=0)
            # pass 2: normalise and store
            for start in range(0, width, BLOCK):
                mask = start + cols < width
                x = tl.load(x_row + start + cols, mask=mask, other=-float("inf")).to(tl.float32)
                y = tl.exp(x - row_max) / row_sum
                tl.store(y_row + start + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def _num_warps(block: int) -> int:
    return 4 if block <= 1024 else 8 if block <= 2048 else 16


def softmax(x: Tensor, *, max_block: int = MAX_BLOCK) -> Tensor:
    """Softmax over the last dimension of `x` (any shape), in fp32, stored in x's dtype.

    `max_block` (a power of two) caps the tile width; rows wider than it take the two-pass loop.
    Forward only: the result carries no gradient.
    """
    check_input("x", x)
    if x.ndim == 0:
        raise ValueError("x is a scalar (shape ()); softmax needs at least one dimension")
    if max_block < 1 or max_block & (max_block - 1):
        raise ValueError(f"max_block={max_block!r} must be a positive power of two")
    y = torch.empty_like(x)
    width = x.shape[-1]
    if x.numel() == 0:
        return y
    rows = x.numel() // width  # x is contiguous, so row r starts at r * width: no reshape needed
    block = min(triton.next_power_of_2(width), max_block)
    _softmax_kernel[(rows,)](x, y, width, BLOCK=block, ONE_BLOCK=block >= width, num_warps=_num_warps(block))
    return y
