"""Datamodule helpers shared by the commands: build one from a recipe, take real batches."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import yaml
from jsonargparse import ArgumentError, ArgumentParser

from mmflow.modality import Batch


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


def take_batches(datamodule: pl.LightningDataModule, split: str, num_samples: int) -> list[Batch]:
    """The first ``num_samples`` examples of ``split`` ("test" or "val") as dict batches."""
    stages = {"test": ("test", "test_dataloader"), "val": ("validate", "val_dataloader")}
    if split not in stages:
        raise ValueError(f"`split` must be 'test' or 'val', got {split!r}")
    stage, loader_name = stages[split]
    datamodule.prepare_data()
    datamodule.setup(stage)
    batches, remaining = [], num_samples
    for batch in getattr(datamodule, loader_name)():
        size = len(next(iter(batch.values())))
        batches.append({k: v[:remaining] for k, v in batch.items()} if size > remaining else batch)
        remaining -= min(size, remaining)
        if remaining == 0:
            return batches
    raise ValueError(
        f"the {split} split has only {num_samples - remaining} examples, asked for {num_samples}"
    )
