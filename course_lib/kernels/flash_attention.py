"""FlashAttention (forward and backward) in Triton, and the plain PyTorch attention it must match.

Blocking: one program owns BLOCK_M query rows of one (batch, head) and walks over the keys in blocks
of BLOCK_N. For each key block it forms the (BLOCK_M, BLOCK_N) scores, updates a running row maximum m
and running row sum l (the online softmax), rescales the output accumulator by exp(m_old - m_new) and
adds P @ V. Only O and the per-row logsumexp (log2 units) go back to memory, never the T x T weights.
With `causal` the key loop stops after the block holding the diagonal. The backward (FlashAttention-2
layout, no atomics) recomputes P from the logsumexp: one kernel per key block accumulates dK and dV over
the query blocks, another per query block accumulates dQ, both using delta = rowsum(dO * O).

Causal masking is top-left aligned, as in `torch.nn.functional.scaled_dot_product_attention(is_causal=True)`:
query i sees keys 0..i, also when the query and key lengths differ. The head dimension (16 to 128) is
padded to a power of two inside the kernel and the padding masked, so 24, 48, 80 or 96 work too.
"""

import math

import torch
from torch import Tensor

from course_lib.kernels._triton import check_input, interpreting, tl, triton

__all__ = ["attention_reference", "flash_attention"]

MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128
LOG2E = 1.4426950408889634  # the kernels use exp2: exp(x) = exp2(x * log2(e))


def attention_reference(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None) -> Tensor:
    """softmax(q kᵀ · scale) v in fp32 with plain PyTorch ops (top-left causal mask): the kernels' yardstick."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale
    if causal:
        allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype)


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Refuse, with the argument and its value in the message, what the kernels cannot take."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        check_input(name, tensor, ndim=4, dtypes=(torch.float16, torch.bfloat16, torch.float32))
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape (B, H, Tk, D)")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share batch, heads and head dim "
                         "(shapes (B, H, Tq, D) and (B, H, Tk, D))")
    head_dim = q.shape[3]
    if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim D={head_dim} must lie in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]")
    if q.shape[2] < 1 or k.shape[2] < 1:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} need at least one query and one key")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v have dtypes {q.dtype}, {k.dtype}, {v.dtype}; they must match")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v are on {q.device}, {k.device}, {v.device}; they must share a device")


def _blocks(head_dim: int, *, backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D): small tiles in the slow interpreter, larger ones on a GPU, smaller again
    for wide heads in the backward (it holds four tiles of BLOCK_D columns in shared memory)."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    if interpreting():
        return 16, 16, block_d
    if block_d <= 64:
        return 64, 64, block_d
    return (32, 32, block_d) if backward else (64, 32, block_d)


if triton is not None:

    @triton.jit
    def _flash_forward_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, seq_q, seq_k, head_dim, qk_scale,
                              CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_D: tl.constexpr):
        """One program: BLOCK_M query rows of one (batch, head); O and logsumexp (log2 units) out."""
        start_m = tl.program_id(0) * BLOCK_M
        bh = tl.program_id(1).to(tl.int64)
        q_ptr += bh * seq_q * head_dim
        o_ptr += bh * seq_q * head_dim
        k_ptr += bh * seq_k * head_dim
        v_ptr += bh * seq_k * head_dim
        lse_ptr += bh * seq_q
        rows = start_m + tl.arange(0, BLOCK_M)
        cols_d = tl.arange(0, BLOCK_D)
        row_ok = rows < seq_q
        d_ok = cols_d < head_dim
        q = tl.load(q_ptr + rows[:, None] * head_dim + cols_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)

        m = tl.full([BLOCK_M], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        end_n = seq_k
        if CAUSAL:  # stop after the block holding the diagonal
            end_n = tl.minimum(seq_k, start_m + BLOCK_M)
        for start_n in range(0, end_n, BLOCK_N):
            keys = start_n + tl.arange(0, BLOCK_N)
            kv_mask = (keys < seq_k)[:, None] & d_ok[None, :]
            k = tl.load(k_ptr + keys[:, None] * head_dim + cols_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_ptr + keys[:, None] * head_dim + cols_d[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
            allowed = (keys < seq_k)[None, :]
            if CAUSAL:
                allowed = allowed & (keys[None, :] <= rows[:, None])
            s = tl.where(allowed, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))  # finite: key 0 is in every row's first block
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m - m_new)  # rescales what was summed under the old maximum
            row_sum = row_sum * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            m = m_new

        out = acc / row_sum[:, None]
        tl.store(o_ptr + rows[:, None] * head_dim + cols_d[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok[None, :])
        tl.store(lse_ptr + rows, m + tl.log2(row_sum), mask=row_ok)

    @triton.jit
    def _flash_backward_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                                    seq_q, seq_k, head_dim, qk_scale, scale,
                                    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                    BLOCK_D: tl.constexpr):
        """One program: BLOCK_N keys of one (batch, head); dK and dV summed over the query blocks."""
        start_n = tl.program_id(0) * BLOCK_N
        bh = tl.program_id(1).to(tl.int64)
        q_ptr += bh * seq_q * head_dim
        do_ptr += bh * seq_q * head_dim
        k_ptr += bh * seq_k * head_dim
        v_ptr += bh * seq_k * head_dim
        dk_ptr += bh * seq_k * head_dim
        dv_ptr += bh * seq_k * head_dim
        lse_ptr += bh * seq_q
        delta_ptr += bh * seq_q
        keys = start_n + tl.arange(0, BLOCK_N)
        cols_d = tl.arange(0, BLOCK_D)
        d_ok = cols_d < head_dim
        kv_mask = (keys < seq_k)[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + keys[:, None] * head_dim + cols_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + keys[:, None] * head_dim + cols_d[None, :], mask=kv_mask, other=0.0)

        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        begin_m = 0
        if CAUSAL:  # queries before these keys never see them
            begin_m = (start_n // BLOCK_M) * BLOCK_M
        for start_m in range(begin_m, seq_q, BLOCK_M):
            rows = start_m + tl.arange(0, BLOCK_M)
            row_ok = rows < seq_q
            q_mask = row_ok[:, None] & d_ok[None, :]
            q = tl.load(q_ptr + rows[:, None] * head_dim + cols_d[None, :], mask=q_mask, other=0.0)
            do = tl.load(do_ptr + rows[:, None] * head_dim + cols_d[None, :], mask=q_mask, other=0.0)
            lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
            delta = tl.load(delta_ptr + rows, mask=row_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
            allowed = row_ok[:, None] & (keys < seq_k)[None, :]
            if CAUSAL:
                allowed = allowed & (keys[None, :] <= rows[:, None])
            p = tl.where(allowed, tl.exp2(s - lse[:, None]), 0.0)  # the softmax weights, recomputed
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision="ieee")
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
            ds = p * (dp - delta[:, None])  # gradient of the scores through the softmax
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision="ieee")

        tl.store(dk_ptr + keys[:, None] * head_dim + cols_d[None, :], (dk * scale).to(dk_ptr.dtype.element_ty),
                 mask=kv_mask)
        tl.store(dv_ptr + keys[:, None] * head_dim + cols_d[None, :], dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)

    @triton.jit
    def _flash_backward_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                                  seq_q, seq_k, head_dim, qk_scale, scale,
                                  CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                  BLOCK_D: tl.constexpr):
        """One program: BLOCK_M queries of one (batch, head); dQ summed over the key blocks."""
        start_m = tl.program_id(0) * BLOCK_M
        bh = tl.program_id(1).to(tl.int64)
        q_ptr += bh * seq_q * head_dim
        do_ptr += bh * seq_q * head_dim
        dq_ptr += bh * seq_q * head_dim
        k_ptr += bh * seq_k * head_dim
        v_ptr += bh * seq_k * head_dim
        lse_ptr += bh * seq_q
        delta_ptr += bh * seq_q
        rows = start_m + tl.arange(0, BLOCK_M)
        cols_d = tl.arange(0, BLOCK_D)
        row_ok = rows < seq_q
        d_ok = cols_d < head_dim
        q_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(q_ptr + rows[:, None] * head_dim + cols_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(do_ptr + rows[:, None] * head_dim + cols_d[None, :], mask=q_mask, other=0.0)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        delta = tl.load(delta_ptr + rows, mask=row_ok, other=0.0)

        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        end_n = seq_k
        if CAUSAL:
            end_n = tl.minimum(seq_k, start_m + BLOCK_M)
        for start_n in range(0, end_n, BLOCK_N):
            keys = start_n + tl.arange(0, BLOCK_N)
            kv_mask = (keys < seq_k)[:, None] & d_ok[None, :]
            k = tl.load(k_ptr + keys[:, None] * head_dim + cols_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_ptr + keys[:, None] * head_dim + cols_d[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
            allowed = row_ok[:, None] & (keys < seq_k)[None, :]
            if CAUSAL:
                allowed = allowed & (keys[None, :] <= rows[:, None])
            p = tl.where(allowed, tl.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")

        tl.store(dq_ptr + rows[:, None] * head_dim + cols_d[None, :], (dq * scale).to(dq_ptr.dtype.element_ty),
                 mask=q_mask)


def _forward(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    """Launch the forward kernel: (output like q, logsumexp (B, H, Tq) in fp32 and log2 units)."""
    batch, heads, seq_q, head_dim = q.shape
    block_m, block_n, block_d = _blocks(head_dim)
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, seq_q, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(seq_q, block_m), batch * heads)
    _flash_forward_kernel[grid](q, k, v, out, lse, seq_q, k.shape[2], head_dim, scale * LOG2E,
                                CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
    return out, lse


def _backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor,
              causal: bool, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the two backward kernels: (dq, dk, dv)."""
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    block_m, block_n, block_d = _blocks(head_dim, backward=True)
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()  # rowsum(dO * O) = rowsum(P * dP)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    common = dict(CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
    _flash_backward_dkdv_kernel[(triton.cdiv(seq_k, block_n), batch * heads)](
        q, k, v, grad_out, lse, delta, dk, dv, seq_q, seq_k, head_dim, scale * LOG2E, scale, **common)
    _flash_backward_dq_kernel[(triton.cdiv(seq_q, block_m), batch * heads)](
        q, k, v, grad_out, lse, delta, dq, seq_q, seq_k, head_dim, scale * LOG2E, scale, **common)
    return dq, dk, dv


class _FlashAttention(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, the output and the logsumexp; the backward recomputes P."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float) -> Tensor:
        out, lse = _forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, out, lse, grad_out.contiguous(), ctx.causal, ctx.scale)
        return dq, dk, dv, None, None


def flash_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None) -> Tensor:
    """softmax(q kᵀ · scale) v for q (B, H, Tq, D) and k, v (B, H, Tk, D), never forming the Tq x Tk weights.

    `scale` defaults to 1/√D; `causal` masks top-left aligned (query i sees keys 0..i), like PyTorch's
    `scaled_dot_product_attention(is_causal=True)`. Differentiable in q, k and v.
    """
    _check(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _FlashAttention.apply(q, k, v, bool(causal), scale)
