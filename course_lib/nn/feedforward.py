"""Position-wise feed-forward layers: the classic MLP and the gated linear unit (GLU) family."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """Linear -> activation -> Linear, applied to every position on its own."""

    def __init__(self, dim: int, hidden: int, *, activation: str = "gelu", dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.act = _activation(activation)
        self.fc_in = nn.Linear(dim, hidden, bias=bias)
        self.fc_out = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc_out(self.act(self.fc_in(x))))


class GLU(nn.Module):
    """Gated feed-forward: act(x W_gate) * (x W_up), then W_down. 'silu' gives SwiGLU, 'gelu' GeGLU."""

    def __init__(self, dim: int, hidden: int, *, activation: str = "silu", dropout: float = 0.0, bias: bool = False) -> None:
        super().__init__()
        self.act = _activation(activation)
        self.gate = nn.Linear(dim, hidden, bias=bias)
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(self.act(self.gate(x)) * self.up(x)))


def make_feedforward(kind: str, dim: int, hidden: int, *, dropout: float = 0.0) -> nn.Module:
    """'mlp' -> MLP with GELU, 'glu' -> SwiGLU."""
    if kind == "mlp":
        return MLP(dim, hidden, dropout=dropout)
    if kind == "glu":
        return GLU(dim, hidden, dropout=dropout)
    raise ValueError(f"ffn={kind!r}; expected 'mlp' or 'glu'")
