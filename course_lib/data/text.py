"""A byte-level text corpus made of text that ships with Python itself: nothing is downloaded.

`docs` is the interpreter's documentation topics (the text `help('if')` shows, about 0.5 MB,
cut into runs of paragraphs);
`stdlib` is the source of the standard library's modules. Each document goes to train, val or
test by a hash of its name, so the split is the same on every run (for one Python version).
"""

from __future__ import annotations

import sysconfig
import zlib
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from course_lib.data.registry import register

SOURCES = ("docs", "stdlib", "both")
_SEPARATOR = "\n\n"


def _documentation_topics(paragraphs_per_document: int = 8) -> dict[str, str]:
    """Topics cut into runs of paragraphs, so the hash split has enough pieces to balance 80/10/10."""
    from pydoc_data.topics import topics

    documents = {}
    for topic, text in topics.items():
        paragraphs = text.split(_SEPARATOR)
        for start in range(0, len(paragraphs), paragraphs_per_document):
            piece = _SEPARATOR.join(paragraphs[start : start + paragraphs_per_document])
            documents[f"{topic}/{start // paragraphs_per_document:04d}"] = piece
    return documents


def _stdlib_sources() -> dict[str, str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo")
    sources = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if any(part in skip for part in relative.parts):
            continue
        sources[str(relative)] = path.read_text(encoding="utf-8", errors="replace")
    return sources


def split_of(name: str) -> str:
    bucket = zlib.crc32(name.encode()) % 10
    return "val" if bucket == 8 else "test" if bucket == 9 else "train"


def corpus_text(source: str = "docs", split: str = "train") -> str:
    """The documents of `source` ('docs', 'stdlib' or 'both') that belong to `split`, joined."""
    if source not in SOURCES:
        raise ValueError(f"source={source!r}; expected one of {SOURCES}")
    documents: dict[str, str] = {}
    if source in ("docs", "both"):
        documents.update({f"docs/{k}": v for k, v in _documentation_topics().items()})
    if source in ("stdlib", "both"):
        documents.update({f"stdlib/{k}": v for k, v in _stdlib_sources().items()})
    return _SEPARATOR.join(text for name, text in sorted(documents.items()) if split_of(name) == split)


def encode(text: str) -> Tensor:
    """UTF-8 bytes as a uint8 tensor: a vocabulary of 256 that needs no tokenizer."""
    data = text.encode("utf-8")
    if not data:  # torch.frombuffer refuses an empty buffer
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def decode(tokens: Tensor) -> str:
    """Back from byte ids to text (invalid UTF-8 sequences become U+FFFD)."""
    return bytes(tokens.to(torch.uint8).tolist()).decode("utf-8", errors="replace")


class ByteTextDataset(Dataset):
    """Windows of `block_size + 1` bytes: inputs are the first `block_size`, targets the next ones."""

    vocab_size = 256

    def __init__(self, data: Tensor, block_size: int, stride: int | None = None) -> None:
        stride = block_size if stride is None else stride
        if block_size < 1 or stride < 1:
            raise ValueError(f"block_size={block_size} and stride={stride} must be positive")
        if data.numel() < block_size + 1:
            raise ValueError(f"the text has {data.numel()} bytes; block_size={block_size} needs at least {block_size + 1}")
        self.data, self.block_size, self.stride = data, block_size, stride

    def __len__(self) -> int:
        return (self.data.numel() - self.block_size - 1) // self.stride + 1

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        start = index * self.stride
        chunk = self.data[start : start + self.block_size + 1].long()
        return chunk[:-1], chunk[1:]


@register("python_text")
def load_python_text(
    split: str, block_size: int = 128, source: str = "docs", stride: int | None = None,
    max_bytes: int | None = None,
) -> ByteTextDataset:
    """Byte-level language-modelling windows over Python's own documentation and/or source."""
    data = encode(corpus_text(source, split))
    if max_bytes is not None:
        if max_bytes < block_size + 1:
            raise ValueError(f"max_bytes={max_bytes} must exceed block_size={block_size}")
        data = data[:max_bytes]
    return ByteTextDataset(data, block_size, stride)
