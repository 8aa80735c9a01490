"""Training memory per GPU on paper: what data parallelism replicates and what ZeRO and FSDP shard (notebook 24).

Mixed-precision training with Adam keeps, for every parameter: the fp16/bf16 weight (2 bytes) and its gradient
(2 bytes), plus the optimiser's state in fp32: a master copy of the weight, Adam's first and second moments (4 + 4 + 4
= 12 bytes). Plain data parallelism (DDP) holds all of it on every GPU. ZeRO ("ZeRO: Memory Optimizations Toward
Training Trillion Parameter Models") shards it across the N GPUs in three stages: stage 1 the optimiser state,
stage 2 the gradients too, stage 3 the weights too, which is what fully sharded data parallelism (FSDP) does.
Activations, buffers and fragmentation come on top and are not counted here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MIXED_PRECISION_ADAM", "BytesPerParameter", "STAGES", "model_state_bytes_per_gpu"]

STAGES = ("ddp", "zero-1", "zero-2", "zero-3")  # zero-3 is FSDP's full sharding


@dataclass(frozen=True)
class BytesPerParameter:
    """Bytes each parameter costs for its weight, its gradient and its optimiser state."""

    weight: int
    gradient: int
    optimizer: int


MIXED_PRECISION_ADAM = BytesPerParameter(weight=2, gradient=2, optimizer=12)


def model_state_bytes_per_gpu(parameters: int, gpus: int, stage: str = "ddp",
                              costs: BytesPerParameter = MIXED_PRECISION_ADAM) -> float:
    """Bytes of weights, gradients and optimiser state each of `gpus` GPUs holds for a model of `parameters`
    parameters, under plain data parallelism ("ddp") or ZeRO stage 1, 2 or 3 (FSDP)."""
    for name, value in (("parameters", parameters), ("gpus", gpus)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}; expected one of {STAGES}")
    level = STAGES.index(stage)
    optimizer = costs.optimizer / (gpus if level >= 1 else 1)
    gradient = costs.gradient / (gpus if level >= 2 else 1)
    weight = costs.weight / (gpus if level >= 3 else 1)
    return parameters * (weight + gradient + optimizer)
