"""The packaged GPT: equal to Hugging Face's GPT-2 and Llama given the same weights, causal, and its KV
cache changes nothing but speed and memory. Tolerance for logits: 1e-5 in float32."""

from __future__ import annotations

import warnings

import pytest
import torch

from course_lib.models import GPT, GPTConfig, KVCache
from course_lib.models.gpt import config_from_hf, sample_next, state_dict_from_hf, top_k_filter

transformers = pytest.importorskip("transformers")
warnings.filterwarnings("ignore", message=".*token_id.*")

TOLERANCE = 1e-5
VARIANTS = {
    "mha": dict(),
    "gqa": dict(kv_heads=2),
    "mqa": dict(kv_heads=1),
    "mlkv": dict(kv_heads=2, kv_share_every=2),
    "llama-style": dict(kv_heads=2, positional="rope", norm="rms", ffn="glu", bias=False, tie_weights=False),
    "mqa+mlkv+rope": dict(kv_heads=1, kv_share_every=3, positional="rope"),
}


def tiny(**options) -> GPTConfig:
    return GPTConfig(**{"vocab_size": 61, "max_len": 48, "dim": 32, "depth": 4, "heads": 4, **options})


def gpt2(seed: int, layers: int = 3, heads: int = 4, width: int = 32, activation: str = "gelu"):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=97, n_positions=40, n_embd=width, n_layer=layers, n_head=heads,
                                     activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def llama(seed: int, kv_heads: int, tie: bool = False):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                      num_attention_heads=6, num_key_value_heads=kv_heads, max_position_embeddings=40,
                                      rope_theta=500.0, tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0,
                                      pad_token_id=0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # HF initialises norms to one; random scales make the comparison stricter
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("activation", ["gelu", "gelu_new"])  # exact, and the tanh GELU of GPT-2's checkpoints
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("length", [1, 17, 40])
def test_matches_hugging_face_gpt2(seed, length, activation):
    reference = gpt2(seed, activation=activation)
    ours = GPT.from_hf(reference).eval()
    tokens = torch.randint(0, 97, (2, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = reference(tokens).logits
        assert expected.abs().max() > 0.1  # a real comparison, not of two near-zero tensors
        torch.testing.assert_close(ours(tokens), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("kv_heads", [6, 3, 2, 1], ids=["mha", "gqa3", "gqa2", "mqa"])
@pytest.mark.parametrize("tie", [False, True])
def test_matches_hugging_face_llama(kv_heads, tie):
    reference = llama(kv_heads, kv_heads, tie)
    ours = GPT.from_hf(reference).eval()
    assert ours.config.kv_heads == kv_heads and ours.config.positional == "rope" and ours.config.rope_base == 500.0
    tokens = torch.randint(0, 97, (3, 33), generator=torch.Generator().manual_seed(kv_heads))
    with torch.no_grad():
        expected = reference(tokens).logits
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(ours(tokens), expected, atol=TOLERANCE, rtol=0)


def test_key_map_refuses_a_model_with_a_missing_or_extra_weight():
    reference = gpt2(0)
    model = GPT(config_from_hf(reference.config))
    reference.transformer.h[0].attn.register_parameter("extra", torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(ValueError, match="left unmapped.*extra"):
        state_dict_from_hf(reference, model)


def test_settings_the_model_lacks_are_refused():
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, activation_function="relu")
    with pytest.raises(ValueError, match="activation_function='relu'"):
        config_from_hf(config)
    with pytest.raises(ValueError, match="model_type"):
        config_from_hf(transformers.BertConfig())


@pytest.mark.parametrize("name", VARIANTS)
def test_causal(name):
    """Changing a later token never changes an earlier position's logits."""
    model = GPT(tiny(**VARIANTS[name])).eval()
    tokens = torch.randint(0, 61, (2, 20))
    changed = tokens.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 61
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    torch.testing.assert_close(before[:, :12], after[:, :12], atol=0, rtol=0)
    assert not torch.allclose(before[:, 12:], after[:, 12:])


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_logits_equal_full_forward(name):
    """Prefill 7 tokens, then feed 1, then 5 at a time: every step's logits equal one full pass."""
    model = GPT(tiny(**VARIANTS[name])).eval()
    tokens = torch.randint(0, 61, (3, 13))
    cache = KVCache(model.config, batch=3, max_len=13)
    with torch.no_grad():
        pieces = [model(tokens[:, :7], cache), model(tokens[:, 7:8], cache), model(tokens[:, 8:], cache)]
        torch.testing.assert_close(torch.cat(pieces, dim=1), model(tokens), atol=TOLERANCE, rtol=0)
    assert cache.length == 13


@pytest.mark.parametrize("name", VARIANTS)
def test_greedy_generation_with_cache_equals_without(name):
    model = GPT(tiny(**VARIANTS[name]))
    prompt = torch.randint(0, 61, (2, 5))
    with_cache = model.generate(prompt, 30, temperature=0)
    without = model.generate(prompt, 30, temperature=0, use_cache=False)
    assert torch.equal(with_cache, without)
    assert torch.equal(with_cache[:, :5], prompt) and with_cache.shape == (2, 35)


@pytest.mark.parametrize("name", VARIANTS)
def test_sampled_generation_with_cache_equals_without_for_the_same_generator(name):
    model = GPT(tiny(**VARIANTS[name]))
    prompt = torch.randint(0, 61, (2, 4))
    runs = [model.generate(prompt, 20, temperature=0.8, top_k=10, use_cache=use_cache,
                           generator=torch.Generator().manual_seed(3)) for use_cache in (True, False)]
    assert torch.equal(*runs)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("batch, length", [(1, 48), (4, 10)])
def test_kv_cache_memory_matches_the_formula(name, batch, length):
    config = tiny(**VARIANTS[name])
    cache = KVCache(config, batch=batch, max_len=length)
    assert cache.nbytes == config.kv_cache_bytes(batch, length)
    kv_layers = len(range(0, config.depth, config.kv_share_every))
    assert cache.nbytes == 2 * kv_layers * batch * config.kv_heads * length * (config.dim // config.heads) * 4


def test_sharing_kv_removes_the_projections_of_later_layers():
    model = GPT(tiny(kv_share_every=2))
    computes = [hasattr(block.attn, "to_k") for block in model.blocks]
    assert computes == [True, False, True, False]
    plain = GPT(tiny())
    assert sum(p.numel() for p in plain.parameters()) - sum(p.numel() for p in model.parameters()) == 2 * 2 * (32 * 32 + 32)


def test_weight_tying():
    tied, untied = GPT(tiny()), GPT(tiny(tie_weights=False))
    assert tied.head.weight is tied.embed.weight
    assert untied.head.weight is not untied.embed.weight
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters()) == 61 * 32


def test_top_k_filter_keeps_the_k_largest():
    logits = torch.tensor([[0.1, 2.0, -1.0, 3.0, 0.5]])
    kept = top_k_filter(logits, 2)
    assert torch.equal(torch.isfinite(kept), torch.tensor([[False, True, False, True, False]]))
    assert torch.equal(kept[torch.isfinite(kept)], torch.tensor([2.0, 3.0]))


def test_sampling_follows_temperature_and_top_k():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(20000, 4)
    generator = torch.Generator().manual_seed(0)
    draws = sample_next(logits, temperature=1.0, generator=generator)[:, 0]
    frequencies = torch.bincount(draws, minlength=4) / draws.numel()
    torch.testing.assert_close(frequencies, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015, rtol=0)
    assert set(sample_next(logits, top_k=2, generator=generator)[:, 0].tolist()) == {0, 1}
    assert torch.equal(sample_next(logits, temperature=0)[:, 0], torch.zeros(20000, dtype=torch.long))
    sharp = sample_next(logits, temperature=0.1, generator=generator)[:, 0]
    assert (sharp == 0).float().mean() > 0.99


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(dim=30, heads=4), "dim=30 is not divisible by heads=4"),
        (dict(kv_heads=3), "kv_heads=3 must divide heads=4"),
        (dict(positional="sinusoidal"), "positional='sinusoidal'"),
        (dict(depth=0), "depth=0"),
    ],
)
def test_bad_config_names_the_argument(options, message):
    with pytest.raises(ValueError, match=message):
        tiny(**options)


def test_bad_generation_arguments_fail_before_any_work():
    model = GPT(tiny())
    prompt = torch.zeros(1, 40, dtype=torch.long)
    with pytest.raises(ValueError, match="exceeds max_len=48"):
        model.generate(prompt, 9)
    with pytest.raises(ValueError, match="top_k=0"):
        model.generate(prompt[:, :2], 3, top_k=0)
    with pytest.raises(ValueError, match="temperature=-1"):
        model.generate(prompt[:, :2], 3, temperature=-1)
    with pytest.raises(ValueError, match="longer than max_len=48"):
        model(torch.zeros(1, 49, dtype=torch.long))
    cache = KVCache(model.config, batch=1, max_len=4)
    with pytest.raises(ValueError, match="max_len=4"):
        model(torch.zeros(1, 5, dtype=torch.long), cache)


@pytest.mark.parametrize("impl", ["explicit", "fused"])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("causal, queries", [(True, 9), (True, 3), (False, 9)])
def test_grouped_query_attention_equals_repeated_keys_and_values(impl, kv_heads, causal, queries):
    """Fewer key/value heads: head g serves query heads g*r..g*r+r-1, as if k and v were repeated."""
    from einops import repeat

    from course_lib.nn import scaled_dot_product_attention

    generator = torch.Generator().manual_seed(kv_heads)
    q = torch.randn(2, 8, queries, 16, generator=generator)
    k, v = torch.randn(2, kv_heads, 9, 16, generator=generator), torch.randn(2, kv_heads, 9, 16, generator=generator)
    repeated = [repeat(t, "b g s d -> b (g r) s d", r=8 // kv_heads) for t in (k, v)]
    expected = scaled_dot_product_attention(q, *repeated, causal=causal, impl="explicit")
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, causal=causal, impl=impl), expected,
                               atol=TOLERANCE, rtol=0)


def test_key_value_heads_must_divide_query_heads():
    from course_lib.nn import scaled_dot_product_attention

    with pytest.raises(ValueError, match="key/value heads must divide the query heads"):
        scaled_dot_product_attention(torch.randn(1, 6, 4, 8), torch.randn(1, 4, 4, 8), torch.randn(1, 4, 4, 8))
