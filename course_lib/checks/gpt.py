"""Checkers for the exercises of notebook 03_gpt: sampling, the KV cache, grouped-query attention, cache memory.

The references are the packaged model's own pieces (`course_lib.models.gpt`), so an answer that
passes here behaves like the model the later sections of the notebook use.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.models.gpt import GPTConfig, KVCache, top_k_filter


def _logits(generator: torch.Generator, batch: int, vocab: int) -> Tensor:
    return 3.0 * torch.randn(batch, vocab, generator=generator)  # continuous draws: no ties between logits


# --- next_token_probs(logits, temperature, top_k) -------------------------------------------------


def reference_next_token_probs(logits: Tensor, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
    """The distribution `GPT.generate` samples from: one-hot on the argmax at temperature 0, else
    softmax(logits / temperature) over the `top_k` largest logits."""
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
    scaled = logits / temperature
    if top_k is not None:
        scaled = top_k_filter(scaled, top_k)
    return torch.softmax(scaled, dim=-1)


def _probs_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(3)
    cases = []
    for batch, vocab, temperature, top_k in [(1, 5, 1.0, None), (3, 10, 0.5, None), (2, 12, 2.0, None),
                                             (2, 10, 1.0, 3), (3, 256, 0.7, 40), (2, 8, 1.5, 1),
                                             (2, 6, 1.0, 6), (4, 16, 0, None), (2, 16, 0, 5)]:
        logits = _logits(generator, batch, vocab)
        description = f"logits {tuple(logits.shape)}, temperature={temperature}, top_k={top_k}"
        cases.append(Case(description, (logits,), {"temperature": temperature, "top_k": top_k}))
    return cases


def _probs_times_temperature(logits, temperature=1.0, top_k=None):
    return reference_next_token_probs(logits * temperature, 1.0, top_k) if temperature else None


def _probs_k_smallest(logits, temperature=1.0, top_k=None):
    if temperature == 0 or top_k is None:
        return None
    scaled = logits / temperature
    kth_smallest = scaled.topk(top_k, dim=-1, largest=False).values[..., -1:]
    return torch.softmax(scaled.masked_fill(scaled > kth_smallest, float("-inf")), dim=-1)


def _probs_zeroed_not_renormalised(logits, temperature=1.0, top_k=None):
    if temperature == 0 or top_k is None:
        return None
    probs = torch.softmax(logits / temperature, dim=-1)
    return probs.masked_fill(top_k_filter(logits, top_k) == float("-inf"), 0.0)


def _probs_filtered_logits(logits, temperature=1.0, top_k=None):
    scaled = logits / temperature if temperature else logits
    return top_k_filter(scaled, top_k) if top_k is not None else scaled


next_token_probs = FunctionChecker(
    "next_token_probs",
    reference_next_token_probs,
    _probs_cases,
    mistakes=[
        (_probs_times_temperature, "the logits are multiplied by the temperature; divide them by it "
         "(a temperature above 1 must flatten the distribution)."),
        (_probs_k_smallest, "top-k keeps the k *smallest* logits; keep the k largest."),
        (_probs_zeroed_not_renormalised, "the probabilities outside the top k are set to zero after the "
         "softmax, so the rest no longer sums to 1; set the logits to -inf before the softmax instead."),
        (_probs_filtered_logits, "this returns the (filtered) logits, not probabilities; finish with a softmax."),
    ],
    hint="temperature 0: a one-hot vector on the argmax (F.one_hot). Otherwise divide the logits by the "
    "temperature, set all but the top_k largest to -inf (logits.topk(k).values[..., -1:] is the k-th largest), "
    "then softmax over the last dim. Return float probabilities of the logits' shape.",
)


# --- cache_update(cache_keys, cache_values, length, keys, values) ---------------------------------


def _cache_steps(update: Callable, batch: int, kv_heads: int, head_dim: int, max_len: int,
                 chunks: Sequence[int], seed: int) -> tuple:
    """Drive `update` through a prompt and then single tokens, as generation does.

    Returns what every step returned, then the buffers at the end (all that later steps will read)."""
    generator = torch.Generator().manual_seed(seed)
    keys_buffer = torch.zeros(batch, kv_heads, max_len, head_dim)
    values_buffer = torch.zeros(batch, kv_heads, max_len, head_dim)
    length, returned = 0, []
    for size in chunks:
        keys = torch.randn(batch, kv_heads, size, head_dim, generator=generator)
        values = torch.randn(batch, kv_heads, size, head_dim, generator=generator)
        returned.append(update(keys_buffer, values_buffer, length, keys, values))
        length += size
    return tuple(returned), (keys_buffer, values_buffer)


def _packaged_update(keys_buffer: Tensor, values_buffer: Tensor, length: int, keys: Tensor, values: Tensor):
    """`KVCache.update` of the packaged model, on buffers that already hold `length` positions."""
    batch, kv_heads, max_len, head_dim = keys_buffer.shape
    cache = KVCache(GPTConfig(dim=kv_heads * head_dim, heads=kv_heads, depth=1, max_len=max_len), batch, max_len)
    cache.keys[0], cache.values[0], cache.length = keys_buffer, values_buffer, length
    return cache.update(0, keys, values)


_CACHE_SETTINGS = [  # batch, kv_heads, head_dim, max_len, chunks (a prompt, then one token per step)
    (1, 1, 4, 6, (3, 1, 1, 1)),
    (2, 2, 8, 10, (4, 1, 1)),
    (3, 4, 2, 9, (1, 1, 5, 2)),
]


def _cache_cases() -> list[Case]:
    return [Case(f"buffers ({batch}, {kv_heads}, {max_len}, {head_dim}) filled in steps of {list(chunks)}",
                 (batch, kv_heads, head_dim, max_len, chunks, seed))
            for seed, (batch, kv_heads, head_dim, max_len, chunks) in enumerate(_CACHE_SETTINGS)]


def _cache_reference(batch, kv_heads, head_dim, max_len, chunks, seed):
    return _cache_steps(_packaged_update, batch, kv_heads, head_dim, max_len, chunks, seed)


class CacheChecker(FunctionChecker):
    """Runs the learner's `cache_update` step by step, the way generation calls it."""

    def __call__(self, function: Callable) -> bool:
        return super().__call__(lambda *setting: _cache_steps(function, *setting))

    def describe(self, problem: str) -> str:
        """output[0][step][0 or 1] is what a step returned, output[1][0 or 1] the buffers at the end."""
        parts = ("keys", "values")
        problem = re.sub(r"^output\[0\]\[(\d+)\]\[(\d)\](\[[\d, ]*\])?",
                         lambda m: f"the {parts[int(m[2])]} returned by call {int(m[1]) + 1}"
                         + (f", entry {m[3]}," if m[3] else ""), problem)
        problem = re.sub(r"^output\[0\]\[(\d+)\] ", lambda m: f"what call {int(m[1]) + 1} returned ", problem)
        return re.sub(r"^output\[1\]\[(\d)\](\[[\d, ]*\])?",
                      lambda m: f"the cache_{parts[int(m[1])]} buffer after the last call"
                      + (f", entry {m[2]}," if m[2] else ""), problem)


def _cache_concatenated(keys_buffer, values_buffer, length, keys, values):
    return (torch.cat([keys_buffer[:, :, :length], keys], dim=2),
            torch.cat([values_buffer[:, :, :length], values], dim=2))


def _cache_only_new(keys_buffer, values_buffer, length, keys, values):
    end = length + keys.shape[2]
    keys_buffer[:, :, length:end], values_buffer[:, :, length:end] = keys, values
    return keys, values


def _cache_whole_buffer(keys_buffer, values_buffer, length, keys, values):
    end = length + keys.shape[2]
    keys_buffer[:, :, length:end], values_buffer[:, :, length:end] = keys, values
    return keys_buffer, values_buffer


def _cache_at_the_start(keys_buffer, values_buffer, length, keys, values):
    size = keys.shape[2]
    keys_buffer[:, :, :size], values_buffer[:, :, :size] = keys, values
    return keys_buffer[:, :, : length + size], values_buffer[:, :, : length + size]


def _mistake_steps(mistake: Callable) -> Callable:
    return lambda *setting: _cache_steps(mistake, *setting)


cache_update = CacheChecker(
    "cache_update",
    _cache_reference,
    _cache_cases,
    mistakes=[
        (_mistake_steps(_cache_concatenated), "the new keys and values are concatenated to the old ones but never "
         "written into the buffers, so the next step reads zeros where they should be."),
        (_mistake_steps(_cache_only_new), "only the new keys and values are returned; attention needs all of them "
         "so far, positions 0..length+t-1."),
        (_mistake_steps(_cache_whole_buffer), "the whole buffer is returned, empty positions included; return only "
         "the filled part, [:, :, :length + t]."),
        (_mistake_steps(_cache_at_the_start), "every step writes at position 0; write at positions "
         "length..length+t-1, after the ones already stored."),
    ],
    hint="t = keys.shape[2]; write keys into cache_keys[:, :, length:length + t] (and values likewise), "
    "in place, then return cache_keys[:, :, :length + t], cache_values[:, :, :length + t].",
)
cache_update.__doc__ = "Checks cache_update(cache_keys, cache_values, length, keys, values) step by step."


# --- repeat_kv(x, group) ---------------------------------------------------------------------------


def reference_repeat_kv(x: Tensor, group: int) -> Tensor:
    """(B, g, t, d) -> (B, g*group, t, d) in the grouping of the packaged attention (and of PyTorch's
    `enable_gqa`): query heads 0..group-1 read key/value head 0, the next group head 1, and so on."""
    return repeat(x, "b g t d -> b (g r) t d", r=group)


def _repeat_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(4)
    cases = []
    for batch, kv_heads, length, head_dim, group in [(1, 1, 3, 2, 1), (1, 1, 4, 2, 4), (2, 2, 5, 4, 3),
                                                     (2, 3, 2, 8, 2), (1, 4, 6, 4, 1)]:
        x = torch.randn(batch, kv_heads, length, head_dim, generator=generator)
        cases.append(Case(f"x {tuple(x.shape)}, group={group}", (x, group)))
    return cases


repeat_kv = FunctionChecker(
    "repeat_kv",
    reference_repeat_kv,
    _repeat_cases,
    mistakes=[
        (lambda x, group: x.repeat(1, group, 1, 1), "the heads are tiled (g0 g1 g0 g1): query head h must read "
         "key/value head h // group, so each head is repeated in place (g0 g0 g1 g1)."),
        (lambda x, group: x.repeat_interleave(group, dim=-1), "the features are repeated instead of the heads; "
         "repeat along dim 1, the head axis."),
        (lambda x, group: x.repeat_interleave(group, dim=2), "the positions are repeated instead of the heads; "
         "repeat along dim 1, the head axis."),
    ],
    hint="einops: repeat(x, 'b g t d -> b (g r) t d', r=group), or x.repeat_interleave(group, dim=1). "
    "Query head h reads key/value head h // group.",
)


# --- kv_cache_bytes(config, batch, length, bytes_per_value=4) --------------------------------------


def _bytes_cases() -> list[Case]:
    settings = [  # depth, heads, dim, kv_heads, kv_share_every, batch, length, bytes_per_value
        (4, 4, 128, 4, 1, 1, 128, 4),
        (6, 8, 256, 2, 1, 3, 100, 4),
        (6, 8, 256, 1, 1, 2, 50, 2),
        (12, 12, 768, 1, 2, 1, 2048, 2),
        (12, 12, 768, 3, 6, 4, 1000, 4),
        (5, 4, 64, 2, 2, 2, 33, 4),  # a last group of one layer still computes its own keys and values
        (3, 2, 32, 2, 4, 1, 7, 8),
    ]
    cases = []
    for depth, heads, dim, kv_heads, share, batch, length, nbytes in settings:
        config = GPTConfig(depth=depth, heads=heads, dim=dim, kv_heads=kv_heads, kv_share_every=share)
        description = (f"depth={depth}, heads={heads}, dim={dim}, kv_heads={kv_heads}, kv_share_every={share}; "
                       f"batch={batch}, length={length}, bytes_per_value={nbytes}")
        cases.append(Case(description, (config, batch, length), {"bytes_per_value": nbytes}))
    return cases


def _bytes_reference(config: GPTConfig, batch: int, length: int, bytes_per_value: int = 4) -> int:
    return config.kv_cache_bytes(batch, length, bytes_per_value)


def _bytes_formula(*, layers: Callable, heads: Callable, factor: int = 2, width: Callable | None = None):
    def formula(config, batch, length, bytes_per_value=4):
        per_head = config.head_dim if width is None else width(config)
        return factor * layers(config) * batch * heads(config) * length * per_head * bytes_per_value
    return formula


def _all_kv_layers(c):
    return -(-c.depth // c.kv_share_every)


kv_cache_bytes = FunctionChecker(
    "kv_cache_bytes",
    _bytes_reference,
    _bytes_cases,
    mistakes=[
        (_bytes_formula(layers=_all_kv_layers, heads=lambda c: c.kv_heads, factor=1),
         "only keys (or only values) are counted; the cache holds both."),
        (_bytes_formula(layers=_all_kv_layers, heads=lambda c: c.heads),
         "the query heads are counted; the cache holds kv_heads key/value heads per layer."),
        (_bytes_formula(layers=lambda c: c.depth, heads=lambda c: c.kv_heads),
         "every layer is counted; with MLKV only one layer in kv_share_every computes (and caches) keys and values."),
        (_bytes_formula(layers=lambda c: c.depth // c.kv_share_every, heads=lambda c: c.kv_heads),
         "depth / kv_share_every is rounded down; a last, incomplete group still computes its own keys and "
         "values, so round up (math.ceil)."),
        (_bytes_formula(layers=_all_kv_layers, heads=lambda c: c.kv_heads, width=lambda c: c.dim),
         "each head is counted with the model's width; a head holds head_dim = dim // heads features."),
    ],
    hint="2 (keys and values) x layers that compute keys and values (ceil(depth / kv_share_every)) x batch "
    "x kv_heads x length x head_dim x bytes_per_value.",
)
