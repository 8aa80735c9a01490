"""The stdlib_packages text-classification dataset: determinism, balance, split hygiene, and windows checked on disk."""

from __future__ import annotations

import sysconfig
from collections import Counter
from pathlib import Path

import pytest
import torch

from course_lib.data import SPLITS, StdlibPackagesDataset, available, load
from course_lib.data.text_classes import CHUNK, DEFAULT_PACKAGES, chunk_split, package_sources

ROOT = Path(sysconfig.get_paths()["stdlib"])


def test_registered_with_its_classes():
    assert "stdlib_packages" in available()
    dataset = load("stdlib_packages", split="val", n=8, length=32)
    assert isinstance(dataset, StdlibPackagesDataset) and len(dataset) == 8
    assert dataset.classes == DEFAULT_PACKAGES
    tokens, label = dataset[3]
    assert tokens.dtype == torch.long and tokens.shape == (32,) and label == 3
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 256


def test_samples_are_a_function_of_seed_split_and_index():
    """The same (seed, split, i) gives the same sample whatever n is; another seed or split gives others."""
    small = load("stdlib_packages", split="train", n=16, length=64)
    large = load("stdlib_packages", split="train", n=64, length=64, seed=0)
    for i in range(16):
        assert small.window(i) == large.window(i)
        assert torch.equal(small[i][0], large[i][0]) and small[i][1] == large[i][1]
    other_seed = load("stdlib_packages", split="train", n=16, length=64, seed=1)
    other_split = load("stdlib_packages", split="test", n=16, length=64)
    assert sum(small.window(i) == other_seed.window(i) for i in range(16)) <= 1
    assert not any(small.window(i).path == other_split.window(i).path and
                   small.window(i).chunk == other_split.window(i).chunk for i in range(16))


def test_classes_are_balanced():
    dataset = load("stdlib_packages", split="train", n=8 * 25, length=64)
    counts = Counter(dataset[i][1] for i in range(len(dataset)))
    assert counts == dict.fromkeys(range(8), 25)


def test_windows_match_the_source_on_disk():
    """Every window is `length` bytes of a file of its package, read here from disk, inside one chunk."""
    for split in SPLITS:
        dataset = load("stdlib_packages", split=split, n=80, length=100, seed=3)
        for i in range(len(dataset)):
            tokens, label = dataset[i]
            window = dataset.window(i)
            package = dataset.classes[label]
            assert window.label == label and window.path.split("/")[0] == package
            assert not {"test", "tests"} & set(window.path.split("/"))
            data = (ROOT / window.path).read_bytes()
            assert bytes(tokens.tolist()) == data[window.start : window.start + 100]
            assert window.start // CHUNK == window.chunk == (window.start + 99) // CHUNK


def test_splits_never_share_a_chunk():
    """Windows of each split come from chunks hashed to that split, so no two splits share one."""
    chunks = {}
    for split in SPLITS:
        dataset = load("stdlib_packages", split=split, n=400, length=256)
        chunks[split] = {(dataset.window(i).path, dataset.window(i).chunk) for i in range(len(dataset))}
        assert all(chunk_split(path, chunk) == split for path, chunk in chunks[split])
    assert not chunks["train"] & chunks["val"] and not chunks["train"] & chunks["test"]
    assert not chunks["val"] & chunks["test"]


def test_chunk_hash_splits_about_80_10_10():
    counts = Counter(
        chunk_split(path, chunk)
        for package in DEFAULT_PACKAGES
        for path, data in package_sources(package).items()
        for chunk in range(-(-len(data) // CHUNK))
    )
    total = sum(counts.values())
    assert total > 400
    assert 0.7 < counts["train"] / total < 0.9 and 0.05 < counts["val"] / total < 0.15
    assert 0.05 < counts["test"] / total < 0.15


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n": 0}, "n=0"),
        ({"length": 0}, "length=0"),
        ({"length": CHUNK + 1}, f"length={CHUNK + 1}"),
        ({"seed": -1}, "seed=-1"),
        ({"packages": ("asyncio",)}, "packages=\\('asyncio',\\)"),
        ({"packages": "asyncio"}, "packages='asyncio'"),
        ({"packages": ("asyncio", "asyncio")}, "packages="),
        ({"packages": ("asyncio", "no_such_package")}, "'no_such_package'"),
        ({"packages": ("asyncio", "../site-packages")}, "'../site-packages'"),
        ({"shuffle": True}, "no option shuffle"),
    ],
)
def test_bad_arguments_raise(options, message):
    with pytest.raises(ValueError, match=message):
        load("stdlib_packages", split="train", **options)


def test_bad_split_and_index_raise():
    with pytest.raises(ValueError, match="split='dev'"):
        StdlibPackagesDataset("dev")
    dataset = load("stdlib_packages", split="val", n=4, length=16)
    with pytest.raises(IndexError, match="index=4"):
        dataset[4]
