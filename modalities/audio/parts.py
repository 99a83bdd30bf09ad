"""The shared base of the audio modality's own trained parts (the mel-VAE, the vocoder).

:class:`AudioPart` trains on one waveform entry of the audio datamodule's batches
(``batch_key``), logs the losses its subclass computes, and saves itself to a folder at the
end of fit (``export_dir``) that the flow's recipes load. Saving and loading are the core's
:class:`mmflow.pretrained.PretrainedPart`: the constructor arguments (saved hyperparameters,
less ``export_dir``, which says where the folder goes, not what the model is) and the weights.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from torch import Tensor

from mmflow.pretrained import PretrainedPart

__all__ = ["AudioPart"]


class AudioPart(PretrainedPart, pl.LightningModule):
    """A LightningModule trained on ``batch[hparams.batch_key]`` waveforms, saved as a folder.

    Subclasses save ``batch_key`` and ``export_dir`` as hyperparameters and implement
    :meth:`batch_losses` (a dict with ``"loss"``; ``"mel_l1"`` is shown in the progress bar).
    """

    not_pretrained = ("export_dir",)

    def batch_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        raise NotImplementedError

    def waveforms_of(self, batch: dict[str, Any]) -> Tensor:
        """``batch[batch_key]``, or a ``KeyError`` naming the key and what the batch has."""
        key = self.hparams.batch_key
        if key not in batch:
            raise KeyError(
                f"{type(self).__name__}: batch has no `{key}` (batch_key); it has {sorted(batch)}"
            )
        return batch[key]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses = self.batch_losses(batch)
        self._log_losses("train", losses)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._log_losses("val", self.batch_losses(batch))

    def _log_losses(self, stage: str, losses: dict[str, Tensor]) -> None:
        for name, value in losses.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "mel_l1")

    def export(self) -> None:
        """Save to ``export_dir`` (if set, on the main process); called at the end of fit."""
        if self.hparams.export_dir is not None and self.trainer.is_global_zero:
            saved = self.save_pretrained(self.hparams.export_dir)
            print(f"{type(self).__name__} saved to {saved}")

    def on_fit_end(self) -> None:
        self.export()
