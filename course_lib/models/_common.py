"""What every vision model file shares: argument checks that name the argument, and the ViT's initialisation."""

from __future__ import annotations

from torch import Tensor, nn


def check_positive(argument: str, value: object) -> None:
    """Raise ValueError unless `value` is a positive int (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{argument}={value!r} must be a positive int")


def check_positive_ints(argument: str, values: object) -> tuple[int, ...]:
    """`values` as a tuple, after checking that it is a non-empty sequence of positive ints."""
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{argument}={values!r} must be a non-empty sequence of positive ints")
    return values


def check_images(images: Tensor, channels: int) -> tuple[int, int]:
    """(height, width) of `images`, after checking that it is (batch, channels, height, width)."""
    if images.dim() != 4 or images.shape[1] != channels:
        raise ValueError(f"images has shape {tuple(images.shape)}; expected (batch, channels={channels}, height, width)")
    return images.shape[2], images.shape[3]


def init_vit_style(module: nn.Module) -> None:
    """The ViT's initialisation, for `model.apply`: truncated normal (std 0.02) weights and zero biases of every
    linear and convolution layer."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
