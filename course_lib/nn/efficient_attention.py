"""Efficient approximations of softmax attention on (B, heads, L, d) queries, keys and values.

Three families, each beside the exact `scaled_dot_product_attention`:

- kernelised linear attention, with the elu+1 feature map, FAVOR+ positive orthogonal random
  features ("Rethinking Attention with Performers") and random features whose distribution is
  learned ("On Learning the Transformer Kernel"), in O(L) non-causal and prefix-sum causal forms;
- multi-resolution approximate attention, "Multi Resolution Analysis (MRA) for Approximate
  Self-Attention": coarse block-averaged scores, refined at full resolution where they are largest;
- multipole attention, "Linear Attention with Global Context: A Multipole Attention Mechanism for
  Vision and Physics": exact attention to near tokens, pooled keys and values at coarser scales
  for far ones;
- wavelet-space attention, "WavSpA: Wavelet Space Attention for Boosting Transformers' Long Sequence
  Learning Ability": attention on the Haar coefficients of the sequence, then the inverse transform.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import Tensor, nn

from course_lib.nn.attention import scaled_dot_product_attention

# ---------------------------------------------------------------------------------------------
# Kernelised linear attention
# ---------------------------------------------------------------------------------------------


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False) -> None:
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: expected (..., L, d) tensors"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q has feature size {q.shape[-1]} and k {k.shape[-1]}; expected them equal")
    if k.shape[:-1] != v.shape[:-1] or q.shape[:-2] != k.shape[:-2]:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: expected equal leading dims "
            "and as many keys as values"
        )
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"causal=True with {q.shape[-2]} queries and {k.shape[-2]} keys; expected equal lengths"
        )


def elu_feature_map(x: Tensor) -> Tensor:
    """elu(x) + 1: a positive feature map, so kernel scores phi(q)·phi(k) are positive like exp scores."""
    return F.elu(x) + 1.0


def explicit_kernel_attention(q_feat: Tensor, k_feat: Tensor, v: Tensor, *, causal: bool = False) -> Tensor:
    """The quadratic reference: rows of phi(Q) phi(K)ᵀ, normalised to sum to one, times V."""
    _check_qkv(q_feat, k_feat, v, causal=causal)
    scores = q_feat @ k_feat.transpose(-2, -1)  # (..., Lq, Lk)
    if causal:
        scores = scores.tril()
    return (scores @ v) / scores.sum(dim=-1, keepdim=True)


def linear_attention(
    q_feat: Tensor, k_feat: Tensor, v: Tensor, *, causal: bool = False, eps: float = 1e-12
) -> Tensor:
    """phi(Q) (phi(K)ᵀ V) / phi(Q) (phi(K)ᵀ 1): the same as `explicit_kernel_attention`, in O(L m d).

    Takes features already mapped (..., L, m) and values (..., L, d_v). Non-causal, the key-value
    summary is one (m, d_v) matrix; causal, it is a running (prefix) sum over positions, so query i
    sees keys up to i. `eps` keeps the denominator off zero for features that may vanish.
    """
    _check_qkv(q_feat, k_feat, v, causal=causal)
    if eps < 0:
        raise ValueError(f"eps={eps}; expected eps >= 0")
    if not causal:
        kv = torch.einsum("...lm,...ld->...md", k_feat, v)  # (..., m, d_v)
        z = reduce(k_feat, "... l m -> ... m", "sum")
        numerator = torch.einsum("...lm,...md->...ld", q_feat, kv)
        denominator = torch.einsum("...lm,...m->...l", q_feat, z)
    else:
        kv = torch.einsum("...lm,...ld->...lmd", k_feat, v).cumsum(dim=-3)  # (..., L, m, d_v) prefix sums
        z = k_feat.cumsum(dim=-2)  # (..., L, m)
        numerator = torch.einsum("...lm,...lmd->...ld", q_feat, kv)
        denominator = torch.einsum("...lm,...lm->...l", q_feat, z)
    return numerator / (rearrange(denominator, "... l -> ... l 1") + eps)


def orthogonal_gaussian(
    num_features: int, dim: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """(num_features, dim) Gaussian-like rows, orthogonal within each block of `dim` (FAVOR+).

    Each block is the Q of a Gaussian matrix, with rows rescaled to the norms of independent Gaussian
    vectors, so every row is still marginally N(0, I) but rows in a block are exactly orthogonal,
    which lowers the variance of the random-feature estimate.
    """
    if num_features < 1 or dim < 1:
        raise ValueError(f"num_features={num_features} and dim={dim}; expected both >= 1")
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        ortho, upper = torch.linalg.qr(gaussian)
        ortho = ortho * torch.sign(torch.diagonal(upper))  # fixes QR's sign choice: Q is then uniform (Haar)
        blocks.append(ortho.T)  # rows orthonormal
    rows = torch.cat(blocks)[:num_features]
    norms = torch.randn(num_features, dim, generator=generator, dtype=torch.float64).norm(dim=-1, keepdim=True)
    return (rows * norms).to(dtype)


def softmax_random_features(x: Tensor, omega: Tensor, *, is_query: bool) -> Tensor:
    """Positive random features with E[phi(q)·phi(k)] = exp(q·k/√d), the softmax kernel (FAVOR+).

    phi(x) = exp(ω·x' - |x'|²/2) / √m with x' = x / d^(1/4) and ω (m, d) rows drawn from N(0, I).
    A shift is subtracted inside the exp for stability: per query row for queries, one per
    (batch, head) for keys; either cancels when the attention rows are normalised.
    """
    if omega.dim() != 2 or omega.shape[-1] != x.shape[-1]:
        raise ValueError(f"omega has shape {tuple(omega.shape)}; expected (num_features, {x.shape[-1]})")
    x = x / x.shape[-1] ** 0.25
    projected = x @ omega.T  # (..., L, m)
    sq_norm = (x * x).sum(dim=-1, keepdim=True) / 2
    if is_query:
        shift = projected.amax(dim=-1, keepdim=True)
    else:
        shift = projected.amax(dim=(-2, -1), keepdim=True)
    return torch.exp(projected - sq_norm - shift.detach()) / math.sqrt(omega.shape[0])


def performer_attention(q: Tensor, k: Tensor, v: Tensor, omega: Tensor, *, causal: bool = False) -> Tensor:
    """Linear-time estimate of softmax attention through positive random features `omega` (m, d)."""
    _check_qkv(q, k, v, causal=causal)
    q_feat = softmax_random_features(q, omega, is_query=True)
    k_feat = softmax_random_features(k, omega, is_query=False)
    return linear_attention(q_feat, k_feat, v, causal=causal)


class LearnedKernelAttention(nn.Module):
    """Random-feature attention whose feature distribution is learned ("On Learning the Transformer Kernel").

    The frequencies are ω_r = μ + σ ⊙ ε_r with ε_r fixed (orthogonal Gaussian, drawn from `seed`) and
    μ, log σ learned by backpropagation (the reparameterisation trick), so the kernel
    E[phi(q)·phi(k)] changes shape in training. At initialisation (μ = 0, σ = 1) it is FAVOR+
    softmax attention.
    """

    def __init__(self, head_dim: int, num_features: int, *, seed: int = 0) -> None:
        super().__init__()
        if head_dim < 1 or num_features < 1:
            raise ValueError(f"head_dim={head_dim} and num_features={num_features}; expected both >= 1")
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("noise", orthogonal_gaussian(num_features, head_dim, generator=generator))
        self.mean = nn.Parameter(torch.zeros(head_dim))
        self.log_scale = nn.Parameter(torch.zeros(head_dim))

    def omega(self) -> Tensor:
        """(num_features, head_dim) frequencies drawn from the learned distribution."""
        return self.mean + self.log_scale.exp() * self.noise

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False) -> Tensor:
        """(B, heads, L, d) q, k, v -> (B, heads, L, d_v), in time linear in L."""
        return performer_attention(q, k, v, self.omega(), causal=causal)


# ---------------------------------------------------------------------------------------------
# Multi-resolution approximate attention (MRA)
# ---------------------------------------------------------------------------------------------


def _check_4d_self(q: Tensor, k: Tensor, v: Tensor, multiple: int, what: str) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: expected (B, heads, L, d) q and k "
            "of one shape and v with the same (B, heads, L)"
        )
    if q.shape[-2] % multiple != 0:
        raise ValueError(f"sequence length {q.shape[-2]} is not divisible by {what}={multiple}")


def mra_attention(q: Tensor, k: Tensor, v: Tensor, *, block_size: int, refined_blocks: int) -> Tensor:
    """Softmax attention approximated at two resolutions, as in "Multi Resolution Analysis (MRA) for
    Approximate Self-Attention".

    Every (query block, key block) pair first gets one coarse score, the dot product of the block
    means (the mean of the block's scores), standing for all block_size² entries. In each
    (batch, head) the `refined_blocks` pairs with the highest coarse scores are recomputed exactly,
    token by token. Scores: (L / block_size)² coarse + refined_blocks · block_size² fine, instead of L²
    (this readable version still spreads the coarse scores over the L query rows, O(L² / block_size)).
    With every pair refined, or block_size=1, it is exact softmax attention. Non-causal.
    """
    if block_size < 1:
        raise ValueError(f"block_size={block_size}; expected >= 1")
    _check_4d_self(q, k, v, block_size, "block_size")
    blocks = q.shape[-2] // block_size
    if not 0 <= refined_blocks <= blocks * blocks:
        raise ValueError(
            f"refined_blocks={refined_blocks}; expected 0 <= refined_blocks <= {blocks * blocks} (blocks²)"
        )
    scale = q.shape[-1] ** -0.5
    q_mean, k_mean, v_mean = (reduce(t, "b h (n s) d -> b h n d", "mean", s=block_size) for t in (q, k, v))
    coarse = q_mean @ k_mean.transpose(-2, -1) * scale  # (B, H, n, n)

    top = rearrange(coarse, "b h n m -> b h (n m)").topk(refined_blocks, dim=-1).indices  # (B, H, r)
    refined = torch.zeros_like(rearrange(coarse, "b h n m -> b h (n m)"), dtype=torch.bool)
    refined = rearrange(refined.scatter(-1, top, True), "b h (n m) -> b h n m", n=blocks)
    q_block, k_block = top // blocks, top % blocks  # (B, H, r)

    def gather_blocks(t: Tensor, index: Tensor) -> Tensor:
        t = rearrange(t, "b h (n s) d -> b h n s d", s=block_size)
        index = repeat(index, "b h r -> b h r s d", s=block_size, d=t.shape[-1])
        return t.gather(2, index)  # (B, H, r, s, d)

    q_sel, k_sel, v_sel = gather_blocks(q, q_block), gather_blocks(k, k_block), gather_blocks(v, k_block)
    fine = q_sel @ k_sel.transpose(-2, -1) * scale  # (B, H, r, s, s)

    # each unrefined coarse score stands for block_size keys with the block's mean value
    coarse_rows = coarse.masked_fill(refined, float("-inf")) + math.log(block_size)
    coarse_rows = repeat(coarse_rows, "b h n m -> b h (n s) m", s=block_size)  # (B, H, L, n)
    rows = repeat(q_block * block_size, "b h r -> b h r s", s=block_size)
    rows = rows + torch.arange(block_size, device=q.device)
    rows = rearrange(rows, "b h r s -> b h (r s)")  # (B, H, r·s) the query row of each refined row

    # one shift per query row, the largest score it sees at either resolution
    row_max = coarse_rows.amax(dim=-1).scatter_reduce(
        -1, rows, rearrange(fine.amax(dim=-1), "b h r s -> b h (r s)"), reduce="amax"
    ).detach()
    coarse_weights = torch.exp(coarse_rows - row_max[..., None])
    numerator = coarse_weights @ v_mean  # (B, H, L, d_v)
    denominator = coarse_weights.sum(dim=-1)  # (B, H, L)
    fine_weights = torch.exp(fine - rearrange(row_max.gather(-1, rows), "b h (r s) -> b h r s 1", s=block_size))
    fine_num = rearrange(fine_weights @ v_sel, "b h r s d -> b h (r s) d")
    numerator = numerator.scatter_add(-2, repeat(rows, "b h x -> b h x d", d=v.shape[-1]), fine_num)
    denominator = denominator.scatter_add(-1, rows, rearrange(fine_weights.sum(dim=-1), "b h r s -> b h (r s)"))
    return numerator / denominator[..., None]


# ---------------------------------------------------------------------------------------------
# Multipole attention
# ---------------------------------------------------------------------------------------------


def multipole_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int, levels: int) -> Tensor:
    """Softmax attention with exact near field and pooled far field at growing scales, after "Linear
    Attention with Global Context: A Multipole Attention Mechanism for Vision and Physics".

    The sequence is cut into cells of window·2^l tokens at level l = 0 .. levels-1. A query attends
    exactly to the tokens of its own and the two neighbouring level-0 cells; a farther key is seen
    through its cell's mean key and mean value (standing for all the cell's tokens) at the coarsest
    level l where the two cells are not neighbours, as in the interaction lists of the fast
    multipole method: at most 3 cells per level, plus every far cell at the top level. Non-causal.
    """
    if window < 1 or levels < 1:
        raise ValueError(f"window={window} and levels={levels}; expected both >= 1")
    _check_4d_self(q, k, v, window * 2 ** (levels - 1), "window * 2**(levels - 1)")
    length, scale = q.shape[-2], q.shape[-1] ** -0.5
    cells = length // window

    # near field: each level-0 cell against itself and its two neighbours, (B, H, n, w, 3w)
    def neighbours(t: Tensor) -> Tensor:
        t = F.pad(rearrange(t, "b h (n w) d -> b h n w d", w=window), (0, 0, 0, 0, 1, 1))
        return torch.cat([t[:, :, :cells], t[:, :, 1 : cells + 1], t[:, :, 2:]], dim=-2)  # (B, H, n, 3w, d)

    q_cells = rearrange(q, "b h (n w) d -> b h n w d", w=window)
    near_valid = torch.ones(cells, 3, dtype=torch.bool, device=q.device)
    near_valid[0, 0] = near_valid[-1, 2] = False  # no cell before the first or after the last
    near_valid = repeat(near_valid, "n c -> n (c w)", w=window)
    near_scores = q_cells @ neighbours(k).transpose(-2, -1) * scale  # (B, H, n, w, 3w)
    near_scores = near_scores.masked_fill(~near_valid[:, None], float("-inf"))
    scores, values = [rearrange(near_scores, "b h n w k -> b h (n w) k")], [neighbours(v)]

    for level in range(levels):
        size = window * 2**level
        count = length // size
        cell = torch.arange(count, device=q.device)
        if level < levels - 1:  # children of the parent's neighbours that are not one's own neighbours
            even = torch.tensor([-2, 2, 3], device=q.device)
            odd = torch.tensor([-3, -2, 2], device=q.device)
            offsets = torch.where((cell % 2 == 0)[:, None], even, odd)
            index = cell[:, None] + offsets  # (count, 3)
        else:  # top level: every cell that is not a neighbour
            index = repeat(cell, "m -> n m", n=count)
        valid = (index >= 0) & (index < count) & ((index - cell[:, None]).abs() > 1)
        index = index.clamp(0, count - 1)
        k_mean, v_mean = (reduce(t, "b h (n s) d -> b h n d", "mean", s=size) for t in (k, v))
        k_far, v_far = (t[:, :, index] for t in (k_mean, v_mean))  # (B, H, count, K, d)
        q_level = rearrange(q, "b h (n s) d -> b h n s d", s=size)
        far = q_level @ k_far.transpose(-2, -1) * scale + math.log(size)  # (B, H, count, s, K)
        far = far.masked_fill(~valid[:, None], float("-inf"))
        scores.append(rearrange(far, "b h n s k -> b h (n s) k"))
        values.append(v_far)

    # one softmax over the near tokens and the far cells of every level
    widths = [s.shape[-1] for s in scores]
    weights = torch.softmax(torch.cat(scores, dim=-1), dim=-1).split(widths, dim=-1)
    out = rearrange(weights[0], "b h (n w) k -> b h n w k", w=window) @ values[0]  # (B, H, n, w, d)
    out = rearrange(out, "b h n w d -> b h (n w) d")
    for level, (weight, value) in enumerate(zip(weights[1:], values[1:], strict=True)):
        weight = rearrange(weight, "b h (m s) k -> b h m s k", s=window * 2**level)
        out = out + rearrange(weight @ value, "b h m s d -> b h (m s) d")
    return out


# ---------------------------------------------------------------------------------------------
# Wavelet-space attention (WavSpA)
# ---------------------------------------------------------------------------------------------


def _check_levels(x: Tensor, levels: int) -> None:
    if levels < 0:
        raise ValueError(f"levels={levels}; expected levels >= 0")
    if x.dim() < 2 or x.shape[-2] % 2**levels != 0:
        raise ValueError(
            f"x has shape {tuple(x.shape)}: its length (dim -2) is not divisible by 2**levels={2**levels}"
        )


def haar_transform(x: Tensor, levels: int) -> Tensor:
    """Orthonormal multi-level Haar transform along the sequence (dim -2) of (..., L, d).

    Each level splits the current averages into (even + odd)/√2 averages and (even - odd)/√2 details;
    the result, of the same shape, is [coarsest averages, coarsest details, ..., finest details].
    """
    _check_levels(x, levels)
    details = []
    for _ in range(levels):
        pairs = rearrange(x, "... (n two) d -> ... n two d", two=2)
        even, odd = pairs[..., 0, :], pairs[..., 1, :]
        details.append((even - odd) / math.sqrt(2))
        x = (even + odd) / math.sqrt(2)
    return torch.cat([x, *reversed(details)], dim=-2)


def inverse_haar_transform(coefficients: Tensor, levels: int) -> Tensor:
    """Inverse of `haar_transform`: rebuilds the (..., L, d) sequence from its Haar coefficients."""
    _check_levels(coefficients, levels)
    length = coefficients.shape[-2]
    x = coefficients[..., : length >> levels, :]
    for level in range(levels, 0, -1):
        detail = coefficients[..., length >> level : length >> (level - 1), :]
        even, odd = (x + detail) / math.sqrt(2), (x - detail) / math.sqrt(2)
        x = rearrange(torch.stack([even, odd], dim=-2), "... n two d -> ... (n two) d")
    return x


def wavelet_space_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    levels: int,
    attention: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Attention learned in wavelet space, as in "WavSpA": Haar-transform q, k and v along the sequence,
    attend among the coefficients, and transform the result back.

    The token projections are per-position linear maps, so transforming q, k, v is the same as
    transforming the block's input first. `attention` defaults to exact softmax attention (non-causal:
    a coefficient mixes several positions); levels=0 is plain attention.
    """
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"q has {q.shape[-2]} positions and k {k.shape[-2]}; expected equal lengths (self-attention)"
        )
    for t in (q, k, v):
        _check_levels(t, levels)
    attention = scaled_dot_product_attention if attention is None else attention
    out = attention(*(haar_transform(t, levels) for t in (q, k, v)))
    return inverse_haar_transform(out, levels)
