"""Training memory per GPU on paper, against the worked example of the ZeRO paper."""

from __future__ import annotations

import pytest

from course_lib.train.memory import (
    MIXED_PRECISION_ADAM,
    BytesPerParameter,
    model_state_bytes_per_gpu,
)

GB = 1e9


@pytest.mark.parametrize("stage, expected_gb", [("ddp", 120.0), ("zero-1", 31.4), ("zero-2", 16.6), ("zero-3", 1.9)])
def test_the_zero_papers_example(stage, expected_gb):
    """7.5B parameters on 64 GPUs with mixed-precision Adam: the numbers of the ZeRO paper's first figure."""
    assert model_state_bytes_per_gpu(7_500_000_000, 64, stage) / GB == pytest.approx(expected_gb, abs=0.05)


def test_one_gpu_shards_nothing_and_full_precision_costs_more():
    sizes = {stage: model_state_bytes_per_gpu(1000, 1, stage) for stage in ("ddp", "zero-1", "zero-2", "zero-3")}
    assert set(sizes.values()) == {16_000}
    fp32_adam = BytesPerParameter(weight=4, gradient=4, optimizer=8)  # no master copy needed
    assert model_state_bytes_per_gpu(1000, 1, costs=fp32_adam) == 16_000
    assert model_state_bytes_per_gpu(1000, 4, "zero-3", fp32_adam) == 4_000
    assert MIXED_PRECISION_ADAM.optimizer == 12


@pytest.mark.parametrize("arguments, words", [((0, 8), "parameters=0"), ((10, 2.0), "gpus=2.0"),
                                              ((10, 2, "zero-4"), "stage='zero-4'")])
def test_bad_arguments_are_named(arguments, words):
    with pytest.raises(ValueError, match=words):
        model_state_bytes_per_gpu(*arguments)
