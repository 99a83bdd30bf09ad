"""Where this process stands among data-parallel processes, and the values they must share.

Under Lightning's DDP or FSDP strategy every process runs the same recipe on its share of
each global batch. Two things make ``W`` processes train as one process does on that global
batch: every process draws the same random seeds (so the data order and each step's noise
agree), and each knows its rank, so it takes its own rows of the global batch
(:class:`mmflow.data.EpochShuffle`) and of the step's draws
(:meth:`mmflow.training.objectives.TrainingContext.per_example`).
"""

from __future__ import annotations

from enum import IntEnum

import pytorch_lightning as pl
import torch

from mmflow.numerics import keyed_seed

__all__ = ["SEED_RANGE", "SeedPurpose", "data_parallel_position", "shared_seed"]

SEED_RANGE = 2**62


def data_parallel_position(trainer: pl.Trainer | None) -> tuple[int, int]:
    """``(rank, world_size)`` of this process among the processes that split each batch:
    ``(0, 1)`` without a trainer or without data parallelism."""
    if trainer is None:
        return 0, 1
    share = getattr(trainer.strategy, "distributed_sampler_kwargs", None)
    if not share:
        return 0, 1
    return int(share["rank"]), int(share["num_replicas"])


class SeedPurpose(IntEnum):
    """What a seed from :func:`shared_seed` is for: each purpose gets its own stream."""

    DATA_ORDER = 1
    TRAINING_DRAWS = 2


def shared_seed(trainer: pl.Trainer | None, purpose: SeedPurpose) -> int:
    """The seed of ``purpose``, mixed from torch's initial seed (the one ``seed_everything``
    sets) on the first process and sent to the others.

    It depends on the recipe's seed alone, not on how much of the global random stream ran
    before (which differs between one process and several: Lightning re-seeds each process
    when it joins the group). Every process of ``trainer`` must call it at the same point: it
    is a collective call."""
    seed = keyed_seed(torch.initial_seed(), int(purpose)) % SEED_RANGE
    if trainer is None or trainer.world_size == 1:
        return seed
    return int(trainer.strategy.broadcast(seed, src=0))
