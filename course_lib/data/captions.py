"""Words of the shapes world's captions as token ids, for the text encoders of Part IV.

The captions of `course_lib.data.shapes` use a closed vocabulary ("a small red striped circle left of a large
blue square; also ..."), so a word-level tokenizer is exact: every word has its own id, and an unknown word is
an error rather than a guess. A tokenised caption is `<sot> words... <eot>` followed by `<pad>` up to
`context_length`; a text encoder reads its summary at `<eot>`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from course_lib.data.registry import check_int
from course_lib.data.shapes import COLOURS, SHAPES, SIZES

SPECIALS = ("<pad>", "<eot>", "<sot>")  # <eot> is 1: Hugging Face's CLIP treats an end-of-text id of 2 specially
WORDS = ("a", *SIZES, *COLOURS, "striped", "dotted", *SHAPES, "left", "right", "of", "above", "below", ";", "also",
         "and", "thing")
VOCAB = SPECIALS + WORDS
TOKEN_ID = {word: index for index, word in enumerate(VOCAB)}
PAD, EOT, SOT = (TOKEN_ID[s] for s in SPECIALS)

__all__ = ["EOT", "PAD", "SOT", "VOCAB", "detokenize", "tokenize"]


def tokenize(captions: Sequence[str], context_length: int = 16) -> Tensor:
    """(N, context_length) int64 ids: `<sot>`, the words of each caption (';' is a word of its own), `<eot>`,
    then `<pad>`. ValueError for an unknown word or a caption that does not fit."""
    check_int("context_length", context_length, 3)
    if isinstance(captions, str) or not captions:
        raise ValueError(f"captions must be a non-empty sequence of strings; got {captions!r}")
    rows = torch.full((len(captions), context_length), PAD, dtype=torch.long)
    for row, text in enumerate(captions):
        words = text.replace(";", " ; ").split()
        unknown = sorted({w for w in words if w not in TOKEN_ID})
        if unknown:
            raise ValueError(f"caption {text!r} has words outside the vocabulary: {unknown}")
        if len(words) + 2 > context_length:
            raise ValueError(f"caption {text!r} needs {len(words) + 2} tokens; context_length={context_length}")
        ids = [SOT, *(TOKEN_ID[w] for w in words), EOT]
        rows[row, : len(ids)] = torch.tensor(ids)
    return rows


def detokenize(tokens: Tensor) -> list[str]:
    """The captions of (N, L) token ids: the words between `<sot>` and the first `<eot>`."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
        raise ValueError(f"tokens must be an (N, L) integer tensor; got {getattr(tokens, 'shape', type(tokens))}")
    captions = []
    for row in tokens.tolist():
        end = row.index(EOT) if EOT in row else len(row)
        captions.append(" ".join(VOCAB[i] for i in row[:end] if i not in (PAD, SOT)).replace(" ;", ";"))
    return captions
