"""Long Range Arena style datasets: ListOps (`load("listops")`) and Pathfinder (`load("pathfinder")`).

Every label is recomputed here by a second, independent route: ListOps by evaluating the decoded
text as a Python expression, Pathfinder by connected components of the pixels alone (scipy).
"""

from __future__ import annotations

import hashlib
import statistics

import numpy as np
import pytest
import torch
from scipy import ndimage

from course_lib.data import ListOpsDataset, PathfinderDataset, available, load
from course_lib.data import long_range as lr

torch.set_num_threads(1)


# --- ListOps --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def listops():
    return load("listops", n=1000, seed=0)


def python_value(text: str) -> int:
    """A second evaluator: '[MAX 2 [SM 4 7 ] ]' -> 'MAX(2,SM(4,7,),)' evaluated by Python."""
    functions = {"MAX": lambda *a: max(a), "MIN": lambda *a: min(a),
                 "MED": lambda *a: statistics.median_low(a), "SM": lambda *a: sum(a) % 10}
    words = [w[1:] + "(" if w.startswith("[") else ")," if w == "]" else w + "," for w in text.split()]
    return eval("".join(words).rstrip(","), {"__builtins__": {}}, functions)


def structure(text: str) -> tuple[int, list[int]]:
    """The nesting depth of an expression and the argument count of each operator."""
    depth, deepest, counts, open_counts = 0, 0, [], []
    for word in text.split():
        if word.startswith("["):
            if open_counts:
                open_counts[-1] += 1
            depth, deepest = depth + 1, max(deepest, depth + 1)
            open_counts.append(0)
        elif word == "]":
            depth -= 1
            counts.append(open_counts.pop())
        else:
            open_counts[-1] += 1
    return deepest, counts


def test_vocabulary_and_the_example():
    text = "[MAX 2 9 [MIN 4 7 ] 0 ]"
    tokens = lr.encode(text)
    assert tokens == [11, 3, 10, 12, 5, 8, 15, 1, 15] and lr.decode(tokens) == text
    assert lr.evaluate(tokens) == 9 == python_value(text)
    assert lr.decode(torch.tensor(tokens + [0, 0])) == text and lr.evaluate(tokens + [0, 0]) == 9
    assert len(lr.VOCAB) == ListOpsDataset.vocab_size == 16 and lr.VOCAB[lr.PAD] == "<pad>"


@pytest.mark.parametrize(("text", "value"), [
    ("[MED 7 1 4 2 ]", 2), ("[MED 3 8 5 ]", 5), ("[SM 9 8 7 ]", 4), ("[MIN 3 [MAX 0 8 ] ]", 3),
    ("[SM [MED 1 9 ] [MIN 5 6 ] 0 ]", 6),
])
def test_evaluate_each_operator(text, value):
    assert lr.evaluate(lr.encode(text)) == value == python_value(text)


@pytest.mark.parametrize("text", ["[MAX 1 2", "[MAX ]", "]", "4", "[MIN 1 2 ] 3", "[SM 1 ] ]"])
def test_evaluate_rejects_malformed_expressions(text):
    with pytest.raises(ValueError):
        lr.evaluate(lr.encode(text))


def test_encode_rejects_unknown_words():
    with pytest.raises(ValueError, match="MEAN"):
        lr.encode("[MEAN 1 2 ]")


def test_every_label_is_the_value_of_its_expression(listops):
    for i in range(len(listops)):
        tokens, label = listops[i]
        assert lr.evaluate(tokens) == label.item(), listops.text(i)
    for i in range(0, len(listops), 5):  # the second, independent evaluator on a fifth of them
        assert python_value(listops.text(i)) == listops.labels[i].item(), listops.text(i)


def test_labels_are_balanced(listops):
    share = torch.bincount(listops.labels, minlength=10).float() / len(listops)
    assert share.min() > 0.06 and share.max() < 0.14, share


@pytest.mark.parametrize("options", [
    {},
    {"max_depth": 1, "max_args": 4, "min_length": 4, "max_length": 6},
    {"max_depth": 2, "max_args": 3, "min_length": 5, "max_length": 20},
    {"max_depth": 8, "max_args": 10, "min_length": 300, "max_length": 400},
])
def test_lengths_depth_and_arguments_stay_in_bounds(options):
    dataset = load("listops", n=60 if options else 200, **options)
    full = {"max_depth": 5, "max_args": 5, "min_length": 32, "max_length": 128, **options}
    assert dataset.inputs.shape == (len(dataset), full["max_length"])
    depths = []
    for i in range(len(dataset)):
        row = dataset.inputs[i]
        length = int((row != lr.PAD).sum())
        assert length == dataset.lengths[i] and (row[length:] == lr.PAD).all(), "padding only at the end"
        assert full["min_length"] <= length <= full["max_length"]
        depth, counts = structure(dataset.text(i))
        assert 1 <= depth <= full["max_depth"] and 2 <= min(counts) and max(counts) <= full["max_args"]
        assert lr.evaluate(row) == dataset.labels[i]
        depths.append(depth)
    if not options:
        assert max(depths) == full["max_depth"], "deep trees occur"
        lengths = dataset.lengths.float()
        assert lengths.min() < 45 and lengths.max() > 115, "lengths spread over the allowed range"


def test_listops_same_seed_split_index_gives_the_same_expression():
    small, large = load("listops", n=5, seed=3), load("listops", n=50, seed=3)
    assert torch.equal(small.inputs, large.inputs[:5]) and torch.equal(small.labels, large.labels[:5])
    assert not torch.equal(load("listops", n=50, seed=4).inputs, large.inputs)


@pytest.mark.parametrize("options", [
    {"n": 300},
    {"n": 200, "max_depth": 1, "max_args": 3, "min_length": 4, "max_length": 5},  # ~2,000 expressions in all
])
def test_listops_splits_never_share_an_expression(options):
    seen = {split: {lr.decode(row) for row in load("listops", split=split, **options).inputs}
            for split in ("train", "val", "test")}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    if "max_depth" in options:
        assert len(seen["train"]) < options["n"], "a space this small repeats within a split"


def test_listops_dataset_shapes_dtypes_and_repr(listops):
    tokens, label = listops[0]
    assert tokens.dtype == label.dtype == torch.int64 and tokens.shape == (128,) and label.dim() == 0
    assert listops.inputs.min() >= 0 and listops.inputs.max() < listops.vocab_size
    assert listops.num_classes == 10 and listops.seq_len == 128 and len(listops) == 1000
    assert repr(listops) == "ListOpsDataset(split='train', n=1000, length=128, max_depth=5, vocab_size=16)"


@pytest.mark.parametrize(("options", "message"), [
    ({"n": 0}, "n=0"), ({"max_depth": 0}, "max_depth=0"), ({"max_args": 1}, "max_args=1"),
    ({"min_length": 3}, "min_length=3"), ({"min_length": 40, "max_length": 30}, "max_length=30"),
    ({"seed": -1}, "seed=-1"), ({"n": 2.5}, "n=2.5"), ({"split": "dev"}, "split='dev'"),
    ({"max_depth": 1, "max_args": 5, "min_length": 8}, "min_length=8 is out of reach"),
    ({"max_length": True}, "max_length=True"),
])
def test_listops_bad_arguments_raise_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        load("listops", **options)


# --- Pathfinder -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pathfinder():
    return load("pathfinder", n=400, seed=0)


def connectivity(image: np.ndarray, bridge: bool = True) -> tuple[bool, int, int]:
    """From the pixels alone: are both dots in one path, how many paths, how many dot pixels.

    Ink pixels are linked when at most 3 apart (Chebyshev): grow every pixel by one on each side,
    then 8-connected components. Without `bridge`, plain 8-connectivity, which stops at a dash gap.
    """
    ink = image > 0
    grown = ndimage.binary_dilation(ink, structure=np.ones((3, 3))) if bridge else ink
    components, count = ndimage.label(grown, structure=np.ones((3, 3)))
    dots = image == 1.0
    return len(set(components[dots].tolist())) == 1, count, int(dots.sum())


@pytest.mark.parametrize(("options", "paths"), [({}, 3), ({"size": 48, "distractors": 3}, 4),
                                                ({"distractors": 1, "path_length": 12}, 2)])
def test_every_label_matches_an_independent_connectivity_check(options, paths):
    dataset = load("pathfinder", n=120, **options) if options else load("pathfinder", n=400)
    for i in range(len(dataset)):
        image, label = dataset[i]
        joined, count, dot_pixels = connectivity(image[0].numpy())
        assert joined == bool(label), f"sample {i}: the construction and the pixels disagree"
        assert count == paths and dot_pixels == 18, (i, count, dot_pixels)
        assert set((image * 255).round().unique().tolist()) <= {0, lr.PATH_LEVEL, lr.DOT_LEVEL}


def test_dash_gaps_stop_a_plain_flood_fill(pathfinder):
    """Without bridging the dash gaps, the dots of a positive image are (almost) never connected."""
    positives = [i for i in range(len(pathfinder)) if pathfinder.labels[i] == 1]
    joined = sum(connectivity(pathfinder.images[i, 0].numpy(), bridge=False)[0] for i in positives)
    assert joined <= 0.02 * len(positives), joined


def test_classes_do_not_differ_in_dot_distance_or_ink(pathfinder):
    """The shortcuts a model could take without following a path are closed: same statistics."""
    images, labels = pathfinder.images[:, 0], pathfinder.labels.bool()
    distances = []
    for image in images.numpy():
        blobs, _ = ndimage.label(image == 1.0)
        (y0, x0), (y1, x1) = ndimage.center_of_mass(image == 1.0, blobs, [1, 2])
        distances.append(np.hypot(x1 - x0, y1 - y0))
    distances = torch.tensor(distances)
    assert abs(distances[labels].mean() - distances[~labels].mean()) < 1.5
    ink = (images > 0).flatten(1).sum(1).float()
    assert abs(ink[labels].mean() - ink[~labels].mean()) < 3


def test_pathfinder_same_seed_split_index_gives_the_same_image():
    small, large = load("pathfinder", n=6, seed=3), load("pathfinder", n=40, seed=3)
    assert torch.equal(small.pixels, large.pixels[:6]) and torch.equal(small.labels, large.labels[:6])
    images, labels = lr.render_pathfinder([17], seed=3)
    assert torch.equal(images[0], large.pixels[17]) and labels[0] == large.labels[17]
    assert not torch.equal(load("pathfinder", n=40, seed=4).pixels, large.pixels)


def test_pathfinder_splits_never_share_an_image():
    def hashes(dataset):
        return {hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in dataset.pixels}

    seen = [hashes(load("pathfinder", split=split, n=300)) for split in ("train", "val", "test")]
    assert all(len(h) == 300 for h in seen), "an image repeats within a split"
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_images_and_pixel_tokens_agree(pathfinder):
    images, tokens = pathfinder.images, pathfinder.tokens
    assert images.shape == (400, 1, 32, 32) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() == 1
    assert tokens.shape == (400, 32 * 32) and tokens.dtype == torch.int64 and tokens.max() < pathfinder.vocab_size
    assert torch.equal(tokens, (images * 255).round().long().flatten(1))  # row by row
    assert torch.equal(tokens[5].view(32, 32)[7], (images[5, 0, 7] * 255).round().long())
    sequence, label = pathfinder.as_tokens()[3]
    assert torch.equal(sequence, tokens[3]) and label == pathfinder.labels[3]
    image, label = pathfinder[3]
    assert image.shape == (1, 32, 32) and label.dtype == torch.int64
    assert pathfinder.num_classes == 2 and 0.4 < pathfinder.labels.float().mean() < 0.6
    assert repr(pathfinder) == "PathfinderDataset(split='train', n=400, size=32, distractors=2)"


def test_two_thousand_images_at_size_32():
    dataset = load("pathfinder", n=2000, size=32)
    assert dataset.images.shape == (2000, 1, 32, 32) and dataset.tokens.shape == (2000, 1024)
    assert 0.45 < dataset.labels.float().mean() < 0.55


@pytest.mark.parametrize(("options", "message"), [
    ({"n": 0}, "n=0"), ({"size": 8}, "size=8"), ({"distractors": 0}, "distractors=0"),
    ({"distractors": 9}, "distractors=9"), ({"path_length": 4}, "path_length=4"),
    ({"path_length": 80}, "path_length=80"), ({"seed": -2}, "seed=-2"), ({"split": "dev"}, "split='dev'"),
    ({"size": 16, "distractors": 8, "path_length": 32}, "could not place"),
    ({"dots": 3}, "no option dots"),
])
def test_pathfinder_bad_arguments_raise_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        load("pathfinder", n=4, **options) if "n" not in options else load("pathfinder", **options)


def test_both_datasets_are_registered():
    assert {"listops", "pathfinder"} <= set(available())
    assert isinstance(load("listops", n=2), ListOpsDataset) and isinstance(load("pathfinder", n=2), PathfinderDataset)
