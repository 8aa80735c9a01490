"""Data-parallel and fully sharded training through Lightning on two CPU processes with gloo: the same updates as
one process reading the whole batch, and FSDP stores half the parameters per process."""

from __future__ import annotations

import pytest
import torch

from course_lib.train.distributed import train, train_in_processes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    return {strategy: train_in_processes(strategy, processes=processes, steps=6, folder=folder, timeout=300)
            for strategy, processes in (("single", 1), ("ddp", 2), ("fsdp", 2))}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_make_the_same_updates_as_one(runs, strategy):
    single, parallel = runs["single"], runs[strategy]
    assert single["weights"].keys() == parallel["weights"].keys()
    for name, weight in single["weights"].items():
        torch.testing.assert_close(parallel["weights"][name], weight, atol=1e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(torch.tensor(parallel["losses"]), torch.tensor(single["losses"]), atol=1e-5, rtol=0)
    assert len(single["losses"]) == 6 and single["losses"][-1] < single["losses"][0]  # it trained


def test_fsdp_holds_half_the_parameters_per_process(runs):
    assert runs["ddp"]["parameters_held"] == runs["ddp"]["parameters"]
    assert runs["fsdp"]["parameters_held"] * 2 == runs["fsdp"]["parameters"]


def test_bad_strategy_is_named():
    with pytest.raises(ValueError, match="strategy='zero'"):
        train("zero", processes=2, steps=1)
    with pytest.raises(ValueError, match="processes=2"):
        train("single", processes=2, steps=1)
