"""The transformer block (attention + feed-forward around a residual stream) and a stack of them."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from course_lib.nn.attention import Impl, MultiHeadAttention
from course_lib.nn.feedforward import make_feedforward
from course_lib.nn.norms import make_norm

NormPosition = Literal["pre", "post"]


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention, then a feed-forward layer, each added to the residual.

    Pre-norm normalises each branch's input (x + f(norm(x))) and keeps the residual stream clean;
    post-norm, the original arrangement, normalises after the addition (norm(x + f(x))).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        mlp_ratio: float = 4.0,
        norm: str = "layer",
        norm_position: NormPosition = "pre",
        ffn: str = "mlp",
        dropout: float = 0.0,
        cross_attention: bool = False,
        impl: Impl = "fused",
    ) -> None:
        super().__init__()
        if norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position={norm_position!r}; expected 'pre' or 'post'")
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio={mlp_ratio} must be positive")
        self.norm_position = norm_position
        self.attn = MultiHeadAttention(dim, heads, dropout=dropout, impl=impl)
        self.attn_norm = make_norm(norm, dim)
        if cross_attention:
            self.cross_attn = MultiHeadAttention(dim, heads, dropout=dropout, impl=impl)
            self.cross_norm = make_norm(norm, dim)
        else:
            self.cross_attn = None
        self.ffn = make_feedforward(ffn, dim, int(dim * mlp_ratio), dropout=dropout)
        self.ffn_norm = make_norm(norm, dim)
        self.dropout = nn.Dropout(dropout)

    def _residual(self, x: Tensor, norm: nn.Module, branch) -> Tensor:
        if self.norm_position == "pre":
            return x + self.dropout(branch(norm(x)))
        return norm(x + self.dropout(branch(x)))

    def forward(
        self,
        x: Tensor,
        *,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        causal: bool = False,
        rope: nn.Module | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """(B, L, dim) -> (B, L, dim); with `return_weights`, also the self-attention weights (B, h, L, L)."""
        weights = None

        def self_attention(h: Tensor) -> Tensor:
            nonlocal weights
            out = self.attn(h, mask=mask, causal=causal, rope=rope, return_weights=return_weights)
            if return_weights:
                out, weights = out
            return out

        x = self._residual(x, self.attn_norm, self_attention)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block has cross-attention: pass context=(B, L_context, dim)")
            x = self._residual(x, self.cross_norm, lambda h: self.cross_attn(h, context, mask=context_mask))
        x = self._residual(x, self.ffn_norm, self.ffn)
        return (x, weights) if return_weights else x


class TransformerEncoder(nn.Module):
    """`depth` blocks in a row; pre-norm stacks end with one more norm so the output is normalised too."""

    def __init__(self, depth: int, dim: int, heads: int, **block_options) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth={depth} must be at least 1")
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, **block_options) for _ in range(depth))
        pre_norm = block_options.get("norm_position", "pre") == "pre"
        self.final_norm = make_norm(block_options.get("norm", "layer"), dim) if pre_norm else nn.Identity()

    def forward(
        self, x: Tensor, *, return_weights: bool = False, **block_inputs
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """(B, L, dim) -> (B, L, dim); with `return_weights`, also a list of (B, h, L, L), one per layer."""
        all_weights = []
        for block in self.blocks:
            if return_weights:
                x, weights = block(x, return_weights=True, **block_inputs)
                all_weights.append(weights)
            else:
                x = block(x, **block_inputs)
        x = self.final_norm(x)
        return (x, all_weights) if return_weights else x
