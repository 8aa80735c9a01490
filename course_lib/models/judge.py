"""A judge for generators: a small CNN trained on real scenes labels each sample, and the share it labels as the
class that was asked for is the generator's conditional accuracy (notebooks 21-22).

A convolutional network on purpose: a measuring instrument should not share the generators' patch grid and its
blind spots. Its own accuracy on real test scenes is the ceiling a generator can reach by this measure.
"""

from __future__ import annotations

from torch import Tensor, nn

from course_lib.models._common import check_positive
from course_lib.train.loop import predict

__all__ = ["ConvJudge", "conditional_accuracy"]


class ConvJudge(nn.Sequential):
    """(B, channels, H, W) pictures in [-1, 1] -> (B, num_classes) logits: three convolutions, two of them
    halving the size, then global average pooling."""

    def __init__(self, num_classes: int, channels: int = 3, width: int = 32) -> None:
        for name, value in (("num_classes", num_classes), ("channels", channels), ("width", width)):
            check_positive(name, value)
        super().__init__(
            nn.Conv2d(channels, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))


def conditional_accuracy(judge: nn.Module, samples: Tensor, asked: Tensor) -> float:
    """Share of `samples` (clamped to [-1, 1]) that `judge` labels as the class `asked` for each."""
    if not isinstance(asked, Tensor) or asked.shape != samples.shape[:1] or asked.is_floating_point():
        raise ValueError(f"asked must hold one integer class per sample ({len(samples)},); got "
                         f"{getattr(asked, 'dtype', type(asked))} of shape {tuple(getattr(asked, 'shape', ()))}")
    labelled = predict(judge, samples.clamp(-1, 1)).argmax(dim=-1)
    return (labelled == asked.cpu()).float().mean().item()
