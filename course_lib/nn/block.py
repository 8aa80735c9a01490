"""The transformer block (attention + feed-forward around a residual stream) and a stack of them.

Where the norms go decides how signals travel through depth:
- 'post' (the original): x <- norm(α·x + f(x));
- 'pre' (GPT-2, ViT): x <- α·x + f(norm(x)), one more norm at the end of the stack;
- 'sub' (Sub-LN, from "Foundation Transformers"): pre-norm plus a second norm inside every branch,
  right before its output projection.
α (`residual_scale`) and the initialisation gain β (`init_gain`) come from `deepnet_scales`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from torch import Tensor, nn

from course_lib.nn.attention import Impl, MultiHeadAttention
from course_lib.nn.feedforward import make_feedforward
from course_lib.nn.norms import NormedLinear, make_norm

NormPosition = Literal["pre", "post", "sub"]
NORM_POSITIONS = ("pre", "post", "sub")


def _check_depth(depth: int) -> None:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth={depth!r} must be a positive int")


def deepnet_scales(depth: int, norm_position: NormPosition = "post") -> tuple[float, float]:
    """(α, β) for a stack of `depth` blocks: the residual scale and the gain of the branch weights' init.

    'post' gives DeepNet's rule (DeepNorm) for an encoder-only or decoder-only stack,
    α = (2N)^(1/4), β = (8N)^(-1/4); 'sub' gives the rule "Foundation Transformers" derives for
    Sub-LN, α = 1, β = γ = sqrt(log 2N). Pre-LN has neither.
    """
    _check_depth(depth)
    if norm_position == "post":
        return (2 * depth) ** 0.25, (8 * depth) ** -0.25
    if norm_position == "sub":
        return 1.0, math.sqrt(math.log(2 * depth))
    raise ValueError(f"norm_position={norm_position!r} has no depth scaling; expected 'post' (DeepNet) or 'sub' (Sub-LN)")


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention, then a feed-forward layer, each added to the residual.

    Pre-norm normalises each branch's input (x + f(norm(x))) and keeps the residual stream clean;
    post-norm, the original arrangement, normalises after the addition (norm(x + f(x))); sub-norm is
    pre-norm with an extra norm before each branch's output projection. `residual_scale` (α)
    multiplies the residual x; `init_gain` (β), when given, re-initialises every projection with
    Xavier-normal weights, the value, output and feed-forward ones with gain β (DeepNet's rule).
    `attention`, when given, is the self-attention's function of (q, k, v) in place of softmax attention
    (see `MultiHeadAttention`), without attention dropout (`dropout` then acts on the branches' outputs only);
    the cross-attention keeps softmax.
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
        residual_scale: float = 1.0,
        init_gain: float | None = None,
        attention: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if norm_position not in NORM_POSITIONS:
            raise ValueError(f"norm_position={norm_position!r}; expected one of {NORM_POSITIONS}")
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio={mlp_ratio} must be positive")
        if not residual_scale > 0:
            raise ValueError(f"residual_scale={residual_scale!r} must be positive")
        if init_gain is not None and not init_gain > 0:
            raise ValueError(f"init_gain={init_gain!r} must be positive (or None for PyTorch's default init)")
        self.norm_position, self.residual_scale = norm_position, float(residual_scale)
        sub = norm_position == "sub"
        self.attn = self._attention(dim, heads, norm, sub, dropout=0.0 if attention is not None else dropout,
                                    impl=impl, attention=attention)
        self.attn_norm = make_norm(norm, dim)
        if cross_attention:
            self.cross_attn = self._attention(dim, heads, norm, sub, dropout=dropout, impl=impl)
            self.cross_norm = make_norm(norm, dim)
        else:
            self.cross_attn = None
        self.ffn = make_feedforward(ffn, dim, int(dim * mlp_ratio), dropout=dropout, sub_norm=norm if sub else None)
        self.ffn_norm = make_norm(norm, dim)
        self.dropout = nn.Dropout(dropout)
        if init_gain is not None:
            self.init_weights(init_gain)

    @staticmethod
    def _attention(dim: int, heads: int, norm: str, sub: bool, **options) -> MultiHeadAttention:
        attention = MultiHeadAttention(dim, heads, **options)
        if sub:  # Sub-LN: the merged heads are normalised before the output projection
            attention.to_out = NormedLinear(dim, dim, norm=norm)
        return attention

    def init_weights(self, gain: float) -> None:
        """Xavier-normal projections; value, output and feed-forward weights with `gain`, biases zero."""
        for attention in (self.attn, self.cross_attn):
            if attention is None:
                continue
            for layer, layer_gain in ((attention.to_q, 1.0), (attention.to_k, 1.0),
                                      (attention.to_v, gain), (attention.to_out, gain)):
                _xavier_(layer, layer_gain)
        for layer in self.ffn.modules():
            if isinstance(layer, nn.Linear):
                _xavier_(layer, gain)

    def _residual(self, x: Tensor, norm: nn.Module, branch) -> Tensor:
        skip = x if self.residual_scale == 1.0 else self.residual_scale * x
        if self.norm_position == "post":
            return norm(skip + self.dropout(branch(x)))
        return skip + self.dropout(branch(norm(x)))  # 'pre' and 'sub' (whose extra norms sit in the branch)

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


def _xavier_(layer: nn.Linear, gain: float) -> None:
    nn.init.xavier_normal_(layer.weight, gain=gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class TransformerEncoder(nn.Module):
    """`depth` blocks in a row; pre- and sub-norm stacks end with one more norm so the output is normalised too.

    `depth_scaling=True` sets each block's residual scale and init gain from `deepnet_scales(depth,
    norm_position)`. `unique_blocks=k` shares weights across depth: k distinct blocks, each applied
    depth/k times in a row (the recursion of "Sliced Recursive Transformer"); with
    `share_norms=False` every layer keeps its own norms and shares only its attention and
    feed-forward weights, a small step towards the weight multiplexing of "MiniViT".
    """

    def __init__(
        self, depth: int, dim: int, heads: int, *, depth_scaling: bool = False, unique_blocks: int | None = None,
        share_norms: bool = True, **block_options,
    ) -> None:
        super().__init__()
        _check_depth(depth)
        unique_blocks = depth if unique_blocks is None else unique_blocks
        if isinstance(unique_blocks, bool) or not isinstance(unique_blocks, int) or not 1 <= unique_blocks <= depth \
                or depth % unique_blocks != 0:
            raise ValueError(f"unique_blocks={unique_blocks!r} must be a positive int that divides depth={depth}")
        norm_position = block_options.get("norm_position", "pre")
        if depth_scaling:
            clash = sorted({"residual_scale", "init_gain"} & set(block_options))
            if clash:
                raise ValueError(f"depth_scaling=True sets {', '.join(clash)}; pass one or the other")
            alpha, beta = deepnet_scales(depth, norm_position)
            block_options = {**block_options, "residual_scale": alpha, "init_gain": beta}
        self.unique_blocks = unique_blocks
        repeats = depth // unique_blocks  # consecutive layers that share one set of weights
        blocks: list[TransformerBlock] = []
        for layer in range(depth):
            if layer % repeats == 0:
                owner = TransformerBlock(dim, heads, **block_options)
                blocks.append(owner)
            elif share_norms:
                blocks.append(owner)
            else:  # its own norms, the owner's attention and feed-forward layers
                block = TransformerBlock(dim, heads, **block_options)
                block.attn, block.cross_attn, block.ffn = owner.attn, owner.cross_attn, owner.ffn
                blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        pre_norm = norm_position in ("pre", "sub")
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
