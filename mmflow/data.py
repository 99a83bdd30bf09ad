"""Datamodules: the split-and-loader base every modality's datamodule builds on, and the helpers
the commands use (build one from a recipe, take real batches)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from jsonargparse import ArgumentError, ArgumentParser
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mmflow.distributed import SEED_RANGE, SeedPurpose, data_parallel_position, shared_seed
from mmflow.modality import Batch
from mmflow.numerics import keyed_seed

SPLITS = ("train", "val", "test")


def batch_as_is(batch: Batch) -> Batch:
    """The collate function of datasets whose ``__getitems__`` already returns a dict batch."""
    return batch


class SplitDataModule(pl.LightningDataModule):
    """Seeded train / val / test splits served as dict batches.

    Subclasses prepare their data and fill ``self.datasets`` (``"train"``, ``"val"``,
    ``"test"``: datasets whose ``__getitems__`` returns a whole dict batch) in ``setup``; this
    base holds the loader and split settings, checks the fractions, and serves the loaders:
    train shuffled, validation and test in order, predict on the test split.

    Args:
        batch_size: examples per batch.
        num_workers: dataloader worker processes.
        seed: seed of the splits (and of anything else the subclass fixes, e.g. mixtures).
        val_fraction: fraction of the data held out for validation.
        test_fraction: fraction held out for testing (sources without an official test set).
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        fractions_fit = 0 <= val_fraction < 1 and 0 <= test_fraction < 1
        if not (fractions_fit and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in "
                "[0, 1) and sum to less than 1"
            )
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.datasets: dict[str, Dataset[Any]] = {}

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split: ``mmflow predict`` generates under its conditions."""
        return self._loader("test", shuffle=False)

    def _loader(self, split: str, shuffle: bool, order: list[int] | None = None) -> DataLoader:
        self.setup()
        if shuffle:
            return ResumableLoader(
                self.datasets[split],
                self.batch_size,
                self.num_workers,
                batch_as_is,
                trainer=self.trainer,
            )
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            sampler=order,
            num_workers=self.num_workers,
            collate_fn=batch_as_is,
            persistent_workers=self.num_workers > 0,
        )


class EpochShuffle(DistributedSampler):
    """A new random order of ``size`` examples every epoch, split among data-parallel processes
    and resumable mid-epoch.

    Epoch ``e`` visits ``randperm(size)`` drawn from a generator seeded with ``seed + e``, so
    the order of any epoch is known again from ``(seed, e)`` alone, without the global random
    state. With ``world_size`` processes the order is cut to a multiple of ``world_size`` and
    process ``rank`` takes its positions ``rank, rank + world_size, ...`` (as torch's
    ``DistributedSampler`` with ``drop_last`` does, which this class is, so Lightning leaves it
    in place): the ``k``-th batch of every process together is the ``k``-th batch one process
    with ``world_size`` times the batch size would see. ``seed`` comes from the recipe's seed
    (:func:`mmflow.distributed.shared_seed`) and belongs to the loader's state.
    ``start(epoch, skip)`` makes the next iteration that epoch's order without its first
    ``skip`` positions, counted over all processes: how a resumed run continues.
    """

    def __init__(
        self, size: int, seed: int | None = None, rank: int = 0, world_size: int = 1
    ) -> None:
        seed = shared_seed(None, SeedPurpose.DATA_ORDER) if seed is None else seed
        super().__init__(
            range(size),  # type: ignore[arg-type]
            num_replicas=world_size,
            rank=rank,
            seed=seed,
            drop_last=True,
        )
        self._skip = 0

    def start(self, epoch: int, skip: int) -> None:
        self.epoch, self._skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed((self.seed + self.epoch) % SEED_RANGE)
        order = torch.randperm(len(self.dataset), generator=generator)[: self.total_size]
        share = order[self._skip + self.rank :: self.num_replicas]
        self._skip = 0
        return iter(share.tolist())


class ResumableLoader(DataLoader):
    """The training loader of every datamodule: shuffled by :class:`EpochShuffle`, with the
    ``state_dict`` / ``load_state_dict`` pair Lightning saves in a checkpoint, so that a run
    resumed mid-epoch sees the batches an uninterrupted run would have seen.

    Every batch is full (``drop_last``: the few examples left over at the end of an epoch are
    another random few each epoch), so each optimizer step sees the same number of examples;
    a split smaller than one batch is served whole, as one short batch an epoch.
    Given the ``trainer``, it takes this process's share of the data under data parallelism
    (``batch_size`` is then per process, Lightning's convention) with a seed all processes
    share; ``W`` processes with batches of ``b`` then train on the global batches one process
    with batches of ``W b`` trains on. How far training got is told to it by :meth:`track`,
    which :class:`mmflow.training.checkpoints.ExactResume` (installed by the ``mmflow`` command)
    calls at each batch: the loader itself runs ahead of training (Lightning fetches one batch in
    advance), so it cannot count that itself.
    The workers' seeds come from ``(seed, epoch, rank)`` too, never from the global generator.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        num_workers: int = 0,
        collate_fn: Any = None,
        seed: int | None = None,
        trainer: pl.Trainer | None = None,
    ) -> None:
        rank, world_size = data_parallel_position(trainer)
        if seed is None and trainer is not None:
            seed = shared_seed(trainer, SeedPurpose.DATA_ORDER)
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffle(len(dataset), seed, rank, world_size),  # type: ignore[arg-type]
            num_workers=num_workers,
            collate_fn=collate_fn,
            persistent_workers=num_workers > 0,
            generator=torch.Generator(),
            drop_last=len(dataset) // world_size >= batch_size,  # type: ignore[arg-type]
        )
        self.consumed, self.epoch_batches = 0, len(self)

    @property
    def global_batch_size(self) -> int:
        """Examples per step over all processes."""
        return self.batch_size * self.sampler.num_replicas  # type: ignore[attr-defined, operator]

    def track(self, consumed: int, epoch_batches: int) -> None:
        """``consumed`` batches of this epoch are trained on, of ``epoch_batches`` in all."""
        self.consumed, self.epoch_batches = consumed, epoch_batches

    def __iter__(self) -> Any:
        sampler: EpochShuffle = self.sampler  # type: ignore[assignment]
        self.generator.manual_seed(keyed_seed(sampler.seed, sampler.epoch, sampler.rank))
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        sampler: EpochShuffle = self.sampler  # type: ignore[assignment]
        finished = self.consumed >= self.epoch_batches
        return {
            "seed": sampler.seed,
            "epoch": sampler.epoch + 1 if finished else sampler.epoch,
            "consumed": 0 if finished else self.consumed,
            "batch_size": self.batch_size,
            "world_size": sampler.num_replicas,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where ``state`` says. A resumed run keeps its global batch size (the
        batch size times the number of processes; its position, counted in batches, would
        point elsewhere in the epoch otherwise) and is refused if it changes."""
        saved_world_size = state.get("world_size", 1)
        saved_batch_size = state.get("batch_size", self.batch_size)
        saved_global = saved_batch_size * saved_world_size
        if saved_global != self.global_batch_size:
            world_size = self.sampler.num_replicas  # type: ignore[attr-defined]
            raise ValueError(
                f"data.batch_size: the checkpoint's run used global batches of {saved_global} "
                f"({saved_batch_size} x {saved_world_size} processes), this one "
                f"{self.global_batch_size} ({self.batch_size} x {world_size}); a resumed run "
                "keeps its global batch size (to change it, start a new run from the "
                "checkpoint's weights with --model.init_from)"
            )
        sampler: EpochShuffle = self.sampler  # type: ignore[assignment]
        sampler.seed, self.consumed = state["seed"], state["consumed"]
        sampler.start(state["epoch"], state["consumed"] * saved_global)


def load_datamodule(recipe: str | Path) -> pl.LightningDataModule:
    """Instantiate the ``data:`` section of a recipe (``class_path`` + ``init_args``)."""
    recipe = Path(recipe)
    try:
        config = yaml.safe_load(recipe.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{recipe}: recipe not found") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{recipe}: not valid YAML ({error})") from None
    if not isinstance(config, dict) or "data" not in config:
        raise ValueError(f"{recipe}: no `data:` section")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(pl.LightningDataModule, "data", fail_untyped=False)
    try:
        return parser.instantiate(parser.parse_object({"data": config["data"]}))["data"]
    except (ArgumentError, ImportError, TypeError, ValueError) as error:
        raise ValueError(f"{recipe}: cannot build `data`: {error}") from None


def take_batches(
    datamodule: pl.LightningDataModule, split: str, num_samples: int | None
) -> list[Batch]:
    """The first ``num_samples`` examples of ``split`` ("test", "val" or "train") as dict
    batches (``None``: every batch of the split). The training loader shuffles with torch's
    global generator: seed it first for the same examples every time."""
    stages = {
        "test": ("test", "test_dataloader"),
        "val": ("validate", "val_dataloader"),
        "train": ("fit", "train_dataloader"),
    }
    if split not in stages:
        raise ValueError(f"`split` must be 'test', 'val' or 'train', got {split!r}")
    stage, loader_name = stages[split]
    datamodule.prepare_data()
    datamodule.setup(stage)
    loader = getattr(datamodule, loader_name)()
    if num_samples is None:
        return list(loader)
    batches, remaining = [], num_samples
    for batch in loader:
        size = len(next(iter(batch.values())))
        batches.append({k: v[:remaining] for k, v in batch.items()} if size > remaining else batch)
        remaining -= min(size, remaining)
        if remaining == 0:
            return batches
    raise ValueError(
        f"the {split} split has only {num_samples - remaining} examples, asked for {num_samples}"
    )
