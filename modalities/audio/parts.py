"""The shared base of the audio modality's own trained parts (the mel-VAE, the vocoder).

:class:`AudioPart` trains on one waveform entry of the audio datamodule's batches
(``batch_key``), logs the losses its subclass computes, and saves itself to a folder at the
end of fit (``export_dir``) that the flow's recipes load.

A folder holds ``config.json`` — ``{"class": name, "init_args": constructor arguments}`` — and
``model.safetensors`` (the state dict), both written atomically. Only arguments the class's
constructor takes are stored: LightningCLI adds ``_class_path`` / ``_instantiator`` to the
hyperparameters, and ``export_dir`` says where the folder goes, not what the model is.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from typing_extensions import Self

from mmflow.files import load_state, load_weights, read_json, save_weights, write_json

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "AudioPart", "PretrainedFolder"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
NOT_SAVED = frozenset({"export_dir"})

Module = TypeVar("Module", bound=nn.Module)


class PretrainedFolder:
    """``save_pretrained`` / ``from_pretrained`` for a LightningModule with saved hyperparameters."""

    hparams: Any

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` (constructor arguments) and ``model.safetensors``, atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        accepted = inspect.signature(type(self).__init__).parameters
        init_args = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in self.hparams.items()
            if key in accepted and key not in NOT_SAVED
        }
        save_weights(directory / WEIGHTS_NAME, self.state_dict())  # type: ignore[attr-defined]
        write_json(directory / CONFIG_NAME, {"class": type(self).__name__, "init_args": init_args})
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, map_location: str | torch.device = "cpu"
    ) -> Self:
        """Rebuild a model saved by :meth:`save_pretrained` (in eval mode, gradients off)."""
        directory = Path(directory)
        written_by = f"{cls.__name__}.save_pretrained"
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such folder (written by {written_by})")
        config = read_json(directory / CONFIG_NAME, written_by=written_by)
        if not isinstance(config, dict) or not isinstance(config.get("init_args"), dict):
            # a malformed file is a bad value, reported like invalid JSON
            raise ValueError(f"{directory / CONFIG_NAME}: missing the `init_args` object")  # noqa: TRY004
        try:
            model = cls(**config["init_args"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"{directory / CONFIG_NAME}: bad config ({error})") from None
        load_state(model, load_weights(directory / WEIGHTS_NAME), directory / WEIGHTS_NAME)
        model.requires_grad_(False)
        return model.eval().to(map_location)


class AudioPart(PretrainedFolder, pl.LightningModule):
    """A LightningModule trained on ``batch[hparams.batch_key]`` waveforms, saved as a folder.

    Subclasses save ``batch_key`` and ``export_dir`` as hyperparameters and implement
    :meth:`batch_losses` (a dict with ``"loss"``; ``"mel_l1"`` is shown in the progress bar).
    """

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
