"""One folder format for the audio modality's own trained parts (the mel-VAE, the vocoder).

A folder holds ``config.json`` — ``{"class": name, "init_args": constructor arguments}`` — and
``model.safetensors`` (the state dict), both written atomically. Only arguments the class's
constructor takes are stored: LightningCLI adds ``_class_path`` / ``_instantiator`` to the
hyperparameters, and ``export_dir`` says where the folder goes, not what the model is.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from typing_extensions import Self

from mmflow.files import load_state, load_weights, read_json, save_weights, write_json

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "PretrainedFolder"]

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
