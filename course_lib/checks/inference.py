"""Checkers for the exercises of notebook 26_inference: the memory of a KV cache under MHA, GQA, MQA and
cross-layer sharing, the attention mask of packed documents, the acceptance rule of speculative decoding, and the
depth at which an image leaves an early-exit classifier.

The references are the packaged pieces: `GPTConfig.kv_cache_bytes`, `course_lib.models.gpt.document_mask`, and
`acceptance_probability`, `residual_distribution` and `exit_depth` of `course_lib.inference`.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.inference import acceptance_probability, residual_distribution
from course_lib.inference import exit_depth as reference_exit_depth
from course_lib.models.gpt import GPTConfig
from course_lib.models.gpt import document_mask as reference_document_mask


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(26)


# --- kv_cache_bytes(batch=, length=, layers=, heads=, kv_heads=, head_dim=, bytes_per_value=, share_every=) ---------


def reference_kv_cache_bytes(batch: int, length: int, layers: int, heads: int, kv_heads: int, head_dim: int,
                             bytes_per_value: int, share_every: int) -> int:
    """The bytes `KVCache` allocates: 2 · ceil(layers / share_every) · batch · kv_heads · length · head_dim · bytes."""
    config = GPTConfig(depth=layers, heads=heads, kv_heads=kv_heads, dim=heads * head_dim, kv_share_every=share_every)
    return config.kv_cache_bytes(batch, length, bytes_per_value)


def _bytes_cases() -> list[Case]:
    settings = [  # batch, length, layers, heads, kv_heads, head_dim, bytes_per_value, share_every
        (1, 1024, 12, 12, 12, 64, 2, 1),  # MHA, GPT-2 small in bfloat16
        (8, 4096, 32, 32, 8, 128, 2, 1),  # GQA, Llama-style
        (4, 2048, 24, 16, 1, 64, 2, 1),  # MQA
        (2, 512, 12, 8, 2, 64, 4, 2),  # GQA and two layers per set of keys and values
        (3, 100, 7, 4, 4, 32, 4, 3),  # a last, incomplete group of one layer still caches its own
        (16, 8192, 80, 64, 8, 128, 1, 4),  # an 8-bit cache
    ]
    keys = ("batch", "length", "layers", "heads", "kv_heads", "head_dim", "bytes_per_value", "share_every")
    return [Case(", ".join(f"{k}={v}" for k, v in zip(keys, values)), kwargs=dict(zip(keys, values)))
            for values in settings]


def _bytes_formula(*, factor: int = 2, query_heads: bool = False, sharing: str = "ceil"):
    def formula(*, batch, length, layers, heads, kv_heads, head_dim, bytes_per_value, share_every):
        kv_layers = {"ceil": math.ceil(layers / share_every), "floor": layers // share_every, "none": layers}[sharing]
        return factor * kv_layers * batch * (heads if query_heads else kv_heads) * length * head_dim * bytes_per_value
    return formula


kv_cache_bytes = FunctionChecker(
    "kv_cache_bytes",
    reference_kv_cache_bytes,
    _bytes_cases,
    mistakes=[
        (_bytes_formula(factor=1), "only keys (or only values) are counted; the cache holds both: the factor 2."),
        (_bytes_formula(query_heads=True), "the query heads are counted; each layer caches kv_heads key/value heads "
         "(GQA and MQA shrink the cache by heads / kv_heads)."),
        (_bytes_formula(sharing="none"), "every layer is counted; with cross-layer sharing only one layer in "
         "share_every computes (and caches) keys and values."),
        (_bytes_formula(sharing="floor"), "layers / share_every is rounded down; a last, incomplete group still "
         "caches its own keys and values, so round up (math.ceil)."),
    ],
    hint="2 (keys and values) x ceil(layers / share_every) x batch x kv_heads x length x head_dim x bytes_per_value; "
         "the query heads do not enter.",
)


# --- document_mask(segments) ----------------------------------------------------------------------------------------


def _mask_cases() -> list[Case]:
    rows = [
        [[0, 0, 0, 1, 1, 2, 2, 2, 2, 3]],  # three documents and a padding tail of its own
        [[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]],  # two rows
        [[0, 1, 2, 3]],  # one-token documents: each sees only itself
        [[5, 5, 5, 5, 5]],  # one document: plain causal
        [[0, 0, 0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1, 2], [0, 0, 0, 0, 0, 0, 0, 0]],
    ]
    return [Case(f"segments {row}", (torch.tensor(row),)) for row in rows]


def _earlier(segments: Tensor) -> Tensor:
    length = segments.shape[-1]
    return torch.ones(length, length, dtype=torch.bool).tril()


def _same_document(segments: Tensor) -> Tensor:
    return rearrange(segments[:, :, None] == segments[:, None, :], "b q k -> b 1 q k")


document_mask = FunctionChecker(
    "document_mask",
    reference_document_mask,
    _mask_cases,
    mistakes=[
        (_same_document, "each token sees its whole document, later tokens included: AND it with a causal "
         "(lower-triangular) mask."),
        (lambda s: _earlier(s).expand(len(s), 1, -1, -1), "the mask is causal over the whole row: a token reads the "
         "earlier documents too. AND it with segments[:, :, None] == segments[:, None, :]."),
        (lambda s: _same_document(s) & ~_earlier(s), "the causal half is flipped: True must mark the keys a query may "
         "read, at or before its own position (tril, not triu)."),
    ],
    hint="same = segments[:, :, None] == segments[:, None, :]; earlier = torch.ones(L, L, dtype=torch.bool).tril(); "
         "return (same & earlier)[:, None]  # (B, 1, L, L)",
)


# --- acceptance(p, q, token) and residual(p, q) ---------------------------------------------------------------------


def _pair(generator: torch.Generator, vocab: int, spread: float = 2.0) -> tuple[Tensor, Tensor]:
    """A target p and a draft q over `vocab` tokens, both with every probability positive."""
    p = torch.softmax(spread * torch.randn(vocab, generator=generator), dim=-1)
    q = torch.softmax(spread * torch.randn(vocab, generator=generator), dim=-1)
    return p, q


def _acceptance_cases() -> list[Case]:
    generator, cases = _generator(), []
    for vocab in (5, 8, 13):
        p, q = _pair(generator, vocab)
        below = int((p / q).argmin())  # the draft over-proposes it: accepted only sometimes
        above = int((p / q).argmax())  # the target likes it more: always accepted
        cases += [Case(f"vocab {vocab}, a token with p < q", (p, q, below)),
                  Case(f"vocab {vocab}, a token with p > q", (p, q, above))]
    return cases


acceptance = FunctionChecker(
    "acceptance",
    acceptance_probability,
    _acceptance_cases,
    mistakes=[
        (lambda p, q, x: (q[x] / p[x]).clamp(max=1.0), "the ratio is upside down: it is p[token] / q[token] (the "
         "target's probability over the draft's), so tokens the draft over-proposes are the ones thinned."),
        (lambda p, q, x: p[x] / q[x], "the ratio is not capped at 1: a probability cannot exceed 1 (use "
         ".clamp(max=1))."),
        (lambda p, q, x: p[x], "the target's probability alone is not the rule: divide by the draft's q[token], "
         "which has already chosen this token."),
    ],
    hint="return (p[token] / q[token]).clamp(max=1.0)  # a 0-dim tensor",
)


def _residual_cases() -> list[Case]:
    generator = _generator()
    cases = [Case(f"vocab {vocab}", _pair(generator, vocab)) for vocab in (5, 8, 13)]
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    q = torch.tensor([0.25, 0.25, 0.25, 0.25])
    return [*cases, Case("p = [0.5, 0.3, 0.2, 0], q uniform", (p, q))]


residual = FunctionChecker(
    "residual",
    residual_distribution,
    _residual_cases,
    mistakes=[
        (lambda p, q: (p - q).clamp(min=0), "the residual is not normalised: divide max(p - q, 0) by its sum so that "
         "it is a distribution."),
        (lambda p, q: (q - p).clamp(min=0) / (q - p).clamp(min=0).sum(), "this is max(q - p, 0): the redraw must "
         "favour the tokens the target wants more than the draft gave them, max(p - q, 0)."),
        (lambda p, q: p, "a rejected token is redrawn from p itself; that over-samples the tokens acceptance already "
         "produces. Redraw from max(p - q, 0), normalised."),
    ],
    hint="r = (p - q).clamp(min=0); return r / r.sum()",
)


# --- exit_depth(confidences, threshold) -----------------------------------------------------------------------------


def _exit_cases() -> list[Case]:
    confidences = torch.tensor([[0.30, 0.95, 0.50, 0.20],
                                [0.85, 0.97, 0.60, 0.30],
                                [0.50, 0.99, 0.95, 0.40],
                                [0.95, 0.99, 0.70, 0.45]])  # (depth 4, batch 4)
    generator = _generator()
    noisy = torch.rand(6, 10, generator=generator)
    return [
        Case("4 exits, 4 images, threshold 0.8", (confidences, 0.8)),
        Case("4 exits, 4 images, threshold 0.9", (confidences, 0.9)),
        Case("4 exits, 4 images, a threshold equal to a confidence (0.5)", (confidences, 0.5)),
        Case("4 exits, 4 images, threshold 1.1 (no early exit)", (confidences, 1.1)),
        Case("4 exits, 4 images, threshold 0 (every image after one block)", (confidences, 0.0)),
        Case("6 exits, 10 images of random confidences, threshold 0.7", (noisy, 0.7)),
    ]


def _last_reaching(confidences: Tensor, threshold: float) -> Tensor:
    reached = confidences >= threshold
    depth = len(confidences)
    last = depth - reached.flip(0).int().argmax(dim=0)
    return torch.where(reached.any(dim=0), last, depth)


exit_depth = FunctionChecker(
    "exit_depth",
    reference_exit_depth,
    _exit_cases,
    mistakes=[
        (lambda c, t: reference_exit_depth(c, t) - 1, "the depths are 0-based: an image that leaves after the first "
         "block has used 1 block, so report index + 1."),
        (_last_reaching, "this is the last exit that reaches the threshold; an image leaves at the first one (it "
         "never runs the later blocks)."),
        (lambda c, t: reference_exit_depth(c, float(torch.nextafter(torch.tensor(t), torch.tensor(2.0)))),
         "the comparison is strict (>); a confidence equal to the threshold reaches it (>=)."),
    ],
    hint="reached = confidences >= threshold; reached[-1] = True  # the last exit takes everyone left; "
         "return reached.int().argmax(dim=0) + 1  # argmax gives the first True",
)
