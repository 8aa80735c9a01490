"""Checkers for the exercises of notebook 22_unified_generation: the mixed causal/bidirectional attention mask,
MaskGIT's choice of the most confident draws, and the inputs of next-scale prediction.

The references are the packaged functions of `course_lib.nn` and `course_lib.models`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.models.masked_diffusion import most_confident as reference_most_confident
from course_lib.models.next_scale import next_scale_inputs as reference_next_scale_inputs
from course_lib.nn import mixed_modal_mask as reference_mixed_modal_mask
from course_lib.nn.quantize import MultiScaleVQ


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(22)


# --- mixed_modal_mask(segments) -------------------------------------------------------------------------------------


def _mask_cases() -> list[Case]:
    layouts = {
        "a caption of 3, then an image of 4": [0, 0, 0, 1, 1, 1, 1],
        "an image of 3, then a caption of 3": [1, 1, 1, 0, 0, 0],
        "text, image, text, another image, text": [0, 1, 1, 0, 2, 2, 2, 0],
        "text only": [0, 0, 0, 0],
        "one image only": [1, 1, 1],
    }
    return [Case(name, (torch.tensor(segments),)) for name, segments in layouts.items()]


def _mask_causal_only(segments: Tensor) -> Tensor:
    return torch.ones(len(segments), len(segments), dtype=torch.bool).tril()


def _mask_text_as_a_block(segments: Tensor) -> Tensor:
    return torch.ones(len(segments), len(segments), dtype=torch.bool).tril() | (segments[:, None] == segments[None, :])


def _mask_images_read_each_other(segments: Tensor) -> Tensor:
    return torch.ones(len(segments), len(segments), dtype=torch.bool).tril() | \
        ((segments[:, None] > 0) & (segments[None, :] > 0))


mixed_modal_mask = FunctionChecker(
    "mixed_modal_mask",
    reference_mixed_modal_mask,
    _mask_cases,
    mistakes=[
        (_mask_causal_only, "the mask is causal everywhere: the patches of one image must also read the later "
         "patches of the same image."),
        (_mask_text_as_a_block, "text tokens (segment 0) read later text tokens: 0 marks a causal token, not a block."),
        (_mask_images_read_each_other, "an image's patches read the later patches of another image; only tokens "
         "with the same block id k > 0 read each other both ways."),
    ],
    hint="earlier = ones(L, L).tril(); same_block = (segments[:, None] == segments[None, :]) & (segments[:, None] > 0); "
         "return earlier | same_block",
)


# --- most_confident(confidence, hidden, count) ----------------------------------------------------------------------


def _confident_cases() -> list[Case]:
    generator = _generator()
    cases = []
    for batch, length in ((2, 5), (3, 8), (1, 6)):
        confidence = torch.rand(batch, length, generator=generator)
        hidden = torch.rand(batch, length, generator=generator) < 0.6
        hidden[:, 0] = True  # the first position is always hidden, the last never
        hidden[:, -1] = False
        count = torch.minimum(torch.randint(0, length, (batch,), generator=generator), hidden.sum(dim=1))
        cases.append(Case(f"{batch} rows of {length} positions, counts {count.tolist()}", (confidence, hidden, count)))
    confidence = torch.tensor([[0.95, 0.2, 0.6, 0.1]])
    cases.append(Case("the most confident position is already revealed",
                      (confidence, torch.tensor([[False, True, True, True]]), torch.tensor([2]))))
    return cases


def _confident_ignoring_hidden(confidence: Tensor, hidden: Tensor, count: Tensor) -> Tensor:
    rank = confidence.argsort(dim=1, descending=True).argsort(dim=1)
    return rank < count[:, None]


def _confident_masked_after(confidence: Tensor, hidden: Tensor, count: Tensor) -> Tensor:
    rank = confidence.argsort(dim=1, descending=True).argsort(dim=1)
    return hidden & (rank < count[:, None])


def _least_confident(confidence: Tensor, hidden: Tensor, count: Tensor) -> Tensor:
    return reference_most_confident(-confidence, hidden, count)


most_confident = FunctionChecker(
    "most_confident",
    reference_most_confident,
    _confident_cases,
    mistakes=[
        (_confident_ignoring_hidden, "positions already revealed are chosen again: only hidden positions compete."),
        (_confident_masked_after, "revealed positions still take part in the ranking, so fewer than count hidden "
         "ones are chosen: give revealed positions -inf before ranking, not after."),
        (_least_confident, "these are the least confident draws; keep the most confident (sort descending)."),
    ],
    hint="competing = confidence.masked_fill(~hidden, -inf); rank = competing.argsort(dim=1, descending=True)"
         ".argsort(dim=1); return hidden & (rank < count[:, None])",
)


# --- next_scale_inputs(quantizer, codes) ----------------------------------------------------------------------------


def _scale_cases() -> list[Case]:
    generator = _generator()
    cases = []
    for scales, batch, known in (((1, 2, 4), 2, 3), ((1, 2, 3, 6), 3, 4), ((1, 3, 6), 1, 2)):
        torch.manual_seed(22)
        quantizer = MultiScaleVQ(scales, codebook_size=5, dim=3).eval()
        codes = [torch.randint(0, 5, (batch, s, s), generator=generator) for s in scales[:known]]
        cases.append(Case(f"scales {scales}, the codes of the first {known}", (quantizer, codes)))
    return cases


def _inputs_built_by(one_scale) -> Callable[[MultiScaleVQ, list[Tensor]], Tensor]:
    """A wrong next_scale_inputs that builds scale k's (B, s_k², D) input with `one_scale(quantizer, codes, k)`."""
    def inputs(quantizer: MultiScaleVQ, codes: list[Tensor]) -> Tensor:
        last = min(len(codes), len(quantizer.scales) - 1)
        return torch.cat([one_scale(quantizer, codes, k) for k in range(1, last + 1)], dim=1)
    return inputs


def _previous_scale_only(quantizer: MultiScaleVQ, codes: list[Tensor], k: int) -> Tensor:
    previous = rearrange(quantizer.quantizer.lookup(codes[k - 1]), "b h w d -> b d h w")
    return rearrange(F.interpolate(previous, size=quantizer.scales[k], mode="bilinear"), "b d h w -> b (h w) d")


def _picked_by_nearest(quantizer: MultiScaleVQ, codes: list[Tensor], k: int) -> Tensor:
    so_far = F.interpolate(quantizer.lookup(codes[:k]), size=quantizer.scales[k], mode="nearest")
    return rearrange(so_far, "b d h w -> b (h w) d")


def _column_major(quantizer: MultiScaleVQ, codes: list[Tensor], k: int) -> Tensor:
    so_far = F.adaptive_avg_pool2d(quantizer.lookup(codes[:k]), quantizer.scales[k])
    return rearrange(so_far, "b d h w -> b (w h) d")


next_scale_inputs = FunctionChecker(
    "next_scale_inputs",
    reference_next_scale_inputs,
    _scale_cases,
    mistakes=[
        (_inputs_built_by(_previous_scale_only), "each input holds only the previous scale's codewords; it must hold "
         "everything drawn so far: quantizer.lookup(codes[:k]) sums the upsampled codewords of scales 0..k-1."),
        (_inputs_built_by(_picked_by_nearest), "the latent map is resampled by picking pixels; average it down to scale k's size "
         "(F.adaptive_avg_pool2d), so that each input sums up the area its token covers."),
        (_inputs_built_by(_column_major), "the positions are read column by column; the tokens of a scale go row by row "
         "(rearrange 'b d h w -> b (h w) d')."),
    ],
    hint="for k in 1 .. min(len(codes), len(scales) - 1): so_far = quantizer.lookup(codes[:k]); pool it to "
         "scales[k] with F.adaptive_avg_pool2d; rearrange 'b d h w -> b (h w) d'; concatenate along dim 1",
)
