"""The checkers of notebook 04_gpu_kernels: right kernels pass, kernels with a planted mistake fail and say why.

The kernels here are written the way a learner would write them in the notebook. Without a GPU they run
in Triton's CPU interpreter: conftest sets TRITON_INTERPRET=1 before this module defines them.
"""

from __future__ import annotations

import math

import pytest
import torch
from checking import fails, passes

from course_lib.checks import kernels as check

triton = pytest.importorskip("triton")
tl = triton.language


# --- softmax ---------------------------------------------------------------------------------------


@triton.jit
def _softmax_kernel(x_ptr, y_ptr, width, BLOCK: tl.constexpr, TAIL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < width
    x = tl.load(x_ptr + row * width + cols, mask=mask, other=TAIL).to(tl.float32)
    e = tl.exp(x - tl.max(x, axis=0))
    tl.store(y_ptr + row * width + cols, (e / tl.sum(e, axis=0)).to(y_ptr.dtype.element_ty), mask=mask)


def _softmax_launcher(tail: float):
    def launch(x):
        y = torch.empty_like(x)
        width = x.shape[-1]
        _softmax_kernel[(x.numel() // width,)](x, y, width, BLOCK=triton.next_power_of_2(width), TAIL=tail)
        return y
    return launch


def test_softmax_checker(capsys):
    passes(check.softmax, _softmax_launcher(-float("inf")), capsys)
    message = fails(check.softmax, _softmax_launcher(0.0), capsys, "differ")
    assert "tail" in message and "-inf" in message


@triton.jit
def _unwritten_kernel(x_ptr, y_ptr, width, BLOCK: tl.constexpr):
    raise NotImplementedError


def test_softmax_checker_reports_an_unwritten_kernel(capsys):
    """The exercise copy's `raise NotImplementedError` inside a kernel reads as 'not implemented yet'."""
    def unwritten(x):
        y = torch.empty_like(x)
        _unwritten_kernel[(x.shape[0],)](x, y, x.shape[-1], BLOCK=triton.next_power_of_2(x.shape[-1]))
        return y
    fails(check.softmax, unwritten, capsys, "not implemented")


# --- layer_norm ------------------------------------------------------------------------------------


@triton.jit
def _layer_norm_kernel(x_ptr, w_ptr, b_ptr, y_ptr, dim, eps, BLOCK: tl.constexpr, MASK_VAR: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < dim
    x = tl.load(x_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / dim
    centred = x - mean
    if MASK_VAR:
        centred = tl.where(mask, centred, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / dim + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * dim + cols, (centred * rstd * w + b).to(y_ptr.dtype.element_ty), mask=mask)


def _layer_norm_launcher(mask_var: bool):
    def launch(x, weight, bias, eps=1e-5):
        y = torch.empty_like(x)
        dim = x.shape[-1]
        _layer_norm_kernel[(x.numel() // dim,)](x, weight, bias, y, dim, eps,
                                                BLOCK=triton.next_power_of_2(dim), MASK_VAR=mask_var)
        return y
    return launch


def test_layer_norm_checker(capsys):
    passes(check.layer_norm, _layer_norm_launcher(True), capsys)
    message = fails(check.layer_norm, _layer_norm_launcher(False), capsys, "differ")
    assert "tail" in message and "variance" in message


def test_layer_norm_checker_names_the_unbiased_variance(capsys):
    def unbiased(x, weight, bias, eps=1e-5):
        x32 = x.float()
        mean = x32.mean(-1, keepdim=True)
        return ((x32 - mean) / torch.sqrt(x32.var(-1, keepdim=True) + eps) * weight.float() + bias.float()).to(x.dtype)
    assert "dim - 1" in fails(check.layer_norm, unbiased, capsys, "differ")


# --- online_attention ------------------------------------------------------------------------------


def _online_attention(rescale_acc: bool):
    def online(q, k, v, block):
        scale = 1.0 / math.sqrt(q.shape[-1])
        m = torch.full((q.shape[0],), float("-inf"))
        row_sum = torch.zeros(q.shape[0])
        acc = torch.zeros(q.shape[0], v.shape[-1])
        for start in range(0, k.shape[0], block):
            s = q @ k[start:start + block].T * scale
            m_new = torch.maximum(m, s.amax(-1))
            p = torch.exp(s - m_new[:, None])
            alpha = torch.exp(m - m_new)
            row_sum = row_sum * alpha + p.sum(-1)
            acc = (acc * alpha[:, None] if rescale_acc else acc) + p @ v[start:start + block]
            m = m_new
        return acc / row_sum[:, None]
    return online


def test_online_attention_checker(capsys):
    passes(check.online_attention, _online_attention(True), capsys)
    message = fails(check.online_attention, _online_attention(False), capsys, "differ")
    assert "accumulator is not" in message


# --- flash_forward ---------------------------------------------------------------------------------


@triton.jit
def _flash_kernel(q_ptr, k_ptr, v_ptr, o_ptr, seq, dim, scale, CAUSAL: tl.constexpr, DIAGONAL: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    offset = tl.program_id(1).to(tl.int64) * seq * dim
    rows = start_m + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    q_mask = (rows < seq)[:, None] & (cols < dim)[None, :]
    q = tl.load(q_ptr + offset + rows[:, None] * dim + cols[None, :], mask=q_mask, other=0.0)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    end_n = seq
    if CAUSAL:
        end_n = tl.minimum(seq, start_m + BLOCK_M)
    for start_n in range(0, end_n, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (keys < seq)[:, None] & (cols < dim)[None, :]
        k = tl.load(k_ptr + offset + keys[:, None] * dim + cols[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + offset + keys[:, None] * dim + cols[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        allowed = (keys < seq)[None, :]
        if CAUSAL:
            if DIAGONAL:
                allowed = allowed & (keys[None, :] <= rows[:, None])
            else:
                allowed = allowed & (keys[None, :] < rows[:, None])
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m - m_safe)
        row_sum = row_sum * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m = m_new
    out = acc / row_sum[:, None]
    tl.store(o_ptr + offset + rows[:, None] * dim + cols[None, :], out.to(o_ptr.dtype.element_ty), mask=q_mask)


def _flash_launcher(diagonal: bool):
    def launch(q, k, v, causal=False):
        batch, heads, seq, dim = q.shape
        out = torch.empty_like(q)
        grid = (triton.cdiv(seq, 16), batch * heads)
        _flash_kernel[grid](q, k, v, out, seq, dim, 1.0 / math.sqrt(dim), CAUSAL=causal, DIAGONAL=diagonal,
                            BLOCK_M=16, BLOCK_N=16, BLOCK_D=max(16, triton.next_power_of_2(dim)))
        return out
    return launch


def test_flash_forward_checker(capsys):
    passes(check.flash_forward, _flash_launcher(True), capsys)
    message = fails(check.flash_forward, _flash_launcher(False), capsys, "differ|nan")
    assert "own key" in message
