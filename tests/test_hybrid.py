"""Tests for course_lib.models.hybrid: all-attention against blocks written out by hand, all-Mamba
against `Mamba`, causality of mixed patterns, the parameter formula, argument checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.models.hybrid import Hybrid, HybridConfig
from course_lib.models.mamba import Mamba, MambaConfig

RTOL, ATOL = 1e-5, 1e-5  # fp32
SMALL = dict(vocab_size=29, dim=16, heads=2, state_size=4, conv_kernel=3)


def _tokens(batch: int = 2, length: int = 9, vocab: int = 29, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def _attention_block_by_hand(block: torch.nn.Module, x: torch.Tensor, heads: int) -> torch.Tensor:
    """One pre-norm causal attention block, every step spelled out with explicit indices."""
    batch, length, dim = x.shape
    hd = dim // heads
    attn = block.attn
    h = _rms(x, block.attn_norm.weight, block.attn_norm.eps)
    q, k, v = (layer(h).view(batch, length, heads, hd).transpose(1, 2) for layer in (attn.to_q, attn.to_k, attn.to_v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    future = torch.arange(length)[None, :] > torch.arange(length)[:, None]
    scores = scores.masked_fill(future, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, dim)
    x = x + attn.to_out(out)
    h = _rms(x, block.ffn_norm.weight, block.ffn_norm.eps)
    return x + block.ffn.fc_out(F.gelu(block.ffn.fc_in(h)))


def test_all_attention_equals_blocks_by_hand():
    torch.manual_seed(0)
    model = Hybrid(HybridConfig(layers="AAA", **SMALL)).eval()
    tokens = _tokens()
    x = model.embedding(tokens)
    for block in model.blocks:
        x = _attention_block_by_hand(block, x, heads=2)
    expected = _rms(x, model.norm.weight, model.norm.eps) @ model.embedding.weight.T
    torch.testing.assert_close(model(tokens), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("scan", ["sequential", "parallel"])
def test_all_mamba_equals_mamba(scan):
    torch.manual_seed(0)
    mamba = Mamba(MambaConfig(vocab_size=29, dim=16, depth=3, state_size=4, conv_kernel=3, scan=scan)).eval()
    hybrid = Hybrid(HybridConfig(layers="MMM", scan=scan, **SMALL)).eval()
    hybrid.load_state_dict(mamba.state_dict(), strict=True)
    tokens = _tokens()
    torch.testing.assert_close(hybrid(tokens), mamba(tokens), rtol=RTOL, atol=ATOL)
    assert hybrid.lm_head.weight is hybrid.embedding.weight


@pytest.mark.parametrize("layers", ["MA", "AM", "MMAMMA", "AMMA"])
def test_mixed_patterns_are_causal(layers):
    torch.manual_seed(0)
    model = Hybrid(HybridConfig(layers=layers, **SMALL)).eval()
    tokens = _tokens(batch=1, length=8)
    with torch.no_grad():
        base = model(tokens)
        for t in range(tokens.shape[1]):
            changed = tokens.clone()
            changed[0, t] = (changed[0, t] + 1) % 29
            out = model(changed)
            torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
            assert not torch.allclose(out[:, t], base[:, t]), f"token {t} does not reach its own position"


@pytest.mark.parametrize("layers", ["A", "M", "MMAMMA", "AMAM"])
@pytest.mark.parametrize("dim,heads,mlp_ratio", [(16, 2, 4.0), (24, 3, 2.5)])
def test_parameter_count_formula(layers, dim, heads, mlp_ratio):
    config = HybridConfig(layers=layers, vocab_size=31, dim=dim, heads=heads, mlp_ratio=mlp_ratio, state_size=6)
    model = Hybrid(config)
    assert sum(p.numel() for p in model.parameters()) == config.parameter_count()


def test_shapes_and_determinism():
    config = HybridConfig(layers="MAM", **SMALL)
    tokens = _tokens(length=7)
    torch.manual_seed(3)
    first = Hybrid(config).eval()
    torch.manual_seed(3)
    second = Hybrid(config).eval()
    out = first(tokens)
    assert out.shape == (2, 7, 29)
    assert torch.equal(out, first(tokens))
    assert torch.equal(out, second(tokens))


@pytest.mark.parametrize("options,message", [
    (dict(layers=""), "layers=''"),
    (dict(layers="MAX"), "layers='MAX'"),
    (dict(layers="mam"), "layers='mam'"),
    (dict(layers="MA", dim=10, heads=4), "dim=10 is not divisible by heads=4"),
    (dict(dim=0), "dim=0"),
    (dict(vocab_size=-1), "vocab_size=-1"),
    (dict(mlp_ratio=0.0), "mlp_ratio=0.0"),
    (dict(scan="fast"), "scan='fast'"),
    (dict(dt_rank=0), "dt_rank=0"),
])
def test_bad_arguments_raise(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        HybridConfig(**options)


def test_tokens_must_be_two_dimensional():
    model = Hybrid(HybridConfig(layers="M", **SMALL))
    with pytest.raises(ValueError, match="tokens has shape"):
        model(torch.zeros(5, dtype=torch.long))
