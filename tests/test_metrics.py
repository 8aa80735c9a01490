"""Segmentation and restoration metrics against naive loops over pixels and images, and `fit` with a custom loss."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.train.loop import fit, predict
from course_lib.train.metrics import (
    confusion_matrix,
    forecast_errors,
    iou_per_class,
    mean_iou,
    psnr,
)


def naive_iou(predicted, target, classes):
    values = []
    for c in range(classes):
        p, t = predicted == c, target == c
        union = (p | t).sum().item()
        values.append(float("nan") if union == 0 else (p & t).sum().item() / union)
    return values


@pytest.mark.parametrize("seed", range(5))
def test_iou_per_class_equals_a_loop_over_classes(seed):
    generator = torch.Generator().manual_seed(seed)
    classes = 2 + seed
    target = torch.randint(0, classes, (3, 7, 5), generator=generator)
    predicted = torch.where(torch.rand(3, 7, 5, generator=generator) < 0.6, target,
                            torch.randint(0, classes, (3, 7, 5), generator=generator))
    ours = iou_per_class(predicted, target, classes + 1)  # one class that never appears
    expected = naive_iou(predicted, target, classes + 1)
    for a, b in zip(ours.tolist(), expected):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12
    present = [v for v in expected if not math.isnan(v)]
    assert mean_iou(predicted, target, classes + 1) == pytest.approx(sum(present) / len(present))


def test_confusion_matrix_counts_each_pair():
    target = torch.tensor([0, 0, 1, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 2, 0, 2])
    assert confusion_matrix(predicted, target, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert mean_iou(target, target, 3) == 1.0


@pytest.mark.parametrize("bad, message", [
    (dict(classes=0), "classes=0"), (dict(predicted=torch.zeros(2, 3)), "integer tensor"),
    (dict(predicted=torch.zeros(3, dtype=torch.long)), "shape"), (dict(target=torch.tensor([0, 5])), "0..2"),
])
def test_confusion_matrix_refuses_bad_input_by_name(bad, message):
    arguments = {**dict(predicted=torch.tensor([0, 1]), target=torch.tensor([1, 1]), classes=3), **bad}
    with pytest.raises(ValueError, match=message):
        confusion_matrix(**arguments)


def test_psnr_equals_the_per_image_formula():
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(4, 3, 6, 6, generator=generator)
    restored = clean + 0.1 * torch.randn(4, 3, 6, 6, generator=generator)
    expected = sum(10 * math.log10(1 / ((restored[i].double() - clean[i].double()) ** 2).mean().item()) for i in range(4)) / 4
    assert psnr(restored, clean) == pytest.approx(expected, rel=1e-9)
    assert psnr(255 * restored, 255 * clean, peak=255.0) == pytest.approx(expected, rel=1e-6)  # float32 scaling
    noise = torch.full_like(clean, 0.1)  # MSE 0.01: exactly 20 dB
    assert psnr(clean + noise, clean) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="same shape"):
        psnr(clean, clean[:2])
    with pytest.raises(ValueError, match="peak"):
        psnr(clean, clean, peak=0)


def test_fit_trains_a_per_pixel_classifier_with_a_custom_loss():
    """Segmentation through the shared loop: (B, C, H, W) logits against (B, H, W) classes."""
    torch.manual_seed(0)
    images = torch.rand(64, 1, 4, 4)
    labels = (images[:, 0] > 0.5).long()  # the class of a pixel is its brightness
    model = nn.Conv2d(1, 2, kernel_size=1)
    fit(model, images, labels, steps=150, lr=0.1, batch=16, loss=F.cross_entropy)
    assert mean_iou(predict(model, images).argmax(dim=1), labels, 2) > 0.95


def test_fit_with_a_loss_takes_any_targets_and_refuses_a_wrong_length():
    model = nn.Conv2d(1, 1, kernel_size=1)
    images = torch.rand(8, 1, 4, 4)
    fit(model, images, images, steps=2, lr=1e-3, batch=4, loss=F.mse_loss)
    with pytest.raises(ValueError, match="equally long"):
        fit(model, images, images[:3], steps=1, lr=1e-3, loss=F.mse_loss)
    with pytest.raises(ValueError, match="loss="):
        fit(model, images, images, steps=1, lr=1e-3, loss="mse")


def test_predict_concatenates_chunks_and_keeps_the_mode():
    model = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5)).train()
    x = torch.randn(11, 3)
    out = predict(model, x, batch=4)
    assert model.training and out.shape == (11, 2)
    assert torch.allclose(out, model[0](x), atol=1e-6)  # eval mode: dropout off


@pytest.mark.parametrize("shape", [(6, 5), (4, 7, 3)])
def test_forecast_errors_equal_a_loop_over_windows_steps_and_channels(shape):
    generator = torch.Generator().manual_seed(len(shape))
    forecasts, targets = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    flat_f, flat_t = forecasts.reshape(shape[0], shape[1], -1), targets.reshape(shape[0], shape[1], -1)
    errors = forecast_errors(forecasts, targets, [1, 3, shape[1]])
    assert list(errors) == [1, 3, shape[1]]
    for h, (mse, mae) in errors.items():
        pairs = [(float(flat_f[n, t, c]), float(flat_t[n, t, c]))
                 for n in range(shape[0]) for t in range(h) for c in range(flat_f.shape[2])]
        assert mse == pytest.approx(sum((f - t) ** 2 for f, t in pairs) / len(pairs), rel=1e-12)
        assert mae == pytest.approx(sum(abs(f - t) for f, t in pairs) / len(pairs), rel=1e-12)


@pytest.mark.parametrize("bad, message", [
    (dict(targets=torch.zeros(3, 4)), "same shape"), (dict(horizons=[0]), "1..5"), (dict(horizons=[6]), "1..5"),
    (dict(horizons=[2.0]), "1..5"), (dict(horizons=[]), "horizons="), (dict(forecasts=torch.zeros(3), targets=torch.zeros(3)), "(N, H)"),
])
def test_forecast_errors_refuse_bad_shapes_and_horizons(bad, message):
    arguments = {**dict(forecasts=torch.zeros(3, 5), targets=torch.zeros(3, 5), horizons=[1, 5]), **bad}
    with pytest.raises(ValueError, match=re.escape(message)):
        forecast_errors(**arguments)
