"""Normalisation layers. Each docstring writes out the formula; forward calls PyTorch's fused kernel for it.

The fused kernels compute the same thing in one pass over memory instead of four or five, which made
a whole GPT train about 1.4x faster on the CPU (benchmarks/bench_models.py).
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMS = ("layer", "rms")


def _check_size(argument: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{argument}={value!r} must be a positive int")


def _check_eps(eps: float) -> None:
    if not eps > 0:
        raise ValueError(f"eps={eps!r} must be positive (it keeps the division away from zero)")


def _kernels(x: Tensor, weight: Tensor) -> ModuleType | None:
    """course_lib.kernels.norms if x takes the Triton path (CUDA tensors, Triton importable), else None.

    Imported on call, so course_lib.nn loads without Triton."""
    from course_lib.kernels import _triton

    if not (_triton.use_kernels(x) and {x.dtype, weight.dtype} <= set(_triton.KERNEL_DTYPES)):
        return None
    from course_lib.kernels import norms

    return norms if x.shape[-1] <= norms.MAX_DIM else None


class LayerNorm(nn.Module):
    """Subtract the mean and divide by the standard deviation of the features, then scale and shift.

    y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias, with the biased variance over the last axis.
    """

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        _check_size("dim", dim)
        _check_eps(eps)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if (kernels := _kernels(x, self.weight)) is not None:
            return kernels.layer_norm(x.contiguous(), self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """Divide by the root mean square of the features (no centring), then scale: cheaper than LayerNorm.

    y = x / sqrt(mean(x**2) + eps) * weight, normalised in at least float32 and cast back before the
    scale (the order Llama uses, so half-precision inputs round the same way).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        _check_size("dim", dim)
        _check_eps(eps)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if (kernels := _kernels(x, self.weight)) is not None:
            return kernels.rms_norm(x.contiguous(), self.weight, self.eps)
        x_wide = x.to(torch.promote_types(x.dtype, torch.float32))  # at least float32, float64 stays float64
        return F.rms_norm(x_wide, self.weight.shape, eps=self.eps).to(x.dtype) * self.weight


def make_norm(kind: str, dim: int) -> nn.Module:
    """'layer' -> LayerNorm, 'rms' -> RMSNorm."""
    if kind == "layer":
        return LayerNorm(dim)
    if kind == "rms":
        return RMSNorm(dim)
    raise ValueError(f"norm={kind!r}; expected one of {NORMS}")


class NormedLinear(nn.Linear):
    """A linear layer that normalises its input first.

    Sub-LN (from "Foundation Transformers") puts this extra norm right before the output projection
    of every branch, so what the projection sees has unit scale however the branch's inside grows.
    Its parameters are the linear layer's (`weight`, `bias`) plus the norm's (`norm.*`).
    """

    def __init__(self, in_features: int, out_features: int, *, norm: str = "layer", bias: bool = True) -> None:
        _check_size("in_features", in_features)
        _check_size("out_features", out_features)
        super().__init__(in_features, out_features, bias=bias)
        self.norm = make_norm(norm, in_features)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.norm(x))
