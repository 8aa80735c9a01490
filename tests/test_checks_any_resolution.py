"""The checkers of notebook 08_any_resolution: right answers pass, plausible wrong ones fail with a message naming
the mistake.

Each correct answer is written here the way a learner would, independently of the references in
`course_lib.checks.any_resolution`; each wrong one is a mistake a learner is likely to make.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from checking import fails, passes

from course_lib.checks import any_resolution as check
from course_lib.models.any_resolution import pack_images, pool_packed

# --- pi_resize -------------------------------------------------------------------------------------


def resize_basis(old, new, **options):
    """(new², old²): column k is the k-th one-pixel patch resized, flattened row by row."""
    basis = torch.eye(old * old, dtype=torch.float64).reshape(old * old, 1, old, old)
    resized = F.interpolate(basis, size=(new, new), mode="bilinear", **{"align_corners": False, "antialias": True,
                                                                          **options})
    return resized.reshape(old * old, new * new).T


def pi_resize(weight, new, **options):
    old = weight.shape[-1]
    b = resize_basis(old, new, **options)
    flat = weight.reshape(*weight.shape[:-2], old * old).double()
    # the smallest ŵ with Bᵀ ŵ = w (least squares when shrinking): what the pseudo-inverse gives
    solved = torch.linalg.lstsq(b.T, flat.reshape(-1, old * old).T, driver="gelsd").solution.T
    return solved.reshape(*weight.shape[:-2], new, new).to(weight.dtype)


def test_pi_resize_right(capsys):
    passes(check.pi_resize, pi_resize, capsys)


def test_pi_resize_in_float32_passes(capsys):
    """A learner who never leaves float32 is within the tolerance."""
    def float32(weight, new):
        b = resize_basis(weight.shape[-1], new).float()
        flat = weight.flatten(-2)
        return (flat @ torch.linalg.pinv(b.T).T).unflatten(-1, (new, new))

    passes(check.pi_resize, float32, capsys)


@pytest.mark.parametrize("wrong, explanation", [
    (lambda w, new: F.interpolate(w, size=(new, new), mode="bilinear", antialias=True), "resized like an image (B w)"),
    (lambda w, new: F.interpolate(w, size=(new, new), mode="bilinear", antialias=True) * (w.shape[-1] / new) ** 2,
     "divided by the area ratio"),
    (lambda w, new: pi_resize(w, new).transpose(-1, -2), "transposed"),
    (lambda w, new: pi_resize(w, new, antialias=False), "without antialiasing"),
    (lambda w, new: pi_resize(w, new, align_corners=True), "align_corners=True"),
], ids=["resize", "area-normalised", "transposed", "no-antialias", "align-corners"])
def test_pi_resize_mistakes_are_named(wrong, explanation, capsys):
    message = fails(check.pi_resize, wrong, capsys, r"output\[.*\] is .* \(on weight")
    assert explanation in message


def test_pi_resize_not_implemented(capsys):
    def exercise(weight, new):
        raise NotImplementedError

    fails(check.pi_resize, exercise, capsys, "not implemented yet")


# --- packing_mask ----------------------------------------------------------------------------------


def owners(counts, length):
    owner = torch.full((length,), -1)
    start = 0
    for image, count in enumerate(counts):
        owner[start:start + count] = image
        start += count
    return owner


def packing_mask(counts, length):
    owner = owners(counts, length)
    same = owner.unsqueeze(0) == owner.unsqueeze(1)
    return same & (owner >= 0).unsqueeze(0) & (owner >= 0).unsqueeze(1)


def test_packing_mask_right(capsys):
    passes(check.packing_mask, packing_mask, capsys)


def test_packing_mask_is_what_the_packed_model_uses():
    batch = pack_images([torch.rand(1, 8, 8), torch.rand(1, 4, 8), torch.rand(1, 8, 4)], patch_size=4, max_len=10)
    counts = [n for _, _, n in batch.spans]
    assert torch.equal(batch.mask[0, 0], packing_mask(counts, 10))


@pytest.mark.parametrize("wrong, explanation", [
    (lambda counts, length: owners(counts, length)[:, None] == owners(counts, length)[None, :],
     "padding forms one more block"),
    (lambda counts, length: packing_mask(counts, length).tril(), "causal"),
    (lambda counts, length: packing_mask(counts, sum(counts)), "the padding after them is missing"),
    (lambda counts, length: torch.ones(length, length, dtype=torch.bool), "mixes the images"),
], ids=["padding-block", "causal", "no-padding", "all-true"])
def test_packing_mask_mistakes_are_named(wrong, explanation, capsys):
    message = fails(check.packing_mask, wrong, capsys, r"\(on counts=")
    assert explanation in message


def test_packing_mask_not_implemented(capsys):
    def exercise(counts, length):
        raise NotImplementedError

    fails(check.packing_mask, exercise, capsys, "not implemented yet")


# --- pack_greedy -----------------------------------------------------------------------------------


def pack_greedy(lengths, max_len):
    rows = []
    for index, length in enumerate(lengths):
        for row in rows:
            if sum(lengths[i] for i in row) + length <= max_len:
                row.append(index)
                break
        else:
            rows.append([index])
    return rows


def test_pack_greedy_right(capsys):
    passes(check.pack_greedy, pack_greedy, capsys)


def next_fit(lengths, max_len):
    rows, used = [[]], 0
    for index, length in enumerate(lengths):
        if used + length > max_len:
            rows.append([])
            used = 0
        rows[-1].append(index)
        used += length
    return rows


def strict(lengths, max_len):
    return pack_greedy(lengths, max_len - 1) if all(n < max_len for n in lengths) else [[i] for i in range(len(lengths))]


def decreasing(lengths, max_len):
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [[order[j] for j in row] for row in pack_greedy([lengths[i] for i in order], max_len)]


@pytest.mark.parametrize("wrong, explanation", [
    (next_fit, "only the last row is tried"),
    (strict, "not < max_len"),
    (decreasing, "sorted by length first"),
], ids=["next-fit", "strict", "decreasing"])
def test_pack_greedy_mistakes_are_named(wrong, explanation, capsys):
    message = fails(check.pack_greedy, wrong, capsys, r"\(on .*lengths")
    assert explanation in message


def test_pack_greedy_not_implemented(capsys):
    def exercise(lengths, max_len):
        raise NotImplementedError

    fails(check.pack_greedy, exercise, capsys, "not implemented yet")


# --- mean_per_image --------------------------------------------------------------------------------


def mean_per_image(tokens, image_ids, num_images):
    return torch.stack([tokens[image_ids == i].mean(dim=0) for i in range(num_images)])


def test_mean_per_image_right(capsys):
    passes(check.mean_per_image, mean_per_image, capsys)


def test_mean_per_image_is_the_packed_models_pooling():
    batch = pack_images([torch.rand(1, 8, 8), torch.rand(1, 4, 8), torch.rand(1, 12, 4)], patch_size=4, max_len=8)
    tokens = torch.randn(*batch.segments.shape, 5)
    torch.testing.assert_close(mean_per_image(tokens, batch.image_ids, batch.num_images), pool_packed(tokens, batch))


@pytest.mark.parametrize("wrong, explanation", [
    (lambda t, ids, n: mean_per_image(t, ids.clamp(min=0), n), "counted as image 0"),
    (lambda t, ids, n: torch.stack([t[ids == i].sum(dim=0) for i in range(n)]), "each image's sum"),
    (lambda t, ids, n: torch.stack([t[ids == i].sum(dim=0) for i in range(n)]) / t.shape[1], "row length"),
], ids=["padding-as-zero", "sum", "row-length"])
def test_mean_per_image_mistakes_are_named(wrong, explanation, capsys):
    message = fails(check.mean_per_image, wrong, capsys, r"\(on image_ids=")
    assert explanation in message


def test_mean_per_image_not_implemented(capsys):
    def exercise(tokens, image_ids, num_images):
        raise NotImplementedError

    fails(check.mean_per_image, exercise, capsys, "not implemented yet")
