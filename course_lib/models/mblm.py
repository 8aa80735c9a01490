"""A hierarchical byte-level decoder: a global model over patches and a local model inside each patch.

The two-stage stack of "Multiscale Byte Language Models -- A Hierarchical Architecture for Causal
Million-Length Sequence Modeling" (MBLM), with Transformer stages and the patch embedding of the
MEGABYTE decoder that MBLM generalises. Bytes are grouped into patches of `patch_size` P:

1. global: each patch's P byte embeddings (of width global_dim / P) are concatenated into one patch
   embedding; the patches are shifted right by one (a learned start patch in front, the last patch
   dropped), so the global output for patch k has seen only patches < k; a causal transformer runs
   over the K = L / P patches.
2. local: the global output for patch k is projected to P vectors, one per position in the patch; to
   each is added the embedding of the previous byte in the patch (a learned start byte at position 0);
   a causal transformer runs inside every patch at once (patches folded into the batch) and a head
   predicts the byte at each position.

So the logits at position t predict byte t from bytes 0..t-1 only (not byte t+1: the shift is inside
the model). The global model runs once per P bytes, which is where the savings come from:
`flops_per_byte` counts them, and `gpt_flops_per_token` counts a flat `GPT` the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from course_lib.models.gpt import GPTConfig
from course_lib.nn import LearnedPositionalEmbedding, RotaryEmbedding, TransformerBlock, make_norm

__all__ = ["MBLM", "MBLMConfig", "gpt_flops_per_token"]


@dataclass
class MBLMConfig:
    """Everything that describes a two-stage (global + local) byte decoder."""

    vocab_size: int = 256
    patch_size: int = 4                 # P bytes per patch
    max_patches: int = 64               # the longest input is max_patches * patch_size bytes
    global_dim: int = 128               # must be divisible by patch_size (the byte embeddings are concatenated)
    global_depth: int = 2
    global_heads: int = 4
    local_dim: int = 64
    local_depth: int = 2
    local_heads: int = 4
    mlp_ratio: float = 4.0
    norm: str = "layer"
    positional: str = "learned"         # or "rope": rotary positions inside each stage's attention

    def __post_init__(self) -> None:
        for name in ("vocab_size", "patch_size", "max_patches", "global_dim", "global_depth", "global_heads",
                     "local_dim", "local_depth", "local_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}; expected a positive integer")
        if self.global_dim % self.patch_size != 0:
            raise ValueError(f"global_dim={self.global_dim} is not divisible by patch_size={self.patch_size}")
        if self.global_dim % self.global_heads != 0:
            raise ValueError(f"global_dim={self.global_dim} is not divisible by global_heads={self.global_heads}")
        if self.local_dim % self.local_heads != 0:
            raise ValueError(f"local_dim={self.local_dim} is not divisible by local_heads={self.local_heads}")
        if not self.mlp_ratio > 0 or int(min(self.global_dim, self.local_dim) * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio={self.mlp_ratio!r}; expected a positive ratio")
        if self.norm not in ("layer", "rms"):
            raise ValueError(f"norm={self.norm!r}; expected 'layer' or 'rms'")
        if self.positional not in ("learned", "rope"):
            raise ValueError(f"positional={self.positional!r}; expected 'learned' or 'rope'")

    @property
    def max_len(self) -> int:
        """The longest input, in bytes."""
        return self.max_patches * self.patch_size


def _stack_flops(depth: int, dim: int, hidden: int, tokens_per_sequence: int) -> int:
    """Matrix-product FLOPs per token of `depth` attention blocks over sequences of `tokens_per_sequence`.

    2 per multiply-add: q, k, v, out (4 dim^2) and the MLP (2 dim hidden); attention's two products
    count every (query, key) pair, 4 L dim per query, as `course_lib.measure.count_flops` does.
    """
    return depth * (2 * (4 * dim * dim + 2 * dim * hidden) + 4 * tokens_per_sequence * dim)


def gpt_flops_per_token(config: GPTConfig, length: int) -> float:
    """Matrix-product FLOPs per token of a forward pass of `GPT(config)` over `length` tokens (head included).

    Counts what `course_lib.measure.count_flops` counts, for the flat baseline of an MBLM comparison.
    """
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= config.max_len:
        raise ValueError(f"length={length!r}; expected an integer in [1, max_len={config.max_len}]")
    c = config
    if c.ffn != "mlp" or c.kv_heads != c.heads or c.kv_share_every != 1:
        raise ValueError("gpt_flops_per_token counts the plain GPT: expected ffn='mlp', kv_heads=heads, "
                         f"kv_share_every=1; got ffn={c.ffn!r}, kv_heads={c.kv_heads}, kv_share_every={c.kv_share_every}")
    return _stack_flops(c.depth, c.dim, c.ffn_hidden, length) + 2 * c.dim * c.vocab_size


class MBLM(nn.Module):
    """bytes (B, L) with L a multiple of patch_size -> logits (B, L, vocab), position t predicting byte t."""

    predicts_current_token = True   # the shift is inside: see course_lib.train.language.next_token_logits

    def __init__(self, config: MBLMConfig) -> None:
        super().__init__()
        self.config = c = config
        P = c.patch_size

        def blocks(depth: int, dim: int, heads: int) -> nn.ModuleList:
            return nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio=c.mlp_ratio, norm=c.norm, norm_position="pre")
                                 for _ in range(depth))

        # global stage
        self.global_byte_embed = nn.Embedding(c.vocab_size, c.global_dim // P)
        self.global_start = nn.Parameter(torch.randn(c.global_dim) * 0.02)   # stands in front of patch 0
        self.global_position, self.global_rope = self._positions(c.global_dim, c.global_heads, c.max_patches)
        self.global_blocks = blocks(c.global_depth, c.global_dim, c.global_heads)
        self.global_norm = make_norm(c.norm, c.global_dim)
        # global -> local: one vector per position in the patch
        self.to_local = nn.Linear(c.global_dim, P * c.local_dim)
        # local stage
        self.local_byte_embed = nn.Embedding(c.vocab_size, c.local_dim)
        self.local_start = nn.Parameter(torch.randn(c.local_dim) * 0.02)     # stands in front of each patch's byte 0
        self.local_position, self.local_rope = self._positions(c.local_dim, c.local_heads, P)
        self.local_blocks = blocks(c.local_depth, c.local_dim, c.local_heads)
        self.local_norm = make_norm(c.norm, c.local_dim)
        self.head = nn.Linear(c.local_dim, c.vocab_size, bias=False)

    def _positions(self, dim: int, heads: int, length: int) -> tuple[nn.Module, RotaryEmbedding | None]:
        """Learned vectors added to the input, or rotary positions applied in attention (and nothing added)."""
        if self.config.positional == "rope":
            return nn.Identity(), RotaryEmbedding(dim // heads, length)
        return LearnedPositionalEmbedding(dim, length), None

    def _check_bytes(self, data: Tensor) -> None:
        """Refuse inputs the model cannot take, before any work."""
        if data.ndim != 2:
            raise ValueError(f"bytes has shape {tuple(data.shape)}; expected (batch, L)")
        length, P = data.shape[1], self.config.patch_size
        if length == 0 or length % P != 0:
            raise ValueError(f"length L={length} is not a positive multiple of patch_size={P}; "
                             f"pad the bytes (generate does) or trim them")
        if length > self.config.max_len:
            raise ValueError(f"length L={length} exceeds max_patches * patch_size = {self.config.max_len}")

    def global_features(self, data: Tensor) -> Tensor:
        """(B, L) bytes -> (B, K, global_dim): patch k's output has seen only patches 0..k-1."""
        patches = rearrange(self.global_byte_embed(data), "b (k p) e -> b k (p e)", p=self.config.patch_size)
        start = self.global_start.expand(data.shape[0], 1, -1)                        # (B, 1, global_dim)
        x = torch.cat([start, patches[:, :-1]], dim=1)                                # shifted by one patch
        x = self.global_position(x)
        for block in self.global_blocks:
            x = block(x, causal=True, rope=self.global_rope)
        return self.global_norm(x)

    def forward(self, data: Tensor) -> Tensor:
        """(B, L) bytes, L a multiple of patch_size -> (B, L, vocab) logits; those at t depend on bytes < t only."""
        self._check_bytes(data)
        c, batch = self.config, data.shape[0]
        g = self.global_features(data)                                                # (B, K, global_dim)
        from_global = rearrange(self.to_local(g), "b k (p d) -> (b k) p d", p=c.patch_size)
        previous = rearrange(self.local_byte_embed(data), "b (k p) d -> (b k) p d", p=c.patch_size)
        start = self.local_start.expand(previous.shape[0], 1, -1)                     # (B K, 1, local_dim)
        x = from_global + torch.cat([start, previous[:, :-1]], dim=1)                 # shifted by one byte
        x = self.local_position(x)
        for block in self.local_blocks:
            x = block(x, causal=True, rope=self.local_rope)
        logits = self.head(self.local_norm(x))                                        # (B K, P, vocab)
        return rearrange(logits, "(b k) p v -> b (k p) v", b=batch)

    def loss(self, data: Tensor) -> Tensor:
        """Mean cross-entropy of every byte given the bytes before it, in nats."""
        logits = self(data)
        return F.cross_entropy(rearrange(logits, "b l v -> (b l) v"), rearrange(data, "b l -> (b l)"))

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_bytes: int) -> Tensor:
        """Greedy continuation of (B, T) prompts by `max_new_bytes` bytes -> (B, T + max_new_bytes).

        Each step pads the bytes so far with zeros up to a multiple of patch_size and reads the logits
        at the next position: by causality the padding cannot change them.
        """
        if prompt.ndim != 2:
            raise ValueError(f"prompt has shape {tuple(prompt.shape)}; expected (batch, T)")
        if isinstance(max_new_bytes, bool) or not isinstance(max_new_bytes, int) or max_new_bytes < 1:
            raise ValueError(f"max_new_bytes={max_new_bytes!r}; expected a positive integer")
        total = prompt.shape[1] + max_new_bytes
        if total > self.config.max_len:
            raise ValueError(f"prompt + max_new_bytes = {total} exceeds max_len={self.config.max_len}")
        was_training = self.training
        self.eval()
        data = prompt
        for _ in range(max_new_bytes):
            t = data.shape[1]
            padded = F.pad(data, (0, -(t + 1) % self.config.patch_size + 1))   # zeros from t to the patch's end
            next_byte = self(padded)[:, t].argmax(dim=-1, keepdim=True)
            data = torch.cat([data, next_byte], dim=1)
        self.train(was_training)
        return data

    def flops_per_byte(self, length: int) -> float:
        """Matrix-product FLOPs per byte of a forward pass over `length` bytes, counted as `count_flops` counts.

        The global stack runs once per patch (its cost per byte is divided by P), the local stack and the
        head once per byte; embeddings, norms and softmax are not counted.
        """
        c = self.config
        if isinstance(length, bool) or not isinstance(length, int) or length < 1 or length % c.patch_size \
                or length > c.max_len:
            raise ValueError(f"length={length!r}; expected a multiple of patch_size={c.patch_size} "
                             f"in [{c.patch_size}, {c.max_len}]")
        P, patches = c.patch_size, length // c.patch_size
        per_patch = (_stack_flops(c.global_depth, c.global_dim, int(c.global_dim * c.mlp_ratio), patches)
                     + 2 * c.global_dim * P * c.local_dim)                      # to_local
        per_byte = _stack_flops(c.local_depth, c.local_dim, int(c.local_dim * c.mlp_ratio), P) \
            + 2 * c.local_dim * c.vocab_size                                    # head
        return per_patch / P + per_byte
