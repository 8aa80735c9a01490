"""A decoder-only language model (GPT) with the choices that separate GPT-2 from Llama-style models.

Config: learned or rotary positions, LayerNorm or RMSNorm, GELU MLP or SwiGLU, multi-head /
grouped-query / multi-query attention (`kv_heads`), cross-layer KV sharing (`kv_share_every`,
as in "MLKV: Multi-Layer Key-Value Heads"), weight tying, and multi-rate structure on every block's
output (`wavelet_levels`, as in "WaveletGPT: Wavelets Meet Large Language Models"; no parameters), and
mixture-of-experts feed-forward layers in every other block (`moe_experts`, Switch Transformer's layout).
`generate` samples with temperature and top-k, with or without a KV cache. `segments` runs rows that hold
several documents back to back (packed sequences, notebook 26): each token reads only its own document, whose
positions start at 0. `GPT.from_hf` copies the weights of a Hugging Face `GPT2LMHeadModel` or
`LlamaForCausalLM` through an explicit key map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from course_lib.models._weights import checked_state_dict, move_module
from course_lib.nn import (
    MLP,
    LearnedPositionalEmbedding,
    MoE,
    RotaryEmbedding,
    make_feedforward,
    make_norm,
    rotate_half,
    scaled_dot_product_attention,
)
from course_lib.nn.multirate import multirate_causal_average


@dataclass
class GPTConfig:
    vocab_size: int = 256
    max_len: int = 256
    dim: int = 128
    depth: int = 4
    heads: int = 4
    kv_heads: int | None = None  # None: as many as query heads (MHA); 1: MQA; in between: GQA
    kv_share_every: int = 1  # layers that share one set of keys and values (MLKV); 1: no sharing
    positional: Literal["learned", "rope"] = "learned"
    norm: Literal["layer", "rms"] = "layer"
    ffn: Literal["mlp", "glu"] = "mlp"
    activation: Literal["gelu", "gelu_tanh"] = "gelu"  # the MLP's; GPT-2's checkpoints use "gelu_tanh"
    ffn_hidden: int | None = None  # default: 4*dim for the MLP, 8/3*dim (rounded up to 8) for SwiGLU
    bias: bool = True  # biases in the attention projections
    tie_weights: bool = True  # the output head reuses the token embedding
    dropout: float = 0.0
    rope_base: float = 10000.0
    wavelet_levels: int = 0  # > 0: half the channels of each block's output averaged over 2..2^levels past tokens
    moe_experts: int = 0  # > 0: every `moe_every`-th block's feed-forward is a mixture of this many SwiGLU experts
    moe_k: int = 1  # experts per token (Switch: 1, Mixtral: 2)
    moe_every: int = 2  # blocks 1, 1 + moe_every, ... are MoE (Switch and GShard alternate dense and MoE)
    moe_capacity: float | None = None  # capacity factor; None: no expert ever drops a token

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "dim", "depth", "heads", "kv_share_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive int")
        if self.dim % self.heads != 0:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")
        if self.kv_heads is None:
            self.kv_heads = self.heads
        if self.kv_heads < 1 or self.heads % self.kv_heads != 0:
            raise ValueError(f"kv_heads={self.kv_heads} must divide heads={self.heads}")
        if self.positional not in ("learned", "rope"):
            raise ValueError(f"positional={self.positional!r}; expected 'learned' or 'rope'")
        if self.activation not in ("gelu", "gelu_tanh"):
            raise ValueError(f"activation={self.activation!r}; expected 'gelu' or 'gelu_tanh'")
        if isinstance(self.wavelet_levels, bool) or not isinstance(self.wavelet_levels, int) \
                or not 0 <= self.wavelet_levels <= self.dim // 2:
            raise ValueError(f"wavelet_levels={self.wavelet_levels!r}; expected an integer in [0, dim // 2 = {self.dim // 2}]")
        for name in ("moe_experts", "moe_k", "moe_every"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) \
                    or getattr(self, name) < (0 if name == "moe_experts" else 1):
                raise ValueError(f"{name}={getattr(self, name)!r} must be an int >= {0 if name == 'moe_experts' else 1}")
        if self.moe_experts and self.moe_k > self.moe_experts:
            raise ValueError(f"moe_k={self.moe_k} is more than moe_experts={self.moe_experts}")
        if self.ffn_hidden is None:
            self.ffn_hidden = 4 * self.dim if self.ffn == "mlp" else 8 * math.ceil(8 * self.dim / 3 / 8)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def computes_kv(self, layer: int) -> bool:
        """Only the first layer of each group of `kv_share_every` layers projects keys and values."""
        return layer % self.kv_share_every == 0

    def is_moe(self, layer: int) -> bool:
        """Whether block `layer` has a mixture of experts for its feed-forward (every `moe_every`-th, from 1)."""
        return self.moe_experts > 0 and layer % self.moe_every == self.moe_every - 1

    def kv_cache_bytes(self, batch: int, length: int, bytes_per_value: int = 4) -> int:
        """Memory of a full KV cache: keys and values, per KV-computing layer, batch, KV head, position, feature."""
        kv_layers = math.ceil(self.depth / self.kv_share_every)
        return 2 * kv_layers * batch * self.kv_heads * length * self.head_dim * bytes_per_value


class KVCache:
    """Preallocated keys and values for generation: one (B, kv_heads, max_len, head_dim) pair per
    KV-computing layer, filled left to right; `length` counts the positions already stored."""

    def __init__(self, config: GPTConfig, batch: int, max_len: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        if max_len > config.max_len:
            raise ValueError(f"max_len={max_len} exceeds the model's max_len={config.max_len}")
        shape = (batch, config.kv_heads, max_len, config.head_dim)
        layers = [i for i in range(config.depth) if config.computes_kv(i)]
        self.keys = {i: torch.zeros(shape, dtype=dtype, device=device) for i in layers}
        self.values = {i: torch.zeros(shape, dtype=dtype, device=device) for i in layers}
        self.length, self.max_len = 0, max_len

    def update(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new (B, kv_heads, t, head_dim) keys and values after the old ones; return all so far."""
        end = self.length + keys.shape[2]
        if end > self.max_len:
            raise ValueError(f"the cache holds max_len={self.max_len} positions; {end} were asked for")
        self.keys[layer][:, :, self.length : end] = keys
        self.values[layer][:, :, self.length : end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, steps: int) -> None:
        """Call once the whole model has seen `steps` new positions."""
        self.length += steps

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values()))


def check_segments(segments: Tensor) -> None:
    """Raise unless `segments` is a (B, L) integer tensor of document ids, non-decreasing along each row."""
    if not isinstance(segments, Tensor) or segments.dim() != 2 or segments.is_floating_point() \
            or segments.is_complex() or segments.dtype == torch.bool:
        raise ValueError(f"segments must be a (batch, length) integer tensor of document ids; got "
                         f"{getattr(segments, 'dtype', type(segments).__name__)} of shape "
                         f"{tuple(getattr(segments, 'shape', ()))}")
    if (segments[:, 1:] < segments[:, :-1]).any():
        row = int((segments[:, 1:] < segments[:, :-1]).any(dim=1).nonzero()[0])
        raise ValueError(f"segments must be non-decreasing along each row (one document after another); row {row} "
                         f"is {segments[row].tolist()}")


def document_mask(segments: Tensor) -> Tensor:
    """(B, L) document ids -> (B, 1, L, L) boolean mask, True = may attend: causal, and within one's own document."""
    check_segments(segments)
    length = segments.shape[1]
    earlier = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()  # (L, L)
    same = rearrange(segments, "b q -> b q 1") == rearrange(segments, "b k -> b 1 k")  # (B, L, L)
    return rearrange(same & earlier, "b q k -> b 1 q k")


def document_positions(segments: Tensor) -> Tensor:
    """(B, L) document ids -> (B, L) each token's position within its own document (0 at each document's start)."""
    check_segments(segments)
    index = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)  # (B, L)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(starts, index, 0).cummax(dim=1).values  # the index where each token's document starts
    return index - first


def _rotate(rope: RotaryEmbedding, x: Tensor, offset: int, positions: Tensor | None) -> Tensor:
    """Rotary positions offset, offset + 1, ... or, for packed documents, each token's own (B, T) `positions`."""
    if positions is None:
        return rope(x, offset)
    cos = rearrange(rope.cos[positions], "b t d -> b 1 t d").to(x.dtype)
    sin = rearrange(rope.sin[positions], "b t d -> b 1 t d").to(x.dtype)
    return x * cos + rotate_half(x) * sin


class CausalSelfAttention(nn.Module):
    """Causal attention with `heads` query heads sharing `kv_heads` key/value heads (GQA, MQA when 1).

    A layer that does not compute its own keys and values (MLKV) is handed those of an earlier layer.
    """

    def __init__(self, config: GPTConfig, computes_kv: bool) -> None:
        super().__init__()
        c = config
        self.heads, self.kv_heads, self.dropout = c.heads, c.kv_heads, c.dropout
        self.to_q = nn.Linear(c.dim, c.dim, bias=c.bias)
        if computes_kv:
            self.to_k = nn.Linear(c.dim, c.kv_heads * c.head_dim, bias=c.bias)
            self.to_v = nn.Linear(c.dim, c.kv_heads * c.head_dim, bias=c.bias)
        self.computes_kv = computes_kv
        self.to_out = nn.Linear(c.dim, c.dim, bias=c.bias)

    def project_kv(self, x: Tensor, rope: RotaryEmbedding | None, offset: int,
                   positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        k = rearrange(self.to_k(x), "b t (g d) -> b g t d", g=self.kv_heads)
        v = rearrange(self.to_v(x), "b t (g d) -> b g t d", g=self.kv_heads)
        return (_rotate(rope, k, offset, positions) if rope is not None else k), v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], rope: RotaryEmbedding | None, offset: int,
                mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """x (B, t, dim) at positions offset..offset+t-1; kv: keys and values of positions 0..offset+t-1.
        Packed documents: `mask` (B, 1, t, t) keeps each to itself, `positions` (B, t) restart at each one."""
        q = rearrange(self.to_q(x), "b t (h d) -> b h t d", h=self.heads)
        if rope is not None:
            q = _rotate(rope, q, offset, positions)
        k, v = kv  # (B, kv_heads, s, d): each serves heads / kv_heads consecutive query heads
        out = scaled_dot_product_attention(q, k, v, mask, causal=True, impl="fused",
                                           dropout=self.dropout if self.training else 0.0)
        return self.to_out(rearrange(out, "b h t d -> b t (h d)"))


class GPTBlock(nn.Module):
    """Pre-norm decoder block: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, config: GPTConfig, computes_kv: bool, moe: bool = False) -> None:
        super().__init__()
        self.attn_norm = make_norm(config.norm, config.dim)
        self.attn = CausalSelfAttention(config, computes_kv)
        self.ffn_norm = make_norm(config.norm, config.dim)
        if moe:
            self.ffn = MoE(config.dim, config.ffn_hidden, config.moe_experts, config.moe_k,
                           capacity_factor=config.moe_capacity)
        elif config.ffn == "mlp":
            self.ffn = MLP(config.dim, config.ffn_hidden, activation=config.activation)
        else:
            self.ffn = make_feedforward(config.ffn, config.dim, config.ffn_hidden)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, *, shared_kv: tuple[Tensor, Tensor] | None, rope: RotaryEmbedding | None,
                offset: int, cache: KVCache | None, index: int, mask: Tensor | None = None,
                positions: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Returns the updated residual stream and the keys and values it attended to, which the next
        layers of its MLKV group reuse (`shared_kv` are those of the group's first layer).
        `mask` and `positions` are given only for packed documents (see `GPT.forward`'s `segments`)."""
        h = self.attn_norm(x)
        kv = shared_kv
        if self.attn.computes_kv:
            kv = self.attn.project_kv(h, rope, offset, positions)
            if cache is not None:
                kv = cache.update(index, *kv)
        x = x + self.dropout(self.attn(h, kv, rope, offset, mask, positions))
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x, kv


class GPT(nn.Module):
    """tokens (B, T) -> next-token logits (B, T, vocab_size)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.position = LearnedPositionalEmbedding(c.dim, c.max_len) if c.positional == "learned" else None
        self.rope = RotaryEmbedding(c.head_dim, c.max_len, c.rope_base) if c.positional == "rope" else None
        self.blocks = nn.ModuleList(GPTBlock(c, c.computes_kv(i), c.is_moe(i)) for i in range(c.depth))
        self.final_norm = make_norm(c.norm, c.dim)
        self.head = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():  # GPT-2: shrink what is added to the residual
            if name.endswith(("to_out.weight", "fc_out.weight", "down.weight", "ffn.down")):
                nn.init.normal_(parameter, std=0.02 / math.sqrt(2 * c.depth))
            elif name.endswith("ffn.gate_up"):  # MoE experts start like the dense SwiGLU they stand for
                nn.init.normal_(parameter, std=0.02)
        if c.tie_weights:
            self.head.weight = self.embed.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: Tensor, cache: KVCache | None = None, *, prefix: Tensor | None = None,
                segments: Tensor | None = None) -> Tensor:
        """With a cache, `tokens` continue the sequence stored in it, and their keys and values are added.

        `prefix` (B, P, dim), embeddings that go before the tokens' (a vision-language bridge's image tokens), makes
        the output (B, P + T, vocab_size): the tokens read the prefix, and positions count from its start.

        `segments` (B, T) integer document ids, non-decreasing along each row, packs several documents into a row:
        a token reads only the earlier tokens of its own document, and positions restart at 0 at each document's
        start, so each document's logits are those it gets alone. Not with a cache, a prefix or wavelet_levels."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens has shape {tuple(tokens.shape)}; expected (batch, length)")
        mask = positions = None
        if segments is not None:
            mask, positions = self._packing(tokens, segments, cache, prefix)
        if prefix is not None and (cache is not None or not isinstance(prefix, Tensor) or prefix.dim() != 3
                                   or prefix.shape[0] != tokens.shape[0] or prefix.shape[2] != self.config.dim):
            raise ValueError(f"prefix must be embeddings (batch={tokens.shape[0]}, length, dim={self.config.dim}), "
                             f"without a cache; got shape {tuple(getattr(prefix, 'shape', ()))}"
                             f"{' and a cache' if cache is not None else ''}")
        if cache is not None and self.config.wavelet_levels:
            raise ValueError("a KV cache cannot serve wavelet_levels > 0: the averages need every layer's past "
                             "outputs, not only its keys and values; call without a cache (generate(use_cache=False))")
        offset = cache.length if cache is not None else 0
        length = tokens.shape[1] + (prefix.shape[1] if prefix is not None else 0)
        if offset + length > self.config.max_len:
            raise ValueError(f"sequence length {offset + length} is longer than max_len={self.config.max_len}")
        x = self.embed(tokens)  # (B, t, dim)
        if prefix is not None:
            x = torch.cat([prefix.to(x.dtype), x], dim=1)  # (B, P + t, dim)
        if self.position is not None:
            x = self.position(x, offset) if positions is None else x + self.position.weight[positions]
        kv = None
        for index, block in enumerate(self.blocks):
            x, kv = block(x, shared_kv=kv, rope=self.rope, offset=offset, cache=cache, index=index, mask=mask,
                          positions=positions)
            if self.config.wavelet_levels:
                x = multirate_causal_average(x, self.config.wavelet_levels)
        if cache is not None:
            cache.advance(tokens.shape[1])
        return self.head(self.final_norm(x))

    def _packing(self, tokens: Tensor, segments: Tensor, cache: KVCache | None,
                 prefix: Tensor | None) -> tuple[Tensor, Tensor]:
        """The (B, 1, T, T) document mask and (B, T) within-document positions of checked `segments`."""
        if cache is not None or prefix is not None or self.config.wavelet_levels:
            raise ValueError("segments (packed documents) cannot be combined with a cache, a prefix or "
                             f"wavelet_levels > 0; got cache={cache is not None}, prefix={prefix is not None}, "
                             f"wavelet_levels={self.config.wavelet_levels}")
        if getattr(segments, "shape", None) != tokens.shape:
            raise ValueError(f"segments has shape {tuple(getattr(segments, 'shape', ()))}; expected the tokens' "
                             f"{tuple(tokens.shape)}")
        return document_mask(segments), document_positions(segments)  # each checks dtype and order

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 use_cache: bool | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Continue (B, T) prompts by `max_new_tokens`; temperature 0 is greedy. Returns (B, T + new).

        `use_cache` None caches keys and values whenever the model allows it (not with wavelet_levels > 0).
        """
        if use_cache is None:
            use_cache = not self.config.wavelet_levels
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be positive")
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be non-negative")
        if top_k is not None and not 1 <= top_k <= self.config.vocab_size:
            raise ValueError(f"top_k={top_k} must lie in [1, vocab_size={self.config.vocab_size}]")
        total = prompt.shape[1] + max_new_tokens
        if total > self.config.max_len:
            raise ValueError(f"prompt + max_new_tokens = {total} exceeds max_len={self.config.max_len}")
        was_training = self.training
        self.eval()
        cache = KVCache(self.config, prompt.shape[0], total, dtype=self.embed.weight.dtype,
                        device=prompt.device) if use_cache else None
        tokens, step_input = prompt, prompt
        for _ in range(max_new_tokens):
            logits = self(step_input, cache)[:, -1]  # (B, vocab)
            next_token = sample_next(logits, temperature=temperature, top_k=top_k, generator=generator)
            tokens = torch.cat([tokens, next_token], dim=1)
            step_input = next_token if use_cache else tokens
        self.train(was_training)
        return tokens

    @classmethod
    def from_hf(cls, reference: nn.Module) -> GPT:
        """A GPT with the weights of a Hugging Face GPT2LMHeadModel or LlamaForCausalLM (same outputs)."""
        model = cls(config_from_hf(reference.config))
        model.load_state_dict(state_dict_from_hf(reference, model), strict=True)
        return model


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row, set the rest to -inf."""
    kth_largest = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def sample_next(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """(B, vocab) logits -> (B, 1) next tokens: greedy at temperature 0, else a draw from softmax(logits / T)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)


# ----------------------------------------------------------------------------------------------
# Weights from Hugging Face: an explicit key map, and every key and shape must line up.


# transformers' names for GPT-2's activation -> ours ('gelu_new' is the tanh approximation GPT-2 used)
GPT2_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def config_from_hf(hf: object) -> GPTConfig:
    """The GPTConfig of a Hugging Face GPT2Config or LlamaConfig; refuses settings this model lacks."""
    kind = getattr(hf, "model_type", None)
    if kind == "gpt2":
        if hf.activation_function not in GPT2_ACTIVATIONS:
            raise ValueError(f"activation_function={hf.activation_function!r}; expected one of {sorted(GPT2_ACTIVATIONS)}")
        _require(hf, layer_norm_epsilon=1e-5)
        return GPTConfig(vocab_size=hf.vocab_size, max_len=hf.n_positions, dim=hf.n_embd, depth=hf.n_layer,
                         heads=hf.n_head, positional="learned", norm="layer", ffn="mlp",
                         activation=GPT2_ACTIVATIONS[hf.activation_function],
                         ffn_hidden=hf.n_inner or 4 * hf.n_embd, bias=True, tie_weights=hf.tie_word_embeddings)
    if kind == "llama":
        _require(hf, hidden_act="silu", rms_norm_eps=1e-6, mlp_bias=False)
        if hf.head_dim != hf.hidden_size // hf.num_attention_heads:
            raise ValueError(f"head_dim={hf.head_dim}; expected hidden_size // num_attention_heads")
        rope = getattr(hf, "rope_parameters", None) or {"rope_theta": hf.rope_theta, "rope_type": "default"}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"rope_type={rope['rope_type']!r}; only plain rotary embeddings are supported")
        return GPTConfig(vocab_size=hf.vocab_size, max_len=hf.max_position_embeddings, dim=hf.hidden_size,
                         depth=hf.num_hidden_layers, heads=hf.num_attention_heads, kv_heads=hf.num_key_value_heads,
                         positional="rope", norm="rms", ffn="glu", ffn_hidden=hf.intermediate_size,
                         bias=hf.attention_bias, tie_weights=hf.tie_word_embeddings, rope_base=rope["rope_theta"])
    raise ValueError(f"model_type={kind!r}; expected 'gpt2' or 'llama'")


def _require(hf: object, **expected: object) -> None:
    for name, value in expected.items():
        if getattr(hf, name) != value:
            raise ValueError(f"{name}={getattr(hf, name)!r}; this GPT supports only {value!r}")


def _gpt2_weights(theirs: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """GPT-2 stores linear weights as (in, out) ("Conv1D") and fuses q, k, v into c_attn."""
    ours = {"embed.weight": theirs.pop("transformer.wte.weight"), "position.weight": theirs.pop("transformer.wpe.weight"),
            "final_norm.weight": theirs.pop("transformer.ln_f.weight"), "final_norm.bias": theirs.pop("transformer.ln_f.bias"),
            "head.weight": theirs.pop("lm_head.weight")}
    for i in range(depth):
        old, new = f"transformer.h.{i}.", f"blocks.{i}."
        q, k, v = theirs.pop(old + "attn.c_attn.weight").t().chunk(3, dim=0)
        q_bias, k_bias, v_bias = theirs.pop(old + "attn.c_attn.bias").chunk(3)
        ours.update({
            new + "attn.to_q.weight": q, new + "attn.to_k.weight": k, new + "attn.to_v.weight": v,
            new + "attn.to_q.bias": q_bias, new + "attn.to_k.bias": k_bias, new + "attn.to_v.bias": v_bias,
            new + "attn.to_out.weight": theirs.pop(old + "attn.c_proj.weight").t(),
            new + "attn.to_out.bias": theirs.pop(old + "attn.c_proj.bias"),
            new + "ffn.fc_in.weight": theirs.pop(old + "mlp.c_fc.weight").t(),
            new + "ffn.fc_in.bias": theirs.pop(old + "mlp.c_fc.bias"),
            new + "ffn.fc_out.weight": theirs.pop(old + "mlp.c_proj.weight").t(),
            new + "ffn.fc_out.bias": theirs.pop(old + "mlp.c_proj.bias"),
        })
        for norm_old, norm_new in (("ln_1", "attn_norm"), ("ln_2", "ffn_norm")):
            for part in ("weight", "bias"):
                ours[f"{new}{norm_new}.{part}"] = theirs.pop(f"{old}{norm_old}.{part}")
    return ours


_LLAMA_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn.to_q", "self_attn.k_proj": "attn.to_k", "self_attn.v_proj": "attn.to_v",
    "self_attn.o_proj": "attn.to_out", "mlp.gate_proj": "ffn.gate", "mlp.up_proj": "ffn.up", "mlp.down_proj": "ffn.down",
}


def _llama_weights(theirs: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    ours = {"embed.weight": theirs.pop("model.embed_tokens.weight"), "final_norm.weight": theirs.pop("model.norm.weight"),
            "head.weight": theirs.pop("lm_head.weight")}
    for i in range(depth):
        for old, new in _LLAMA_NAMES.items():
            move_module(theirs, ours, f"model.layers.{i}.{old}", f"blocks.{i}.{new}")
    return ours


def state_dict_from_hf(reference: nn.Module, model: GPT) -> dict[str, Tensor]:
    """`reference`'s weights under our names; raises if any key or shape fails to line up."""
    theirs = dict(reference.state_dict())
    mapper = {"gpt2": _gpt2_weights, "llama": _llama_weights}[reference.config.model_type]
    ours = mapper(theirs, model.config.depth)
    return checked_state_dict(theirs, ours, model)
