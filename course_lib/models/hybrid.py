"""A causal language model whose layers mix attention and state-space (Mamba) layers.

The layer pattern is a string, one letter per layer: 'A' is a pre-norm causal attention block
(`course_lib.nn.TransformerBlock`: attention, then a feed-forward layer), 'M' a Mamba layer
(`course_lib.models.mamba.MambaLayer`: x + mixer(RMSNorm(x))). `layers="MMAMMA"` puts one attention
layer after every two SSM layers, the kind of interleaving the hybrid attention/SSM papers study
("A2Mamba: Attention-augmented State Space Models for Visual Recognition"; "Multiscale Byte Language
Models -- A Hierarchical Architecture for Causal Million-Length Sequence Modeling" mixes Mamba and
Transformer stages). There is no positional encoding: as in hybrids such as Jamba, the causal
recurrence of the SSM layers tells positions apart. The LM head shares the token embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from course_lib.models.mamba import SCANS, MambaConfig, MambaLayer
from course_lib.nn import RMSNorm, TransformerBlock

__all__ = ["Hybrid", "HybridConfig"]

LAYER_KINDS = ("A", "M")


@dataclass
class HybridConfig:
    """Everything that describes a hybrid attention/SSM language model."""

    vocab_size: int = 256
    dim: int = 64
    layers: str = "MMAMMA"          # one letter per layer: 'A' attention block, 'M' Mamba layer
    heads: int = 4                  # of the attention blocks
    mlp_ratio: float = 4.0          # the attention blocks' feed-forward width, in multiples of dim
    state_size: int = 16            # of the Mamba layers, and the rest of their settings
    expand: int = 2
    conv_kernel: int = 4
    dt_rank: int | None = None      # None: ceil(dim / 16)
    norm_eps: float = 1e-5          # of the Mamba layers' norms and the final norm (as in `Mamba`)
    scan: Literal["sequential", "parallel"] = "sequential"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "heads", "state_size", "expand", "conv_kernel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}; expected a positive integer")
        if not isinstance(self.layers, str) or not self.layers:
            raise ValueError(f"layers={self.layers!r}; expected a non-empty string of 'A' and 'M'")
        unknown = sorted(set(self.layers) - set(LAYER_KINDS))
        if unknown:
            raise ValueError(f"layers={self.layers!r} has {unknown}; expected only 'A' (attention) and 'M' (Mamba)")
        if "A" in self.layers and self.dim % self.heads != 0:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")
        if not self.mlp_ratio > 0 or int(self.dim * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio={self.mlp_ratio!r}; expected a positive ratio with dim * mlp_ratio >= 1")
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.dim / 16)
        elif isinstance(self.dt_rank, bool) or not isinstance(self.dt_rank, int) or self.dt_rank < 1:
            raise ValueError(f"dt_rank={self.dt_rank!r}; expected a positive integer or None")
        if self.scan not in SCANS:
            raise ValueError(f"scan={self.scan!r}; expected one of {SCANS}")

    @property
    def depth(self) -> int:
        """Number of layers, attention and SSM together."""
        return len(self.layers)

    @property
    def mlp_hidden(self) -> int:
        """Hidden width of the attention blocks' feed-forward layer (as `TransformerBlock` rounds it)."""
        return int(self.dim * self.mlp_ratio)

    def mamba_config(self) -> MambaConfig:
        """The MambaConfig of the 'M' layers (its depth is the number of 'M' letters, at least 1)."""
        return MambaConfig(vocab_size=self.vocab_size, dim=self.dim, depth=max(1, self.layers.count("M")),
                           state_size=self.state_size, expand=self.expand, conv_kernel=self.conv_kernel,
                           dt_rank=self.dt_rank, norm_eps=self.norm_eps, scan=self.scan)

    def parameter_count(self) -> int:
        """Parameters of `Hybrid(self)`, from the sizes alone (the tied head adds none)."""
        d, inner, n, r, k = self.dim, self.expand * self.dim, self.state_size, self.dt_rank, self.conv_kernel
        h = self.mlp_hidden
        attention = 2 * d + 4 * (d * d + d) + (d * h + h) + (h * d + d)   # two RMSNorms, q/k/v/out, MLP
        mamba = (d                                  # RMSNorm
                 + d * 2 * inner                    # in_proj (no bias)
                 + inner * k + inner                # depthwise conv and its bias
                 + inner * (r + 2 * n)              # x_proj -> (dt, B, C)
                 + r * inner + inner                # dt_proj
                 + inner * n + inner                # A_log, D
                 + inner * d)                       # out_proj (no bias)
        return (self.vocab_size * d + d + self.layers.count("A") * attention
                + self.layers.count("M") * mamba)


class Hybrid(nn.Module):
    """tokens (B, L) -> next-token logits (B, L, vocab): embedding -> pattern of A/M layers -> RMSNorm -> tied head.

    Parameter names match `course_lib.models.mamba.Mamba` (embedding, blocks, norm, lm_head), so an
    all-'M' hybrid loads a Mamba's state dict as it is.
    """

    def __init__(self, config: HybridConfig) -> None:
        super().__init__()
        self.config = c = config
        mamba = c.mamba_config()
        self.embedding = nn.Embedding(c.vocab_size, c.dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.dim, c.heads, mlp_ratio=c.mlp_ratio, norm="rms", norm_position="pre")
            if kind == "A" else MambaLayer(mamba)
            for kind in c.layers
        )
        self.norm = RMSNorm(c.dim, eps=c.norm_eps)
        self.lm_head = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.lm_head.weight = self.embedding.weight

    def features(self, tokens: Tensor) -> Tensor:
        """(B, L) tokens -> (B, L, dim) normalised features before the head."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens has shape {tuple(tokens.shape)}; expected (batch, L)")
        x = self.embedding(tokens)                                         # (B, L, dim)
        for kind, block in zip(self.config.layers, self.blocks, strict=True):
            x = block(x, causal=True) if kind == "A" else block(x)
        return self.norm(x)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, L) tokens -> (B, L, vocab) logits; position t sees tokens 0..t only."""
        return self.lm_head(self.features(tokens))
