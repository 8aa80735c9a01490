"""Checkers for the exercises of notebook 04_gpu_kernels: a row softmax kernel, a LayerNorm forward kernel,
the online softmax on blocks, and the causal FlashAttention forward.

Each checker calls the learner's launcher on several shapes, including sizes that are not a multiple of
the block (the masked tail is where kernels go wrong), in fp32 and fp16, and compares with the plain
PyTorch references of `course_lib.kernels`. The inputs live on the GPU when there is one; otherwise on
the CPU, where the learner's kernels run in Triton's interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.kernels.flash_attention import attention_reference
from course_lib.kernels.norms import layer_norm_reference
from course_lib.kernels.softmax import softmax_reference

FP16_ATOL, FP16_RTOL = 2e-3, 1e-2  # fp16 keeps about 3 decimal digits; the checkers accept fp16 rounding


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class KernelChecker(FunctionChecker):
    """A FunctionChecker that recognises an unwritten exercise inside a kernel: Triton wraps the kernel's
    `raise NotImplementedError` in its own error (InterpreterError on the CPU, CompilationError on a GPU)."""

    def __call__(self, function: Callable) -> bool:
        def unwrapped(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except NotImplementedError:
                raise
            except Exception as error:
                if "NotImplementedError" in f"{error!r} {error}":
                    raise NotImplementedError from error
                raise

        return super().__call__(unwrapped)


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# --- softmax(x): a row softmax kernel, one program per row ---------------------------------------------


def _softmax_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(4)
    cases = []
    for rows, width, dtype in [(3, 16, torch.float32), (4, 7, torch.float32), (5, 100, torch.float32),
                               (2, 1, torch.float32), (3, 130, torch.float16), (2, 33, torch.float16)]:
        x = (4.0 * torch.randn(rows, width, generator=generator)).to(dtype).to(_device())
        cases.append(Case(f"x of shape {(rows, width)} in {dtype}", (x,)))
    return cases


def _softmax_zero_padded(x: Tensor) -> Tensor:
    """The masked tail read as 0 instead of -inf: padded lanes add exp(0 - max) to the sum."""
    width = x.shape[-1]
    padded = F.pad(x.float(), (0, _next_power_of_2(width) - width), value=0.0)
    return torch.softmax(padded, dim=-1)[..., :width].to(x.dtype)


def _softmax_no_normalise(x: Tensor) -> Tensor:
    x32 = x.float()
    return torch.exp(x32 - x32.amax(dim=-1, keepdim=True)).to(x.dtype)


softmax = KernelChecker(
    "softmax",
    softmax_reference,
    _softmax_cases,
    mistakes=[
        (_softmax_zero_padded, "the masked tail lanes are loaded as 0 (the default `other`), so they add "
                               "exp(0 - max) to the sum; load them with other=-float('inf') so they add exp(-inf) = 0"),
        (_softmax_no_normalise, "the row is exponentiated but never divided by its sum"),
    ],
    hint="load the row with mask=cols < width and other=-float('inf'); subtract tl.max(x, axis=0) before tl.exp; "
         "divide by tl.sum(e, axis=0). Work in fp32 (.to(tl.float32)) and store in the output's dtype.",
    atol=FP16_ATOL, rtol=FP16_RTOL,
)


# --- layer_norm(x, weight, bias, eps): the LayerNorm forward kernel -----------------------------------


def _layer_norm_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(5)
    cases = []
    for rows, dim, dtype in [(3, 16, torch.float32), (4, 10, torch.float32), (2, 100, torch.float32),
                             (3, 48, torch.float16), (2, 7, torch.float16)]:
        x = (2.0 * torch.randn(rows, dim, generator=generator) + 1.5).to(dtype)
        weight = (1.0 + 0.5 * torch.randn(dim, generator=generator)).to(dtype)
        bias = (0.5 * torch.randn(dim, generator=generator)).to(dtype)
        device = _device()
        cases.append(Case(f"x of shape {(rows, dim)} in {dtype}", (x.to(device), weight.to(device), bias.to(device)),
                          {"eps": 1e-5}))
    return cases


def _layer_norm_unmasked_variance(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """The padded lanes (x = 0) enter the variance as (0 - mean)**2."""
    dim = x.shape[-1]
    x32 = x.float()
    mean = x32.mean(dim=-1, keepdim=True)
    padded = F.pad(x32, (0, _next_power_of_2(dim) - dim), value=0.0)
    var = ((padded - mean) ** 2).sum(dim=-1, keepdim=True) / dim
    return ((x32 - mean) / torch.sqrt(var + eps) * weight.float() + bias.float()).to(x.dtype)


def _layer_norm_unbiased(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    x32 = x.float()
    mean = x32.mean(dim=-1, keepdim=True)
    var = x32.var(dim=-1, keepdim=True, unbiased=True)
    return ((x32 - mean) / torch.sqrt(var + eps) * weight.float() + bias.float()).to(x.dtype)


def _layer_norm_no_affine(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    return layer_norm_reference(x, torch.ones_like(weight), None, eps)


layer_norm = KernelChecker(
    "layer_norm",
    layer_norm_reference,
    _layer_norm_cases,
    mistakes=[
        (_layer_norm_unmasked_variance, "the masked tail lanes enter the variance: they hold x = 0, so x - mean "
                                        "is -mean there; zero them with tl.where(mask, x - mean, 0.0) before squaring"),
        (_layer_norm_unbiased, "the variance is divided by dim - 1; LayerNorm uses the biased variance (divide by dim)"),
        (_layer_norm_no_affine, "the normalised row is not multiplied by weight and shifted by bias"),
    ],
    hint="mean = tl.sum(x, axis=0) / dim; centred = tl.where(mask, x - mean, 0.0); "
         "rstd = 1 / tl.sqrt(tl.sum(centred * centred, axis=0) / dim + eps); y = centred * rstd * w + b.",
    atol=FP16_ATOL, rtol=FP16_RTOL,
)


# --- online_attention(q, k, v, block): softmax attention over key blocks, in plain PyTorch ------------


def reference_online_attention(q: Tensor, k: Tensor, v: Tensor, block: int) -> Tensor:
    """What the blockwise computation must equal: plain softmax attention (the block size changes nothing)."""
    return attention_reference(q, k, v)


def _online_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(6)
    cases = []
    for tq, tk, dim, block in [(4, 8, 4, 4), (5, 16, 8, 4), (3, 10, 8, 4), (6, 33, 16, 8), (2, 7, 4, 16)]:
        q, k, v = (torch.randn(n, dim, generator=generator) for n in (tq, tk, tk))
        cases.append(Case(f"q {(tq, dim)}, k and v {(tk, dim)}, block={block}", (3.0 * q, k, v, block)))
    return cases


def _online_steps(q: Tensor, k: Tensor, v: Tensor, block: int, *, rescale_sum: bool, rescale_acc: bool,
                  normalise: bool = True) -> Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1])
    m = torch.full((q.shape[0],), float("-inf"))
    row_sum = torch.zeros(q.shape[0])
    acc = torch.zeros(q.shape[0], v.shape[-1])
    for start in range(0, k.shape[0], block):
        s = (q @ k[start:start + block].T) * scale
        m_new = torch.maximum(m, s.amax(dim=-1))
        p = torch.exp(s - m_new[:, None])
        alpha = torch.exp(m - m_new)
        row_sum = (row_sum * alpha if rescale_sum else row_sum) + p.sum(dim=-1)
        acc = (acc * alpha[:, None] if rescale_acc else acc) + p @ v[start:start + block]
        m = m_new
    return acc / row_sum[:, None] if normalise else acc


def _online_no_acc_rescale(q, k, v, block):
    return _online_steps(q, k, v, block, rescale_sum=True, rescale_acc=False)


def _online_no_sum_rescale(q, k, v, block):
    return _online_steps(q, k, v, block, rescale_sum=False, rescale_acc=True)


def _online_no_rescale(q, k, v, block):
    return _online_steps(q, k, v, block, rescale_sum=False, rescale_acc=False)


def _online_unnormalised(q, k, v, block):
    return _online_steps(q, k, v, block, rescale_sum=True, rescale_acc=True, normalise=False)


online_attention = FunctionChecker(
    "online_attention",
    reference_online_attention,
    _online_cases,
    mistakes=[
        (_online_no_rescale, "neither the running sum nor the accumulator is rescaled when the maximum grows: "
                             "both were summed under the old maximum, multiply them by alpha = exp(m_old - m_new)"),
        (_online_no_acc_rescale, "the running sum is rescaled but the accumulator is not: multiply acc by "
                                 "alpha[:, None] too, before adding p @ v"),
        (_online_no_sum_rescale, "the accumulator is rescaled but the running sum is not: multiply row_sum by alpha too"),
        (_online_unnormalised, "the output is the accumulator itself: divide it by the running sum at the end"),
    ],
    hint="with m_new = max(m, s.amax(-1)) and alpha = exp(m - m_new): row_sum = row_sum * alpha + p.sum(-1) and "
         "acc = acc * alpha[:, None] + p @ v_block, with p = exp(s - m_new[:, None]).",
    atol=1e-5, rtol=1e-4,
)


# --- flash_forward(q, k, v, causal): the FlashAttention forward kernel --------------------------------


def reference_flash_forward(q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
    return attention_reference(q, k, v, causal=causal)


def _flash_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(7)
    cases = []
    for batch, heads, seq, dim, causal, dtype in [(1, 1, 16, 16, False, torch.float32),
                                                  (1, 2, 40, 16, False, torch.float32),
                                                  (1, 1, 32, 16, True, torch.float32),
                                                  (1, 2, 40, 24, True, torch.float32),
                                                  (1, 1, 23, 16, True, torch.float16)]:
        q, k, v = (torch.randn(batch, heads, seq, dim, generator=generator).to(dtype).to(_device()) for _ in range(3))
        cases.append(Case(f"q, k, v of shape {(batch, heads, seq, dim)} in {dtype}, causal={causal}",
                          (q, k, v), {"causal": causal}))
    return cases


def _flash_not_causal(q, k, v, causal=False):
    return attention_reference(q, k, v, causal=False) if causal else None


def _flash_strictly_causal(q, k, v, causal=False):
    """Each query sees only earlier keys (not itself); the first row then sees nothing."""
    if not causal:
        return None
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril(-1)
    return (torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v.float()).to(q.dtype)


flash_forward = KernelChecker(
    "flash_forward",
    reference_flash_forward,
    _flash_cases,
    mistakes=[
        (_flash_not_causal, "the causal case attends to every key: it still needs the mask keys <= rows inside "
                            "each block, besides the early stop of the loop"),
        (_flash_strictly_causal, "each query misses its own key: the diagonal is allowed (keys <= rows)"),
    ],
    hint="a program owns query rows start_m .. start_m + BLOCK_M - 1; with causal=True its last row sees keys up to "
         "start_m + BLOCK_M - 1, so the loop over key blocks can stop at end_n = min(seq_k, start_m + BLOCK_M). "
         "Stopping before the diagonal block loses keys; the loop must still reach it.",
    atol=FP16_ATOL, rtol=FP16_RTOL,
)
