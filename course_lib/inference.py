"""Serving a transformer cheaply (notebook 26): batches padded or packed, the rule of speculative decoding, and
early exit and elastic depth for a ViT classifier.

Batching. Documents of different lengths either go one per row, right-padded to the longest (`pad_batch`), or
are packed back to back into rows of a fixed length by first-fit-decreasing bin packing (`pack_documents`), with
segment ids that `GPT.forward(tokens, segments=...)` turns into a block-diagonal causal mask and positions that
restart at each document. `padding_fraction` and `masked_attention_fraction` say how much of either batch's
compute is wasted.

Speculative decoding. `acceptance_probability` and `residual_distribution` are the two halves of the rule that
`course_lib.models.speculative` applies: keep a drafted token with probability min(1, p/q), else redraw from
max(p − q, 0) normalised.

Early exit and elastic depth. A ViT's own final norm and head, read after every block, give one exit per depth
(`depth_logits`, no new weights). Training every exit (`ElasticDepth` with `every_depth_loss`) makes each one
usable; then `early_exit` stops each image at the first exit confident enough, and `truncated_logits` runs a fixed
number of blocks (elastic depth).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.models._common import check_positive
from course_lib.models.gpt import document_mask, document_positions
from course_lib.models.vit import ViT

__all__ = ["ElasticDepth", "acceptance_probability", "depth_logits", "document_mask", "document_positions",
           "early_exit", "every_depth_loss", "exit_depth", "masked_attention_fraction", "pack_documents",
           "pad_batch", "padding_fraction", "residual_distribution", "truncated_logits"]


# ----------------------------------------------------------------------------------------------
# Batching: padding versus packing


def _check_documents(documents: Sequence[Tensor]) -> list[int]:
    """Raise unless `documents` is a non-empty list of non-empty 1-D integer tensors; return their lengths."""
    if not isinstance(documents, (list, tuple)) or not documents:
        raise ValueError(f"documents must be a non-empty list of 1-D token tensors; got {type(documents).__name__} "
                         f"of length {len(documents) if hasattr(documents, '__len__') else '?'}")
    for i, document in enumerate(documents):
        if not isinstance(document, Tensor) or document.dim() != 1 or document.numel() == 0 \
                or document.is_floating_point() or document.is_complex() or document.dtype == torch.bool:
            raise ValueError(f"documents[{i}] must be a non-empty 1-D integer tensor of tokens; got "
                             f"{getattr(document, 'dtype', type(document).__name__)} of shape "
                             f"{tuple(getattr(document, 'shape', ()))}")
    return [len(document) for document in documents]


def pad_batch(documents: Sequence[Tensor], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """One document per row, right-padded with `pad_id` to the longest: (B, Lmax) tokens and (B,) lengths."""
    lengths = _check_documents(documents)
    tokens = documents[0].new_full((len(documents), max(lengths)), pad_id)
    for row, document in enumerate(documents):
        tokens[row, : len(document)] = document
    return tokens, torch.tensor(lengths, device=tokens.device)


def pack_documents(documents: Sequence[Tensor], length: int, pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """First-fit-decreasing packing of whole documents into rows of `length` tokens: (rows, length) tokens and
    (rows, length) segment ids for `GPT.forward(tokens, segments=...)`.

    Longest first, each document goes into the first row with room for it (ties keep the input order). Within a
    row the documents' segment ids are 0, 1, 2, ...; the unused tail is filled with `pad_id` and gets one more id,
    a segment of its own, so it never reads a real document (and its logits are to be ignored)."""
    lengths = _check_documents(documents)
    check_positive("length", length)
    if max(lengths) > length:
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        raise ValueError(f"documents[{longest}] has {lengths[longest]} tokens, more than a row's length={length}; "
                         "split it or use longer rows")
    rows: list[list[int]] = []  # the documents of each row, in the order they were placed
    room: list[int] = []  # free slots left in each row
    for i in sorted(range(len(documents)), key=lambda i: -lengths[i]):
        fits = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if fits is None:
            rows.append([])
            room.append(length)
            fits = len(rows) - 1
        rows[fits].append(i)
        room[fits] -= lengths[i]
    tokens = documents[0].new_full((len(rows), length), pad_id)
    segments = torch.empty(len(rows), length, dtype=torch.long, device=tokens.device)
    for r, members in enumerate(rows):
        start = 0
        for segment, i in enumerate(members):
            tokens[r, start : start + lengths[i]] = documents[i]
            segments[r, start : start + lengths[i]] = segment
            start += lengths[i]
        segments[r, start:] = len(members)  # the padding: a segment of its own
    return tokens, segments


def _check_lengths(lengths: Tensor | Sequence[int], row_length: int, rows: int | None) -> tuple[list[int], int]:
    values = lengths.tolist() if isinstance(lengths, Tensor) else lengths
    if not isinstance(values, (list, tuple)) or not values \
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in values):
        raise ValueError(f"lengths={values!r} must be a non-empty 1-D list or tensor of positive ints")
    check_positive("row_length", row_length)
    if max(values) > row_length:
        raise ValueError(f"a length of {max(values)} exceeds row_length={row_length}")
    rows = len(values) if rows is None else rows
    check_positive("rows", rows)
    if sum(values) > rows * row_length:
        raise ValueError(f"{sum(values)} tokens do not fit in rows={rows} of row_length={row_length}")
    return list(values), rows


def padding_fraction(lengths: Tensor | Sequence[int], row_length: int, rows: int | None = None) -> float:
    """The fraction of the rows · row_length token slots that hold padding, not a document's token: the compute a
    batch wastes in every per-token layer. `rows` defaults to one row per document (a padded batch)."""
    values, rows = _check_lengths(lengths, row_length, rows)
    return 1.0 - sum(values) / (rows * row_length)


def masked_attention_fraction(lengths: Tensor | Sequence[int], row_length: int, rows: int | None = None) -> float:
    """The fraction of the causal query-key pairs that dense attention over the rows computes and then masks away
    (padding, or another document of a packed row): 1 − Σ L(L+1)/2 / (rows · T(T+1)/2) with T = row_length."""
    values, rows = _check_lengths(lengths, row_length, rows)
    useful = sum(n * (n + 1) // 2 for n in values)
    return 1.0 - useful / (rows * row_length * (row_length + 1) // 2)


# ----------------------------------------------------------------------------------------------
# Speculative decoding: the acceptance rule


def _check_distributions(**distributions: Tensor) -> None:
    shapes = {name: tuple(getattr(value, "shape", ())) for name, value in distributions.items()}
    for name, value in distributions.items():
        if not isinstance(value, Tensor) or value.dim() != 1 or not value.is_floating_point() or value.numel() == 0:
            raise ValueError(f"{name} must be a 1-D float tensor of probabilities over the vocabulary; got "
                             f"{getattr(value, 'dtype', type(value).__name__)} of shape {shapes[name]}")
    if len(set(shapes.values())) != 1:
        raise ValueError(f"the distributions must have one size; got shapes {shapes}")


def acceptance_probability(p: Tensor, q: Tensor, token: int) -> Tensor:
    """The probability min(1, p[token] / q[token]) that the target (p) keeps a token the draft (q) proposed: a
    0-dim tensor. Tokens the draft over-proposes are thinned down to the target's rate."""
    _check_distributions(p=p, q=q)
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < len(p):
        raise ValueError(f"token={token!r} must be an int in [0, {len(p)})")
    if not q[token] > 0:
        raise ValueError(f"q[{token}]={q[token].item()} must be positive: the draft proposed this token")
    return (p[token] / q[token]).clamp(max=1.0)


def residual_distribution(p: Tensor, q: Tensor) -> Tensor:
    """max(p − q, 0), normalised: what a rejected token is redrawn from, the target's mass that acceptance
    leaves uncovered. Undefined when p == q (nothing is ever rejected then)."""
    _check_distributions(p=p, q=q)
    residual = (p - q).clamp(min=0)
    if not residual.sum() > 0:
        raise ValueError("p and q are equal: the residual max(p - q, 0) is empty, and no token is ever rejected")
    return residual / residual.sum()


# ----------------------------------------------------------------------------------------------
# Early exit and elastic depth for a ViT classifier


def _check_classifier(model: nn.Module) -> None:
    if not isinstance(model, ViT) or model.head is None:
        raise ValueError(f"model must be a ViT classifier (num_classes > 0); got {type(model).__name__}"
                         + (" without a head" if isinstance(model, ViT) else ""))


def _exit(model: ViT, tokens: Tensor) -> Tensor:
    """(B, T, dim) tokens after any block -> (B, num_classes): the model's own final norm, pooling and head."""
    return model.head(model.pool(model.final_norm(tokens)))


def depth_logits(model: ViT, images: Tensor) -> Tensor:
    """(depth, B, num_classes): the logits read after each block with the model's own final norm and head (the
    exits share them, so no weights are added); the last entry is the model's output."""
    _check_classifier(model)
    x, exits = model.embed(images), []
    for block in model.blocks:
        x = block(x)
        exits.append(_exit(model, x))
    return torch.stack(exits)


def every_depth_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy averaged over every exit of (depth, B, num_classes) logits: trains all depths at once."""
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        raise ValueError(f"logits has shape {tuple(getattr(logits, 'shape', ()))}; expected (depth, batch, classes)")
    if not isinstance(labels, Tensor) or labels.shape != logits.shape[1:2]:
        raise ValueError(f"labels has shape {tuple(getattr(labels, 'shape', ()))}; expected ({logits.shape[1]},)")
    depth = logits.shape[0]
    return F.cross_entropy(logits.flatten(0, 1), labels.repeat(depth))  # mean over exits and images alike


class ElasticDepth(nn.Module):
    """A ViT classifier whose forward returns `depth_logits` (depth, B, num_classes), so that
    `fit(ElasticDepth(vit), images, labels, loss=every_depth_loss, ...)` trains every exit of `vit`."""

    def __init__(self, model: ViT) -> None:
        super().__init__()
        _check_classifier(model)
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return depth_logits(self.model, images)


def _check_depth(model: ViT, depth: int) -> None:
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= len(model.blocks):
        raise ValueError(f"depth={depth!r} must be an int in [1, {len(model.blocks)}] (the model's blocks)")


def truncated_logits(model: ViT, images: Tensor, depth: int) -> Tensor:
    """(B, num_classes) logits of the first `depth` blocks only, read out by the model's own norm and head."""
    _check_classifier(model)
    _check_depth(model, depth)
    x = model.embed(images)
    for block in model.blocks[:depth]:
        x = block(x)
    return _exit(model, x)


def _check_threshold(threshold: float) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
        raise ValueError(f"threshold={threshold!r} must be a real number (a top softmax probability; > 1 never "
                         "exits early, 0 always exits after the first block)")


def exit_depth(confidences: Tensor, threshold: float) -> Tensor:
    """(depth, B) top softmax probabilities per exit -> (B,) the 1-based depth where each image leaves: the first
    whose confidence reaches `threshold`, else the last."""
    if not isinstance(confidences, Tensor) or confidences.dim() != 2 or not confidences.is_floating_point() \
            or confidences.shape[0] == 0:
        raise ValueError(f"confidences must be a (depth, batch) float tensor; got "
                         f"{getattr(confidences, 'dtype', type(confidences).__name__)} of shape "
                         f"{tuple(getattr(confidences, 'shape', ()))}")
    _check_threshold(threshold)
    reached = confidences >= threshold
    reached[-1] = True  # the last exit takes whoever is left
    return reached.int().argmax(dim=0) + 1  # argmax returns the first maximum


@torch.no_grad()
def early_exit(model: ViT, images: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """(B,) predictions and (B,) blocks used: each image leaves after the first block whose exit's top softmax
    probability reaches `threshold`, and only the images still running go through the next block.

    Runs in eval mode (restored afterwards), without gradients."""
    _check_classifier(model)
    _check_threshold(threshold)
    was_training = model.training
    model.eval()
    x = model.embed(images)  # (B, T, dim), then only the rows still running
    running = torch.arange(len(x), device=x.device)  # their indices in the batch
    predictions = torch.empty(len(x), dtype=torch.long, device=x.device)
    used = torch.empty(len(x), dtype=torch.long, device=x.device)
    for depth, block in enumerate(model.blocks, start=1):
        x = block(x)
        confidence, prediction = torch.softmax(_exit(model, x).float(), dim=-1).max(dim=-1)
        leaving = confidence >= threshold if depth < len(model.blocks) else torch.ones_like(confidence, dtype=torch.bool)
        predictions[running[leaving]], used[running[leaving]] = prediction[leaving], depth
        running, x = running[~leaving], x[~leaving]
        if len(running) == 0:
            break
    model.train(was_training)
    return predictions, used
