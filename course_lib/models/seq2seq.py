"""An encoder-decoder transformer: the encoder reads the source, the decoder writes the target.

The decoder's blocks attend causally to the target so far and, through cross-attention, to the
encoded source.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from course_lib.nn import (
    SinusoidalPositionalEncoding,
    TransformerBlock,
    TransformerEncoder,
    make_norm,
)


@dataclass
class Seq2SeqTransformerConfig:
    src_vocab_size: int
    tgt_vocab_size: int
    max_len: int
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.dim % self.heads != 0:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")


class Seq2SeqTransformer(nn.Module):
    """(src (B, S), tgt_in (B, T)) -> logits (B, T, tgt_vocab_size)."""

    def __init__(self, config: Seq2SeqTransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.src_embed = nn.Embedding(c.src_vocab_size, c.dim)
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.dim)
        self.position = SinusoidalPositionalEncoding(c.dim, c.max_len)
        self.encoder = TransformerEncoder(c.depth, c.dim, c.heads, mlp_ratio=c.mlp_ratio, dropout=c.dropout)
        self.decoder = nn.ModuleList(
            TransformerBlock(c.dim, c.heads, mlp_ratio=c.mlp_ratio, dropout=c.dropout, cross_attention=True)
            for _ in range(c.depth)
        )
        self.decoder_norm = make_norm("layer", c.dim)
        self.head = nn.Linear(c.dim, c.tgt_vocab_size)

    def encode(self, src: Tensor) -> Tensor:
        return self.encoder(self.position(self.src_embed(src)))  # (B, S, dim)

    def decode(self, memory: Tensor, tgt_in: Tensor) -> Tensor:
        y = self.position(self.tgt_embed(tgt_in))  # (B, T, dim)
        for block in self.decoder:
            y = block(y, context=memory, causal=True)
        return self.head(self.decoder_norm(y))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.decode(self.encode(src), tgt_in)

    @torch.no_grad()
    def generate(self, src: Tensor, bos: int, length: int) -> Tensor:
        """Greedy decoding of `length` tokens after `bos`: (B, S) -> (B, length)."""
        memory = self.encode(src)
        out = torch.full((src.shape[0], 1), bos, dtype=torch.long, device=src.device)
        for _ in range(length):
            next_token = self.decode(memory, out)[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, next_token], dim=1)
        return out[:, 1:]
