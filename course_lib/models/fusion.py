"""Fusing modalities (notebook 16): one tokeniser per modality, then five ways for the token streams to meet.

Every modality becomes a sequence of `dim`-wide tokens (image patches, spectrogram frames, caption words), tagged
with a learned modality embedding, and runs `unimodal_depth` blocks of its own. Then `fusion` decides how the
streams meet for `fusion_depth` blocks:

| fusion       | how the streams meet                                                   | attention per layer         |
|--------------|------------------------------------------------------------------------|-----------------------------|
| "early"      | one sequence of every token, full self-attention, shared blocks        | (sum of N)²                 |
| "zorro"      | the same sequence plus fusion tokens, under a mask: each modality      | (sum of N)² computed, the   |
|              | attends to itself only, the fusion tokens to everything ("Zorro: the   | mask keeps streams pure     |
|              | masked multimodal transformer"), so each stream stays modality-pure    |                             |
| "late"       | no meeting: each stream its own blocks, pooled features averaged       | sum of N²                   |
| "cross"      | each stream its own self-attention plus cross-attention to the others  | (sum of N)²                 |
| "bottleneck" | each stream its own blocks over its tokens plus a few shared           | sum of (N + F)²             |
|              | bottleneck tokens, averaged across streams after every layer           |                             |
|              | ("Attention Bottlenecks for Multimodal Fusion")                        |                             |

A modality left out of `forward`'s inputs is missing: its tokens are simply absent, and every fusion works on
the ones given (the mean over streams is over the present ones). Whether the model still works then depends on
its training, which is what notebook 16 measures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from course_lib.models._common import (
    check_heads,
    check_images,
    check_positive,
    check_positive_number,
    init_vit_style,
)
from course_lib.nn import LayerNorm, TransformerBlock

__all__ = ["FUSIONS", "MODALITIES", "FusionConfig", "FusionModel", "attention_pairs", "drop_modalities",
           "modality_pure_mask"]

MODALITIES = ("image", "sound", "text")
FUSIONS = ("early", "zorro", "late", "cross", "bottleneck")


@dataclass(frozen=True)
class FusionConfig:
    """A classifier over `modalities` that fuses them by `fusion` (see the module docstring).

    Images are `image_size`² with `channels` channels, cut into `patch_size`² patches; sounds are spectrograms of
    `sound_bins` frequencies by `sound_frames` frames, `frames_per_token` frames per token; captions are token ids
    below `vocab_size`, at most `context_length` long, `pad_token_id` marking padding. `fusion_tokens` is the
    number of bottleneck tokens ("bottleneck") or fusion tokens ("zorro")."""

    num_classes: int
    fusion: str = "early"
    modalities: tuple[str, ...] = ("image", "sound")
    dim: int = 64
    heads: int = 4
    unimodal_depth: int = 1
    fusion_depth: int = 2
    mlp_ratio: float = 2.0
    fusion_tokens: int = 4
    image_size: int = 32
    patch_size: int = 8
    channels: int = 3
    sound_bins: int = 129
    sound_frames: int = 30
    frames_per_token: int = 2
    vocab_size: int = 32
    context_length: int = 16
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion={self.fusion!r}; expected one of {FUSIONS}")
        if not isinstance(self.modalities, tuple) or not self.modalities or len(set(self.modalities)) != len(
                self.modalities) or not set(self.modalities) <= set(MODALITIES):
            raise ValueError(f"modalities={self.modalities!r} must be a non-empty tuple of distinct names from "
                             f"{MODALITIES}")
        for name in ("num_classes", "dim", "heads", "fusion_depth", "fusion_tokens", "image_size", "patch_size",
                     "channels", "sound_bins", "sound_frames", "frames_per_token", "vocab_size", "context_length"):
            check_positive(name, getattr(self, name))
        if isinstance(self.unimodal_depth, bool) or not isinstance(self.unimodal_depth, int) or self.unimodal_depth < 0:
            raise ValueError(f"unimodal_depth={self.unimodal_depth!r} must be an int >= 0")
        check_heads(self.dim, self.heads)
        check_positive_number("mlp_ratio", self.mlp_ratio)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        if self.sound_frames % self.frames_per_token:
            raise ValueError(f"sound_frames={self.sound_frames} is not divisible by frames_per_token="
                             f"{self.frames_per_token}")
        if isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int) \
                or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id={self.pad_token_id!r} must be an int in [0, vocab_size={self.vocab_size})")

    def tokens(self, modality: str) -> int:
        """How many tokens `modality` becomes (captions: at most this many)."""
        return {"image": (self.image_size // self.patch_size) ** 2, "sound": self.sound_frames // self.frames_per_token,
                "text": self.context_length}[modality]


def modality_pure_mask(lengths: Sequence[int], fusion_tokens: int) -> Tensor:
    """(L, L) boolean attention mask (True = may attend) over the tokens of each modality in turn, `lengths[m]`
    of modality m, followed by `fusion_tokens` fusion tokens, L = sum(lengths) + fusion_tokens. A modality's
    token attends to its own modality only; a fusion token attends to every token. So no modality's tokens ever
    read another modality, at any depth: Zorro's masks."""
    _check_lengths(lengths)
    if isinstance(fusion_tokens, bool) or not isinstance(fusion_tokens, int) or fusion_tokens < 0:
        raise ValueError(f"fusion_tokens={fusion_tokens!r} must be an int >= 0")
    group = torch.repeat_interleave(torch.arange(len(lengths) + 1), torch.tensor([*lengths, fusion_tokens]))
    is_fusion = group == len(lengths)
    return (group[:, None] == group[None, :]) | is_fusion[:, None]


def attention_pairs(lengths: Sequence[int], fusion: str, fusion_tokens: int = 0) -> int:
    """Query-key pairs one fusion layer scores, for modalities of `lengths` tokens: what its attention costs
    (4 · pairs · dim FLOPs). A mask does not make a dense kernel skip pairs, so "zorro" costs its full sequence.

    early (ΣN)² · zorro (ΣN + F)² · late ΣN² · cross ΣN² + Σ N·(ΣN - N), which is (ΣN)² for two modalities or
    more (a stream alone cross-attends to itself: 2N²) · bottleneck Σ(N + F)²."""
    _check_lengths(lengths)
    if fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r}; expected one of {FUSIONS}")
    if isinstance(fusion_tokens, bool) or not isinstance(fusion_tokens, int) or fusion_tokens < 0:
        raise ValueError(f"fusion_tokens={fusion_tokens!r} must be an int >= 0")
    total, own = sum(lengths), sum(n * n for n in lengths)
    if fusion == "cross":
        return own + (sum(n * (total - n) for n in lengths) if len(lengths) > 1 else own)
    return {"early": total**2, "zorro": (total + fusion_tokens) ** 2, "late": own,
            "bottleneck": sum((n + fusion_tokens) ** 2 for n in lengths)}[fusion]


def drop_modalities(inputs: Mapping[str, Tensor], generator: torch.Generator, p: float = 0.5) -> dict[str, Tensor]:
    """Modality dropout for a training batch: each modality is left out with probability `p`, all of a batch's
    examples alike, never all of them (if every draw says drop, the modality with the highest draw stays).
    As `fit`'s `augment`, it teaches a fusion model to work with whatever modalities arrive."""
    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError(f"inputs must be a non-empty mapping of modalities; got {type(inputs).__name__}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"p={p!r} must be a probability in [0, 1)")
    draws = torch.rand(len(inputs), generator=generator)
    kept = {name: value for (name, value), draw in zip(inputs.items(), draws.tolist()) if draw >= p}
    if not kept:
        name = list(inputs)[int(draws.argmax())]
        kept = {name: inputs[name]}
    return kept


def _check_lengths(lengths: Sequence[int]) -> None:
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Sequence) or not lengths or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in lengths):
        raise ValueError(f"lengths={lengths!r} must be a non-empty sequence of positive ints, one per modality")


class ImageTokenizer(nn.Module):
    """(B, C, H, W) images -> (B, patches, dim): a linear map of each patch, plus a learned position."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.channels, self.image_size = config.channels, config.image_size
        self.embed = nn.Conv2d(config.channels, config.dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.positions = nn.Parameter(torch.zeros(config.tokens("image"), config.dim))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        height, width = check_images(images, self.channels)
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(f"image is {height}x{width}; this model reads image_size={self.image_size} squares")
        tokens = rearrange(self.embed(images), "b d h w -> b (h w) d") + self.positions
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)


class SoundTokenizer(nn.Module):
    """(B, bins, frames) spectrograms -> (B, frames / k, dim): k consecutive frames (every frequency) per token,
    mapped linearly, plus a learned position: the audio counterpart of image patches."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.bins, self.frames, self.per_token = config.sound_bins, config.sound_frames, config.frames_per_token
        self.embed = nn.Linear(config.sound_bins * config.frames_per_token, config.dim)
        self.positions = nn.Parameter(torch.zeros(config.tokens("sound"), config.dim))

    def forward(self, sound: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(sound, Tensor) or sound.dim() != 3 or not sound.is_floating_point() \
                or tuple(sound.shape[1:]) != (self.bins, self.frames) or len(sound) == 0:
            raise ValueError(f"sound must be float spectrograms (batch >= 1, sound_bins={self.bins}, sound_frames="
                             f"{self.frames}); got {getattr(sound, 'dtype', type(sound).__name__)} of shape "
                             f"{tuple(getattr(sound, 'shape', ()))}")
        frames = rearrange(sound, "b f (t k) -> b t (k f)", k=self.per_token)
        tokens = self.embed(frames) + self.positions
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)


class TextTokenizer(nn.Module):
    """(B, L) caption ids -> (B, L, dim) word embeddings plus positions, and (B, L) True where not padding."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.vocab_size, self.context_length, self.pad = config.vocab_size, config.context_length, config.pad_token_id
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.positions = nn.Parameter(torch.zeros(config.context_length, config.dim))

    def forward(self, text: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(text, Tensor) or text.dim() != 2 or text.is_floating_point() or text.dtype == torch.bool \
                or len(text) == 0 or not 1 <= text.shape[1] <= self.context_length:
            raise ValueError(f"text must be integer ids of shape (batch >= 1, length <= context_length="
                             f"{self.context_length}); got {getattr(text, 'dtype', type(text).__name__)} of shape "
                             f"{tuple(getattr(text, 'shape', ()))}")
        if text.min() < 0 or text.max() >= self.vocab_size:
            raise ValueError(f"text holds ids in [{text.min().item()}, {text.max().item()}]; expected ids in "
                             f"[0, vocab_size={self.vocab_size})")
        keep = text != self.pad
        if not keep.any(dim=1).all():
            raise ValueError(f"text rows {(~keep.any(dim=1)).nonzero()[:, 0].tolist()} hold only padding "
                             f"(pad_token_id={self.pad}); leave the modality out instead")
        return self.embed(text) + self.positions[: text.shape[1]], keep


TOKENIZERS = {"image": ImageTokenizer, "sound": SoundTokenizer, "text": TextTokenizer}


def _keys(keep: Tensor) -> Tensor:
    """(B, L) True for real tokens -> (B, 1, 1, L) attention mask: every query may read every real key."""
    return rearrange(keep, "b l -> b 1 1 l")


def _mean(tokens: Tensor, keep: Tensor) -> Tensor:
    """(B, L, dim), (B, L) -> (B, dim) the mean of the real tokens."""
    weights = keep.to(tokens.dtype)[..., None]
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1)


def _mean_over_streams(tokens: dict[str, Tensor], keep: dict[str, Tensor]) -> Tensor:
    """(B, dim): each stream's mean real token, averaged over the streams given."""
    return torch.stack([_mean(tokens[m], keep[m]) for m in tokens]).mean(dim=0)


class FusionModel(nn.Module):
    """Inputs {modality: tensor} -> (B, num_classes) logits, the modalities fused by `config.fusion`."""

    def __init__(self, config: FusionConfig, *, seed: int | None = None) -> None:
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        self.config = c = config

        def blocks(depth: int, **options) -> nn.ModuleList:
            return nn.ModuleList(TransformerBlock(c.dim, c.heads, mlp_ratio=c.mlp_ratio, **options)
                                 for _ in range(depth))

        self.tokenizers = nn.ModuleDict({m: TOKENIZERS[m](c) for m in c.modalities})
        self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(c.dim)) for m in c.modalities})
        self.unimodal = nn.ModuleDict({m: blocks(c.unimodal_depth) for m in c.modalities})
        if c.fusion in ("early", "zorro"):  # one set of blocks over the joint sequence
            self.fusion_blocks = blocks(c.fusion_depth)
        else:  # each stream its own blocks
            self.fusion_blocks = nn.ModuleDict({m: blocks(c.fusion_depth, cross_attention=c.fusion == "cross")
                                                for m in c.modalities})
        if c.fusion in ("zorro", "bottleneck"):
            self.fusion_queries = nn.Parameter(torch.zeros(c.fusion_tokens, c.dim))
        self.norm = LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes)
        self.apply(init_vit_style)
        for parameter in [*self.modality_embed.values(), *(t.positions for t in self.tokenizers.values())]:
            nn.init.normal_(parameter, std=0.02)
        if hasattr(self, "fusion_queries"):
            nn.init.normal_(self.fusion_queries, std=0.02)

    def encode(self, inputs: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """Each given modality's tokens after its own blocks, with its (B, L) mask of real tokens."""
        if not isinstance(inputs, Mapping) or not inputs or not set(inputs) <= set(self.config.modalities):
            raise ValueError(f"inputs must map some of modalities={self.config.modalities} to tensors; got "
                             f"{sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__}")
        streams = {}
        for m in self.config.modalities:  # the configured order, whatever the mapping's
            if m in inputs:
                tokens, keep = self.tokenizers[m](inputs[m])
                tokens = tokens + self.modality_embed[m]
                for block in self.unimodal[m]:
                    tokens = block(tokens, mask=_keys(keep))
                streams[m] = (tokens, keep)
        sizes = {m: len(tokens) for m, (tokens, _) in streams.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"the modalities hold different batch sizes: {sizes}")
        return streams

    def forward(self, inputs: Mapping[str, Tensor], *, return_streams: bool = False
                ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """(B, num_classes) logits; with `return_streams`, also every stream's final tokens by name (and the fusion
        or bottleneck tokens as "fusion")."""
        streams = self.encode(inputs)
        pooled, final = getattr(self, f"_fuse_{self.config.fusion}")(streams)
        logits = self.head(self.norm(pooled))
        return (logits, final) if return_streams else logits

    def _queries(self, batch: int) -> Tensor:
        return repeat(self.fusion_queries, "f d -> b f d", b=batch)

    def _fuse_early(self, streams: dict[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
        x = torch.cat([tokens for tokens, _ in streams.values()], dim=1)
        keep = torch.cat([k for _, k in streams.values()], dim=1)
        for block in self.fusion_blocks:
            x = block(x, mask=_keys(keep))
        return _mean(x, keep), dict(zip(streams, x.split([t.shape[1] for t, _ in streams.values()], dim=1)))

    def _fuse_zorro(self, streams: dict[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
        lengths = [tokens.shape[1] for tokens, _ in streams.values()]
        batch = len(next(iter(streams.values()))[0])
        x = torch.cat([*(tokens for tokens, _ in streams.values()), self._queries(batch)], dim=1)
        keep = torch.cat([*(k for _, k in streams.values()),
                          torch.ones(batch, self.config.fusion_tokens, dtype=torch.bool, device=x.device)], dim=1)
        mask = modality_pure_mask(lengths, self.config.fusion_tokens).to(x.device) & _keys(keep)  # (B, 1, L, L)
        for block in self.fusion_blocks:
            x = block(x, mask=mask)
        parts = x.split([*lengths, self.config.fusion_tokens], dim=1)
        return parts[-1].mean(dim=1), {**dict(zip(streams, parts)), "fusion": parts[-1]}

    def _fuse_late(self, streams: dict[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
        final = {}
        for m, (x, keep) in streams.items():
            for block in self.fusion_blocks[m]:
                x = block(x, mask=_keys(keep))
            final[m] = x
        return _mean_over_streams(final, {m: keep for m, (_, keep) in streams.items()}), final

    def _fuse_cross(self, streams: dict[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
        """Each layer updates every stream at once: self-attention, then cross-attention to the other streams'
        tokens of the previous layer. A stream given alone reads its own tokens in the cross-attention."""
        x = {m: tokens for m, (tokens, _) in streams.items()}
        keep = {m: k for m, (_, k) in streams.items()}
        for layer in range(self.config.fusion_depth):
            updated = {}
            for m in x:
                others = [o for o in x if o != m] or [m]
                context = torch.cat([x[o] for o in others], dim=1)
                context_keep = torch.cat([keep[o] for o in others], dim=1)
                updated[m] = self.fusion_blocks[m][layer](x[m], mask=_keys(keep[m]), context=context,
                                                          context_mask=_keys(context_keep))
            x = updated
        return _mean_over_streams(x, keep), x

    def _fuse_bottleneck(self, streams: dict[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
        """Each stream's blocks read its own tokens and the bottleneck tokens; the streams' updates of the
        bottleneck are averaged after every layer, the only way information crosses between streams."""
        x = {m: tokens for m, (tokens, _) in streams.items()}
        keep = {m: k for m, (_, k) in streams.items()}
        batch, count = len(next(iter(x.values()))), self.config.fusion_tokens
        bottleneck = self._queries(batch)
        for layer in range(self.config.fusion_depth):
            updates = []
            for m in x:
                joint_keep = torch.cat([keep[m], torch.ones(batch, count, dtype=torch.bool, device=keep[m].device)], 1)
                joint = self.fusion_blocks[m][layer](torch.cat([x[m], bottleneck], dim=1), mask=_keys(joint_keep))
                x[m], update = joint[:, :-count], joint[:, -count:]
                updates.append(update)
            bottleneck = torch.stack(updates).mean(dim=0)
        return _mean_over_streams(x, keep), {**x, "fusion": bottleneck}
