"""Data loading that can stop and resume mid-epoch, and the Lightning DataModules of the course."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from course_lib.data.registry import load


class EpochSampler(Sampler[int]):
    """Indices 0..n-1, shuffled anew each epoch from (seed, epoch), so any epoch's order can be replayed."""

    def __init__(self, size: int, *, seed: int = 0, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + 7919 * self.epoch))
        else:
            order = torch.arange(self.size)
        skip, self.skip = self.skip, 0
        return iter(order[skip:].tolist())

    def __len__(self) -> int:
        return self.size


class ResumableDataLoader(DataLoader):
    """A DataLoader that records how far into the epoch it is, so a checkpoint resumes at that batch.

    Lightning saves `state_dict()` in the checkpoint and calls `load_state_dict()` on resume.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int = 0, shuffle: bool = True, **options: Any) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be positive")
        sampler = EpochSampler(len(dataset), seed=seed, shuffle=shuffle)
        # An own generator: creating an iterator then never draws from (and shifts) torch's global one.
        generator = torch.Generator().manual_seed(seed)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, generator=generator, **options)
        self.batches_done, self._resume_at = 0, 0

    def __iter__(self) -> Iterator[Any]:
        self.batches_done, self._resume_at = self._resume_at, 0
        self.sampler.skip = self.batches_done * self.batch_size
        for batch in super().__iter__():
            self.batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self._resume_at = state["batches_done"]


class CourseDataModule(L.LightningDataModule):
    """Any registered dataset as train/val/test loaders: `CourseDataModule("reverse", n=2000, length=12)`."""

    def __init__(self, name: str, *, batch_size: int = 64, seed: int = 0, sizes: dict[str, int] | None = None, **options: Any) -> None:
        super().__init__()
        self.name, self.batch_size, self.seed, self.options = name, batch_size, seed, options
        self.sizes = sizes or {}
        self.datasets: dict[str, Dataset] = {}
        self.dataset("train")  # build now: bad names and options fail here, before any training

    def dataset(self, split: str) -> Dataset:
        """The dataset of `split`, built once."""
        if split not in self.datasets:
            options = dict(self.options)
            if split in self.sizes:
                options["n"] = self.sizes[split]
            if "seed" not in options and self.name != "python_text":
                options["seed"] = self.seed
            self.datasets[split] = load(self.name, split=split, **options)
        return self.datasets[split]

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(self.dataset("train"), self.batch_size, seed=self.seed, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test")

    def _evaluation_loader(self, split: str) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)  # keeps torch's global generator untouched
        return DataLoader(self.dataset(split), batch_size=self.batch_size, generator=generator)


class SequenceDataModule(CourseDataModule):
    """A procedural sequence task with `n_train` training and `n_val` validation (and test) sequences."""

    def __init__(self, task: str, *, n_train: int = 2000, n_val: int = 500, batch_size: int = 64, seed: int = 0, **task_options: Any) -> None:
        sizes = {"train": n_train, "val": n_val, "test": n_val}
        super().__init__(task, batch_size=batch_size, seed=seed, sizes=sizes, **task_options)


class TextDataModule(CourseDataModule):
    """Byte-level language modelling on Python's own text (see `course_lib.data.text`)."""

    def __init__(self, *, block_size: int = 128, batch_size: int = 32, source: str = "docs", seed: int = 0, **options: Any) -> None:
        super().__init__("python_text", batch_size=batch_size, seed=seed, block_size=block_size, source=source, **options)
