"""Next-scale prediction: a transformer that writes an image's multi-scale codes one whole scale at a time (VAR,
"Visual Autoregressive Modeling: Scalable Image Generation via Next-Scale Prediction"; the multi-scale mechanism of
"OneCAT: Decoder-Only Auto-Regressive Model for Unified Understanding and Generation"; notebook 22).

The tokens come from notebook 20's multi-scale quantiser (`VQVAE(quantizer="multiscale")`): a 1 x 1 code map,
then 2 x 2, then 4 x 4, each coding what the coarser ones left over. A raster model would write the 21 codes one
at a time; here every code of a scale is predicted at once, from what the coarser scales have drawn so far. The
input for scale k is the latent map rebuilt from scales 0..k-1 (`MultiScaleVQ.lookup`), averaged down to scale
k's size; scale 0's single input is the class embedding. Attention is block-causal: a token reads its own scale
and every coarser one (the mixed-modal mask with one block per scale). Sampling takes one forward pass per scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from course_lib.diffusion import guide
from course_lib.models._common import check_heads, check_positive, check_positive_ints
from course_lib.nn import LayerNorm, TransformerBlock, mixed_modal_mask
from course_lib.nn.quantize import MultiScaleVQ

__all__ = ["NextScaleConfig", "NextScaleTransformer", "next_scale_inputs"]


@dataclass(frozen=True)
class NextScaleConfig:
    """Code maps at `scales` over a codebook of `codebook_size` codewords `code_dim` wide, `num_classes` labels
    (plus "no label", id `num_classes`, for guidance), `depth` blocks of width `dim`."""

    scales: tuple[int, ...] = (1, 2, 4)
    codebook_size: int = 64
    code_dim: int = 16
    num_classes: int = 12
    dim: int = 96
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        scales = check_positive_ints("scales", self.scales)
        if list(scales) != sorted(set(scales)):
            raise ValueError(f"scales={self.scales!r} must be increasing")
        for name in ("codebook_size", "code_dim", "num_classes", "dim", "depth", "heads"):
            check_positive(name, getattr(self, name))
        check_heads(self.dim, self.heads)

    @property
    def tokens(self) -> int:
        return sum(s * s for s in self.scales)


def next_scale_inputs(quantizer: MultiScaleVQ, codes: list[Tensor]) -> Tensor:
    """(B, tokens − 1, code_dim): for every scale after the first, the latent map rebuilt from the coarser scales'
    `codes`, averaged down to that scale, its positions row by row. With the codes of the first k scales, the
    inputs of scales 1..k."""
    inputs = []
    for k in range(1, min(len(codes), len(quantizer.scales) - 1) + 1):
        so_far = quantizer.lookup(codes[:k])  # (B, D, H, W)
        inputs.append(rearrange(F.adaptive_avg_pool2d(so_far, quantizer.scales[k]), "b d h w -> b (h w) d"))
    return torch.cat(inputs, dim=1)


class NextScaleTransformer(nn.Module):
    """(labels (B,), inputs (B, n − 1, code_dim) from `next_scale_inputs`) -> (B, n, codebook_size) logits of every
    code of the first scales, n up to `tokens`: position 0 reads the label, the others their inputs."""

    def __init__(self, config: NextScaleConfig) -> None:
        super().__init__()
        self.config = c = config
        self.label_embed = nn.Embedding(c.num_classes + 1, c.dim)
        self.project = nn.Linear(c.code_dim, c.dim)
        self.positions = nn.Parameter(torch.randn(c.tokens, c.dim) * 0.02)
        self.scale_embed = nn.Embedding(len(c.scales), c.dim)
        scale_of_token = torch.repeat_interleave(torch.arange(len(c.scales)), torch.tensor([s * s for s in c.scales]))
        self.register_buffer("scale_of_token", scale_of_token, persistent=False)
        self.blocks = nn.ModuleList(TransformerBlock(c.dim, c.heads, mlp_ratio=c.mlp_ratio) for _ in range(c.depth))
        self.norm = LayerNorm(c.dim)
        self.to_codes = nn.Linear(c.dim, c.codebook_size)

    def forward(self, labels: Tensor, inputs: Tensor) -> Tensor:
        c = self.config
        if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point() or len(labels) == 0 \
                or labels.min() < 0 or labels.max() > c.num_classes:
            raise ValueError(f"labels must be (batch,) integer ids in [0, num_classes={c.num_classes}] "
                             f"({c.num_classes}: no label); got {getattr(labels, 'dtype', type(labels))} of shape "
                             f"{tuple(getattr(labels, 'shape', ()))}")
        if not isinstance(inputs, Tensor) or inputs.dim() != 3 or inputs.shape[0] != len(labels) \
                or inputs.shape[2] != c.code_dim or inputs.shape[1] >= c.tokens:
            raise ValueError(f"inputs has shape {tuple(getattr(inputs, 'shape', ()))}; expected ({len(labels)}, fewer "
                             f"than tokens={c.tokens}, code_dim={c.code_dim})")
        n = inputs.shape[1] + 1
        x = torch.cat([self.label_embed(labels)[:, None], self.project(inputs)], dim=1)
        scale = self.scale_of_token[:n]
        x = x + self.positions[:n] + self.scale_embed(scale)
        mask = mixed_modal_mask(scale + 1)  # one block per scale: block-causal
        for block in self.blocks:
            x = block(x, mask=mask)
        return self.to_codes(self.norm(x))

    def loss(self, labels: Tensor, codes: list[Tensor], quantizer: MultiScaleVQ, *, drop_label: float = 0.0,
             generator: torch.Generator | None = None) -> Tensor:
        """Cross-entropy of every scale's codes given the label and the coarser scales (teacher forcing); each label
        is replaced by "no label" with probability `drop_label`, so the model also learns what guidance needs."""
        if not 0 <= drop_label < 1:
            raise ValueError(f"drop_label={drop_label!r} must lie in [0, 1)")
        if drop_label > 0:
            dropped = torch.rand(len(labels), generator=generator).to(labels.device) < drop_label
            labels = labels.masked_fill(dropped, self.config.num_classes)
        logits = self(labels, next_scale_inputs(quantizer, codes))
        targets = torch.cat([rearrange(code, "b h w -> b (h w)") for code in codes], dim=1)
        return F.cross_entropy(rearrange(logits, "b n k -> (b n) k"), rearrange(targets, "b n -> (b n)"))

    @torch.no_grad()
    def generate(self, labels: Tensor, quantizer: MultiScaleVQ, *, guidance: float = 1.0, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> list[Tensor]:
        """Code maps [(B, s, s) per scale] for `labels`, one forward pass per scale, each code sampled from the
        (guided) softmax at `temperature`: logits_u + guidance · (logits_c − logits_u) with the "no label" id."""
        if not temperature > 0 or not guidance >= 0:
            raise ValueError(f"temperature={temperature!r} must be > 0 and guidance={guidance!r} >= 0")
        c, codes, done = self.config, [], 0
        generator = generator or torch.Generator().manual_seed(0)
        null = torch.full_like(labels, c.num_classes)
        for scale in c.scales:
            inputs = next_scale_inputs(quantizer, codes) if codes else \
                torch.zeros(len(labels), 0, c.code_dim, device=labels.device)
            if guidance == 1:
                logits = self(labels, inputs)
            else:
                conditional, unconditional = self(torch.cat([labels, null]), torch.cat([inputs, inputs])).chunk(2)
                logits = guide(conditional, unconditional, guidance)
            probabilities = torch.softmax(logits[:, done: done + scale * scale] / temperature, dim=-1)
            drawn = torch.multinomial(rearrange(probabilities, "b n k -> (b n) k").cpu(), 1, generator=generator)
            codes.append(rearrange(drawn.to(labels.device), "(b h w) 1 -> b h w", b=len(labels), h=scale))
            done += scale * scale
        return codes
