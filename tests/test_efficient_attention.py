"""Efficient attention: linear, random-feature, MRA, multipole and wavelet-space attention against naive computations.

Exact identities are checked in float64 at 1e-10 and in float32 at 1e-5. Random-feature estimates
are checked for a falling error as the number of features grows, with fixed seeds.
"""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.nn.attention import scaled_dot_product_attention
from course_lib.nn.efficient_attention import (
    LearnedKernelAttention,
    elu_feature_map,
    explicit_kernel_attention,
    haar_transform,
    inverse_haar_transform,
    linear_attention,
    mra_attention,
    multipole_attention,
    orthogonal_gaussian,
    performer_attention,
    softmax_random_features,
    wavelet_space_attention,
)


def _qkv(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float64, scale: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=generator, dtype=dtype) * scale for _ in range(3))


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


# ----------------------------------------------------------------------------- linear attention


def _naive_kernel_attention(qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Loop over queries: out_i = sum_j s_ij v_j / sum_j s_ij over the keys query i may see."""
    out = torch.empty(*qf.shape[:-1], v.shape[-1], dtype=v.dtype)
    for i in range(qf.shape[-2]):
        last = i + 1 if causal else kf.shape[-2]
        s = (qf[..., i : i + 1, :] * kf[..., :last, :]).sum(-1)  # (..., last)
        out[..., i, :] = (s[..., None] * v[..., :last, :]).sum(-2) / s.sum(-1, keepdim=True)
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape", [(2, 3, 7, 4), (1, 2, 16, 8), (5, 1, 3)])
def test_linear_attention_equals_quadratic_form(causal, dtype, tol, shape):
    q, k, v = _qkv(shape, dtype=dtype)
    qf, kf = elu_feature_map(q), elu_feature_map(k)
    naive = _naive_kernel_attention(qf, kf, v, causal)
    _close(explicit_kernel_attention(qf, kf, v, causal=causal), naive, tol)
    _close(linear_attention(qf, kf, v, causal=causal), naive, tol)


def test_linear_attention_cross_lengths_and_value_width():
    q = torch.rand(2, 2, 5, 6, dtype=torch.float64)
    k = torch.rand(2, 2, 9, 6, dtype=torch.float64)
    v = torch.randn(2, 2, 9, 3, dtype=torch.float64)
    out = linear_attention(q, k, v)
    assert out.shape == (2, 2, 5, 3)
    _close(out, _naive_kernel_attention(q, k, v, False), 1e-10)


def test_causal_linear_attention_ignores_the_future():
    q, k, v = _qkv((1, 2, 10, 4))
    qf, kf = elu_feature_map(q), elu_feature_map(k)
    out = linear_attention(qf, kf, v, causal=True)
    v2 = v.clone()
    v2[..., 6:, :] += 100.0
    kf2 = kf.clone()
    kf2[..., 6:, :] *= 3.0
    out2 = linear_attention(qf, kf2, v2, causal=True)
    _close(out[..., :6, :], out2[..., :6, :], 1e-12)
    assert not torch.allclose(out[..., 6:, :], out2[..., 6:, :])


def test_elu_feature_map_is_positive():
    # in float64; in float32 elu(x) + 1 rounds to 0 below x = -17, which is why linear_attention has eps
    x = torch.linspace(-30, 30, 101, dtype=torch.float64)
    assert (elu_feature_map(x) > 0).all()
    _close(elu_feature_map(torch.tensor([0.0, 2.0])), torch.tensor([1.0, 3.0]), 1e-7)


def test_orthogonal_gaussian_rows_are_orthogonal_within_blocks_and_deterministic():
    omega = orthogonal_gaussian(10, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert omega.shape == (10, 4)
    for block in (omega[:4], omega[4:8]):
        gram = block @ block.T
        _close(gram - torch.diag(torch.diagonal(gram)), torch.zeros(4, 4, dtype=torch.float64), 1e-10)
    again = orthogonal_gaussian(10, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(omega, again)
    other = orthogonal_gaussian(10, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert not torch.equal(omega, other)


def test_orthogonal_gaussian_rows_have_gaussian_second_moment():
    # rows must be marginally N(0, I): E[ω ωᵀ] = I, checked on 40000 rows to about 0.03
    omega = orthogonal_gaussian(40000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _close(omega.T @ omega / omega.shape[0], torch.eye(4, dtype=torch.float64), 0.03)
    _close(omega.mean(0), torch.zeros(4, dtype=torch.float64), 0.03)


def test_random_features_estimate_the_softmax_kernel_without_bias():
    # with the stabilising shifts the kernel is only known up to a row constant, so compare normalised rows
    q, k, _ = _qkv((1, 1, 6, 4), scale=0.5)
    omega = orthogonal_gaussian(200000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = softmax_random_features(q, omega, is_query=True) @ softmax_random_features(k, omega, is_query=False).mT
    exact = torch.softmax(q @ k.mT / 2.0, dim=-1)
    _close(a / a.sum(-1, keepdim=True), exact, 0.01)


@pytest.mark.parametrize("causal", [False, True])
def test_performer_converges_to_softmax_attention(causal):
    # mean absolute error over 3 feature seeds, for 16 .. 65536 features: it must fall at every step
    # and end below 0.02 (Monte Carlo error shrinks like 1/sqrt(m))
    q, k, v = _qkv((2, 2, 24, 8), scale=0.6)
    exact = scaled_dot_product_attention(q, k, v, causal=causal)
    errors = []
    for features in (16, 256, 4096, 65536):
        err = 0.0
        for seed in range(3):
            omega = orthogonal_gaussian(features, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            err += (performer_attention(q, k, v, omega, causal=causal) - exact).abs().mean().item() / 3
        errors.append(err)
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.02, errors


def test_performer_is_linear_attention_on_its_features():
    q, k, v = _qkv((2, 2, 9, 4))
    omega = orthogonal_gaussian(16, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    qf = softmax_random_features(q, omega, is_query=True)
    kf = softmax_random_features(k, omega, is_query=False)
    for causal in (False, True):
        # 1e-8, not 1e-10: linear_attention adds eps=1e-12 to denominators that the shifts make small
        _close(performer_attention(q, k, v, omega, causal=causal), _naive_kernel_attention(qf, kf, v, causal), 1e-8)


def test_performer_survives_large_scores():
    # the shifts keep exp in range where unshifted features would overflow
    q, k, v = _qkv((1, 1, 8, 4), dtype=torch.float32, scale=30.0)
    omega = orthogonal_gaussian(64, 4, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(performer_attention(q, k, v, omega)).all()


def test_learned_kernel_starts_as_performer_and_learns():
    module = LearnedKernelAttention(8, 32, seed=5).double()
    q, k, v = _qkv((2, 2, 12, 8))
    omega = orthogonal_gaussian(32, 8, generator=torch.Generator().manual_seed(5)).double()  # the buffer is float32
    for causal in (False, True):
        _close(module(q, k, v, causal=causal), performer_attention(q, k, v, omega, causal=causal), 1e-10)
    module(q, k, v).square().sum().backward()
    assert module.mean.grad is not None and module.mean.grad.abs().sum() > 0
    assert module.log_scale.grad is not None and module.log_scale.grad.abs().sum() > 0
    with torch.no_grad():
        module.mean.add_(0.3)
    assert not torch.allclose(module(q, k, v), performer_attention(q, k, v, omega))


def test_learned_kernel_is_deterministic_for_a_seed():
    q, k, v = _qkv((1, 2, 6, 4), dtype=torch.float32)
    a, b, c = LearnedKernelAttention(4, 8, seed=1), LearnedKernelAttention(4, 8, seed=1), LearnedKernelAttention(4, 8, seed=2)
    assert torch.equal(a(q, k, v), b(q, k, v))
    assert not torch.equal(a(q, k, v), c(q, k, v))


def test_learned_kernel_fits_a_sharper_kernel():
    # a few Adam steps on a target from sharper softmax attention lower the loss: the distribution is learnable
    torch.manual_seed(0)
    q, k, v = _qkv((1, 2, 16, 4), dtype=torch.float32)
    target = scaled_dot_product_attention(q * 2, k, v)
    module = LearnedKernelAttention(4, 64, seed=0)
    optimiser = torch.optim.Adam(module.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        loss = (module(q, k, v) - target).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], (losses[0], losses[-1])


def test_linear_attention_errors():
    x = torch.rand(1, 1, 4, 3)
    with pytest.raises(ValueError, match="causal=True with 4 queries and 5 keys"):
        linear_attention(x, torch.rand(1, 1, 5, 3), torch.rand(1, 1, 5, 2), causal=True)
    with pytest.raises(ValueError, match="feature size 3 and k 2"):
        linear_attention(x, torch.rand(1, 1, 4, 2), x)
    with pytest.raises(ValueError, match="leading dims"):
        linear_attention(x, x, torch.rand(1, 1, 5, 3))
    with pytest.raises(ValueError, match="eps=-1"):
        linear_attention(x, x, x, eps=-1.0)
    with pytest.raises(ValueError, match="num_features=0"):
        orthogonal_gaussian(0, 3)
    with pytest.raises(ValueError, match=r"omega has shape \(4, 2\)"):
        performer_attention(x, x, x, torch.rand(4, 2))
    with pytest.raises(ValueError, match="head_dim=0"):
        LearnedKernelAttention(0, 4)


# ----------------------------------------------------------------------------- MRA


def _naive_mra(q, k, v, block_size: int, refined: int) -> torch.Tensor:
    """Dense form: each score is exact inside the refined block pairs, else the block-mean score (value: block-mean value)."""
    b, h, length, _ = q.shape
    n = length // block_size
    means = [t.reshape(b, h, n, block_size, -1).mean(3) for t in (q, k, v)]
    coarse = means[0] @ means[1].mT / math.sqrt(q.shape[-1])
    out = torch.empty_like(v)
    for bi in range(b):
        for hi in range(h):
            chosen = set(coarse[bi, hi].flatten().topk(refined).indices.tolist())
            for i in range(length):
                scores, values = [], []
                for j in range(length):
                    pair = (i // block_size) * n + j // block_size
                    if pair in chosen:
                        scores.append(q[bi, hi, i] @ k[bi, hi, j] / math.sqrt(q.shape[-1]))
                        values.append(v[bi, hi, j])
                    else:
                        scores.append(coarse[bi, hi, i // block_size, j // block_size])
                        values.append(means[2][bi, hi, j // block_size])
                weights = torch.softmax(torch.stack(scores), 0)
                out[bi, hi, i] = (weights[:, None] * torch.stack(values)).sum(0)
    return out


@pytest.mark.parametrize("block_size,refined", [(2, 0), (2, 5), (4, 3), (3, 9), (4, 1)])
def test_mra_matches_naive_dense_form(block_size, refined):
    q, k, v = _qkv((2, 2, 12, 4))
    _close(mra_attention(q, k, v, block_size=block_size, refined_blocks=refined), _naive_mra(q, k, v, block_size, refined), 1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_mra_at_full_resolution_is_exact(dtype, tol):
    q, k, v = _qkv((2, 3, 16, 8), dtype=dtype, scale=2.0)
    exact = scaled_dot_product_attention(q, k, v)
    _close(mra_attention(q, k, v, block_size=4, refined_blocks=16), exact, tol)
    _close(mra_attention(q, k, v, block_size=1, refined_blocks=0), exact, tol)
    _close(mra_attention(q, k, v, block_size=1, refined_blocks=100), exact, tol)


def test_mra_error_falls_as_more_blocks_are_refined():
    # keys near their queries (a banded, smooth attention map) are what MRA is built for
    q, k, v = _qkv((2, 2, 32, 8))
    k = q + 0.3 * k
    exact = scaled_dot_product_attention(q, k, v)
    errors = [
        (mra_attention(q, k, v, block_size=4, refined_blocks=r) - exact).abs().mean().item() for r in (0, 8, 16, 32, 64)
    ]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-10


def test_mra_gradients_flow():
    q, k, v = (t.requires_grad_() for t in _qkv((1, 2, 8, 4)))
    mra_attention(q, k, v, block_size=2, refined_blocks=5).sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_mra_errors():
    x = torch.rand(1, 1, 8, 4)
    with pytest.raises(ValueError, match="block_size=0"):
        mra_attention(x, x, x, block_size=0, refined_blocks=0)
    with pytest.raises(ValueError, match="sequence length 8 is not divisible by block_size=3"):
        mra_attention(x, x, x, block_size=3, refined_blocks=0)
    with pytest.raises(ValueError, match="refined_blocks=17"):
        mra_attention(x, x, x, block_size=2, refined_blocks=17)
    with pytest.raises(ValueError, match=r"expected \(B, heads, L, d\)"):
        mra_attention(x[0], x[0], x[0], block_size=2, refined_blocks=1)


# ----------------------------------------------------------------------------- multipole


def _naive_multipole(q, k, v, window: int, levels: int) -> torch.Tensor:
    """Dense form: pair (i, j) is exact when their level-0 cells are neighbours; otherwise key j is its
    level-l cell mean, at the largest level l < levels where the two cells are not neighbours."""
    length = q.shape[-2]
    out = torch.empty_like(v)
    for i in range(length):
        scores, values = [], []
        for j in range(length):
            if abs(i // window - j // window) <= 1:
                kj, vj = k[..., j, :], v[..., j, :]
            else:
                level = max(lv for lv in range(levels) if abs(i // (window * 2**lv) - j // (window * 2**lv)) > 1)
                size = window * 2**level
                start = j // size * size
                kj, vj = k[..., start : start + size, :].mean(-2), v[..., start : start + size, :].mean(-2)
            scores.append((q[..., i, :] * kj).sum(-1) / math.sqrt(q.shape[-1]))
            values.append(vj)
        weights = torch.softmax(torch.stack(scores, -1), -1)  # (B, H, L)
        out[..., i, :] = (weights[..., None] * torch.stack(values, -2)).sum(-2)
    return out


@pytest.mark.parametrize("length,window,levels", [(16, 2, 1), (16, 2, 2), (32, 2, 3), (24, 3, 2), (32, 1, 4), (64, 2, 4)])
def test_multipole_matches_naive_masked_form(length, window, levels):
    q, k, v = _qkv((2, 2, length, 4))
    _close(multipole_attention(q, k, v, window=window, levels=levels), _naive_multipole(q, k, v, window, levels), 1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_multipole_with_near_field_covering_everything_is_exact(dtype, tol):
    q, k, v = _qkv((2, 3, 16, 8), dtype=dtype, scale=2.0)
    exact = scaled_dot_product_attention(q, k, v)
    _close(multipole_attention(q, k, v, window=16, levels=1), exact, tol)
    _close(multipole_attention(q, k, v, window=8, levels=2), exact, tol)


def test_multipole_partitions_the_keys():
    # with keys all equal and values one-hot per position, each query's weights must sum to one
    # over the positions: every key is counted once, at exactly one level
    length = 32
    q = torch.randn(1, 1, length, 4, dtype=torch.float64)
    k = torch.zeros_like(q)
    v = torch.eye(length, dtype=torch.float64)[None, None]
    out = multipole_attention(q, k, v, window=2, levels=3)
    _close(out, torch.full_like(out, 1 / length), 1e-12)


def test_multipole_errors():
    x = torch.rand(1, 1, 12, 4)
    with pytest.raises(ValueError, match="window=0"):
        multipole_attention(x, x, x, window=0, levels=1)
    with pytest.raises(ValueError, match=r"sequence length 12 is not divisible by window \* 2\*\*\(levels - 1\)=8"):
        multipole_attention(x, x, x, window=2, levels=3)
    with pytest.raises(ValueError, match=r"expected \(B, heads, L, d\)"):
        multipole_attention(x, torch.rand(1, 1, 6, 4), x, window=2, levels=1)


# ----------------------------------------------------------------------------- wavelet space


def _haar_matrix(length: int, levels: int) -> torch.Tensor:
    """Dense orthonormal Haar basis, row by row: averages of the coarsest blocks, then the details."""
    rows = []
    size = 2**levels
    for block in range(length // size):
        row = torch.zeros(length, dtype=torch.float64)
        row[block * size : (block + 1) * size] = 1 / math.sqrt(size)
        rows.append(row)
    for level in range(levels, 0, -1):
        size = 2**level
        for block in range(length // size):
            row = torch.zeros(length, dtype=torch.float64)
            row[block * size : block * size + size // 2] = 1 / math.sqrt(size)
            row[block * size + size // 2 : (block + 1) * size] = -1 / math.sqrt(size)
            rows.append(row)
    return torch.stack(rows)


@pytest.mark.parametrize("length,levels", [(8, 0), (8, 1), (8, 3), (12, 2), (16, 4)])
def test_haar_transform_matches_dense_basis_and_inverts(length, levels):
    x = torch.randn(2, 3, length, 5, dtype=torch.float64)
    coefficients = haar_transform(x, levels)
    matrix = _haar_matrix(length, levels)
    _close(matrix @ matrix.T, torch.eye(length, dtype=torch.float64), 1e-12)  # the reference is orthonormal
    _close(coefficients, matrix @ x, 1e-12)
    _close(inverse_haar_transform(coefficients, levels), x, 1e-12)
    _close(coefficients.norm(), x.norm(), 1e-12)  # Parseval: the transform is a rotation


def test_haar_transform_of_a_small_example():
    x = torch.tensor([[4.0], [2.0], [5.0], [5.0]])
    # averages (6/√2, 10/√2) -> 16/2 = 8, detail (6 - 10)/2 = -2; finest details 2/√2 and 0
    expected = torch.tensor([[8.0], [-2.0], [math.sqrt(2)], [0.0]])
    _close(haar_transform(x, 2), expected, 1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_wavelet_space_attention_with_no_levels_is_plain_attention(dtype, tol):
    q, k, v = _qkv((2, 3, 16, 8), dtype=dtype)
    _close(wavelet_space_attention(q, k, v, levels=0), scaled_dot_product_attention(q, k, v), tol)


def test_wavelet_space_attention_matches_dense_change_of_basis():
    q, k, v = _qkv((2, 2, 16, 4))
    matrix = _haar_matrix(16, 3)
    expected = matrix.T @ scaled_dot_product_attention(matrix @ q, matrix @ k, matrix @ v)
    out = wavelet_space_attention(q, k, v, levels=3)
    _close(out, expected, 1e-10)
    assert not torch.allclose(out, scaled_dot_product_attention(q, k, v), atol=1e-3)  # a different operator
    # any attention plugs in, for example a linear one
    linear = wavelet_space_attention(
        q, k, v, levels=3, attention=lambda a, b, c: linear_attention(elu_feature_map(a), elu_feature_map(b), c)
    )
    _close(linear, matrix.T @ explicit_kernel_attention(elu_feature_map(matrix @ q), elu_feature_map(matrix @ k), matrix @ v), 1e-10)


def test_wavelet_errors():
    x = torch.rand(1, 1, 12, 4)
    with pytest.raises(ValueError, match="levels=-1"):
        haar_transform(x, -1)
    with pytest.raises(ValueError, match=r"not divisible by 2\*\*levels=8"):
        haar_transform(x, 3)
    with pytest.raises(ValueError, match=r"not divisible by 2\*\*levels=8"):
        inverse_haar_transform(x, 3)
    with pytest.raises(ValueError, match="q has 12 positions and k 6"):
        wavelet_space_attention(x, torch.rand(1, 1, 6, 4), torch.rand(1, 1, 6, 4), levels=1)
