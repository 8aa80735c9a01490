"""Pieces of the key maps from Hugging Face models to ours: moving a module's weights, and the last step,
which proves that nothing was lost."""

from __future__ import annotations

from torch import Tensor, nn


def checked_state_dict(leftover: dict[str, Tensor], ours: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """`ours` (the reference's weights under our names), after checking that the map used every weight
    of the reference (`leftover` is what it did not pop) and filled every weight of `model` with the
    right shape; raises ValueError naming the keys otherwise."""
    if leftover:
        raise ValueError(f"weights of the reference left unmapped: {sorted(leftover)}")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        shapes = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        raise ValueError(f"key map mismatch: missing {missing}, unexpected {extra}, wrong shapes {shapes}")
    return {k: v.detach().clone() for k, v in ours.items()}


def move_module(theirs: dict[str, Tensor], ours: dict[str, Tensor], old: str, new: str) -> None:
    """Move `old`.weight and `old`.bias (where present) from `theirs` to `new`.weight and `new`.bias in `ours`."""
    for part in ("weight", "bias"):
        if f"{old}.{part}" in theirs:
            ours[f"{new}.{part}"] = theirs.pop(f"{old}.{part}")
