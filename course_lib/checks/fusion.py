"""Checkers for the exercises of notebook 16_fusion: Zorro's modality-pure attention mask, the attention cost of
each fusion design, and modality dropout.

The references are the packaged functions of `course_lib.models.fusion`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.models.fusion import attention_pairs as reference_attention_pairs
from course_lib.models.fusion import drop_modalities as reference_drop_modalities
from course_lib.models.fusion import modality_pure_mask as reference_mask

# --- modality_pure_mask(lengths, fusion_tokens) -------------------------------------------------------------------


def _mask_cases() -> list[Case]:
    return [Case("lengths [2, 3], 2 fusion tokens", ([2, 3], 2)), Case("lengths [1, 1, 2], 1 fusion token", ([1, 1, 2], 1)),
            Case("lengths [4, 2, 3], 3 fusion tokens", ([4, 2, 3], 3)), Case("one modality of 3, no fusion token", ([3], 0))]


def _groups(lengths: list[int], fusion_tokens: int) -> Tensor:
    return torch.repeat_interleave(torch.arange(len(lengths) + 1), torch.tensor([*lengths, fusion_tokens]))


def _mask_fusion_reads_itself_only(lengths: list[int], fusion_tokens: int) -> Tensor:
    group = _groups(lengths, fusion_tokens)
    return group[:, None] == group[None, :]


def _mask_modalities_read_fusion(lengths: list[int], fusion_tokens: int) -> Tensor:
    group = _groups(lengths, fusion_tokens)
    fusion = group == len(lengths)
    return (group[:, None] == group[None, :]) | fusion[:, None] | fusion[None, :]


def _mask_transposed(lengths: list[int], fusion_tokens: int) -> Tensor:
    return reference_mask(lengths, fusion_tokens).T.contiguous()


modality_pure_mask = FunctionChecker(
    "modality_pure_mask",
    reference_mask,
    _mask_cases,
    mistakes=[
        (_mask_fusion_reads_itself_only, "the fusion tokens attend only to each other; they must read every token, "
         "or nothing is fused."),
        (_mask_modalities_read_fusion, "the modalities' tokens also read the fusion tokens, which have read the other "
         "modalities: the streams are no longer pure. Only the fusion tokens' rows are all True."),
        (_mask_transposed, "the mask is transposed: rows are queries, so it is the fusion tokens' rows (not columns) "
         "that are all True."),
    ],
    hint="group = torch.repeat_interleave(torch.arange(M + 1), torch.tensor([*lengths, fusion_tokens])); "
         "(group[:, None] == group[None, :]) | (group == M)[:, None]",
)


# --- attention_pairs(lengths, fusion, fusion_tokens) ----------------------------------------------------------------


def _pairs_cases() -> list[Case]:
    cases = []
    for lengths, tokens in (([16, 15], 4), ([64, 30], 4), ([5, 7, 9], 2)):
        for fusion in ("early", "zorro", "late", "cross", "bottleneck"):
            cases.append(Case(f"lengths {lengths}, {fusion!r}, {tokens} fusion tokens", (lengths, fusion, tokens)))
    return cases


def _pairs_without_fusion_tokens(lengths: list[int], fusion: str, fusion_tokens: int) -> int:
    return reference_attention_pairs(lengths, fusion, 0)


def _pairs_cross_only(lengths: list[int], fusion: str, fusion_tokens: int) -> int:
    if fusion == "cross":
        return sum(n * (sum(lengths) - n) for n in lengths)
    return reference_attention_pairs(lengths, fusion, fusion_tokens)


def _pairs_bottleneck_apart(lengths: list[int], fusion: str, fusion_tokens: int) -> int:
    if fusion == "bottleneck":
        return sum(n * n for n in lengths) + fusion_tokens**2
    return reference_attention_pairs(lengths, fusion, fusion_tokens)


attention_pairs = FunctionChecker(
    "attention_pairs",
    reference_attention_pairs,
    _pairs_cases,
    mistakes=[
        (_pairs_without_fusion_tokens, "the fusion (or bottleneck) tokens are left out; they are queries and keys "
         "like any other token."),
        (_pairs_cross_only, "'cross' counts only the cross-attention; each stream also attends to itself first."),
        (_pairs_bottleneck_apart, "'bottleneck' scores each stream's tokens and the bottleneck tokens together, "
         "(N + F)² per stream."),
    ],
    hint="total = sum(lengths); early total², zorro (total + F)², late Σ N², cross Σ N² + Σ N·(total − N), "
         "bottleneck Σ (N + F)²",
)


# --- drop_modalities(inputs, generator, p) --------------------------------------------------------------------------


class _KeptModalities(FunctionChecker):
    """Compares the names of the kept modalities, each call with a fresh generator from the case's seed."""

    def __call__(self, function: Callable) -> bool:
        return super().__call__(lambda inputs, seed, p: list(function(inputs, torch.Generator().manual_seed(seed), p)))


def _dropout_cases() -> list[Case]:
    inputs = {"image": torch.zeros(2, 3, 4, 4), "sound": torch.zeros(2, 5, 6), "text": torch.zeros(2, 6, dtype=torch.long)}
    cases = [Case(f"three modalities, generator seed {seed}, p {p}", (inputs, seed, p))
             for seed, p in ((0, 0.5), (1, 0.5), (2, 0.3), (3, 0.0), (4, 0.9), (5, 0.9), (6, 0.9), (7, 0.7))]
    return cases + [Case("image and sound, seed 8, p 0.95", ({k: inputs[k] for k in ("image", "sound")}, 8, 0.95))]


def _reference_kept(inputs: dict, seed: int, p: float) -> list[str]:
    return list(reference_drop_modalities(inputs, torch.Generator().manual_seed(seed), p))


def _kept_may_be_empty(inputs: dict, seed: int, p: float) -> list[str]:
    draws = torch.rand(len(inputs), generator=torch.Generator().manual_seed(seed))
    return [name for name, draw in zip(inputs, draws.tolist()) if draw >= p]


def _kept_below_p(inputs: dict, seed: int, p: float) -> list[str]:
    draws = torch.rand(len(inputs), generator=torch.Generator().manual_seed(seed))
    return [name for name, draw in zip(inputs, draws.tolist()) if draw < p] or [list(inputs)[int(draws.argmin())]]


def _kept_first_when_empty(inputs: dict, seed: int, p: float) -> list[str]:
    return _kept_may_be_empty(inputs, seed, p) or [next(iter(inputs))]


drop_modalities = _KeptModalities(
    "drop_modalities",
    _reference_kept,
    _dropout_cases,
    mistakes=[
        (_kept_may_be_empty, "when every draw says drop, nothing is left; keep the modality with the highest draw."),
        (_kept_below_p, "p is the probability of dropping, so a modality stays when its draw is >= p."),
        (_kept_first_when_empty, "when every draw says drop, keep the modality with the highest draw, not the first."),
    ],
    hint="draws = torch.rand(len(inputs), generator=generator); keep the names whose draw >= p; if none, the one "
         "at draws.argmax()",
)
