"""The field transformer (notebook 21's PDE surrogate): points are a set, so permuting them with their coordinates
permutes the output; the default coordinates are the uniform periodic grid; bad input is named."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.models.operator import FieldTransformer, FieldTransformerConfig, fourier_features


def model() -> FieldTransformer:
    torch.manual_seed(0)
    return FieldTransformer(FieldTransformerConfig(in_channels=2, out_channels=3, dim=32, depth=2)).eval()


def test_permuting_points_with_their_coordinates_permutes_the_output():
    net, values, coordinates = model(), torch.randn(2, 10, 2), torch.rand(10) * 2 * math.pi
    order = torch.randperm(10)
    torch.testing.assert_close(net(values[:, order], coordinates[order]), net(values, coordinates)[:, order],
                               rtol=1e-5, atol=1e-5)


def test_default_coordinates_are_the_uniform_grid_and_matter():
    net, values = model(), torch.randn(2, 8, 2)
    grid = torch.arange(8) * 2 * math.pi / 8
    torch.testing.assert_close(net(values), net(values, grid))
    torch.testing.assert_close(net(values), net(values, grid.expand(2, -1)))
    assert (net(values) - net(values, grid.roll(1))).abs().max() > 1e-4


def test_fourier_features_are_periodic():
    x = torch.tensor([0.3, 1.7])
    torch.testing.assert_close(fourier_features(x, 4), fourier_features(x + 2 * math.pi, 4), atol=1e-5, rtol=0)
    assert fourier_features(x, 4).shape == (2, 8)


@pytest.mark.parametrize("call, words", [
    (lambda m: m(torch.randn(2, 8, 1)), "in_channels=2"),
    (lambda m: m(torch.randint(0, 3, (2, 8, 2))), "float"),
    (lambda m: m(torch.randn(0, 8, 2)), "batch"),
    (lambda m: m(torch.randn(2, 8, 2), torch.zeros(7)), "coordinates"),
])
def test_bad_input_is_named(call, words):
    with pytest.raises(ValueError, match=words):
        call(model())
