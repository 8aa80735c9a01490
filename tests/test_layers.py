"""Norms, feed-forward layers, positional encodings, transformer blocks and the two models.

Tolerances: float64 comparisons 1e-10; float32 1e-5 (1e-4 for dot products of rotated vectors,
whose angles are tabulated in float32); sinusoidal tables against a float64 loop 2e-5.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.models import (
    Seq2SeqTransformer,
    Seq2SeqTransformerConfig,
    SequenceTransformer,
    SequenceTransformerConfig,
)
from course_lib.nn import (
    GLU,
    MLP,
    LayerNorm,
    LearnedPositionalEmbedding,
    RMSNorm,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    SinusoidalPositionalEncoding2D,
    TransformerBlock,
    TransformerEncoder,
    make_feedforward,
    make_norm,
    sinusoidal_table,
    sinusoidal_table_2d,
)

PROPERTY = settings(max_examples=30, deadline=None)
FLOAT_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values, so norms' ones and zeros cannot hide a mistake."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return module


shapes = st.tuples(st.lists(st.integers(1, 3), min_size=0, max_size=2), st.integers(1, 16))
float_dtypes = st.sampled_from([torch.float32, torch.float64])


# --- norms -------------------------------------------------------------------------------------


@PROPERTY
@given(shape=shapes, dtype=float_dtypes, bias=st.booleans(), seed=st.integers(0, 1000))
def test_layer_norm_matches_its_formula(shape, dtype, bias, seed):
    """LayerNorm equals (x - mean) / sqrt(var + eps) * weight + bias, computed naively in float64."""
    lead, dim = shape
    norm = randomize(LayerNorm(dim, bias=bias), seed).to(dtype)
    x = torch.randn(*lead, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 3 + 1
    x64, weight = x.double(), norm.weight.double()
    centred = x64 - x64.mean(-1, keepdim=True)
    expected = centred / (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * weight
    expected = (expected + norm.bias.double() if bias else expected).to(dtype)
    tol = FLOAT_TOL[dtype]
    torch.testing.assert_close(norm(x), expected, atol=tol, rtol=tol)


@PROPERTY
@given(shape=shapes, dtype=float_dtypes, seed=st.integers(0, 1000))
def test_rms_norm_matches_its_formula(shape, dtype, seed):
    """RMSNorm equals x / sqrt(mean(x**2) + eps), cast back, times weight: computed naively in float64."""
    lead, dim = shape
    norm = randomize(RMSNorm(dim), seed).to(dtype)
    x = torch.randn(*lead, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 3 + 1
    x64 = x.double()
    expected = (x64 / (x64.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()).to(dtype) * norm.weight
    tol = FLOAT_TOL[dtype]
    torch.testing.assert_close(norm(x), expected, atol=tol, rtol=tol)


def test_rms_norm_does_not_centre():
    """Unlike LayerNorm, RMSNorm keeps a constant vector's sign and direction."""
    x = torch.full((1, 4), 2.0)
    torch.testing.assert_close(RMSNorm(4)(x), torch.ones(1, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(LayerNorm(4)(x), torch.zeros(1, 4), atol=1e-5, rtol=0)


def test_make_norm():
    assert isinstance(make_norm("layer", 4), LayerNorm) and isinstance(make_norm("rms", 4), RMSNorm)
    with pytest.raises(ValueError, match=r"norm='batch'"):
        make_norm("batch", 4)


# --- feed-forward ------------------------------------------------------------------------------

NAIVE_ACTIVATIONS = {
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
    "silu": lambda x: x / (1 + torch.exp(-x)),
    "quick_gelu": lambda x: x / (1 + torch.exp(-1.702 * x)),
}


@pytest.mark.parametrize("activation", sorted(NAIVE_ACTIVATIONS))
def test_mlp_matches_naive(activation):
    """MLP = act(x W1ᵀ + b1) W2ᵀ + b2, in float64."""
    torch.manual_seed(0)
    mlp = MLP(6, 10, activation=activation).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    act = NAIVE_ACTIVATIONS[activation]
    expected = act(x @ mlp.fc_in.weight.T + mlp.fc_in.bias) @ mlp.fc_out.weight.T + mlp.fc_out.bias
    torch.testing.assert_close(mlp(x), expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("activation", sorted(NAIVE_ACTIVATIONS))
def test_glu_matches_naive(activation):
    """GLU = (act(x W_gateᵀ) * x W_upᵀ) W_downᵀ, without biases by default, in float64."""
    torch.manual_seed(0)
    glu = GLU(6, 10, activation=activation).double()
    assert glu.gate.bias is None and glu.up.bias is None and glu.down.bias is None
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    act = NAIVE_ACTIVATIONS[activation]
    expected = (act(x @ glu.gate.weight.T) * (x @ glu.up.weight.T)) @ glu.down.weight.T
    torch.testing.assert_close(glu(x), expected, atol=1e-10, rtol=1e-10)


def test_feedforward_factory_and_validation():
    assert isinstance(make_feedforward("mlp", 4, 8), MLP) and isinstance(make_feedforward("glu", 4, 8), GLU)
    with pytest.raises(ValueError, match=r"ffn='moe'"):
        make_feedforward("moe", 4, 8)
    with pytest.raises(ValueError, match=r"activation='tanh'"):
        MLP(4, 8, activation="tanh")


# --- positional encodings ----------------------------------------------------------------------


@pytest.mark.parametrize(("max_len", "dim"), [(1, 2), (7, 4), (50, 16), (64, 6)])
def test_sinusoidal_table_matches_a_double_loop(max_len, dim):
    """Feature 2i is sin(p / 10000^(2i/dim)), feature 2i+1 cos of the same angle (tolerance 2e-5)."""
    expected = torch.zeros(max_len, dim, dtype=torch.float64)
    for p in range(max_len):
        for feature in range(dim):
            angle = p / 10000 ** (2 * (feature // 2) / dim)
            expected[p, feature] = math.sin(angle) if feature % 2 == 0 else math.cos(angle)
    table = sinusoidal_table(max_len, dim)
    assert table.shape == (max_len, dim) and table.dtype == torch.float32
    torch.testing.assert_close(table.double(), expected, atol=2e-5, rtol=0)


def test_sinusoidal_table_needs_even_dim():
    with pytest.raises(ValueError, match=r"dim=5"):
        sinusoidal_table(4, 5)


def rope_naive(x: torch.Tensor, position: int, base: float = 10000.0) -> torch.Tensor:
    """Turn each pair (x_i, x_{i+d/2}) by the angle position / base^(2i/d), one pair at a time."""
    half = x.shape[-1] // 2
    out = x.clone()
    for i in range(half):
        angle = position / base ** (2 * i / x.shape[-1])
        a, b = x[..., i], x[..., i + half]
        out[..., i] = a * math.cos(angle) - b * math.sin(angle)
        out[..., i + half] = a * math.sin(angle) + b * math.cos(angle)
    return out


def test_rope_matches_pairwise_rotation():
    """Each position p turns feature pair (i, i + d/2) by p / 10000^(2i/d)."""
    rope = RotaryEmbedding(8, max_len=32)
    x = torch.randn(2, 3, 10, 8)  # (B, heads, L, head_dim)
    expected = torch.stack([rope_naive(x[:, :, p], p + 5) for p in range(10)], dim=2)
    torch.testing.assert_close(rope(x, offset=5), expected, atol=1e-5, rtol=1e-5)


@PROPERTY
@given(head_dim=st.sampled_from([2, 4, 8, 16]), length=st.integers(1, 12), offset=st.integers(0, 40),
       seed=st.integers(0, 1000))
def test_rope_preserves_norms(head_dim, length, offset, seed):
    """A rotation keeps every vector's length (tolerance 1e-5 relative)."""
    rope = RotaryEmbedding(head_dim, max_len=64)
    x = torch.randn(2, length, head_dim, generator=torch.Generator().manual_seed(seed))
    rotated = rope(x, offset=offset)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)
    if offset > 0:  # and it really does rotate
        assert not torch.allclose(rotated, x, atol=1e-3)


@PROPERTY
@given(head_dim=st.sampled_from([2, 4, 8, 16]), m=st.integers(0, 30), n=st.integers(0, 30),
       shift=st.integers(1, 30), seed=st.integers(0, 1000))
def test_rope_dot_product_depends_only_on_offset(head_dim, m, n, shift, seed):
    """rope(q, m)·rope(k, n) == rope(q, m+s)·rope(k, n+s): attention sees only the distance m - n."""
    rope = RotaryEmbedding(head_dim, max_len=64)
    generator = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, head_dim, generator=generator), torch.randn(1, head_dim, generator=generator)

    def score(pos_q, pos_k):
        return (rope(q, offset=pos_q) * rope(k, offset=pos_k)).sum()

    torch.testing.assert_close(score(m + shift, n + shift), score(m, n), atol=1e-4, rtol=1e-4)


def test_rope_dot_product_changes_with_distance():
    """The score does depend on the distance (otherwise the previous test would be vacuous)."""
    rope = RotaryEmbedding(8, max_len=16)
    q = k = torch.ones(1, 8)
    scores = [(rope(q, offset=0) * rope(k, offset=d)).sum() for d in range(4)]
    torch.testing.assert_close(scores[0], torch.tensor(8.0))
    assert all(abs(scores[0] - s) > 1e-2 for s in scores[1:])


@pytest.mark.parametrize(("height", "width", "dim"), [(2, 3, 4), (4, 4, 8), (3, 5, 16)])
def test_sinusoidal_table_2d(height, width, dim):
    """(H*W, dim), row by row: the first half encodes the row (same along a row), the second the column."""
    table = sinusoidal_table_2d(height, width, dim)
    assert table.shape == (height * width, dim)
    grid = table.reshape(height, width, dim)
    half = dim // 2
    for w in range(width):
        assert torch.equal(grid[:, w, :half], sinusoidal_table(height, half))
    for h in range(height):
        assert torch.equal(grid[h, :, half:], sinusoidal_table(width, half))
    with pytest.raises(ValueError, match=r"dim=6"):
        sinusoidal_table_2d(2, 2, 6)


def test_additive_encodings_add_their_table():
    """Sinusoidal and learned encodings add the rows of their table from `offset` on."""
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(SinusoidalPositionalEncoding(8, max_len=10)(x, offset=4), x + sinusoidal_table(10, 8)[4:7])
    learned = LearnedPositionalEmbedding(8, max_len=10)
    torch.testing.assert_close(learned(x, offset=2), x + learned.weight[2:5])
    encoding_2d = SinusoidalPositionalEncoding2D(8, 2, 3)
    x2 = torch.randn(2, 6, 8)
    torch.testing.assert_close(encoding_2d(x2), x2 + sinusoidal_table_2d(2, 3, 8))


@pytest.mark.parametrize(
    "module",
    [SinusoidalPositionalEncoding(8, max_len=6), LearnedPositionalEmbedding(8, max_len=6)],
    ids=["sinusoidal", "learned"],
)
def test_additive_encodings_refuse_long_sequences(module):
    """A sequence longer than max_len (counting the offset) raises, naming max_len."""
    module(torch.randn(1, 6, 8))  # exactly max_len is fine
    with pytest.raises(ValueError, match=r"sequence length 7 .*max_len=6"):
        module(torch.randn(1, 7, 8))
    with pytest.raises(ValueError, match=r"max_len=6"):
        module(torch.randn(1, 4, 8), offset=3)


def test_rope_refuses_long_sequences():
    rope = RotaryEmbedding(4, max_len=6)
    rope(torch.randn(2, 6, 4))
    with pytest.raises(ValueError, match=r"sequence length 7 .*max_len=6"):
        rope(torch.randn(2, 7, 4))
    with pytest.raises(ValueError, match=r"head_dim=5"):
        RotaryEmbedding(5)


def test_2d_encoding_refuses_wrong_token_count():
    with pytest.raises(ValueError, match=r"x has 5 tokens.*2\*3"):
        SinusoidalPositionalEncoding2D(8, 2, 3)(torch.randn(1, 5, 8))


# --- blocks ------------------------------------------------------------------------------------


def hand_block(block: TransformerBlock, x, *, context=None, causal=False, pre=True):
    """The block's sublayers composed by hand: pre-norm x + f(norm(x)) or post-norm norm(x + f(x))."""

    def residual(x, norm, branch):
        return x + branch(norm(x)) if pre else norm(x + branch(x))

    x = residual(x, block.attn_norm, lambda h: block.attn(h, causal=causal))
    if context is not None:
        x = residual(x, block.cross_norm, lambda h: block.cross_attn(h, context))
    return residual(x, block.ffn_norm, block.ffn)


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("ffn", ["mlp", "glu"])
def test_block_pre_and_post_norm(cross, ffn):
    """Same weights, different arrangements: pre and post norm differ, and each matches its hand-written form."""
    pre = randomize(TransformerBlock(8, 2, ffn=ffn, cross_attention=cross, norm_position="pre")).double().eval()
    post = TransformerBlock(8, 2, ffn=ffn, cross_attention=cross, norm_position="post").double().eval()
    post.load_state_dict(pre.state_dict())
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    context = torch.randn(2, 3, 8, dtype=torch.float64) if cross else None
    with torch.no_grad():
        out_pre = pre(x, context=context, causal=True)
        out_post = post(x, context=context, causal=True)
        torch.testing.assert_close(out_pre, hand_block(pre, x, context=context, causal=True, pre=True),
                                   atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(out_post, hand_block(pre, x, context=context, causal=True, pre=False),
                                   atol=1e-10, rtol=1e-10)
    assert (out_pre - out_post).abs().max() > 1e-2


def test_block_validates():
    with pytest.raises(ValueError, match=r"norm_position='middle'"):
        TransformerBlock(8, 2, norm_position="middle")
    with pytest.raises(ValueError, match=r"mlp_ratio=0"):
        TransformerBlock(8, 2, mlp_ratio=0)
    with pytest.raises(ValueError, match=r"context"):
        TransformerBlock(8, 2, cross_attention=True)(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match=r"depth=0"):
        TransformerEncoder(0, 8, 2)


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_encoder_returns_one_weight_tensor_per_layer(norm_position):
    """return_weights=True gives `depth` (B, heads, L, L) maps: each the layer's own attention, rows summing to 1."""
    torch.manual_seed(0)
    encoder = randomize(TransformerEncoder(3, 8, 2, norm_position=norm_position)).eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        out, weights = encoder(x, return_weights=True)
        torch.testing.assert_close(out, encoder(x), atol=1e-5, rtol=1e-5)  # explicit path == fused path
        assert len(weights) == 3
        h = x
        for block, layer_weights in zip(encoder.blocks, weights):
            assert layer_weights.shape == (2, 2, 5, 5)
            torch.testing.assert_close(layer_weights.sum(-1), torch.ones(2, 2, 5), atol=1e-5, rtol=0)
            attn_input = block.attn_norm(h) if norm_position == "pre" else h
            _, expected = block.attn(attn_input, return_weights=True)
            torch.testing.assert_close(layer_weights, expected, atol=1e-6, rtol=1e-6)
            h = block(h)
        torch.testing.assert_close(out, encoder.final_norm(h), atol=1e-6, rtol=1e-6)
    assert isinstance(encoder.final_norm, LayerNorm if norm_position == "pre" else torch.nn.Identity)


# --- models ------------------------------------------------------------------------------------


def sequence_model(positional: str, **options) -> SequenceTransformer:
    torch.manual_seed(0)
    config = SequenceTransformerConfig(vocab_size=11, max_len=8, dim=16, depth=2, heads=2,
                                       positional=positional, **options)
    model = SequenceTransformer(config).eval()
    if positional == "learned":  # the default init (0.02) is small; make the positions matter clearly
        with torch.no_grad():
            model.position.weight.normal_()
    return model


@pytest.mark.parametrize("positional", ["none", "sinusoidal", "learned", "rope"])
def test_only_positionless_model_is_permutation_equivariant(positional):
    """Without positions, permuting the tokens permutes the logits (1e-5); with any encoding it does not."""
    model = sequence_model(positional)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 11, (3, 8), generator=generator)
    permutation = torch.randperm(8, generator=generator)
    with torch.no_grad():
        permuted_then_run = model(tokens[:, permutation])
        run_then_permuted = model(tokens)[:, permutation]
    if positional == "none":
        torch.testing.assert_close(permuted_then_run, run_then_permuted, atol=1e-5, rtol=1e-5)
    else:
        assert (permuted_then_run - run_then_permuted).abs().max() > 1e-3


def test_sequence_model_shapes_and_validation():
    model = sequence_model("rope", num_classes=3)
    logits, weights = model(torch.randint(0, 11, (2, 6)), return_attention=True)
    assert logits.shape == (2, 6, 3) and len(weights) == 2 and weights[0].shape == (2, 2, 6, 6)
    with pytest.raises(ValueError, match=r"max_len=8"):
        model(torch.randint(0, 11, (2, 9)))
    with pytest.raises(ValueError, match=r"tokens has shape \(9,\)"):
        model(torch.randint(0, 11, (9,)))
    with pytest.raises(ValueError, match=r"positional='alibi'"):
        SequenceTransformerConfig(vocab_size=4, max_len=4, positional="alibi")
    with pytest.raises(ValueError, match=r"dim=10 is not divisible by heads=4"):
        SequenceTransformerConfig(vocab_size=4, max_len=4, dim=10, heads=4)
    with pytest.raises(ValueError, match=r"depth=0"):
        SequenceTransformerConfig(vocab_size=4, max_len=4, depth=0)


def test_causal_sequence_model_ignores_the_future():
    """causal=True: logits at position t do not depend on tokens after t."""
    model = sequence_model("sinusoidal", causal=True)
    tokens = torch.randint(0, 11, (2, 8))
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 11
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    torch.testing.assert_close(after[:, :5], before[:, :5], atol=1e-6, rtol=1e-6)
    assert (after[:, 5:] - before[:, 5:]).abs().max() > 1e-3


def test_seq2seq_decoder_is_causal_and_encoder_is_not():
    """Changing target token t leaves earlier logits unchanged (1e-6); changing any source token changes all."""
    torch.manual_seed(0)
    model = Seq2SeqTransformer(Seq2SeqTransformerConfig(src_vocab_size=9, tgt_vocab_size=7, max_len=10,
                                                        dim=16, depth=2, heads=2)).eval()
    src, tgt = torch.randint(0, 9, (2, 6)), torch.randint(0, 7, (2, 5))
    with torch.no_grad():
        logits = model(src, tgt)
        assert logits.shape == (2, 5, 7)
        for t in range(5):
            changed = tgt.clone()
            changed[:, t] = (changed[:, t] + 1) % 7
            new = model(src, changed)
            torch.testing.assert_close(new[:, :t], logits[:, :t], atol=1e-6, rtol=1e-6)
            assert (new[:, t:] - logits[:, t:]).abs().max() > 1e-4
        changed_src = src.clone()
        changed_src[:, -1] = (changed_src[:, -1] + 1) % 9
        assert (model(changed_src, tgt)[:, 0] - logits[:, 0]).abs().max() > 1e-4
        generated = model.generate(src, bos=0, length=4)
    assert generated.shape == (2, 4) and generated.dtype == torch.long
    with pytest.raises(ValueError, match=r"dim=10 is not divisible by heads=4"):
        Seq2SeqTransformerConfig(src_vocab_size=4, tgt_vocab_size=4, max_len=4, dim=10, heads=4)
