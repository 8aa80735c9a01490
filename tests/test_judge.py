"""The judge of notebooks 21-22: a small CNN and the conditional accuracy it gives a generator's pictures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib.models import ConvJudge, conditional_accuracy


def test_judge_maps_pictures_to_logits_at_any_size():
    judge = ConvJudge(12)
    assert judge(torch.randn(5, 3, 16, 16)).shape == (5, 12)
    assert judge(torch.randn(2, 3, 32, 24)).shape == (2, 12)  # global pooling: any picture size
    with pytest.raises(ValueError, match="num_classes"):
        ConvJudge(0)


class FirstPixel(nn.Module):
    """A judge that labels a picture by its top-left value: class 1 where it is positive."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # a model has parameters (they say where it lives)

    def forward(self, x):
        positive = (self.scale * x[:, 0, 0, 0] > 0).float()
        return torch.stack([1 - positive, positive], dim=1)


def test_conditional_accuracy_counts_pictures_labelled_as_asked():
    pictures = torch.zeros(4, 1, 2, 2)
    pictures[:2, 0, 0, 0] = 5.0  # labelled 1
    assert conditional_accuracy(FirstPixel(), pictures, torch.tensor([1, 1, 0, 1])) == 0.75
    with pytest.raises(ValueError, match="asked"):
        conditional_accuracy(FirstPixel(), pictures, torch.tensor([1.0, 1.0, 0.0, 1.0]))
