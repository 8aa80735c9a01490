"""Data-parallel and fully sharded training of a small GPT through Lightning, on CPU processes with gloo
(notebook 24).

Run as a script, one training per call: Lightning starts the other processes by running the same command again
(its subprocess launcher), which both strategies use and which a notebook's kernel cannot host.

    python -m course_lib.train.distributed --strategy ddp --processes 2 --steps 8 --out run.pt

- "single": one process reads the whole global batch;
- "ddp": every process holds the whole model and reads its share of each global batch; gradients are averaged
  across processes after each backward pass (`DDPStrategy`);
- "fsdp": every process holds only its shard of each block's weights, gradients and optimiser state, gathering a
  block's weights just before using it (PyTorch's `fully_shard` under Lightning's `ModelParallelStrategy`).

The shares are interleaved (`InterleavedBatches`): process r reads rows r, r + W, r + 2W, ... of each global
batch, so W processes together read exactly the batches one process reads, and all three strategies compute the
same updates, up to the order of floating-point additions. The saved file holds the full weights, the losses of
the global batches and the number of parameters each process held.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from course_lib.models.gpt import GPT, GPTConfig

__all__ = ["STRATEGIES", "InterleavedBatches", "ShardableLanguageModel", "train", "train_in_processes"]

STRATEGIES = ("single", "ddp", "fsdp")


class InterleavedBatches(L.LightningDataModule):
    """Global batches of `global_batch` rows of `windows` (N, L + 1) in order; each of the trainer's processes
    reads its interleaved share of every global batch."""

    def __init__(self, windows: Tensor, global_batch: int) -> None:
        super().__init__()
        self.windows, self.global_batch = windows, global_batch

    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if self.global_batch % world:
            raise ValueError(f"global_batch={self.global_batch} must divide among {world} processes")
        rows = TensorDataset(self.windows[:, :-1], self.windows[:, 1:])
        shares = DistributedSampler(rows, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(rows, batch_size=self.global_batch // world, sampler=shares)


class ShardableLanguageModel(L.LightningModule):
    """A byte-level GPT with next-token loss and AdamW at a constant learning rate; with `shard`, each block and
    then the whole model is wrapped by `fully_shard` once the processes exist (`configure_model`)."""

    def __init__(self, config: GPTConfig, *, lr: float, seed: int, shard: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.model, self.lr, self.shard = GPT(config), lr, shard
        self.losses: list[float] = []

    def configure_model(self) -> None:
        if self.shard:
            from torch.distributed.fsdp import fully_shard

            for block in self.model.blocks:
                fully_shard(block)
            fully_shard(self.model)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> Tensor:
        inputs, targets = batch
        loss = F.cross_entropy(self.model(inputs).flatten(0, 1), targets.flatten())
        global_loss = self.all_gather(loss.detach()).mean()  # every share has the same size
        self.losses.append(global_loss.item())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=0.0)

    def full_state_dict(self) -> dict[str, Tensor]:
        """The whole model's weights on every process (sharded weights are gathered: a collective call)."""
        return {name: (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().cpu().clone()
                for name, value in self.model.state_dict().items()}

    def parameters_held(self) -> int:
        """Number of parameters this process stores (its shards only, under FSDP)."""
        return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in self.model.parameters())


def _strategy(name: str, processes: int):
    if name == "single":
        return "auto"
    if name == "ddp":
        return DDPStrategy(process_group_backend="gloo")
    return ModelParallelStrategy(data_parallel_size=processes, tensor_parallel_size=1)


def train(strategy: str, *, processes: int, steps: int, global_batch: int = 16, dim: int = 32, depth: int = 2,
          context: int = 32, lr: float = 1e-3, seed: int = 0) -> dict:
    """Train the small GPT on seeded random bytes with `strategy`; returns (on the first process) the full weights,
    the loss of each global batch and the parameters each process held."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}; expected one of {STRATEGIES}")
    if strategy == "single" and processes != 1:
        raise ValueError(f"strategy='single' runs processes=1, got processes={processes}")
    windows = torch.randint(0, 256, (steps * global_batch, context + 1), generator=torch.Generator().manual_seed(seed))
    config = GPTConfig(vocab_size=256, max_len=context, dim=dim, depth=depth, heads=max(1, dim // 16),
                       tie_weights=False)  # a tied head would be one tensor in two modules, which sharding forbids
    module = ShardableLanguageModel(config, lr=lr, seed=seed, shard=strategy == "fsdp")
    trainer = L.Trainer(accelerator="cpu", devices=processes, strategy=_strategy(strategy, processes),
                        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(module, datamodule=InterleavedBatches(windows, global_batch))
    weights = module.full_state_dict()
    return {"weights": weights, "losses": module.losses, "parameters_held": module.parameters_held(),
            "parameters": sum(v.numel() for v in weights.values()), "rank": trainer.global_rank}


def train_in_processes(strategy: str, *, processes: int, steps: int, folder: Path, seed: int = 0,
                       timeout: float = 600) -> dict:
    """`train` run as this module's script in a subprocess (where Lightning can start its processes, which a
    notebook's kernel cannot host), its result read back from a file in `folder`."""
    out = Path(folder) / f"{strategy}.pt"
    subprocess.run([sys.executable, "-m", "course_lib.train.distributed", "--strategy", strategy, "--processes",
                    str(processes), "--steps", str(steps), "--seed", str(seed), "--out", str(out)],
                   check=True, capture_output=True, timeout=timeout)
    return torch.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", choices=STRATEGIES, required=True)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    torch.set_num_threads(1)  # one core per process
    result = train(arguments.strategy, processes=arguments.processes, steps=arguments.steps, seed=arguments.seed)
    if result["rank"] == 0:
        partial = arguments.out.with_suffix(".partial")
        torch.save(result, partial)
        os.replace(partial, arguments.out)  # atomic: a reader never sees half a file


if __name__ == "__main__":
    main()
