"""Position-wise feed-forward layers: the classic MLP and the gated linear unit (GLU) family."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.nn.norms import NORMS, NormedLinear


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU through its tanh approximation, the one GPT-2 was trained with ('gelu_new' in transformers)."""
    return F.gelu(x, approximate="tanh")


def quick_gelu(x: Tensor) -> Tensor:
    """x·sigmoid(1.702x), the cheap approximation of GELU that OpenAI's CLIP was trained with ('quick_gelu')."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": gelu_tanh, "quick_gelu": quick_gelu, "relu": F.relu, "silu": F.silu}
# feed-forward kinds: the name, then (class, activation); 'glu' is kept as the older name of SwiGLU
FEEDFORWARDS = {"mlp": ("mlp", "gelu"), "glu": ("glu", "silu"), "swiglu": ("glu", "silu"),
                "geglu": ("glu", "gelu"), "reglu": ("glu", "relu")}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _check_sizes(dim: int, hidden: int, dropout: float) -> None:
    for argument, value in (("dim", dim), ("hidden", hidden)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{argument}={value!r} must be a positive int")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout} must lie in [0, 1)")


def _output_projection(hidden: int, dim: int, *, bias: bool, sub_norm: str | None) -> nn.Linear:
    """Linear(hidden -> dim); with `sub_norm`, one that normalises its input first (Sub-LN)."""
    if sub_norm is not None and sub_norm not in NORMS:
        raise ValueError(f"sub_norm={sub_norm!r}; expected None or one of {NORMS}")
    if sub_norm is None:
        return nn.Linear(hidden, dim, bias=bias)
    return NormedLinear(hidden, dim, norm=sub_norm, bias=bias)


class MLP(nn.Module):
    """Linear -> activation -> Linear, applied to every position on its own.

    `sub_norm` ('layer' or 'rms') normalises the hidden activations before the second linear layer,
    as Sub-LN does; the norm's parameters are then `fc_out.norm.*`.
    """

    def __init__(
        self, dim: int, hidden: int, *, activation: str = "gelu", dropout: float = 0.0, bias: bool = True,
        sub_norm: str | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(dim, hidden, dropout)
        self.act = _activation(activation)
        self.fc_in = nn.Linear(dim, hidden, bias=bias)
        self.fc_out = _output_projection(hidden, dim, bias=bias, sub_norm=sub_norm)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc_out(self.act(self.fc_in(x))))


class GLU(nn.Module):
    """Gated feed-forward: act(x W_gate) * (x W_up), then W_down. 'silu' gives SwiGLU, 'gelu' GeGLU.

    `sub_norm` normalises the gated product before `down` (Sub-LN); its parameters are `down.norm.*`.
    """

    def __init__(
        self, dim: int, hidden: int, *, activation: str = "silu", dropout: float = 0.0, bias: bool = False,
        sub_norm: str | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(dim, hidden, dropout)
        self.act = _activation(activation)
        self.gate = nn.Linear(dim, hidden, bias=bias)
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = _output_projection(hidden, dim, bias=bias, sub_norm=sub_norm)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(self.act(self.gate(x)) * self.up(x)))


def glu_hidden(dim: int, mlp_ratio: float = 4.0, *, multiple_of: int = 8) -> int:
    """Hidden width that gives a GLU (three matrices) the parameters of an MLP (two) of `mlp_ratio * dim`.

    2/3 of the MLP's width, rounded up to a multiple of `multiple_of`: 4 * 96 = 384 -> 256.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim={dim!r} must be a positive int")
    if not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio={mlp_ratio} must be positive")
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
        raise ValueError(f"multiple_of={multiple_of!r} must be a positive int")
    return multiple_of * math.ceil(2 * mlp_ratio * dim / 3 / multiple_of)


def make_feedforward(
    kind: str, dim: int, hidden: int, *, dropout: float = 0.0, sub_norm: str | None = None
) -> nn.Module:
    """'mlp' -> MLP with GELU; 'swiglu' (or 'glu'), 'geglu', 'reglu' -> GLU with SiLU, GELU, ReLU gates."""
    if kind not in FEEDFORWARDS:
        raise ValueError(f"ffn={kind!r}; expected one of {sorted(FEEDFORWARDS)}")
    family, activation = FEEDFORWARDS[kind]
    layer = MLP if family == "mlp" else GLU
    return layer(dim, hidden, activation=activation, dropout=dropout, sub_norm=sub_norm)
