"""Positional encodings: sinusoidal and learned (added to tokens), rotary (applied to q and k), and 2D."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn


def _check_length(length: int, max_len: int) -> None:
    if length > max_len:
        raise ValueError(f"sequence length {length} is longer than the positional table (max_len={max_len})")


def sinusoidal_table(max_len: int, dim: int, base: float = 10000.0) -> Tensor:
    """(max_len, dim) table: even features sin(p / base^(2i/dim)), odd features cos of the same angle."""
    if dim % 2 != 0:
        raise ValueError(f"dim={dim} must be even for sinusoidal encodings")
    position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (L, 1)
    frequency = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
    angle = position * frequency  # (L, dim/2)
    return rearrange(torch.stack([angle.sin(), angle.cos()], dim=-1), "l f two -> l (f two)")


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table to (B, L, dim) token embeddings."""

    def __init__(self, dim: int, max_len: int = 4096, base: float = 10000.0) -> None:
        super().__init__()
        self.max_len = max_len
        self.register_buffer("table", sinusoidal_table(max_len, dim, base), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        _check_length(offset + x.shape[1], self.max_len)
        return x + self.table[offset : offset + x.shape[1]].to(x.dtype)


class LearnedPositionalEmbedding(nn.Module):
    """Adds one trained vector per position to (B, L, dim) token embeddings."""

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.weight = nn.Parameter(torch.randn(max_len, dim) * 0.02)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        _check_length(offset + x.shape[1], self.max_len)
        return x + self.weight[offset : offset + x.shape[1]]


def rotate_half(x: Tensor) -> Tensor:
    """Split the features into halves (a, b) and return (-b, a): a 90° turn of each (a_i, b_i) pair."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding: turns each feature pair of q and k by an angle proportional to position.

    The dot product of a rotated query and key then depends only on their distance. Feature i is
    paired with feature i + head_dim/2 (the "rotate half" layout of GPT-NeoX and Llama).
    """

    def __init__(self, head_dim: int, max_len: int = 4096, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"head_dim={head_dim} must be even for rotary embeddings")
        self.max_len = max_len
        frequency = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angle = torch.arange(max_len, dtype=torch.float32)[:, None] * frequency  # (L, head_dim/2)
        angle = torch.cat([angle, angle], dim=-1)  # (L, head_dim)
        self.register_buffer("cos", angle.cos(), persistent=False)
        self.register_buffer("sin", angle.sin(), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """Rotate (..., L, head_dim) queries or keys whose first position is `offset`."""
        length = x.shape[-2]
        _check_length(offset + length, self.max_len)
        cos = self.cos[offset : offset + length].to(x.dtype)
        sin = self.sin[offset : offset + length].to(x.dtype)
        return x * cos + rotate_half(x) * sin


def sinusoidal_table_2d(height: int, width: int, dim: int, base: float = 10000.0) -> Tensor:
    """(height*width, dim) table for a grid: half the features encode the row, half the column."""
    if dim % 4 != 0:
        raise ValueError(f"dim={dim} must be divisible by 4 for 2D sinusoidal encodings")
    rows = sinusoidal_table(height, dim // 2, base)  # (H, dim/2)
    cols = sinusoidal_table(width, dim // 2, base)  # (W, dim/2)
    grid = torch.cat(
        [
            rows[:, None, :].expand(height, width, dim // 2),
            cols[None, :, :].expand(height, width, dim // 2),
        ],
        dim=-1,
    )
    return rearrange(grid, "h w d -> (h w) d")


class SinusoidalPositionalEncoding2D(nn.Module):
    """Adds a fixed 2D sinusoidal table to (B, H*W, dim) patch tokens laid out row by row."""

    def __init__(self, dim: int, height: int, width: int, base: float = 10000.0) -> None:
        super().__init__()
        self.height, self.width = height, width
        self.register_buffer("table", sinusoidal_table_2d(height, width, dim, base), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.height * self.width:
            raise ValueError(
                f"x has {x.shape[1]} tokens; expected height*width = {self.height}*{self.width}"
            )
        return x + self.table.to(x.dtype)


def angle_between_positions(table: Tensor) -> Tensor:
    """Cosine similarity of every pair of rows of a positional table: (L, L); shows what positions 'see'."""
    unit = table / table.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


__all__ = [
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "SinusoidalPositionalEncoding2D",
    "angle_between_positions",
    "rotate_half",
    "sinusoidal_table",
    "sinusoidal_table_2d",
]
