"""Scaled dot-product attention (explicit and fused paths), masks, and multi-head attention.

Masks follow `torch.nn.functional.scaled_dot_product_attention`: a boolean mask is True where a
query may attend to a key, and broadcasts to (batch, heads, queries, keys).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

# importable without Triton (use_kernels is then always False); the kernels themselves load on first use,
# so that TRITON_INTERPRET may still be set after course_lib.nn is imported
from course_lib.kernels._triton import use_kernels

Impl = Literal["explicit", "fused"]


def causal_mask(queries: int, keys: int | None = None, *, device: torch.device | None = None) -> Tensor:
    """(queries, keys) boolean mask: query i sees keys up to i (aligned at the end when keys > queries)."""
    keys = queries if keys is None else keys
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(diagonal=keys - queries)


def padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(batch, 1, 1, max_len) boolean mask that hides the padding after each sequence's length."""
    if lengths.dim() != 1:
        raise ValueError(f"lengths has shape {tuple(lengths.shape)}; expected one length per sequence")
    if (lengths < 1).any() or (lengths > max_len).any():
        raise ValueError(f"lengths={lengths.tolist()} must lie in [1, max_len={max_len}]")
    positions = torch.arange(max_len, device=lengths.device)
    return rearrange(positions < rearrange(lengths, "b -> b 1"), "b k -> b 1 1 k")


def block_mask(block_sizes: list[int], *, device: torch.device | None = None) -> Tensor:
    """(L, L) boolean block-diagonal mask: tokens attend only within their own block (packed sequences)."""
    if not block_sizes or any(size < 1 for size in block_sizes):
        raise ValueError(f"block_sizes={block_sizes!r} must be a non-empty list of positive ints")
    block_id = torch.repeat_interleave(
        torch.arange(len(block_sizes), device=device), torch.tensor(block_sizes, device=device)
    )
    return block_id[:, None] == block_id[None, :]


def mixed_modal_mask(segments: Tensor) -> Tensor:
    """Boolean mask, True = may attend, for a sequence mixing causal tokens with bidirectional blocks (Transfusion's
    and MonoFormer's mask): every token reads every earlier token, and the tokens of one block (an image) also read
    each other both ways. `segments` (L,) or (B, L) integers: 0 for a causal token (text), k > 0 for a token of
    block k. Returns (L, L), or (B, 1, L, L) for a batch."""
    if not isinstance(segments, Tensor) or segments.dim() not in (1, 2) or segments.is_floating_point() \
            or segments.numel() == 0 or segments.min() < 0:
        raise ValueError(f"segments must be an (L,) or (B, L) integer tensor of block ids >= 0 (0: causal); got "
                         f"{getattr(segments, 'dtype', type(segments).__name__)} of shape "
                         f"{tuple(getattr(segments, 'shape', ()))}")
    length = segments.shape[-1]
    earlier = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    same_block = (segments[..., :, None] == segments[..., None, :]) & (segments[..., :, None] > 0)
    mask = earlier | same_block
    return mask if segments.dim() == 1 else rearrange(mask, "b q k -> b 1 q k")


def _check_mask(mask: Tensor, scores_shape: tuple[int, ...]) -> None:
    if mask.dtype != torch.bool:
        raise ValueError(f"mask has dtype {mask.dtype}; expected torch.bool (True = may attend)")
    try:
        torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}, which does not broadcast to the attention scores "
            f"(batch, heads, queries, keys) = {scores_shape}"
        ) from None
    if mask.dim() > len(scores_shape):
        raise ValueError(f"mask has {mask.dim()} dims; expected at most {len(scores_shape)}")


def _flash_suits(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, dropout: float) -> bool:
    """Whether the Triton FlashAttention kernel can take this call: CUDA tensors (B, H, T, D) with equal heads,
    16 <= D <= 128, no arbitrary mask, no dropout, and causal only with equal lengths (where alignments agree)."""
    return (
        use_kernels(q, k, v) and mask is None and dropout == 0.0
        and q.dim() == k.dim() == v.dim() == 4 and q.shape[:2] == k.shape[:2] == v.shape[:2]
        and 16 <= q.shape[-1] <= 128 and v.shape[-1] == q.shape[-1]
        and q.dtype == k.dtype == v.dtype and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and min(q.shape[-2], k.shape[-2]) >= 1 and (not causal or q.shape[-2] == k.shape[-2])
    )


# Set only inside `with course_lib.interpret.AttentionRecorder(model):`, like torch.no_grad's flag: a function that
# receives every attention weight tensor computed meanwhile. None (the default) costs one lookup per call.
WEIGHTS_RECORDER: ContextVar[Callable[[Tensor], None] | None] = ContextVar("attention_weights_recorder", default=None)
# Set only inside `with transform_attention_weights(fn):`: every attention weight tensor computed meanwhile is
# replaced by fn(weights) before it meets the values (a quantised softmax, say). None (the default) costs one lookup.
WEIGHTS_TRANSFORM: ContextVar[Callable[[Tensor], Tensor] | None] = ContextVar("attention_weights_transform",
                                                                             default=None)


@contextmanager
def transform_attention_weights(function: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Inside the block, every call of `scaled_dot_product_attention` takes the explicit path and multiplies the
    values by `function(weights)` instead of the softmax weights: how notebook 25 quantises the softmax."""
    if not callable(function):
        raise ValueError(f"function={function!r} is not callable; expected weights -> weights")
    token = WEIGHTS_TRANSFORM.set(function)
    try:
        yield
    finally:
        WEIGHTS_TRANSFORM.reset(token)


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    dropout: float = 0.0,
    impl: Impl = "explicit",
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(q kᵀ / √d) v over the last two dims of (..., L, d) tensors.

    `impl="explicit"` spells the computation out and can return the attention weights;
    `impl="fused"` calls PyTorch's fused kernel (faster, less memory, no weights).
    Keys and values may have fewer heads than queries (dim -3, grouped-query attention): key/value
    head g then serves query heads g*r .. g*r + r - 1, with r = heads / kv_heads.
    A query whose keys are all masked gets a zero output rather than NaN.
    On CUDA with Triton, `impl="fused"` without mask or dropout runs `course_lib.kernels.flash_attention`.
    While an `AttentionRecorder` is active (`WEIGHTS_RECORDER` set), every call takes the explicit path and hands
    its weights to the recorder, whatever `impl` says; inside `transform_attention_weights(fn)` it does too, and
    uses fn(weights) in their place.
    """
    if q.shape[-1] != k.shape[-1] or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: q and k must share the "
            "feature size and k and v the leading dims"
        )
    grouped = q.dim() >= 3 and k.dim() >= 3 and q.shape[-3] != k.shape[-3] and k.shape[-3] != 1
    if grouped and q.shape[-3] % k.shape[-3] != 0:
        raise ValueError(f"q has {q.shape[-3]} heads and k {k.shape[-3]}: the key/value heads must divide the query heads")
    if impl not in ("explicit", "fused"):
        raise ValueError(f"impl={impl!r}; expected 'explicit' or 'fused'")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout} must lie in [0, 1)")
    if impl == "fused" and return_weights:
        raise ValueError("return_weights=True needs impl='explicit': the fused kernel never forms them")
    recorder, transform = WEIGHTS_RECORDER.get(), WEIGHTS_TRANSFORM.get()
    if recorder is not None or transform is not None:  # the weights must be formed to be recorded or transformed
        impl = "explicit"
    if grouped and impl == "explicit":  # each key/value head serves heads/kv_heads consecutive query heads
        k, v = (repeat(t, "... g s d -> ... (g r) s d", r=q.shape[-3] // k.shape[-3]) for t in (k, v))
    leading = q.shape[:-2] if grouped else torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    scores_shape = (*leading, q.shape[-2], k.shape[-2])
    if mask is not None:
        _check_mask(mask, scores_shape)
    if impl == "fused" and _flash_suits(q, k, v, mask, causal, dropout):
        from course_lib.kernels.flash_attention import flash_attention

        return flash_attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=causal)
    if impl == "fused" and causal and mask is None and q.shape[-2] == k.shape[-2]:
        # the kernel's own causal path skips the masked half instead of building a mask
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=grouped)
    if causal:
        allowed = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
        mask = allowed if mask is None else mask & allowed
    if impl == "fused":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=grouped)
        if mask is not None:  # the fused kernel leaves NaN (or garbage) where a query sees no key
            out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
        return out

    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., Lq, Lk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    # softmax in at least float32 (half precision overflows), but never below the input's precision
    weights = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(q.dtype)
    if mask is not None:
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # rows with no key: NaN -> 0
    if transform is not None:
        weights = transform(weights)
    if dropout > 0.0:
        weights = F.dropout(weights, p=dropout)
    out = weights @ v  # (..., Lq, d_v)
    if recorder is not None:
        recorder(weights)
    return (out, weights) if return_weights else out


class MultiHeadAttention(nn.Module):
    """Multi-head attention: project to heads, attend in each, concatenate, project back.

    Self-attention by default; pass `context` for cross-attention. `rope`, when given, rotates
    queries and keys by position before the dot product. `attention`, when given, replaces
    `scaled_dot_product_attention`: a function of (q, k, v), each (B, heads, L, head_dim), such as
    `functools.partial(multipole_attention, window=8, levels=2)`; it takes no mask and forms no weights.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        context_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        impl: Impl = "fused",
        attention: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if dim <= 0 or heads <= 0:
            raise ValueError(f"dim={dim} and heads={heads} must be positive")
        if dim % heads != 0:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        if attention is not None and (not callable(attention) or dropout):
            raise ValueError(f"attention={attention!r} with dropout={dropout}: expected a function of (q, k, v), "
                             "and no attention dropout, which needs the weights it never forms")
        context_dim = dim if context_dim is None else context_dim
        self.heads, self.head_dim, self.dropout, self.impl = heads, dim // heads, dropout, impl
        self.attention = attention
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(context_dim, dim, bias=bias)
        self.to_v = nn.Linear(context_dim, dim, bias=bias)
        self.to_out = nn.Linear(dim, dim, bias=bias)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        causal: bool = False,
        rope: nn.Module | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """(B, L, dim) -> (B, L, dim); with `return_weights`, also the (B, heads, L, L_context) weights."""
        context = x if context is None else context
        q = rearrange(self.to_q(x), "b l (h d) -> b h l d", h=self.heads)
        k = rearrange(self.to_k(context), "b l (h d) -> b h l d", h=self.heads)
        v = rearrange(self.to_v(context), "b l (h d) -> b h l d", h=self.heads)
        if rope is not None:
            q, k = rope(q), rope(k)
        if self.attention is not None:
            if mask is not None or causal or return_weights:
                raise ValueError(f"this layer attends with attention={self.attention!r}, which takes no mask, no "
                                 f"causal=True and no return_weights=True; got mask="
                                 f"{None if mask is None else tuple(mask.shape)}, causal={causal}, "
                                 f"return_weights={return_weights}")
            out = self.attention(q, k, v)  # (B, heads, L, head_dim)
            return self.to_out(rearrange(out, "b h l d -> b l (h d)"))
        impl = "explicit" if return_weights else self.impl
        result = scaled_dot_product_attention(
            q, k, v, mask, causal=causal, dropout=self.dropout if self.training else 0.0,
            impl=impl, return_weights=return_weights,
        )
        out, weights = result if return_weights else (result, None)
        out = self.to_out(rearrange(out, "b h l d -> b l (h d)"))
        return (out, weights) if return_weights else out
