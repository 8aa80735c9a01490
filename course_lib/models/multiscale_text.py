"""A byte-level text classifier whose attention heads each look at their own scale.

From "Multi-Scale Self-Attention for Text Classification" (Guo et al.): head h of layer l attends only
to the tokens within `radii[l][h]` positions (None: all of them). Lower layers with many small windows
build n-gram-like features, higher layers with wide and global heads combine them; the paper reports
that this prior beats a standard transformer on small and moderate datasets. `radii=None` gives the
standard transformer with exactly the same parameters, the baseline `MultiScaleTransformer.standard`
builds. `course_lib.nn.scale_schedule(depth, heads, max_len)` gives a layer-wise assignment of radii.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor, nn

from course_lib.models._common import check_positive, init_vit_style
from course_lib.nn import MLP, LearnedPositionalEmbedding, MultiScaleAttention, make_norm
from course_lib.nn.multiscale_attention import check_radii


@dataclass
class MultiScaleTransformerConfig:
    vocab_size: int = 256  # bytes
    max_len: int = 256
    num_classes: int = 8
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    radii: list[list[int | None]] | None = None  # radii[layer][head]; None: every head global (standard)
    norm: str = "layer"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "num_classes", "dim", "depth", "heads"):
            check_positive(name, getattr(self, name))
        if self.dim % self.heads != 0:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")
        if not self.mlp_ratio > 0 or int(self.dim * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio={self.mlp_ratio!r} must be positive (and give at least one hidden unit)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must lie in [0, 1)")
        if self.radii is not None:
            self.radii = _checked_radii(self.radii, self.depth, self.heads)


def _checked_radii(radii: object, depth: int, heads: int) -> list[list[int | None]]:
    """`radii` as a list of `depth` lists of `heads` radii, each a positive int or None."""
    expected = f"expected {depth} lists (depth) of {heads} radii (heads), each a positive int or None"
    if not isinstance(radii, (list, tuple)) or len(radii) != depth:
        raise ValueError(f"radii={radii!r}: {expected}")
    for layer in radii:
        if not isinstance(layer, (list, tuple)) or len(layer) != heads:
            raise ValueError(f"radii={radii!r} has layer {layer!r}: {expected}")
    return [list(check_radii(layer)) for layer in radii]


class MultiScaleBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + MLP(norm(x)); names as in `TransformerBlock`."""

    def __init__(self, c: MultiScaleTransformerConfig, radii: list[int | None]) -> None:
        super().__init__()
        self.attn_norm = make_norm(c.norm, c.dim)
        self.attn = MultiScaleAttention(c.dim, c.heads, radii, dropout=c.dropout)
        self.ffn_norm = make_norm(c.norm, c.dim)
        self.ffn = MLP(c.dim, int(c.dim * c.mlp_ratio), dropout=c.dropout)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, *, mask: Tensor | None = None) -> Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), mask=mask))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class MultiScaleTransformer(nn.Module):
    """tokens (B, L) -> logits (B, num_classes): embed bytes, add positions, multi-scale blocks, mean-pool, classify."""

    def __init__(self, config: MultiScaleTransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        radii = c.radii if c.radii is not None else [[None] * c.heads for _ in range(c.depth)]
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.position = LearnedPositionalEmbedding(c.dim, c.max_len)
        self.blocks = nn.ModuleList(MultiScaleBlock(c, layer_radii) for layer_radii in radii)
        self.norm = make_norm(c.norm, c.dim)
        self.head = nn.Linear(c.dim, c.num_classes)
        self.apply(init_vit_style)

    @classmethod
    def standard(cls, config: MultiScaleTransformerConfig) -> MultiScaleTransformer:
        """The baseline: the same model with every head global, hence exactly the same parameters."""
        return cls(replace(config, radii=None))

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens has shape {tuple(tokens.shape)}; expected (batch, length)")
        if tokens.shape[1] > self.config.max_len:
            raise ValueError(f"sequence length {tokens.shape[1]} is longer than max_len={self.config.max_len}")
        x = self.position(self.embed(tokens))  # (B, L, dim)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x).mean(dim=1)  # (B, dim)
        return self.head(x)  # (B, num_classes)
