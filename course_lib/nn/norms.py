"""Normalisation layers, written out so that what they compute is visible."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerNorm(nn.Module):
    """Subtract the mean and divide by the standard deviation of the features, then scale and shift."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight
        return y + self.bias if self.bias is not None else y


class RMSNorm(nn.Module):
    """Divide by the root mean square of the features (no centring), then scale: cheaper than LayerNorm."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x_wide = x.to(torch.promote_types(x.dtype, torch.float32))  # at least float32, float64 stays float64
        rms = torch.rsqrt(x_wide.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x_wide * rms).to(x.dtype) * self.weight


def make_norm(kind: str, dim: int) -> nn.Module:
    """'layer' -> LayerNorm, 'rms' -> RMSNorm."""
    if kind == "layer":
        return LayerNorm(dim)
    if kind == "rms":
        return RMSNorm(dim)
    raise ValueError(f"norm={kind!r}; expected 'layer' or 'rms'")
