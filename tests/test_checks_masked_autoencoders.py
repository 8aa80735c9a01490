"""The checkers of notebook 10's masked-autoencoder exercises: right answers pass, the mistakes fail named."""

import pytest
import torch
from checking import fails, passes

from course_lib.checks import masked_autoencoders as check
from course_lib.models import mae


def masked_patch_loss(prediction, target, mask):
    total, count = 0.0, 0
    for b in range(prediction.shape[0]):
        for n in range(prediction.shape[1]):
            if mask[b, n]:
                total, count = total + ((prediction[b, n] - target[b, n]) ** 2).mean(), count + 1
    return total / count


def block_mask(mask, grid, factor):
    height, width = grid
    out = torch.zeros(mask.shape[0], height * factor, width * factor, dtype=torch.bool)
    for b in range(mask.shape[0]):
        for y in range(height * factor):
            for x in range(width * factor):
                out[b, y, x] = mask[b, (y // factor) * width + x // factor]
    return out


def test_right_answers_pass(capsys):
    passes(check.masked_patch_loss, masked_patch_loss, capsys)
    passes(check.normalise_patches, lambda x: torch.stack([torch.stack([(p - p.mean()) / (p.var(unbiased=False)
                                                                         + 1e-6).sqrt() for p in image])
                                                            for image in x]), capsys)
    passes(check.block_mask, block_mask, capsys)


def test_the_packaged_functions_pass(capsys):
    passes(check.masked_patch_loss, mae.masked_patch_loss, capsys)
    passes(check.normalise_patches, mae.normalise_patches, capsys)
    passes(check.block_mask, mae.upsample_mask, capsys)


@pytest.mark.parametrize("checker, index, words", [
    ("masked_patch_loss", 0, "every patch"), ("masked_patch_loss", 1, "wrong way round"),
    ("masked_patch_loss", 2, "summed"),
    ("normalise_patches", 0, "biased variance"), ("normalise_patches", 1, "image as a whole"),
    ("normalise_patches", 2, "across the patches"), ("normalise_patches", 3, "mean only"),
    ("block_mask", 0, "tiled"), ("block_mask", 1, "column by column"), ("block_mask", 2, "rows only"),
])
def test_each_mistake_is_named(checker, index, words, capsys):
    checker = getattr(check, checker)
    fails(checker, checker.mistakes[index][0], capsys, words)


def test_an_unwritten_exercise_fails(capsys):
    def not_yet(*args):
        raise NotImplementedError
    for checker in (check.masked_patch_loss, check.normalise_patches, check.block_mask):
        with pytest.raises((AssertionError, NotImplementedError)):
            checker(not_yet)
        capsys.readouterr()
