"""Parameter-efficient fine-tuning: freeze a trained model and train a few new weights beside it.

- `LoRALinear` (low-rank adaptation): W x + (alpha / r) B A x with A (r, in) and B (out, r); B starts at zero, so
  training starts from the pretrained function. After training it merges into one Linear: no cost at inference.
- `CirculantLinear` (a structured, full-rank update, after "Structured Unrestricted-Rank Matrices"): W x + C x with
  C circulant, d numbers for a d x d matrix, applied by FFT.
- `ParallelAdapter` (AdaptFormer): a bottleneck MLP beside a block's MLP, its output scaled and added; its up
  projection starts at zero.

`add_lora`, `add_circulant` and `add_adapters` wrap a model in place; `freeze_except` leaves only the new weights
(and any named extra, such as a new classifier head) trainable; `trainable_parameters` counts them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from course_lib.models._common import check_positive


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update: base(x) + (alpha / rank) * x Aᵀ Bᵀ."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        check_positive("rank", rank)
        if rank > min(base.in_features, base.out_features):
            raise ValueError(f"rank={rank} exceeds min(in_features, out_features) = "
                             f"{min(base.in_features, base.out_features)}")
        self.base, self.rank = base, rank
        self.scaling = (alpha if alpha is not None else rank) / rank
        self.A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear initialises its weight

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scaling * (x @ self.A.T) @ self.B.T

    def merged(self) -> nn.Linear:
        """One Linear computing the same function: W + (alpha / rank) B A."""
        layer = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            layer.weight.copy_(self.base.weight + self.scaling * self.B @ self.A)
            if self.base.bias is not None:
                layer.bias.copy_(self.base.bias)
        return layer.to(self.base.weight)


class CirculantLinear(nn.Module):
    """A frozen square Linear plus a trainable circulant update: base(x) + C x, C[i, j] = c[(i - j) mod d].

    Full rank from d parameters; C x is the circular convolution of x with c, computed by FFT in O(d log d)."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        if base.in_features != base.out_features:
            raise ValueError(f"a circulant update needs a square layer; got in_features={base.in_features}, "
                             f"out_features={base.out_features}")
        self.base = base
        self.c = nn.Parameter(torch.zeros(base.in_features, device=base.weight.device))

    def matrix(self) -> Tensor:
        """The (d, d) circulant matrix C the update applies."""
        d = self.c.shape[0]
        index = (torch.arange(d)[:, None] - torch.arange(d)[None, :]) % d
        return self.c[index.to(self.c.device)]

    def forward(self, x: Tensor) -> Tensor:
        d = self.c.shape[0]
        update = torch.fft.irfft(torch.fft.rfft(x, dim=-1) * torch.fft.rfft(self.c), n=d, dim=-1)
        return self.base(x) + update


class ParallelAdapter(nn.Module):
    """AdaptFormer's AdaptMLP: mlp(x) + scale * up(relu(down(x))), the bottleneck beside a frozen MLP."""

    def __init__(self, mlp: nn.Module, dim: int, bottleneck: int, scale: float = 0.1) -> None:
        super().__init__()
        check_positive("bottleneck", bottleneck)
        self.mlp, self.scale = mlp, scale
        self.down, self.up = nn.Linear(dim, bottleneck), nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight), nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x) + self.scale * self.up(torch.relu(self.down(x)))


def _replace_linears(model: nn.Module, names: Iterable[str], wrap) -> int:
    """Wrap every nn.Linear whose attribute name is in `names`; return how many."""
    names, count = set(names), 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in names and isinstance(child, nn.Linear):
                setattr(module, name, wrap(child))
                count += 1
    if count == 0:
        raise ValueError(f"no nn.Linear named one of {sorted(names)} in the model")
    return count


def add_lora(model: nn.Module, rank: int, *, names: Iterable[str] = ("to_q", "to_v"), alpha: float | None = None
             ) -> nn.Module:
    """Wrap the Linear layers called `names` (by default the query and value projections, as the LoRA paper
    did) in `LoRALinear`, in place; returns `model`."""
    _replace_linears(model, names, lambda layer: LoRALinear(layer, rank, alpha))
    return model


def add_circulant(model: nn.Module, *, names: Iterable[str] = ("to_q", "to_v")) -> nn.Module:
    """Wrap the Linear layers called `names` in `CirculantLinear`, in place; returns `model`."""
    _replace_linears(model, names, CirculantLinear)
    return model


def add_adapters(model: nn.Module, bottleneck: int, *, scale: float = 0.1) -> nn.Module:
    """Put a `ParallelAdapter` beside the MLP (`ffn`) of every block of `model.blocks`, in place; returns `model`."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(block, "ffn") for block in blocks):
        raise ValueError("add_adapters needs a model whose .blocks each have an .ffn")
    for block in blocks:
        dim = block.ffn.fc_in.in_features
        block.ffn = ParallelAdapter(block.ffn, dim, bottleneck, scale).to(block.ffn.fc_in.weight)
    return model


def added_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weights the wrappers above added to `model`: LoRA's A and B, circulant vectors, adapter layers."""
    found = []
    for module in model.modules():
        if isinstance(module, LoRALinear):
            found += [module.A, module.B]
        elif isinstance(module, CirculantLinear):
            found.append(module.c)
        elif isinstance(module, ParallelAdapter):
            found += [*module.down.parameters(), *module.up.parameters()]
    return found


def freeze_except(model: nn.Module, trainable: Iterable[str] = ()) -> nn.Module:
    """Freeze every parameter of `model` except the added ones and those whose name starts with one of `trainable`
    (e.g. "head" for a new classifier); returns `model`."""
    added, prefixes = {id(p) for p in added_parameters(model)}, tuple(trainable)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(id(parameter) in added or name.startswith(prefixes))
    return model


def trainable_parameters(model: nn.Module) -> int:
    """How many numbers training may change."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
