"""Procedural sequence tasks whose right attention pattern is known in advance.

Every sample is a pair of (length,) int64 tensors: `inputs`, and `targets` holding the token to
predict at each position, or IGNORE (-100) where nothing is scored. Splits never share a sequence:
each candidate is hashed and goes to train, val or test by its hash, so "held-out" means unseen.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from course_lib.data.registry import SPLITS, register

IGNORE = -100
_HASH_MODULUS = 1_000_003
_SPLIT_BUCKETS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}  # 80/10/10


class SequenceTaskDataset(Dataset):
    """A finished sequence task held in memory: `inputs` and `targets` of shape (n, length)."""

    def __init__(self, task: str, inputs: Tensor, targets: Tensor, vocab_size: int) -> None:
        self.task, self.inputs, self.targets, self.vocab_size = task, inputs, targets, vocab_size

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.inputs[index], self.targets[index]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]

    def __repr__(self) -> str:
        return f"SequenceTaskDataset(task={self.task!r}, n={len(self)}, length={self.seq_len}, vocab_size={self.vocab_size})"


def split_bucket(inputs: Tensor) -> Tensor:
    """A deterministic bucket in 0..9 for each row: a polynomial hash of its tokens."""
    powers = torch.ones(inputs.shape[1], dtype=torch.int64)
    for i in range(1, inputs.shape[1]):
        powers[i] = powers[i - 1] * 131 % _HASH_MODULUS
    return ((inputs.long() + 1) * powers).sum(dim=1) % _HASH_MODULUS % 10


def _generate(
    sampler: Callable[[int, torch.Generator], tuple[Tensor, Tensor]], n: int, split: str, seed: int
) -> tuple[Tensor, Tensor]:
    """Draw candidates until `n` land in this split's hash buckets."""
    generator = torch.Generator().manual_seed(seed * len(SPLITS) + SPLITS.index(split))
    keep_inputs, keep_targets, have = [], [], 0
    buckets = torch.tensor(list(_SPLIT_BUCKETS[split]))
    for _ in range(1000):
        inputs, targets = sampler(max(2 * (n - have), 64) * 2, generator)
        keep = torch.isin(split_bucket(inputs), buckets)
        keep_inputs.append(inputs[keep])
        keep_targets.append(targets[keep])
        have += int(keep.sum())
        if have >= n:
            return torch.cat(keep_inputs)[:n], torch.cat(keep_targets)[:n]
    raise ValueError(f"could not draw n={n} {split} sequences: too few possible sequences fall in this split; "
                     "make the task larger (longer sequences or a bigger vocabulary)")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")


def _elementwise_task(task: str, transform: Callable[[Tensor], Tensor]):
    """Tasks where the target at every position is a fixed function of the whole input."""

    def loader(split: str, n: int = 1000, length: int = 12, vocab_size: int = 10, seed: int = 0) -> SequenceTaskDataset:
        _check_positive(n=n, length=length)
        if vocab_size < 2:
            raise ValueError(f"vocab_size={vocab_size} must be at least 2")

        def sample(count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            inputs = torch.randint(0, vocab_size, (count, length), generator=generator)
            return inputs, transform(inputs)

        inputs, targets = _generate(sample, n, split, seed)
        return SequenceTaskDataset(task, inputs, targets, vocab_size)

    loader.__doc__ = f"The {task} task: random tokens in, the {task}d sequence out, scored at every position."
    return loader


load_copy = register("copy")(_elementwise_task("copy", lambda x: x.clone()))
load_reverse = register("reverse")(_elementwise_task("reverse", lambda x: x.flip(1)))
load_sort = register("sort")(_elementwise_task("sort", lambda x: x.sort(dim=1).values))


@register("selective_copy")
def load_selective_copy(
    split: str, n: int = 1000, length: int = 32, n_data: int = 8, vocab_size: int = 10, seed: int = 0
) -> SequenceTaskDataset:
    """Data tokens scattered among blanks, then `n_data` markers: at each marker, emit the next data token.

    Tokens: 0 blank, 1 marker, 2.. data. Only the marker positions are scored.
    """
    _check_positive(n=n, length=length, n_data=n_data)
    if n_data > length:
        raise ValueError(f"n_data={n_data} cannot exceed length={length}")
    if vocab_size < 3:
        raise ValueError(f"vocab_size={vocab_size} must be at least 3 (blank, marker, one data token)")

    def sample(count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        data = torch.randint(2, vocab_size, (count, n_data), generator=generator)
        slots = torch.rand(count, length, generator=generator).argsort(dim=1)[:, :n_data].sort(dim=1).values
        body = torch.zeros(count, length, dtype=torch.long).scatter(1, slots, data)
        inputs = torch.cat([body, torch.ones(count, n_data, dtype=torch.long)], dim=1)
        targets = torch.cat([torch.full((count, length), IGNORE), data], dim=1)
        return inputs, targets

    inputs, targets = _generate(sample, n, split, seed)
    return SequenceTaskDataset("selective_copy", inputs, targets, vocab_size)


@register("associative_recall")
def load_associative_recall(
    split: str, n: int = 1000, pairs: int = 8, n_keys: int = 16, n_values: int = 16, seed: int = 0
) -> SequenceTaskDataset:
    """Key-value pairs `k1 v1 ... kn vn`, then a query key: the last position must emit its value.

    Keys are tokens 0..n_keys-1 (distinct within a sample), values n_keys..n_keys+n_values-1.
    """
    _check_positive(n=n, pairs=pairs, n_keys=n_keys, n_values=n_values)
    if pairs > n_keys:
        raise ValueError(f"pairs={pairs} cannot exceed n_keys={n_keys} (keys are distinct)")

    def sample(count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        keys = torch.rand(count, n_keys, generator=generator).argsort(dim=1)[:, :pairs]
        values = torch.randint(n_keys, n_keys + n_values, (count, pairs), generator=generator)
        asked = torch.randint(0, pairs, (count, 1), generator=generator)
        context = torch.stack([keys, values], dim=2).reshape(count, 2 * pairs)  # k1 v1 k2 v2 ...
        inputs = torch.cat([context, keys.gather(1, asked)], dim=1)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, -1] = values.gather(1, asked)[:, 0]
        return inputs, targets

    inputs, targets = _generate(sample, n, split, seed)
    return SequenceTaskDataset("associative_recall", inputs, targets, n_keys + n_values)


@register("induction_heads")
def load_induction_heads(
    split: str, n: int = 1000, length: int = 32, vocab_size: int = 16, seed: int = 0
) -> SequenceTaskDataset:
    """Random tokens with a trigger (token 0) followed by some token b; at the end the trigger returns,
    and the last position must emit b: the copy-what-followed-last-time pattern of induction heads."""
    _check_positive(n=n)
    if length < 4:
        raise ValueError(f"length={length} must be at least 4")
    if vocab_size < 3:
        raise ValueError(f"vocab_size={vocab_size} must be at least 3")

    def sample(count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        inputs = torch.randint(1, vocab_size, (count, length), generator=generator)
        where = torch.randint(0, length - 3, (count, 1), generator=generator)
        inputs.scatter_(1, where, 0)
        inputs[:, -1] = 0
        targets = torch.full_like(inputs, IGNORE)
        targets[:, -1] = inputs.gather(1, where + 1)[:, 0]
        return inputs, targets

    inputs, targets = _generate(sample, n, split, seed)
    return SequenceTaskDataset("induction_heads", inputs, targets, vocab_size)
