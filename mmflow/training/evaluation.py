"""The validation, test and predict loops every media-producing LightningModule shares.

A subclass says how one batch is scored and turned into media; this base runs the loops the
same way for all of them (the flow of every modality, and baselines compared with it):

- each validation / test batch gets a generator seeded with ``sample_seed + batch_idx``, so
  epochs and models are compared on the same noise;
- ``{stage}/loss`` (and any further terms) is logged for every batch that defines one, averaged
  over data-parallel processes;
- the first ``val_sample_batches`` validation batches (every test batch) also produce media,
  which update the evaluators (``metric.update(media, batch)``, torchmetrics states summed
  over processes at ``compute``) and, for the first batch, are written by :meth:`save_media`
  under ``<log dir>/samples`` by the first process;
- at the end of the epoch every evaluator is logged as ``{stage}/<name>`` and reset.

Evaluators stay out of the module tree: their feature networks are not weights of the model
and must not be written into every checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from mmflow.metrics import log_and_reset
from mmflow.modality import Batch

__all__ = ["EvaluatedBatch", "EvaluatedModule"]


@dataclass
class EvaluatedBatch:
    """What one batch gave: its loss (and terms; ``None`` when the batch defines none), its
    size, and media if they were made."""

    loss: Tensor | None
    size: int
    media: Any | None = None
    terms: dict[str, Tensor] = field(default_factory=dict)


class EvaluatedModule(pl.LightningModule):
    """Base of LightningModules whose validation and test loops score generated media.

    Subclasses implement :meth:`evaluate_batch` and :meth:`predict_media`, call
    :meth:`use_evaluators` in ``__init__``, and may override :meth:`save_media`.
    ``sample_seed`` and ``val_sample_batches`` are read from ``self.hparams`` when saved there.
    """

    _evaluators: dict[str, nn.Module]

    def use_evaluators(self, evaluators: Mapping[str, nn.Module]) -> None:
        """The metrics updated with every media batch (kept out of the module tree)."""
        self._evaluators = dict(evaluators)

    def evaluate_batch(
        self, batch: Batch, generator: torch.Generator, with_media: bool
    ) -> EvaluatedBatch:
        """The loss of ``batch`` and, if ``with_media``, the media it produces."""
        raise NotImplementedError

    def predict_media(self, batch: Batch, generator: torch.Generator) -> Any:
        """The media ``batch`` produces (``mmflow predict``)."""
        raise NotImplementedError

    def save_media(
        self, media: Any, directory: Path, name: str, batch: Batch | None = None
    ) -> list[Path]:
        """Write media a person can look at or listen to; returns the written files."""
        return []

    def _hparam(self, name: str, default: Any) -> Any:
        return self.hparams.get(name, default)

    def _generator(self, batch_idx: int) -> torch.Generator:
        seed = self._hparam("sample_seed", 0) + batch_idx
        return torch.Generator(device=self.device).manual_seed(seed)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Loss on fixed noise; the first ``val_sample_batches`` batches also make media."""
        self._evaluate(batch, batch_idx, "val", self._hparam("val_sample_batches", None))

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """As validation, on the test split, making and scoring media for *every* batch."""
        self._evaluate(batch, batch_idx, "test", None)

    def predict_step(self, batch: Batch, batch_idx: int) -> Any:
        """Media made under each example's condition, on seeded noise."""
        return self.predict_media(batch, self._generator(batch_idx))

    def _evaluate(
        self, batch: Batch, batch_idx: int, stage: str, sample_batches: int | None
    ) -> None:
        with_media = sample_batches is None or batch_idx < sample_batches
        result = self.evaluate_batch(batch, self._generator(batch_idx), with_media)
        if result.loss is not None:
            self.log(
                f"{stage}/loss", result.loss, prog_bar=True, batch_size=result.size, sync_dist=True
            )
        for name, value in result.terms.items():
            self.log(f"{stage}/{name}", value, batch_size=result.size, sync_dist=True)
        if result.media is None:
            return
        for metric in self._evaluators.values():
            metric.to(self.device).update(result.media, batch)
        if batch_idx == 0:
            # every process asks for the folder (Lightning resolves it collectively); one writes
            directory = self._media_dir()
            if self.trainer.is_global_zero:
                name = f"epoch{self.current_epoch:04d}" if stage == "val" else stage
                self.save_media(result.media, directory, name, batch)

    def on_validation_epoch_end(self) -> None:
        """Log every evaluator as ``val/<name>``; a metric returning a dict logs each entry."""
        log_and_reset(self, self._evaluators, "val")

    def on_test_epoch_end(self) -> None:
        """Log every evaluator as ``test/<name>``."""
        log_and_reset(self, self._evaluators, "test")

    def _media_dir(self) -> Path:
        root = self.trainer.log_dir or self.trainer.default_root_dir
        return Path(root) / "samples"
