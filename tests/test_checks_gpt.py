"""The checkers of notebook 03_gpt: right answers pass, plausible wrong ones fail with a message naming the mistake.

Each correct answer is written here the way a learner would, independently of the references in
`course_lib.checks.gpt`; each wrong one is a mistake a learner is likely to make.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from checking import fails, passes

from course_lib.checks import gpt as check
from course_lib.models import GPT, GPTConfig, KVCache

# --- next_token_probs ------------------------------------------------------------------------------


def next_token_probs(logits, temperature=1.0, top_k=None):
    if temperature == 0:
        probs = torch.zeros_like(logits)
        return probs.scatter(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits / temperature
    if top_k is not None:
        values, indices = logits.topk(top_k, dim=-1)
        logits = torch.full_like(logits, float("-inf")).scatter(-1, indices, values)
    return logits.softmax(dim=-1)


def test_next_token_probs_right(capsys):
    passes(check.next_token_probs, next_token_probs, capsys)


def test_next_token_probs_matches_what_generate_samples():
    """The reference is the distribution `sample_next` draws from: check it by sampling many times."""
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])
    probs = check.reference_next_token_probs(logits, 0.8, 3)
    generator = torch.Generator().manual_seed(0)
    from course_lib.models.gpt import sample_next

    draws = sample_next(logits.expand(4000, 5), temperature=0.8, top_k=3, generator=generator)  # (4000, 1)
    frequencies = torch.bincount(draws.flatten(), minlength=5) / 4000
    torch.testing.assert_close(frequencies, probs[0], atol=0.03, rtol=0)


def test_next_token_probs_multiplies_by_the_temperature(capsys):
    message = fails(check.next_token_probs, lambda x, temperature=1.0, top_k=None:
                    next_token_probs(x * temperature, 1.0, top_k) if temperature else next_token_probs(x, 0),
                    capsys, r"temperature=0.5")
    assert "multiplied by the temperature" in message


def test_next_token_probs_keeps_the_smallest(capsys):
    def smallest(logits, temperature=1.0, top_k=None):
        if top_k is None or temperature == 0:
            return next_token_probs(logits, temperature)
        scaled = logits / temperature
        values, indices = scaled.topk(top_k, dim=-1, largest=False)
        return torch.full_like(scaled, float("-inf")).scatter(-1, indices, values).softmax(dim=-1)

    message = fails(check.next_token_probs, smallest, capsys, r"top_k=3")
    assert "smallest" in message


def test_next_token_probs_does_not_renormalise(capsys):
    def zeroed(logits, temperature=1.0, top_k=None):
        probs = next_token_probs(logits, temperature)
        if top_k is not None and temperature:
            kth = logits.topk(top_k, dim=-1).values[..., -1:]
            probs = probs * (logits >= kth)
        return probs

    message = fails(check.next_token_probs, zeroed, capsys, r"top_k=3")
    assert "no longer sums to 1" in message


def test_next_token_probs_returns_logits(capsys):
    message = fails(check.next_token_probs, lambda x, temperature=1.0, top_k=None: x / (temperature or 1.0),
                    capsys, r"\(on logits \(1, 5\), temperature=1.0, top_k=None\)")
    assert "not probabilities" in message


def test_next_token_probs_greedy_as_integers(capsys):
    def integer_one_hot(logits, temperature=1.0, top_k=None):
        if temperature == 0:
            return F.one_hot(logits.argmax(-1), logits.shape[-1])
        return next_token_probs(logits, temperature, top_k)

    fails(check.next_token_probs, integer_one_hot, capsys, r"dtype torch.int64, expected torch.float32 .*temperature=0")


# --- cache_update ----------------------------------------------------------------------------------


def cache_update(cache_keys, cache_values, length, keys, values):
    end = length + keys.shape[2]
    cache_keys[:, :, length:end] = keys
    cache_values[:, :, length:end] = values
    return cache_keys[:, :, :end], cache_values[:, :, :end]


def test_cache_update_right(capsys):
    passes(check.cache_update, cache_update, capsys)


def test_cache_update_never_writes_the_buffers(capsys):
    """Right on the first step; the second step reads zeros from the buffers."""
    def concatenates(cache_keys, cache_values, length, keys, values):
        return (torch.cat([cache_keys[:, :, :length], keys], 2), torch.cat([cache_values[:, :, :length], values], 2))

    message = fails(check.cache_update, concatenates, capsys, r"the keys returned by call 2, entry \[0, 0, 0, 0\], is 0, expected")
    assert "never written into the buffers" in message


def test_cache_update_returns_only_the_new_positions(capsys):
    def only_new(cache_keys, cache_values, length, keys, values):
        cache_update(cache_keys, cache_values, length, keys, values)
        return keys, values

    message = fails(check.cache_update, only_new, capsys, r"the keys returned by call 2 has shape \(1, 1, 1, 4\), expected \(1, 1, 4, 4\)")
    assert "only the new keys" in message


def test_cache_update_returns_the_whole_buffer(capsys):
    def whole(cache_keys, cache_values, length, keys, values):
        cache_update(cache_keys, cache_values, length, keys, values)
        return cache_keys, cache_values

    message = fails(check.cache_update, whole, capsys, r"has shape \(1, 1, 6, 4\), expected \(1, 1, 3, 4\)")
    assert "the whole buffer" in message


def test_cache_update_off_by_one(capsys):
    """Writing one place too far leaves a hole of zeros: not one of the known mistakes, but located."""
    def shifted(cache_keys, cache_values, length, keys, values):
        end = length + keys.shape[2]
        cache_keys[:, :, length + 1 : end + 1] = keys
        cache_values[:, :, length + 1 : end + 1] = values
        return cache_keys[:, :, :end], cache_values[:, :, :end]

    message = fails(check.cache_update, shifted, capsys, r"the keys returned by call 1, entry \[0, 0, 0, 0\], is 0, expected .* "
                    r"\(on buffers \(1, 1, 6, 4\) filled in steps of \[3, 1, 1, 1\]\)")
    assert "looks like" not in message


def test_cache_update_not_implemented(capsys):
    def exercise(cache_keys, cache_values, length, keys, values):
        raise NotImplementedError

    fails(check.cache_update, exercise, capsys, r"not implemented yet")


def test_cache_update_agrees_with_the_packaged_cache():
    """The reference really is KVCache.update: drive a KVCache and the learner's function side by side."""
    config = GPTConfig(dim=16, heads=4, kv_heads=2, depth=3, kv_share_every=2, max_len=12)
    cache = KVCache(config, 2, 12)
    buffers = {layer: (torch.zeros(2, 2, 12, 4), torch.zeros(2, 2, 12, 4)) for layer in (0, 2)}
    for size in (5, 1, 1):
        for layer in (0, 2):
            k, v = torch.randn(2, 2, size, 4), torch.randn(2, 2, size, 4)
            expected = cache.update(layer, k, v)
            torch.testing.assert_close(cache_update(*buffers[layer], cache.length, k, v), expected)
        cache.advance(size)


# --- repeat_kv -------------------------------------------------------------------------------------


def repeat_kv(x, group):
    batch, kv_heads, length, head_dim = x.shape
    return x[:, :, None].expand(batch, kv_heads, group, length, head_dim).reshape(batch, kv_heads * group, length, head_dim)


def test_repeat_kv_right(capsys):
    passes(check.repeat_kv, repeat_kv, capsys)


def test_repeat_kv_order_is_the_packaged_models():
    """With the learner's repeat_kv, attention of a GQA layer reproduces the packaged layer's output."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(dim=24, heads=6, kv_heads=2, depth=1, max_len=16)).eval()
    attention, x = model.blocks[0].attn, torch.randn(2, 9, 24)
    with torch.no_grad():
        q = attention.to_q(x).unflatten(-1, (6, 4)).transpose(1, 2)  # (B, heads, T, head_dim)
        k, v = attention.project_kv(x, None, 0)  # (B, kv_heads, T, head_dim)
        out = F.scaled_dot_product_attention(q, repeat_kv(k, 3), repeat_kv(v, 3), is_causal=True)
        torch.testing.assert_close(attention.to_out(out.transpose(1, 2).flatten(2)), attention(x, (k, v), None, 0))


def test_repeat_kv_tiled(capsys):
    message = fails(check.repeat_kv, lambda x, group: x.repeat(1, group, 1, 1), capsys,
                    r"output\[0, 1, 0, 0\] is .* \(on x \(2, 2, 5, 4\), group=3\)")
    assert "tiled (g0 g1 g0 g1)" in message


def test_repeat_kv_wrong_axis(capsys):
    message = fails(check.repeat_kv, lambda x, group: x.repeat_interleave(group, dim=2), capsys,
                    r"has shape \(1, 1, 16, 2\), expected \(1, 4, 4, 2\)")
    assert "positions are repeated" in message


def test_repeat_kv_without_repeating(capsys):
    fails(check.repeat_kv, lambda x, group: x, capsys, r"has shape \(1, 1, 4, 2\), expected \(1, 4, 4, 2\) "
          r"\(on x \(1, 1, 4, 2\), group=4\)$")


# --- kv_cache_bytes --------------------------------------------------------------------------------


def kv_cache_bytes(config, batch, length, bytes_per_value=4):
    layers_with_kv = math.ceil(config.depth / config.kv_share_every)
    head_dim = config.dim // config.heads
    return 2 * layers_with_kv * batch * config.kv_heads * length * head_dim * bytes_per_value


def test_kv_cache_bytes_right(capsys):
    passes(check.kv_cache_bytes, kv_cache_bytes, capsys)


def test_kv_cache_bytes_is_what_the_cache_allocates():
    for options in (dict(), dict(kv_heads=2), dict(kv_heads=1), dict(kv_heads=1, kv_share_every=3)):
        config = GPTConfig(dim=32, heads=4, depth=5, max_len=40, **options)
        assert KVCache(config, 3, 40).nbytes == kv_cache_bytes(config, 3, 40)


@pytest.mark.parametrize(
    "mistake, explanation",
    [
        (lambda c, b, n, bytes_per_value=4: kv_cache_bytes(c, b, n, bytes_per_value) // 2, "only keys"),
        (lambda c, b, n, bytes_per_value=4: kv_cache_bytes(c, b, n, bytes_per_value) * c.heads // c.kv_heads,
         "the query heads are counted"),
        (lambda c, b, n, bytes_per_value=4: 2 * c.depth * b * c.kv_heads * n * (c.dim // c.heads) * bytes_per_value,
         "every layer is counted"),
        (lambda c, b, n, bytes_per_value=4:
         2 * (c.depth // c.kv_share_every) * b * c.kv_heads * n * (c.dim // c.heads) * bytes_per_value,
         "rounded down"),
        (lambda c, b, n, bytes_per_value=4: kv_cache_bytes(c, b, n, bytes_per_value) * c.heads, "model's width"),
    ],
    ids=["keys-only", "query-heads", "every-layer", "floor", "width"],
)
def test_kv_cache_bytes_mistakes_are_named(mistake, explanation, capsys):
    message = fails(check.kv_cache_bytes, mistake, capsys, r"output is \d+, expected \d+ \(on depth=")
    assert explanation in message


def test_kv_cache_bytes_ignoring_bytes_per_value(capsys):
    message = fails(check.kv_cache_bytes, lambda c, b, n, bytes_per_value=4: kv_cache_bytes(c, b, n), capsys,
                    r"bytes_per_value=2\)$")
    assert "looks like" not in message


def test_cache_update_returning_one_tensor(capsys):
    fails(check.cache_update, lambda cache_keys, cache_values, length, keys, values: keys, capsys,
          r"what call 1 returned should be a tuple of 2 items, got a tensor of shape \(1, 1, 3, 4\)")
