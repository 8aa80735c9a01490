"""The caption tokenizer: every caption of the shapes world round-trips, and bad input is refused by name."""

import pytest
import torch

from course_lib.data import load
from course_lib.data.captions import EOT, PAD, SOT, VOCAB, detokenize, tokenize


def test_every_caption_of_the_shapes_world_round_trips():
    scenes = load("shapes", "train", n=200, size=32, max_objects=4, task="count")
    captions = [scenes[i].caption for i in range(len(scenes))]
    tokens = tokenize(captions, context_length=48)
    assert detokenize(tokens) == captions


def test_layout_is_start_words_end_then_padding():
    tokens = tokenize(["a large red circle", "a small blue dotted square"], context_length=9)
    assert tokens.dtype == torch.long and tokens.shape == (2, 9)
    expected = [SOT] + [VOCAB.index(w) for w in "a large red circle".split()] + [EOT, PAD, PAD, PAD]
    assert tokens[0].tolist() == expected
    assert (tokens == EOT).sum(dim=1).tolist() == [1, 1]
    assert EOT != 2  # Hugging Face's CLIP reads an end-of-text id of 2 by its legacy argmax rule


def test_semicolons_are_words():
    tokens = tokenize(["a red circle; also a blue cross"], context_length=12)
    assert VOCAB.index(";") in tokens[0].tolist()
    assert detokenize(tokens) == ["a red circle; also a blue cross"]


@pytest.mark.parametrize("captions, context_length, message", [
    (["a purple circle"], 16, "purple"),
    (["a large red striped circle left of a small blue square"], 8, "context_length=8"),
    ("a red circle", 16, "sequence of strings"),
    ([], 16, "non-empty"),
    (["a red circle"], 2, "context_length"),
])
def test_bad_input_is_refused_by_name(captions, context_length, message):
    with pytest.raises(ValueError, match=message):
        tokenize(captions, context_length=context_length)
