"""Tests for course_lib.models.mblm: strict causality over bytes, the loss, shapes and argument checks,
greedy generation against repeated full forwards, and the FLOP formulas against `count_flops`."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from course_lib.measure import count_flops
from course_lib.models.gpt import GPT, GPTConfig
from course_lib.models.mblm import MBLM, MBLMConfig, gpt_flops_per_token

VOCAB = 5
TINY = dict(vocab_size=VOCAB, patch_size=3, max_patches=4, global_dim=12, global_depth=2, global_heads=2,
            local_dim=8, local_depth=2, local_heads=2)


def _model(seed: int = 0, **options) -> MBLM:
    torch.manual_seed(seed)
    return MBLM(MBLMConfig(**{**TINY, **options})).eval()


def _bytes(batch: int, length: int, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("positional", ["learned", "rope"])
def test_strictly_causal_over_bytes_exhaustively(positional):
    """For every position t and every change to the bytes at >= t (all of them, small vocab), logits[:t+1] stay.

    Length 6 = two patches of 3, vocabulary 3: every one of the 3^6 sequences is compared with the
    sequence that shares its first t bytes and is zero from t on.
    """
    model = _model(vocab_size=3, positional=positional)
    length = 6
    everything = torch.tensor(list(itertools.product(range(3), repeat=length)))      # (729, 6)
    with torch.no_grad():
        logits = model(everything)
        for t in range(length):
            reference = everything.clone()
            reference[:, t:] = 0
            expected = model(reference)
            torch.testing.assert_close(logits[:, : t + 1], expected[:, : t + 1], rtol=0, atol=1e-5)
    # and the logits at t do depend on the byte before, inside a patch and across the patch boundary
    zeros = torch.zeros(1, length, dtype=torch.long)
    with torch.no_grad():
        base = model(zeros)
        for t in range(1, length):
            changed = zeros.clone()
            changed[0, t - 1] = 1
            assert not torch.allclose(model(changed)[0, t], base[0, t]), t
        changed = zeros.clone()
        changed[0, 0] = 2
        assert not torch.allclose(model(changed)[0, 3:], base[0, 3:])   # patch 0 reaches every byte of patch 1


def test_loss_equals_naive_cross_entropy():
    model = _model()
    data = _bytes(3, 9)
    logits = model(data)
    naive = torch.stack([-torch.log_softmax(logits[b, t], -1)[data[b, t]]
                         for b in range(3) for t in range(9)]).mean()
    torch.testing.assert_close(model.loss(data), naive, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("length", [3, 6, 12])
def test_shapes_for_multiples_of_the_patch(length):
    assert _model()(_bytes(2, length)).shape == (2, length, VOCAB)


@pytest.mark.parametrize("length", [1, 4, 7, 0])
def test_lengths_that_are_not_multiples_raise(length):
    with pytest.raises(ValueError, match=f"length L={length} is not a positive multiple of patch_size=3"):
        _model()(_bytes(2, length))


def test_too_long_and_bad_shapes_raise():
    model = _model()
    with pytest.raises(ValueError, match="length L=15 exceeds"):
        model(_bytes(1, 15))
    with pytest.raises(ValueError, match="bytes has shape"):
        model(_bytes(1, 6)[0])


@pytest.mark.parametrize("options,message", [
    (dict(global_dim=10), "global_dim=10 is not divisible by patch_size=3"),
    (dict(global_heads=5), "global_dim=12 is not divisible by global_heads=5"),
    (dict(local_heads=3), "local_dim=8 is not divisible by local_heads=3"),
    (dict(patch_size=0), "patch_size=0"),
    (dict(local_depth=-1), "local_depth=-1"),
    (dict(norm="batch"), "norm='batch'"),
    (dict(mlp_ratio=0.0), "mlp_ratio=0.0"),
    (dict(positional="sinusoidal"), "positional='sinusoidal'"),
])
def test_bad_config_raises(options, message):
    with pytest.raises(ValueError, match=message):
        MBLMConfig(**{**TINY, **options})


@pytest.mark.parametrize("prompt_length", [0, 2, 3, 5])
def test_greedy_generation_equals_repeated_full_forwards(prompt_length):
    model = _model(seed=1)
    prompt = _bytes(2, prompt_length, seed=4)
    generated = model.generate(prompt, 12 - prompt_length)
    expected = prompt
    with torch.no_grad():
        while expected.shape[1] < 12:
            t = expected.shape[1]
            whole = -(-(t + 1) // 3) * 3                                              # next multiple of 3 above t
            padded = torch.cat([expected, torch.full((2, whole - t), 4)], dim=1)    # any padding: causality
            expected = torch.cat([expected, model(padded)[:, t].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, expected)
    assert generated.shape == (2, 12)


def test_generate_checks_arguments():
    model = _model()
    with pytest.raises(ValueError, match="exceeds max_len=12"):
        model.generate(_bytes(1, 5), 8)
    with pytest.raises(ValueError, match="max_new_bytes=0"):
        model.generate(_bytes(1, 5), 0)


def test_determinism():
    data = _bytes(2, 9)
    first, second = _model(seed=7), _model(seed=7)
    out = first(data)
    assert torch.equal(out, first(data))
    assert torch.equal(out, second(data))
    assert torch.equal(first.generate(data[:, :4], 5), second.generate(data[:, :4], 5))


def test_trains_and_gradients_reach_both_stages():
    model = _model().train()
    model.loss(_bytes(2, 9)).backward()
    for name in ("global_byte_embed.weight", "global_start", "to_local.weight", "local_byte_embed.weight", "head.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("length", [3, 12])
@pytest.mark.parametrize("mlp_ratio", [4.0, 2.5])
def test_flops_per_byte_matches_count_flops(length, mlp_ratio):
    model = _model(mlp_ratio=mlp_ratio)
    data = _bytes(2, length)
    measured = count_flops(model, data) / data.numel()
    assert model.flops_per_byte(length) == pytest.approx(measured, rel=1e-9)


@pytest.mark.parametrize("length", [1, 16, 40])
def test_gpt_flops_per_token_matches_count_flops(length):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=VOCAB, max_len=40, dim=16, depth=2, heads=2)
    data = _bytes(2, length)
    measured = count_flops(GPT(config), data) / data.numel()
    assert gpt_flops_per_token(config, length) == pytest.approx(measured, rel=1e-9)


def test_flop_methods_check_lengths():
    with pytest.raises(ValueError, match="length=4"):
        _model().flops_per_byte(4)
    with pytest.raises(ValueError, match="length=41"):
        gpt_flops_per_token(GPTConfig(max_len=40), 41)
    with pytest.raises(ValueError, match="ffn='glu'"):
        gpt_flops_per_token(GPTConfig(ffn="glu"), 8)


def test_padding_does_not_change_earlier_logits():
    model = _model()
    data = _bytes(1, 7)
    a = model(F.pad(data, (0, 2), value=0))
    b = model(F.pad(data, (0, 2), value=3))
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=1e-6)


def test_rope_positions_rotate_queries_and_keys_in_both_stages():
    """With rope, no position vectors are added and each stage's attention equals attention on rotated q, k."""
    model = _model(positional="rope")
    assert not any("position" in name for name, _ in model.named_parameters())
    data = _bytes(2, 12, seed=5)
    with torch.no_grad():
        rope_out = model(data)
        model.global_rope = model.local_rope = None       # the same weights without rotations
        plain_out = model(data)
    assert not torch.allclose(rope_out, plain_out, atol=1e-4)


def test_rope_local_stage_equals_a_manual_rotary_attention():
    """The local stage's first block, run by hand with rotated queries and keys, gives the model's logits."""
    model = _model(positional="rope", local_depth=1)
    data = _bytes(2, 6, seed=6)
    c = model.config
    with torch.no_grad():
        g = model.global_features(data)
        x = rearrange(model.to_local(g), "b k (p d) -> (b k) p d", p=c.patch_size)
        previous = rearrange(model.local_byte_embed(data), "b (k p) d -> (b k) p d", p=c.patch_size)
        x = x + torch.cat([model.local_start.expand(x.shape[0], 1, -1), previous[:, :-1]], dim=1)
        block = model.local_blocks[0]
        attn = block.attn
        h = block.attn_norm(x)
        q = rearrange(attn.to_q(h), "n l (h d) -> n h l d", h=c.local_heads)
        k = rearrange(attn.to_k(h), "n l (h d) -> n h l d", h=c.local_heads)
        v = rearrange(attn.to_v(h), "n l (h d) -> n h l d", h=c.local_heads)
        q, k = model.local_rope(q), model.local_rope(k)
        scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        scores = scores.masked_fill(~torch.ones(3, 3, dtype=torch.bool).tril(), float("-inf"))
        out = rearrange(scores.softmax(-1) @ v, "n h l d -> n l (h d)")
        x = x + attn.to_out(out)
        x = x + block.ffn(block.ffn_norm(x))
        expected = rearrange(model.head(model.local_norm(x)), "(b k) p v -> b (k p) v", b=2)
        torch.testing.assert_close(model(data), expected, rtol=1e-5, atol=1e-5)
