"""The shapes world (`load("shapes")`), the digits loader and the scene figure helper."""

from __future__ import annotations

import hashlib

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from course_lib.data import load, shapes
from course_lib.viz.scenes import picture_grid, show_scenes


@pytest.fixture(scope="module")
def world():
    return shapes


@pytest.fixture(scope="module")
def plain():
    return load("shapes", split="train", n=150, task="count", max_objects=5)


@pytest.fixture(scope="module")
def noisy():
    return load("shapes", split="val", n=150, task="texture_side", background="noisy")


def image_hashes(dataset) -> set[str]:
    return {hashlib.sha1(dataset.batch["image"][i].numpy().tobytes()).hexdigest() for i in range(len(dataset))}


# --- determinism and splits -------------------------------------------------------------------

def test_same_seed_split_index_gives_identical_tensors(world):
    """Scene i depends on (seed, split, i) only: not on n, nor on the batch it was rendered in."""
    small, large = load("shapes", n=5, seed=3), load("shapes", n=40, seed=3)
    for key in ("image", "semantic", "instance", "depth", "boxes", "label"):
        assert torch.equal(small.batch[key], large.batch[key][:5]), key
    alone = world.render_batch([17], seed=3)
    assert torch.equal(alone["image"][0], large.batch["image"][17])
    assert large[17].caption == load("shapes", n=40, seed=3)[17].caption


def test_splits_and_seeds_never_share_an_image():
    seen = [image_hashes(load("shapes", split=split, n=300)) for split in ("train", "val", "test")]
    assert all(len(h) == 300 for h in seen), "an image repeats within a split"
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert not image_hashes(load("shapes", n=300, seed=1)) & seen[0]


# --- masks, boxes and image agree exactly -------------------------------------------------------

@pytest.mark.parametrize("which", ["plain", "noisy"])
def test_masks_boxes_and_image_agree(which, request, world):
    dataset = request.getfixturevalue(which)
    for i in range(len(dataset)):
        scene = dataset[i]
        pixels = (scene.image * 255).round().long()  # (3, H, W), stored as exact uint8
        top = scene.instance
        assert set(top.unique().tolist()) == set(range(len(scene.objects) + 1)), "every object is visible"
        for k, obj in enumerate(scene.objects, start=1):
            ys, xs = torch.nonzero(top == k, as_tuple=True)
            x0, y0, x1, y1 = scene.boxes[k - 1].tolist()
            assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
            colour = world._RGB[world.COLOURS.index(obj.colour)].long()
            dark = (colour.float() * world._DARK).round().long()
            seen = pixels[:, ys, xs].T  # (P, 3)
            is_bright, is_dark = (seen == colour).all(1), (seen == dark).all(1)
            assert (is_bright | is_dark).all(), "an object pixel is neither its colour nor its dark shade"
            if obj.texture == "solid":
                assert is_bright.all()
        shape_class = torch.tensor([0] + [world.SHAPES.index(o.shape) + 1 for o in scene.objects])
        assert torch.equal(scene.semantic, shape_class[top])
        background = top == 0
        assert torch.equal(scene.depth == 0, background) and scene.depth.max() <= len(scene.objects)
        assert (pixels[:, background] >= 0.3 * 255).all() and (pixels[:, ~background].min(0).values == 0).all()
        if which == "plain":
            grey = pixels[:, background]
            assert (grey == grey[0, 0]).all(), "a plain background is one grey"


def test_boxes_are_the_full_extent_of_each_object(plain):
    """Boxes are tight around the unoccluded object: the top object touches all four sides."""
    for i in range(40):
        scene = plain[i]
        k = len(scene.objects)
        ys, xs = torch.nonzero(scene.instance == k, as_tuple=True)
        assert scene.boxes[k - 1].tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


# --- captions and labels ------------------------------------------------------------------------

def expected_relation(a, b) -> str:
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


@pytest.mark.parametrize("which", ["plain", "noisy"])
def test_caption_names_every_object_and_the_relation(which, request, world):
    dataset = request.getfixturevalue(which)
    for i in range(len(dataset)):
        scene = dataset[i]
        phrases, relation = world.parse_caption(scene.caption)
        assert phrases == [(o.size, o.colour, o.texture, o.shape) for o in scene.objects], scene.caption
        if len(scene.objects) > 1:
            assert relation == expected_relation(*scene.objects[:2]), scene.caption
        else:
            assert relation is None


def test_caption_grammar_example(world):
    a = world.ShapeObject("circle", "red", "small", "stripes", 5.0, 10.0, 0.0)
    b = world.ShapeObject("square", "blue", "large", "solid", 20.0, 12.0, 0.0)
    c = world.ShapeObject("cross", "green", "small", "dots", 20.0, 30.0, 0.0)
    assert world.caption([a, b]) == "a small red striped circle left of a large blue square"
    assert world.caption([c, a, b]) == (
        "a small green dotted cross below a small red striped circle; also a large blue square")


@pytest.mark.parametrize("task", ["shape", "colour", "texture"])
def test_attribute_tasks_label_the_one_large_object(task, world):
    dataset = load("shapes", n=200, task=task)
    names = {"shape": world.SHAPES, "colour": world.COLOURS, "texture": world.TEXTURES}[task]
    for i in range(len(dataset)):
        scene = dataset[i]
        large = [o for o in scene.objects if o.size == "large"]
        assert len(large) == 1
        assert scene.label == names.index(getattr(large[0], task))
    assert set(dataset.labels.tolist()) == set(range(dataset.num_classes)), "every class occurs"


def test_count_task(plain):
    counts = [len(plain[i].objects) for i in range(len(plain))]
    assert plain.labels.tolist() == counts
    assert set(counts) == {1, 2, 3, 4, 5} and plain.num_classes == 6


def test_texture_side_needs_texture_and_layout(noisy):
    for i in range(len(noisy)):
        scene = noisy[i]
        textures = [o.texture for o in scene.objects]
        assert textures.count("stripes") == textures.count("dots") == 1
        assert textures.count("solid") == len(textures) - 2
        striped = next(o for o in scene.objects if o.texture == "stripes")
        dotted = next(o for o in scene.objects if o.texture == "dots")
        assert abs(striped.x - dotted.x) >= 0.1 * noisy.size
        assert scene.label == int(striped.x > dotted.x)
    assert 0.3 < noisy.labels.float().mean() < 0.7, "both answers are common"


def test_stripes_and_dots_are_visible_at_32_pixels():
    """A striped or dotted object shows both of its shades, however small it is."""
    dataset = load("shapes", n=100, task="texture_side")
    for i in range(len(dataset)):
        scene = dataset[i]
        for k, obj in enumerate(scene.objects, start=1):
            if obj.texture != "solid":
                shades = (scene.image[:, scene.instance == k] * 255).round().T.unique(dim=0)
                assert len(shades) == 2, (obj, shades)


# --- options, errors and resolution -------------------------------------------------------------

@pytest.mark.parametrize("size", [16, 64, 128])
def test_any_resolution_scales_objects(size):
    dataset = load("shapes", n=20, size=size, seed=5)
    base = load("shapes", n=20, size=32, seed=5)
    scene = dataset[0]
    assert scene.image.shape == (3, size, size) and scene.semantic.shape == (size, size)
    assert 0 <= scene.image.min() and scene.image.max() <= 1
    assert scene.semantic.dtype == scene.instance.dtype == scene.depth.dtype == torch.long
    for k in range(20):  # same attributes, pixel positions scaled with the image
        assert [o.shape for o in dataset[k].objects] == [o.shape for o in base[k].objects]
        assert dataset[k].objects[0].x == pytest.approx(base[k].objects[0].x * size / 32, rel=1e-5)
    fraction = (dataset.batch["instance"] > 0).float().mean().item()
    assert fraction == pytest.approx((base.batch["instance"] > 0).float().mean().item(), abs=0.04)


@pytest.mark.parametrize("options, message", [
    ({"n": 0}, "n=0"), ({"size": 8}, "size=8"), ({"task": "colour_side"}, "task='colour_side'"),
    ({"max_objects": 7}, "max_objects=7"), ({"max_objects": 1, "task": "texture_side"}, "max_objects=1"),
    ({"background": "stars"}, "background='stars'"), ({"seed": -1}, "seed=-1"), ({"split": "dev"}, "split='dev'"),
    ({"colours": 3}, "no option colours"),
])
def test_bad_arguments_raise_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        load("shapes", **options)


def test_pairs_feed_a_dataloader(plain):
    images, labels = next(iter(DataLoader(plain.pairs(), batch_size=8)))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.long
    _, masks = plain.pairs("semantic")[0]
    assert masks.shape == (32, 32)
    with pytest.raises(ValueError, match="target='caption'"):
        plain.pairs("caption")


# --- digits -------------------------------------------------------------------------------------

def test_digits_splits_are_deterministic_and_cover_everything():
    parts = {split: load("digits", split=split) for split in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == 1797 and len(parts["train"]) == 1258
    image, label = parts["train"][0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and label.dtype == torch.long
    assert 0 <= image.min() and parts["train"].images.max() == 1.0
    assert torch.equal(load("digits").images, parts["train"].images)
    assert not torch.equal(load("digits", seed=1).labels, parts["train"].labels)
    assert set(parts["test"].labels.tolist()) == set(range(10))


def test_digits_indices_never_overlap():
    from course_lib.data.digits import split_indices

    parts = [set(split_indices(1797, split, seed=0).tolist()) for split in ("train", "val", "test")]
    assert set.union(*parts) == set(range(1797)) and sum(map(len, parts)) == 1797


def test_digits_upsample_and_errors():
    big = load("digits", split="val", size=28, n=10)
    assert big.images.shape == (10, 1, 28, 28) and 0 <= big.images.min() and big.images.max() <= 1
    with pytest.raises(ValueError, match="size=4"):
        load("digits", size=4)
    with pytest.raises(ValueError, match="n=0"):
        load("digits", n=0)


# --- figure -------------------------------------------------------------------------------------

def test_show_scenes_returns_a_figure(plain):
    figure = show_scenes([plain[i] for i in range(5)], cols=3)
    assert isinstance(figure, Figure) and len(figure.axes) == 2 * 2 * 3
    assert figure.axes[0].get_title().startswith("a ")
    plt.close(figure)
    figure, axes = plt.subplots(1, 4)
    assert show_scenes([plain[i] for i in range(4)], masks=False, ax=axes) is figure
    plt.close(figure)
    with pytest.raises(ValueError, match="scenes is empty"):
        show_scenes([])


def test_picture_grid_lays_out_rows():
    pictures = torch.linspace(-1, 1, 12 * 3 * 4 * 4).reshape(12, 3, 4, 4)
    figure = picture_grid(pictures, 3, "twelve", ["a", "b", "c"])
    image = figure.axes[0].get_images()[0].get_array()
    assert image.shape == (3 * 4, 4 * 4, 3)  # 3 rows of 4 pictures, each 4 x 4
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["a", "b", "c"]
    plt.close(figure)
    with pytest.raises(ValueError, match="rows=0"):
        picture_grid(pictures, 0, "none")
    with pytest.raises(ValueError, match="row_names"):
        picture_grid(pictures, 3, "names", ["a"])


# --- one-object scenes for the generators (notebooks 21-22) -------------------------------------

def test_one_object_scenes_keep_three_colours_and_label_shape_times_colour():
    images, labels, captions = shapes.one_object_scenes("train", 200)
    names = shapes.one_object_classes(3)
    assert len(names) == 12 and names[:3] == ["red circle", "green circle", "blue circle"]
    assert images.shape[1:] == (3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert 50 < len(images) == len(labels) == len(captions) < 200  # about half the scenes are in other colours
    for label, caption in zip(labels.tolist(), captions):
        colour, shape = names[label].split()
        assert caption.startswith(f"a large {colour} ") and caption.endswith(shape)
    with pytest.raises(ValueError, match="colours=7"):
        shapes.one_object_scenes("train", 10, colours=7)
