"""Discrete (masked) diffusion over a caption and an image's codes at once (after "Unified Discrete Diffusion for
Simultaneous Vision-Language Generation"; notebook 22).

Noise, for tokens, is a [MASK]: at noise level r every token is hidden with probability r. One bidirectional
transformer reads the caption's words and the image's codes (from notebook 20's tokenizer) side by side, some of
them hidden, and predicts every hidden one. As in "One Transformer Fits All Distributions in Multi-Modal Diffusion
at Scale", each modality draws its own noise level: a caption fully hidden beside a clean image teaches
captioning, a clean caption beside a fully hidden image teaches text-to-image, both partly hidden teach their joint
distribution, and one model learns all of them.

Generation starts with the tokens to write hidden and fills them over a few rounds: each round predicts every
hidden token, draws it, and keeps the most confident draws, so that the share still hidden follows a cosine
schedule (MaskGIT's sampler).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.data.captions import VOCAB
from course_lib.diffusion import guide
from course_lib.models._common import check_heads, check_positive
from course_lib.nn import LayerNorm, TransformerBlock

__all__ = ["MaskedDiffusion", "MaskedDiffusionConfig", "most_confident"]


@dataclass(frozen=True)
class MaskedDiffusionConfig:
    """Captions of `text_length` ids below `text_vocab` and images of `image_length` codes below `image_vocab`;
    each vocabulary gets one more id, its [MASK]."""

    text_vocab: int = len(VOCAB)
    text_length: int = 8
    image_vocab: int = 64
    image_length: int = 21
    dim: int = 96
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        for name in ("text_vocab", "text_length", "image_vocab", "image_length", "dim", "depth", "heads"):
            check_positive(name, getattr(self, name))
        check_heads(self.dim, self.heads)


def _hidden_cross_entropy(logits: Tensor, targets: Tensor, hidden: Tensor) -> Tensor:
    """Cross-entropy over the hidden positions only (zero, with a gradient path, when none is hidden)."""
    return F.cross_entropy(logits[hidden], targets[hidden]) if hidden.any() else logits.sum() * 0


def most_confident(confidence: Tensor, hidden: Tensor, count: Tensor) -> Tensor:
    """(B, L) boolean: in each row b, the `count[b]` hidden positions of highest `confidence` (B, L) (MaskGIT's
    choice of which draws to keep). Positions not hidden are never chosen."""
    if confidence.shape != hidden.shape or hidden.dtype != torch.bool or count.shape != confidence.shape[:1]:
        raise ValueError(f"confidence {tuple(confidence.shape)} and boolean hidden {tuple(hidden.shape)} must have one "
                         f"shape (B, L) and count one entry per row; got hidden {hidden.dtype}, count "
                         f"{tuple(count.shape)}")
    competing = confidence.masked_fill(~hidden, float("-inf"))
    rank = competing.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # 0: the most confident
    return hidden & (rank < count[:, None])


class MaskedDiffusion(nn.Module):
    """(text (B, text_length), codes (B, image_length)), hidden tokens given as `text_mask` / `image_mask` ->
    (word logits (B, text_length, text_vocab), code logits (B, image_length, image_vocab))."""

    def __init__(self, config: MaskedDiffusionConfig) -> None:
        super().__init__()
        self.config = c = config
        self.text_mask, self.image_mask = c.text_vocab, c.image_vocab  # the [MASK] ids
        self.word_embed = nn.Embedding(c.text_vocab + 1, c.dim)
        self.code_embed = nn.Embedding(c.image_vocab + 1, c.dim)
        self.positions = nn.Parameter(torch.randn(c.text_length + c.image_length, c.dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(c.dim, c.heads, mlp_ratio=c.mlp_ratio) for _ in range(c.depth))
        self.norm = LayerNorm(c.dim)
        self.to_words = nn.Linear(c.dim, c.text_vocab)
        self.to_codes = nn.Linear(c.dim, c.image_vocab)

    def _check(self, text: Tensor, codes: Tensor) -> None:
        c = self.config
        for name, value, length, vocab in (("text", text, c.text_length, c.text_vocab),
                                           ("codes", codes, c.image_length, c.image_vocab)):
            if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[1] != length \
                    or value.is_floating_point() or len(value) == 0 or value.min() < 0 or value.max() > vocab:
                raise ValueError(f"{name} must be (batch >= 1, {length}) integer ids in [0, {vocab}] ({vocab}: "
                                 f"[MASK]); got {getattr(value, 'dtype', type(value))} of shape "
                                 f"{tuple(getattr(value, 'shape', ()))}")
        if len(text) != len(codes):
            raise ValueError(f"text ({len(text)}) and codes ({len(codes)}) must hold the same number of examples")

    def forward(self, text: Tensor, codes: Tensor) -> tuple[Tensor, Tensor]:
        self._check(text, codes)
        x = torch.cat([self.word_embed(text), self.code_embed(codes)], dim=1) + self.positions
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.to_words(x[:, : self.config.text_length]), self.to_codes(x[:, self.config.text_length:])

    def loss(self, text: Tensor, codes: Tensor, generator: torch.Generator,
             rates: tuple[float, float] | None = None) -> tuple[Tensor, Tensor]:
        """(word loss, code loss): each example draws a noise level per modality, uniform in [0, 1] (or takes the
        fixed (text, image) `rates`), hides each of its tokens with that probability, and the cross-entropy is
        taken over the hidden ones."""
        if rates is None:
            rates = torch.rand(len(text), 2, generator=generator).to(text.device)  # (text, image) noise levels
        elif len(rates) != 2 or not all(0 <= r <= 1 for r in rates):
            raise ValueError(f"rates={rates!r} must be two noise levels (text, image) in [0, 1]")
        else:
            rates = torch.tensor([rates], device=text.device).expand(len(text), 2)
        hidden_text = torch.rand(text.shape, generator=generator).to(text.device) < rates[:, :1]
        hidden_codes = torch.rand(codes.shape, generator=generator).to(codes.device) < rates[:, 1:]
        word_logits, code_logits = self(text.masked_fill(hidden_text, self.text_mask),
                                        codes.masked_fill(hidden_codes, self.image_mask))
        return _hidden_cross_entropy(word_logits, text, hidden_text), _hidden_cross_entropy(code_logits, codes, hidden_codes)

    @torch.no_grad()
    def generate(self, text: Tensor, codes: Tensor, *, rounds: int = 8, temperature: float = 1.0,
                 guidance: float = 1.0, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """`text` and `codes` with every [MASK] filled in over `rounds` rounds: each round draws every hidden token
        at `temperature` and keeps the most confident draws, leaving cos(π/2 · round/rounds) of the hidden tokens
        hidden. Given tokens never change, so hiding the caption captions the image and hiding the codes draws
        the caption. With `guidance` w != 1 the logits are u + w (c − u), c read with the given tokens and u with
        every given token hidden (classifier-free guidance: the model has learned both, since a modality's noise
        level is sometimes near 1)."""
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1 or not temperature > 0 \
                or not guidance >= 0:
            raise ValueError(f"rounds={rounds!r} must be a positive int, temperature={temperature!r} > 0 and "
                             f"guidance={guidance!r} >= 0")
        self._check(text, codes)
        generator = generator or torch.Generator().manual_seed(0)
        length = self.config.text_length
        tokens = torch.cat([text, codes + (self.config.text_vocab + 1)], dim=1)  # one id space: words, then codes
        hidden = torch.cat([text == self.text_mask, codes == self.image_mask], dim=1)
        to_fill, given = hidden.sum(dim=1), ~hidden  # the condition: tokens given, not drawn
        all_hidden = torch.cat([torch.full_like(text, self.text_mask),
                                torch.full_like(codes, self.image_mask + self.config.text_vocab + 1)], dim=1)
        for round_ in range(1, rounds + 1):
            word_logits, code_logits = self._guided_logits(tokens, torch.where(given, all_hidden, tokens), guidance)
            drawn, confidence = [], []
            for logits, offset in ((word_logits, 0), (code_logits, self.config.text_vocab + 1)):
                probabilities = torch.softmax(logits / temperature, dim=-1)
                flat = probabilities.reshape(-1, probabilities.shape[-1]).cpu()
                choice = torch.multinomial(flat, 1, generator=generator).reshape(probabilities.shape[:2])
                choice = choice.to(logits.device)
                drawn.append(choice + offset)
                confidence.append(probabilities.gather(-1, choice[..., None])[..., 0])
            drawn, confidence = torch.cat(drawn, dim=1), torch.cat(confidence, dim=1)
            still_hidden = (to_fill.float() * math.cos(math.pi / 2 * round_ / rounds)).floor().long()
            chosen = most_confident(confidence, hidden, hidden.sum(dim=1) - still_hidden)
            tokens = torch.where(chosen, drawn, tokens)
            hidden = hidden & ~chosen
        return tokens[:, :length], tokens[:, length:] - (self.config.text_vocab + 1)

    def _guided_logits(self, tokens: Tensor, unconditioned: Tensor, guidance: float) -> tuple[Tensor, Tensor]:
        """(word logits, code logits) of `tokens` (words, then codes shifted past the word ids), guided away from
        those of `unconditioned` (the same tokens with the condition hidden) when `guidance` != 1."""
        offset, length = self.config.text_vocab + 1, self.config.text_length
        if guidance == 1:
            return self(tokens[:, :length], tokens[:, length:] - offset)
        both = torch.cat([tokens, unconditioned])
        words, codes = self(both[:, :length], both[:, length:] - offset)
        return tuple(guide(c, u, guidance) for c, u in (words.chunk(2), codes.chunk(2)))
