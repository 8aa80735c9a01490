"""The linear probe reads what is linearly there and nothing more: separable features give high accuracy,
labels unrelated to the features give chance, the same inputs and seed give the same accuracy."""

from __future__ import annotations

import pytest
import torch

from course_lib.train.probe import linear_probe, standardise


def _blobs(n: int, classes: int, dim: int, seed: int, spread: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3
    labels = torch.randint(classes, (n,), generator=g)
    return centres[labels] + spread * torch.randn(n, dim, generator=g), labels


def test_standardise_uses_the_training_statistics_for_every_split():
    train, test = torch.randn(50, 4) * 5 + 2, torch.randn(20, 4)
    train_z, test_z = standardise(train, test)
    assert torch.allclose(train_z.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(train_z.std(0, unbiased=False), torch.ones(4), atol=1e-4)
    mean, std = train.mean(0), train.std(0, unbiased=False) + 1e-6
    assert torch.allclose(test_z, (test - mean) / std)


def test_separable_features_are_read_out():
    train_x, train_y = _blobs(400, 4, 8, seed=0)
    test_x, test_y = _blobs(200, 4, 8, seed=1)
    assert linear_probe(train_x, train_y, test_x, test_y, steps=200) > 0.95


def test_labels_the_features_do_not_hold_stay_at_chance():
    train_x, _ = _blobs(400, 4, 8, seed=0)
    test_x, _ = _blobs(400, 4, 8, seed=1)
    g = torch.Generator().manual_seed(5)
    random_train, random_test = torch.randint(4, (400,), generator=g), torch.randint(4, (400,), generator=g)
    assert linear_probe(train_x, random_train, test_x, random_test, steps=200) < 0.35


def test_the_same_seed_gives_the_same_accuracy():
    train_x, train_y = _blobs(300, 3, 6, seed=0, spread=3.0)  # overlapping: the accuracy depends on the weights
    test_x, test_y = _blobs(300, 3, 6, seed=1, spread=3.0)
    runs = [linear_probe(train_x, train_y, test_x, test_y, steps=50, seed=s) for s in (2, 2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("call, message", [
    (lambda: linear_probe(torch.zeros(4), torch.zeros(4, dtype=torch.long), torch.zeros(2, 3),
                          torch.zeros(2, dtype=torch.long)), "train_features"),
    (lambda: linear_probe(torch.zeros(4, 3), torch.zeros(4), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)),
     "train_labels"),
    (lambda: linear_probe(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.zeros(2, 3),
                          torch.zeros(3, dtype=torch.long)), "test_labels"),
    (lambda: linear_probe(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.zeros(2, 5),
                          torch.zeros(2, dtype=torch.long)), "test_features has dim 5"),
])
def test_bad_input_is_refused_by_name(call, message):
    with pytest.raises(ValueError, match=message):
        call()
