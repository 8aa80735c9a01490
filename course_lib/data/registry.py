"""One entry point for every dataset of the course: `load(name, split=..., **options)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable

SPLITS = ("train", "val", "test")
_LOADERS: dict[str, Callable] = {}


def check_int(name: str, value, low: int, what: str = "") -> None:
    """ValueError unless `value` is an int (not a bool) of at least `low`; `what` ends the message."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} must be an int of at least {low}{what}")


def check_split(split: str) -> None:
    """ValueError unless `split` is one of SPLITS."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")


def register(name: str) -> Callable[[Callable], Callable]:
    """Decorator: make `loader(split=..., **options)` available as `load(name, ...)`."""

    def add(loader: Callable) -> Callable:
        if name in _LOADERS:
            raise ValueError(f"dataset name={name!r} is registered twice")
        _LOADERS[name] = loader
        return loader

    return add


def available() -> list[str]:
    """The names `load` accepts, sorted."""
    return sorted(_LOADERS)


def load(name: str, split: str = "train", **options):
    """Build dataset `name` for `split` ('train', 'val' or 'test'); options go to that dataset."""
    if name not in _LOADERS:
        raise ValueError(f"dataset name={name!r} is unknown; available: {', '.join(available())}")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    loader = _LOADERS[name]
    accepted = [p for p in inspect.signature(loader).parameters if p != "split"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"dataset {name!r} has no option {', '.join(unknown)}; its options are {', '.join(accepted)}")
    return loader(split=split, **options)
