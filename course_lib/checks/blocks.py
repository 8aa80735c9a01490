"""Checkers for the exercises of notebook 02_blocks_and_stability."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from course_lib.checks.core import Case, FunctionChecker, ModuleChecker
from course_lib.nn.block import TransformerBlock, deepnet_scales
from course_lib.nn.feedforward import GLU
from course_lib.nn.norms import RMSNorm


def _perturb_(module: nn.Module) -> nn.Module:
    """Move every parameter away from its initial value, so that norms' ones and zeros cannot hide a mistake.

    Uses the global generator, which ModuleChecker seeds before it builds the reference.
    """
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return module


# --- RMSNorm -------------------------------------------------------------------------------------


class _ReferenceRMSNorm(RMSNorm):
    """The packaged RMSNorm with a weight that is not all ones."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__(dim, eps)
        _perturb_(self)


def _rms_norm_cases() -> list[tuple[Case, Case]]:
    generator = torch.Generator().manual_seed(0)
    pairs = []
    for dim, shape, scale, offset in [(4, (2, 3), 1.0, 0.0), (16, (5,), 3.0, 2.0)]:
        x = torch.randn(*shape, dim, generator=generator) * scale + offset
        pairs.append((Case(f"dim={dim}", (dim,)), Case(f"x {tuple(x.shape)} of scale {scale}, offset {offset}", (x,))))
    x = torch.randn(3, 8, generator=generator)
    x[1] = 0.0  # a row of zeros: eps keeps it finite
    pairs.append((Case("dim=8", (8,)), Case("x (3, 8) whose second row is all zeros", (x,))))
    x = torch.randn(2, 5, 32, generator=generator) * 1e-3  # mean square 1e-6, as large as eps: where eps goes matters
    pairs.append((Case("dim=32", (32,)), Case("x (2, 5, 32) of scale 0.001", (x,))))
    return pairs


rms_norm = ModuleChecker(
    "RMSNorm",
    _ReferenceRMSNorm,
    _rms_norm_cases,
    hint="x / sqrt(mean(x², last dim) + eps) * weight: no mean is subtracted and there is no bias; "
    "eps goes inside the square root.",
)


# --- SwiGLU --------------------------------------------------------------------------------------


class _ReferenceSwiGLU(GLU):
    """The packaged GLU with the notebook's constructor: (dim, hidden), SiLU gate, no biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(dim, hidden, activation="silu")


def _swiglu_cases() -> list[tuple[Case, Case]]:
    generator = torch.Generator().manual_seed(1)
    pairs = []
    for dim, hidden, length in [(8, 16, 3), (12, 32, 5), (4, 4, 1)]:
        x = torch.randn(2, length, dim, generator=generator)
        pairs.append((Case(f"dim={dim}, hidden={hidden}", (dim, hidden)), Case(f"x {tuple(x.shape)}", (x,))))
    return pairs


swiglu = ModuleChecker(
    "SwiGLU",
    _ReferenceSwiGLU,
    _swiglu_cases,
    hint="three bias-free linear layers gate, up (dim -> hidden) and down (hidden -> dim); "
    "down(silu(gate(x)) * up(x)): the SiLU goes on the gate only.",
)


# --- the block -----------------------------------------------------------------------------------


class _ReferenceBlock(TransformerBlock):
    """The packaged block with the notebook's constructor, and norms that are not ones and zeros."""

    def __init__(self, dim: int, heads: int, *, position: str = "pre", alpha: float = 1.0) -> None:
        super().__init__(dim, heads, norm_position=position, residual_scale=alpha)
        _perturb_(self)


def _block_cases() -> list[tuple[Case, Case]]:
    generator = torch.Generator().manual_seed(2)
    pairs = []
    for position, alpha, causal in [("pre", 1.0, False), ("post", 1.0, False), ("sub", 1.0, True),
                                    ("post", 2.5, True), ("pre", 1.7, False), ("sub", 0.5, False)]:
        x = torch.randn(2, 5, 16, generator=generator)
        build = Case(f"dim=16, heads=4, position={position!r}, alpha={alpha}", (16, 4),
                     {"position": position, "alpha": alpha})
        pairs.append((build, Case(f"x {tuple(x.shape)}, causal={causal}", (x,), {"causal": causal})))
    return pairs


block = ModuleChecker(
    "Block",
    _ReferenceBlock,
    _block_cases,
    hint="post: x = norm(alpha * x + branch(x)); pre and sub: x = alpha * x + branch(norm(x)). "
    "Attention first (with attn_norm), then the feed-forward layer (with ffn_norm); pass causal to the attention.",
)


# --- DeepNet's alpha and beta --------------------------------------------------------------------


def _as_float64(function: Callable) -> Callable:
    """Wrap `function` so that its numbers come back as float64 tensors, which the checker compares with tolerances."""

    def numbers(*args, **kwargs):
        result = function(*args, **kwargs)
        items = result if isinstance(result, (tuple, list)) else (result,)
        try:
            converted = tuple(torch.tensor(float(item), dtype=torch.float64) for item in items)
        except (TypeError, ValueError):
            return result  # not numbers: let the checker describe what came back
        return converted if isinstance(result, (tuple, list)) else converted[0]

    return numbers


class NumberChecker(FunctionChecker):
    """A FunctionChecker for functions that return plain numbers (or tuples of them), compared with tolerances."""

    def __init__(self, name: str, reference: Callable, cases, **options) -> None:
        super().__init__(name, _as_float64(reference), cases, **options)

    def __call__(self, function: Callable) -> bool:
        return super().__call__(_as_float64(function))


deepnet_alpha_beta = NumberChecker(
    "deepnet_alpha_beta",
    lambda depth: deepnet_scales(depth, "post"),
    lambda: [Case(f"depth={n}", (n,)) for n in (1, 6, 12, 48, 100)],
    hint="for an encoder-only (or decoder-only) stack of N layers, DeepNet uses alpha = (2N)^(1/4) "
    "and beta = (8N)^(-1/4); return the tuple (alpha, beta).",
    atol=1e-9, rtol=1e-9,
)
