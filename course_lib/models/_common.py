"""What the model files share: argument checks that name the argument, and the ViT's initialisation."""

from __future__ import annotations

from torch import Tensor, nn


def check_positive(argument: str, value: object) -> None:
    """Raise ValueError unless `value` is a positive int (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{argument}={value!r} must be a positive int")


def check_positive_number(argument: str, value: object) -> None:
    """Raise ValueError unless `value` is a positive finite int or float (a bool is not): a ratio, a scale."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{argument}={value!r} must be a positive number")


def check_num_classes(value: object) -> None:
    """Raise ValueError unless `value` is a non-negative int: the classes of a head, 0 meaning no head."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"num_classes={value!r} must be a non-negative int (0: no head)")


def check_positive_ints(argument: str, values: object) -> tuple[int, ...]:
    """`values` as a tuple, after checking that it is a non-empty sequence of positive ints."""
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{argument}={values!r} must be a non-empty sequence of positive ints")
    return values


def check_heads(dim: int, heads: int, *, rotary: bool = False) -> None:
    """Raise ValueError unless `heads` divides `dim`, into an even head width when the heads are `rotary`."""
    if dim % heads or (rotary and (dim // heads) % 2):
        needed = "an even integer (rotary positions turn pairs of features)" if rotary else "an integer"
        raise ValueError(f"dim={dim} / heads={heads} must be {needed}")


def check_images(images: Tensor, channels: int) -> tuple[int, int]:
    """(height, width) of `images`, after checking that it is (batch, channels, height, width)."""
    if images.dim() != 4 or images.shape[1] != channels:
        raise ValueError(f"images has shape {tuple(images.shape)}; expected (batch, channels={channels}, height, width)")
    return images.shape[2], images.shape[3]


def check_feature_map(x: Tensor) -> tuple[int, int]:
    """(height, width) of `x`, after checking that it is a (batch, height, width, channels) feature map."""
    if x.dim() != 4:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (batch, height, width, channels)")
    return x.shape[1], x.shape[2]


def check_tiles(height: int, width: int, size: int, argument: str) -> None:
    """Raise ValueError unless a height x width map splits into whole `size` x `size` tiles (`argument` = size)."""
    check_positive(argument, size)
    if height % size or width % size:
        raise ValueError(f"height={height} and width={width} must be multiples of {argument}={size}")


def init_vit_style(module: nn.Module) -> None:
    """The ViT's initialisation, for `model.apply`: truncated normal (std 0.02) weights and zero biases of every
    linear and convolution layer."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def init_vit(model: nn.Module, *tokens: nn.Parameter | None) -> None:
    """The ViT's initialisation of a whole model: `init_vit_style` on every layer, then truncated normal (std 0.02)
    on the learned tokens and position tables given (None is skipped)."""
    model.apply(init_vit_style)
    for parameter in tokens:
        if parameter is not None:
            nn.init.trunc_normal_(parameter, std=0.02)


def check_patched_image_config(config: object, *positive: str) -> None:
    """Raise ValueError unless every field named in `positive` is a positive int, `image_size` splits into whole
    patches of `patch_size`, and `dim` splits into `heads` and into the four parts of 2D sin-cos positions: the
    shared checks of the diffusion transformers' configs."""
    for name in positive:
        check_positive(name, getattr(config, name))
    if config.image_size % config.patch_size:
        raise ValueError(f"image_size={config.image_size} is not divisible by patch_size={config.patch_size}")
    if config.dim % config.heads or config.dim % 4:
        raise ValueError(f"dim={config.dim} must be divisible by heads={config.heads} and by 4 (2D positions)")
