"""Attention: `scaled_dot_product_attention` and `MultiHeadAttention` against PyTorch and naive loops.

Tolerances (absolute and relative, outputs are O(1)): float64 1e-10, float32 1e-5,
float16 1e-2, bfloat16 5e-2. The half-precision paths round scores and weights to 10 or 7 bits,
so they are compared loosely, and only where this CPU build of PyTorch supports them.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.nn import (
    MultiHeadAttention,
    block_mask,
    causal_mask,
    mixed_modal_mask,
    padding_mask,
    scaled_dot_product_attention,
)

TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}
MASK_KINDS = ("none", "causal", "padding", "random", "block")
IMPLS = ("explicit", "fused")
PROPERTY = settings(max_examples=40, deadline=None)


def _supported(dtype: torch.dtype) -> bool:
    """Whether this CPU build runs matmul and PyTorch's fused attention in `dtype`."""
    try:
        x = torch.ones(1, 2, 4, dtype=dtype)
        F.scaled_dot_product_attention(x, x, x)
        _ = x @ x.transpose(-2, -1)
    except RuntimeError:
        return False
    return True


DTYPES = [
    pytest.param(dtype, id=str(dtype).removeprefix("torch."), marks=pytest.mark.skipif(not _supported(dtype), reason=f"no CPU {dtype} attention"))
    for dtype in TOLERANCES
]


def bottom_right_causal(queries: int, keys: int) -> torch.Tensor:
    """Causal mask written out: query i sees key j when j <= i + (keys - queries) (aligned at the end)."""
    mask = torch.zeros(queries, keys, dtype=torch.bool)
    for i in range(queries):
        for j in range(keys):
            mask[i, j] = j <= i + (keys - queries)
    return mask


@st.composite
def attention_case(draw, dtype: torch.dtype, kinds=MASK_KINDS):
    """q, k, v of random leading dims and lengths, a mask kind, and the mask to give PyTorch."""
    kind = draw(st.sampled_from(kinds))
    if kind == "padding":  # padding_mask is (batch, 1, 1, keys): needs (batch, heads) leading dims
        lead = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    else:
        lead = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    length_q = draw(st.integers(1, 7))
    if kind == "causal":  # every query keeps at least one key; fully masked rows have their own test
        length_k = draw(st.integers(length_q, length_q + 4))
    elif kind == "block":
        sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
        length_q = length_k = sum(sizes)
    else:
        length_k = draw(st.integers(1, 7))
    dim, dim_v = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    q, k, v = randn(*lead, length_q, dim), randn(*lead, length_k, dim), randn(*lead, length_k, dim_v)
    options, reference_mask = {}, None
    if kind == "causal":
        options["causal"] = True
        reference_mask = bottom_right_causal(length_q, length_k)
    elif kind == "padding":
        lengths = torch.randint(1, length_k + 1, (lead[0],), generator=generator)
        options["mask"] = padding_mask(lengths, length_k)
        reference_mask = torch.arange(length_k)[None, None, None, :] < lengths[:, None, None, None]
    elif kind == "random":
        # either full shape or broadcast over the leading dims; one random key per row stays visible
        shape = (*lead, length_q, length_k) if draw(st.booleans()) else (length_q, length_k)
        mask = torch.rand(*shape, generator=generator) > 0.5
        keep = torch.randint(0, length_k, (*shape[:-1], 1), generator=generator)
        options["mask"] = reference_mask = mask.scatter(-1, keep, True)
    elif kind == "block":
        options["mask"] = block_mask(sizes)
        ids = [b for b, size in enumerate(sizes) for _ in range(size)]
        reference_mask = torch.tensor([[a == b for b in ids] for a in ids])
    return q, k, v, options, reference_mask


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@PROPERTY
@given(data=st.data())
def test_matches_pytorch(data, dtype, impl):
    """Both paths equal F.scaled_dot_product_attention for every mask kind, shape and dtype."""
    q, k, v, options, reference_mask = data.draw(attention_case(dtype))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=reference_mask)
    actual = scaled_dot_product_attention(q, k, v, impl=impl, **options)
    assert actual.dtype == dtype and actual.shape == expected.shape
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_causal_matches_pytorch_is_causal_for_equal_lengths(impl):
    """With as many queries as keys, causal=True is PyTorch's is_causal=True."""
    q, k, v = torch.randn(3, 2, 6, 4, dtype=torch.float64).unbind(0)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    actual = scaled_dot_product_attention(q, k, v, causal=True, impl=impl)
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=1e-10)


def test_causal_mask_aligns_at_the_end():
    """With more keys than queries (a cache), the last query sees every key and the first all but the new ones."""
    assert torch.equal(causal_mask(2, 4), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))
    assert torch.equal(causal_mask(3), bottom_right_causal(3, 3))


def test_mask_helpers_validate():
    """padding_mask and block_mask name the bad argument."""
    with pytest.raises(ValueError, match=r"lengths=\[0, 2\]"):
        padding_mask(torch.tensor([0, 2]), 4)
    with pytest.raises(ValueError, match=r"max_len=2"):
        padding_mask(torch.tensor([3]), 2)
    with pytest.raises(ValueError, match=r"block_sizes=\[2, 0\]"):
        block_mask([2, 0])


@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_queries_give_zeros(impl):
    """A query that may see no key outputs zeros (not NaN); the other queries are unaffected."""
    q, k, v = torch.randn(4, 3), torch.randn(6, 3), torch.randn(6, 2)
    mask = torch.rand(4, 6) > 0.3
    mask[:, 0] = True
    mask[2] = False  # query 2 sees nothing
    out = scaled_dot_product_attention(q, k, v, mask, impl=impl)
    assert not out.isnan().any()
    assert torch.equal(out[2], torch.zeros(2))
    rows = [0, 1, 3]
    expected = F.scaled_dot_product_attention(q[rows], k, v, attn_mask=mask[rows])
    torch.testing.assert_close(out[rows], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_causal_with_more_queries_than_keys_zeroes_the_early_queries(impl):
    """causal=True with Lq > Lk leaves the first Lq - Lk queries without keys: zeros, not NaN."""
    q, k, v = torch.randn(5, 4), torch.randn(3, 4), torch.randn(3, 4)
    out = scaled_dot_product_attention(q, k, v, causal=True, impl=impl)
    assert not out.isnan().any()
    assert torch.equal(out[:2], torch.zeros(2, 4))
    expected = F.scaled_dot_product_attention(q[2:], k, v, is_causal=True)
    torch.testing.assert_close(out[2:], expected, atol=1e-5, rtol=1e-5)


@PROPERTY
@given(data=st.data())
def test_weights_are_a_distribution_over_visible_keys(data):
    """The returned weights are 0 where masked, sum to 1 over the keys, and give the output as weights @ v."""
    q, k, v, options, reference_mask = data.draw(attention_case(torch.float64))
    out, weights = scaled_dot_product_attention(q, k, v, return_weights=True, **options)
    assert weights.shape == (*out.shape[:-1], k.shape[-2])
    if reference_mask is not None:
        hidden = ~reference_mask.expand_as(weights)
        assert torch.equal(weights[hidden], torch.zeros_like(weights[hidden]))
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1], dtype=weights.dtype),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(out, weights @ v, atol=1e-12, rtol=0)


def test_weights_of_a_fully_masked_query_are_zero():
    """A query without keys has an all-zero weight row (not NaN, not uniform)."""
    q = torch.randn(3, 4)
    mask = torch.tensor([[True, False], [False, False], [False, True]])
    _, weights = scaled_dot_product_attention(q, torch.randn(2, 4), torch.randn(2, 4), mask, return_weights=True)
    assert torch.equal(weights, torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))


def naive_multi_head(module: MultiHeadAttention, x, context=None, mask=None):
    """Multi-head attention as a loop over heads and positions, from the module's weights."""
    context = x if context is None else context
    heads, head_dim = module.heads, module.head_dim
    q, k, v = module.to_q(x), module.to_k(context), module.to_v(context)
    batch, length_q, length_k = x.shape[0], x.shape[1], context.shape[1]
    out = torch.zeros(batch, length_q, heads * head_dim, dtype=x.dtype)
    for b in range(batch):
        for h in range(heads):
            features = slice(h * head_dim, (h + 1) * head_dim)
            for i in range(length_q):
                scores = torch.stack([q[b, i, features] @ k[b, j, features] for j in range(length_k)])
                scores = scores / math.sqrt(head_dim)
                if mask is not None:
                    scores = scores.masked_fill(~mask[b, i], float("-inf"))
                out[b, i, features] = torch.softmax(scores, dim=0) @ v[b, :, features]
    return module.to_out(out)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("dim", "heads", "length"), [(8, 2, 5), (12, 3, 4), (6, 1, 3)])
def test_multi_head_matches_a_loop_over_heads(impl, dim, heads, length):
    """The module equals attending in each head separately and concatenating (float64, 1e-10)."""
    torch.manual_seed(0)
    module = MultiHeadAttention(dim, heads, impl=impl).double().eval()
    x = torch.randn(2, length, dim, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), naive_multi_head(module, x), atol=1e-10, rtol=1e-10)
        causal = causal_mask(length).expand(2, length, length)
        torch.testing.assert_close(module(x, causal=True), naive_multi_head(module, x, mask=causal),
                                   atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
def test_cross_attention_with_another_length(impl):
    """Cross-attention reads a context of another length and width; output keeps the query length."""
    torch.manual_seed(1)
    module = MultiHeadAttention(8, 2, context_dim=6, impl=impl).double().eval()
    x, context = torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 7, 6, dtype=torch.float64)
    with torch.no_grad():
        out = module(x, context)
        assert out.shape == (2, 3, 8)
        torch.testing.assert_close(out, naive_multi_head(module, x, context), atol=1e-10, rtol=1e-10)
        # PyTorch's module with separate q/k/v projections (kdim, vdim) gives the same
        reference = torch.nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True).double().eval()
        reference.q_proj_weight.copy_(module.to_q.weight)
        reference.k_proj_weight.copy_(module.to_k.weight)
        reference.v_proj_weight.copy_(module.to_v.weight)
        reference.in_proj_bias.copy_(torch.cat([module.to_q.bias, module.to_k.bias, module.to_v.bias]))
        reference.out_proj.load_state_dict(module.to_out.state_dict())
        expected, _ = reference(x, context, context, need_weights=False)
        torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


def torch_reference(module: MultiHeadAttention) -> torch.nn.MultiheadAttention:
    """torch.nn.MultiheadAttention with the module's weights copied in."""
    dim = module.to_q.in_features
    reference = torch.nn.MultiheadAttention(dim, module.heads, batch_first=True).double().eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([module.to_q.weight, module.to_k.weight, module.to_v.weight]))
        reference.in_proj_bias.copy_(torch.cat([module.to_q.bias, module.to_k.bias, module.to_v.bias]))
        reference.out_proj.weight.copy_(module.to_out.weight)
        reference.out_proj.bias.copy_(module.to_out.bias)
    return reference


@pytest.mark.parametrize("impl", IMPLS)
def test_multi_head_matches_torch_multihead_attention(impl):
    """Same weights, same output as torch.nn.MultiheadAttention: no mask, causal, and padding.

    PyTorch's boolean masks mean the opposite (True = may NOT attend), so they are negated.
    """
    torch.manual_seed(2)
    module = MultiHeadAttention(12, 3, impl=impl).double().eval()
    reference = torch_reference(module)
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    with torch.no_grad():
        expected, _ = reference(x, x, x, need_weights=False)
        torch.testing.assert_close(module(x), expected, atol=1e-10, rtol=1e-10)

        expected, _ = reference(x, x, x, attn_mask=~causal_mask(5), need_weights=False)
        torch.testing.assert_close(module(x, causal=True), expected, atol=1e-10, rtol=1e-10)

        ignore = torch.arange(5)[None, :] >= lengths[:, None]
        expected, _ = reference(x, x, x, key_padding_mask=ignore, need_weights=False)
        torch.testing.assert_close(module(x, mask=padding_mask(lengths, 5)), expected, atol=1e-10, rtol=1e-10)


def test_multi_head_weights_match_torch():
    """return_weights gives PyTorch's per-head weights (average_attn_weights=False)."""
    torch.manual_seed(3)
    module = MultiHeadAttention(8, 4).double().eval()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        out, weights = module(x, return_weights=True)
        expected_out, expected_weights = torch_reference(module)(x, x, x, average_attn_weights=False)
    assert weights.shape == (2, 4, 6, 6)
    torch.testing.assert_close(weights, expected_weights, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out, expected_out, atol=1e-10, rtol=1e-10)


def test_dim_not_divisible_by_heads():
    with pytest.raises(ValueError, match=r"dim=96 is not divisible by heads=5"):
        MultiHeadAttention(96, 5)


def test_nonpositive_sizes():
    with pytest.raises(ValueError, match=r"heads=0"):
        MultiHeadAttention(8, 0)


def test_mask_of_the_wrong_shape():
    """The message names the mask and its shape, and the shape it should broadcast to."""
    q = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"mask has shape \(3, 5\).*\(2, 3, 3\)"):
        scaled_dot_product_attention(q, q, q, torch.ones(3, 5, dtype=torch.bool))
    module = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"mask has shape \(4, 4\)"):
        module(torch.randn(1, 3, 8), mask=torch.ones(4, 4, dtype=torch.bool))


def test_mask_with_too_many_dims():
    q = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"mask has 3 dims"):
        scaled_dot_product_attention(q, q, q, torch.ones(1, 3, 3, dtype=torch.bool))


@pytest.mark.parametrize("impl", IMPLS)
def test_non_bool_mask(impl):
    """A float (additive) mask is refused rather than silently read as a boolean one."""
    q = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"mask has dtype torch.float32.*torch.bool"):
        scaled_dot_product_attention(q, q, q, torch.zeros(3, 3), impl=impl)


def test_return_weights_needs_explicit():
    q = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"return_weights=True needs impl='explicit'"):
        scaled_dot_product_attention(q, q, q, impl="fused", return_weights=True)


def test_bad_impl_dropout_and_shapes():
    q = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"impl='flash'"):
        scaled_dot_product_attention(q, q, q, impl="flash")
    with pytest.raises(ValueError, match=r"dropout=1.0"):
        scaled_dot_product_attention(q, q, q, dropout=1.0)
    with pytest.raises(ValueError, match=r"q \(3, 4\), k \(3, 5\)"):
        scaled_dot_product_attention(q, torch.randn(3, 5), torch.randn(3, 5))


def test_mixed_modal_mask_is_causal_with_bidirectional_blocks():
    """Text, an image of three tokens, more text, a second image of two: written out pair by pair."""
    segments = torch.tensor([0, 0, 1, 1, 1, 0, 2, 2])
    mask = mixed_modal_mask(segments)
    for i in range(8):
        for j in range(8):
            same_image = segments[i] > 0 and segments[i] == segments[j]
            assert mask[i, j] == (j <= i or same_image), (i, j)
    batch = mixed_modal_mask(torch.stack([segments, torch.zeros(8, dtype=torch.long)]))
    assert batch.shape == (2, 1, 8, 8)
    assert torch.equal(batch[0, 0], mask) and torch.equal(batch[1, 0], causal_mask(8))


@pytest.mark.parametrize("segments", [torch.tensor([0.0, 1.0]), torch.tensor([-1, 0]), torch.zeros(2, 2, 2).long()])
def test_mixed_modal_mask_rejects_bad_segments(segments):
    with pytest.raises(ValueError, match="segments"):
        mixed_modal_mask(segments)
