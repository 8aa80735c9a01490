"""A small encoder-only transformer that labels every position of a token sequence.

Used from notebook 01 on for the procedural sequence tasks (reverse, sort, recall, ...), where the
right attention pattern is known and can be compared with what the model learned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from course_lib.nn import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    TransformerEncoder,
)

Positional = Literal["sinusoidal", "learned", "rope", "none"]
POSITIONALS = ("sinusoidal", "learned", "rope", "none")


@dataclass
class SequenceTransformerConfig:
    vocab_size: int
    max_len: int
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    positional: Positional = "sinusoidal"
    norm: str = "layer"
    norm_position: str = "pre"
    dropout: float = 0.0
    causal: bool = False
    num_classes: int | None = None  # defaults to vocab_size: predict a token at every position

    def __post_init__(self) -> None:
        if self.positional not in POSITIONALS:
            raise ValueError(f"positional={self.positional!r}; expected one of {POSITIONALS}")
        for name in ("vocab_size", "max_len", "dim", "depth", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive int")
        if self.dim % self.heads != 0:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")


class SequenceTransformer(nn.Module):
    """tokens (B, L) -> logits (B, L, num_classes): embed, add positions, encode, classify each position."""

    def __init__(self, config: SequenceTransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.position = {
            "sinusoidal": lambda: SinusoidalPositionalEncoding(c.dim, c.max_len),
            "learned": lambda: LearnedPositionalEmbedding(c.dim, c.max_len),
            "rope": lambda: None,
            "none": lambda: None,
        }[c.positional]()
        self.rope = RotaryEmbedding(c.dim // c.heads, c.max_len) if c.positional == "rope" else None
        self.encoder = TransformerEncoder(
            c.depth, c.dim, c.heads, mlp_ratio=c.mlp_ratio, norm=c.norm,
            norm_position=c.norm_position, dropout=c.dropout,
        )
        self.head = nn.Linear(c.dim, c.num_classes or c.vocab_size)

    def forward(
        self, tokens: Tensor, *, mask: Tensor | None = None, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """With `return_attention`, also return one (B, heads, L, L) weight tensor per layer."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens has shape {tuple(tokens.shape)}; expected (batch, length)")
        if tokens.shape[1] > self.config.max_len:
            raise ValueError(
                f"sequence length {tokens.shape[1]} is longer than max_len={self.config.max_len}"
            )
        x = self.embed(tokens)  # (B, L, dim)
        if self.position is not None:
            x = self.position(x)
        out = self.encoder(
            x, mask=mask, causal=self.config.causal, rope=self.rope, return_weights=return_attention
        )
        if return_attention:
            x, weights = out
            return self.head(x), weights
        return self.head(out)
