"""PyKEEN's Lightning modules made correct for several processes.

Imported only on the Lightning path (it needs ``pytorch-lightning``). Two things PyKEEN's own
modules leave to the caller when they run under DDP:

- sLCWA instances are an ``IterableDataset``, which Lightning cannot shard: every process would
  train on every triple, so two processes would do the same epoch twice. Here each process takes
  an equal, disjoint share of an epoch's permutation (the permutation is drawn from the seed and
  the epoch, so all processes agree on it without talking).
- every process would start as many BLAS threads as the machine has cores; on a CPU the processes
  then fight over the same cores. Each process takes its share of the cores instead.

LCWA instances are a map-style dataset: Lightning's ``DistributedSampler`` already shards them.
"""

from __future__ import annotations

import os

import torch
from pykeen.contrib.lightning import LCWALitModule, SLCWALitModule
from pykeen.triples.instances import BatchedSLCWAInstances


class ShardedSLCWAInstances(BatchedSLCWAInstances):
    """sLCWA batches of one process's share: ``n // world`` triples of the epoch's permutation."""

    def __init__(self, *args, rank: int = 0, world_size: int = 1, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0

    def iter_triple_ids(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        share = len(self.mapped_triples) // self.world_size  # equal shares: DDP needs equal step counts
        ids = torch.randperm(len(self.mapped_triples), generator=generator)[self.rank::self.world_size][:share]
        stop = share - share % self.batch_size if self.drop_last else share
        for start in range(0, stop, self.batch_size):
            yield ids[start:start + self.batch_size].tolist()

    def __len__(self) -> int:
        share = len(self.mapped_triples) // self.world_size
        return share // self.batch_size if self.drop_last else -(-share // self.batch_size)


class _ProcessShare:
    """Mixin: one process's share of the CPU threads, and the step count reported back to the
    caller (with ``ddp_spawn`` the caller's trainer only receives the callback metrics)."""

    def on_train_end(self) -> None:
        self.trainer.callback_metrics["optimizer_steps"] = torch.tensor(float(self.global_step))

    def setup(self, stage: str) -> None:
        world = self.trainer.world_size
        if world > 1 and self.trainer.strategy.root_device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))


class DistributedLCWALitModule(_ProcessShare, LCWALitModule):
    """PyKEEN's LCWA module; Lightning's DistributedSampler shards its map-style dataset."""


class DistributedSLCWALitModule(_ProcessShare, SLCWALitModule):
    """PyKEEN's sLCWA module with each process training on its own share of every epoch."""

    def __init__(self, *, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed

    def _dataloader(self, triples_factory, shuffle: bool = False) -> torch.utils.data.DataLoader:
        instances = ShardedSLCWAInstances.from_triples_factory(
            triples_factory, batch_size=self.batch_size, negative_sampler=self.negative_sampler,
            negative_sampler_kwargs=self.negative_sampler_kwargs,
            rank=self.trainer.global_rank, world_size=self.trainer.world_size, seed=self.seed)
        return torch.utils.data.DataLoader(dataset=instances, sampler=None, batch_size=None)


LIT_MODULES = {"lcwa": DistributedLCWALitModule, "slcwa": DistributedSLCWALitModule}
