"""The photo-crop restoration dataset: disjoint splits, exact degradations, determinism, refused arguments."""

import pytest
import torch
import torch.nn.functional as F

import course_lib.data.photos as photos
from course_lib.data.registry import load


def test_shapes_and_range():
    data = load("photos", "train", task="sr2", n=5, size=16)
    assert data.targets.shape == (5, 3, 16, 16) and data.inputs.shape == (5, 3, 8, 8)
    assert data.targets.dtype == torch.float32
    assert data.targets.min() >= 0 and data.targets.max() <= 1
    assert len(data) == 5 and "sr2" in repr(data)


def test_crops_are_cut_from_the_photos_inside_their_split():
    images = photos.photos()
    for split in ("train", "val", "test"):
        positions = photos.crop_positions(split, 40, 24, seed=3)
        crops = photos.clean_crops(split, 40, 24, seed=3)
        for (p, top, left), crop in zip(positions.tolist(), crops):
            assert any(a <= left and left + 24 <= b for a, b in photos.REGIONS[split])
            assert torch.equal(crop, images[p, :, top:top + 24, left:left + 24])


def test_split_columns_are_disjoint_and_cover_the_photo():
    columns = {split: set().union(*(range(a, b) for a, b in regions)) for split, regions in photos.REGIONS.items()}
    assert not columns["train"] & columns["val"] and not columns["train"] & columns["test"]
    assert not columns["val"] & columns["test"]
    assert set().union(*columns.values()) == set(range(photos.photos().shape[-1]))


def test_denoise_input_is_clean_plus_seeded_noise():
    data = load("photos", "test", task="denoise", n=64, size=32, sigma=0.2, seed=1)
    noise = data.inputs - data.targets
    assert abs(noise.std().item() - 0.2) < 0.005 and abs(noise.mean().item()) < 0.005
    again = load("photos", "test", task="denoise", n=64, size=32, sigma=0.2, seed=1)
    assert torch.equal(data.inputs, again.inputs) and torch.equal(data.targets, again.targets)
    other = load("photos", "test", task="denoise", n=64, size=32, sigma=0.2, seed=2)
    assert not torch.equal(data.targets, other.targets)


def test_sr2_input_is_the_mean_of_each_2x2_block():
    data = load("photos", "val", task="sr2", n=3, size=8)
    t = data.targets
    by_hand = (t[:, :, 0::2, 0::2] + t[:, :, 1::2, 0::2] + t[:, :, 0::2, 1::2] + t[:, :, 1::2, 1::2]) / 4
    torch.testing.assert_close(data.inputs, by_hand, atol=1e-6, rtol=0)


def test_bicubic_upsample_matches_torch_and_is_clamped():
    x = torch.rand(2, 3, 5, 7) * 1.4 - 0.2
    up = photos.bicubic_upsample(x, 2)
    expected = F.interpolate(x, size=(10, 14), mode="bicubic", align_corners=False).clamp(0, 1)
    assert up.shape == (2, 3, 10, 14)
    torch.testing.assert_close(up, expected)
    assert up.min() >= 0 and up.max() <= 1
    constant = torch.full((1, 3, 4, 4), 0.3)
    torch.testing.assert_close(photos.bicubic_upsample(constant, 2), torch.full((1, 3, 8, 8), 0.3))


@pytest.mark.parametrize("options, name", [
    (dict(task="deblur"), "task"), (dict(n=0), "n"), (dict(size=2), "size"), (dict(size=128), "size"),
    (dict(task="sr2", size=31), "size"), (dict(sigma=0), "sigma"), (dict(sigma=2.0), "sigma"),
    (dict(seed=-1), "seed"), (dict(n=True), "n"),
])
def test_bad_options_are_refused_by_name(options, name):
    with pytest.raises(ValueError, match=rf"{name}="):
        photos.load_photos("train", **options)


def test_bad_split_and_factor_are_refused():
    with pytest.raises(ValueError, match="split="):
        photos.load_photos("dev")
    with pytest.raises(ValueError, match="factor="):
        photos.bicubic_upsample(torch.rand(1, 3, 4, 4), 0)
    with pytest.raises(ValueError, match="images"):
        photos.bicubic_upsample(torch.rand(3, 4, 4), 2)
