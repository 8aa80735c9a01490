"""Text classification offline: which standard-library package does a window of Python source come from?

`load("stdlib_packages", split=..., n=..., length=256, packages=DEFAULT_PACKAGES, seed=0)` gives
`n` pairs (tokens, label): `length` consecutive bytes of a package's source (a LongTensor of byte ids
0..255) and the index of that package in `dataset.classes`. Nothing is downloaded: the text is the
source of the Python running the course (test directories left out), so the numbers depend a little
on the Python version.

Leakage control: every file is cut into consecutive chunks of CHUNK = 4096 bytes, and each chunk goes
to train, val or test by a crc32 hash of (file path, chunk index), 80/10/10. A window lies inside one
chunk, so no byte of a val or test window was ever seen in training. Sample i of a split is a pure
function of (seed, split, i): its label is i % num_classes (balanced classes), and its position is
drawn uniformly over all the windows that fit inside the chunks of that class in that split.
"""

from __future__ import annotations

import functools
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from course_lib.data.registry import SPLITS, check_int, check_split, register
from course_lib.data.text import split_of

CHUNK = 4096
DEFAULT_PACKAGES = (
    "asyncio", "email", "xml", "multiprocessing", "unittest", "tkinter", "importlib", "logging",
)
DEFAULT_SIZES = {"train": 8000, "val": 1000, "test": 1000}  # n=None
_SKIP = ("test", "tests", "idle_test", "__pycache__")
_SALT = 0x57D1_1B5A  # separates this dataset's random streams from any other's


class Window(NamedTuple):
    """Where sample i comes from: its label, the file (relative to the stdlib root) and the byte range."""

    label: int
    path: str
    chunk: int  # index of the CHUNK-byte piece of the file that holds the window
    start: int  # offset of the window's first byte in the file


def stdlib_root() -> Path:
    """The directory of the standard library of the Python running the course."""
    return Path(sysconfig.get_paths()["stdlib"])


def package_sources(package: str) -> dict[str, bytes]:
    """The bytes of every .py file of a stdlib package, test directories left out, by path relative to the stdlib."""
    return dict(_read_package(package))


@functools.cache
def _read_package(package: str) -> tuple[tuple[str, bytes], ...]:
    """Read once per process: every split and every dataset of the same package shares the files."""
    root = stdlib_root()
    sources = {}
    for path in sorted((root / package).rglob("*.py")):
        relative = path.relative_to(root)
        if not any(part in _SKIP for part in relative.parts):
            sources[relative.as_posix()] = path.read_bytes()
    return tuple(sources.items())


def chunk_split(path: str, chunk: int) -> str:
    """'train', 'val' or 'test': where chunk `chunk` of file `path` belongs (crc32 hash, 80/10/10)."""
    return split_of(f"{path}#{chunk}")


class StdlibPackagesDataset(Dataset):
    """(tokens (length,), label) pairs: byte windows of stdlib source labelled by package; see the module doc."""

    vocab_size = 256

    def __init__(
        self, split: str, n: int | None = None, length: int = 256,
        packages: Sequence[str] = DEFAULT_PACKAGES, seed: int = 0,
    ) -> None:
        check_split(split)
        n = DEFAULT_SIZES[split] if n is None else n
        check_int("n", n, 1)
        check_int("length", length, 1)
        if length > CHUNK:
            raise ValueError(f"length={length} must be at most CHUNK={CHUNK}: a window lies inside one chunk")
        check_int("seed", seed, 0)
        if isinstance(packages, str) or not isinstance(packages, Sequence) or len(packages) < 2 \
                or len(set(packages)) != len(packages) or not all(isinstance(p, str) for p in packages):
            raise ValueError(f"packages={packages!r} must be a sequence of at least two distinct package names")
        self.split, self.n, self.length, self.seed = split, n, length, seed
        self.classes = tuple(packages)
        self.sources: dict[str, bytes] = {}
        self._chunks: list[list[tuple[str, int]]] = []  # per class: (path, chunk) of this split
        self._ends: list[np.ndarray] = []  # per class: cumulative count of window starts, chunk by chunk
        for package in self.classes:
            sources = package_sources(package) if package.isidentifier() else {}
            if not sources:
                raise ValueError(f"packages holds {package!r}, which is no stdlib package with source "
                                 f"under {stdlib_root()}")
            chunks, starts = [], []
            for path, data in sources.items():
                for chunk in range(0, -(-len(data) // CHUNK)):
                    size = min(CHUNK, len(data) - chunk * CHUNK)
                    if size >= length and chunk_split(path, chunk) == split:
                        chunks.append((path, chunk))
                        starts.append(size - length + 1)
            if not chunks:
                raise ValueError(f"package {package!r} has no chunk of at least length={length} bytes in split={split!r}")
            self.sources.update(sources)
            self._chunks.append(chunks)
            self._ends.append(np.cumsum(starts))

    def __len__(self) -> int:
        return self.n

    def window(self, index: int) -> Window:
        """Where sample `index` comes from; drawn from a generator seeded by (seed, split, index) alone."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < self.n:
            raise IndexError(f"index={index!r} is outside the dataset's range [0, {self.n})")
        label = int(index) % len(self.classes)
        rng = np.random.default_rng([_SALT, self.seed, SPLITS.index(self.split), int(index)])
        ends = self._ends[label]
        draw = int(rng.integers(ends[-1]))  # one of all the window starts of this class, uniformly
        which = int(np.searchsorted(ends, draw, side="right"))  # the chunk holding that start
        path, chunk = self._chunks[label][which]
        offset = draw - (int(ends[which - 1]) if which else 0)
        return Window(label, path, chunk, chunk * CHUNK + offset)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        label, path, _, start = self.window(index)
        data = self.sources[path][start : start + self.length]
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).long(), label


@register("stdlib_packages")
def load_stdlib_packages(
    split: str, n: int | None = None, length: int = 256, packages: Sequence[str] = DEFAULT_PACKAGES,
    seed: int = 0,
) -> StdlibPackagesDataset:
    """Byte windows of Python standard-library source, labelled by the package they come from."""
    return StdlibPackagesDataset(split, n=n, length=length, packages=packages, seed=seed)
