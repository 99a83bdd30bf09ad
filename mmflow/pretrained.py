"""Pretrained parts: the sub-models a modality builds on, saved, loaded and frozen one way.

A part is a VAE, a vocoder, a text encoder, the classifier behind a metric: trained once
(by its own recipe or command), then used frozen by a flow, an objective or an evaluator.

**Saving and loading.** A class that mixes in :class:`PretrainedPart` is saved to a folder:

- ``config.json``: ``{"class": "MelVAE", "module": "modalities.audio.vae", "init_args":
  {...}, "info": {...}, "mmflow_version": "..."}`` — the constructor arguments (JSON values)
  and what its trainer wants to record (validation accuracy, data, settings);
- ``model.safetensors``: the state dict.

Both files are written atomically. A folder is loaded *through its class*,
``MelVAE.from_pretrained(folder)``: the file must name that class, and no code named by a
file is ever imported. Errors name the file and, where the class says how, the command that
creates it.

**Freezing.** ``Frozen(part)`` holds a part the way every owner (an adapter, an evaluator, an
objective) needs it: its parameters take no gradient and are not the owner's parameters (no
optimizer or EMA sees them), it stays in eval mode whatever the owner's mode, it is left out
of the owner's ``state_dict`` (a flow checkpoint holds what the flow learned, not copies of
encoders, and a part can be swapped at evaluation time), and it follows the owner's
``.to()`` / ``.cuda()`` / ``.half()``. Attribute access and calls go to the part.

**Training.** A part with its own recipe (a modality's VAE, vocoder ...) subclasses
:class:`TrainablePart`: a LightningModule whose steps log the losses the subclass computes
and which saves itself to ``export_dir`` at the end of fit. A KL auto-encoder whose latents a
flow transports subclasses :class:`LatentAutoencoderPart`, which also measures the latent scale
at the end of fit.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar, Self

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

import mmflow
from mmflow.files import load_state, load_weights, read_json, save_weights, write_json
from mmflow.numerics import inverse_std

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "Frozen",
    "LatentAutoencoderPart",
    "PretrainedPart",
    "TrainablePart",
    "freeze",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def freeze(module: nn.Module) -> nn.Module:
    """Turn gradients off and switch to eval mode (dropout and batch statistics fixed).

    Parameter by parameter, so that TorchScript modules (which refuse ``requires_grad_``)
    freeze too.
    """
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()


class Frozen(nn.Module):
    """A frozen part held outside its owner's parameters and state dict (module docstring).

    ``Frozen(vae).encode(x)`` and ``Frozen(vae)(x)`` reach the part; ``.part`` is the part itself.
    """

    def __init__(self, part: nn.Module) -> None:
        super().__init__()
        # Stored past nn.Module's __setattr__, so the part is not a registered submodule.
        object.__setattr__(self, "part", freeze(part))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.part(*args, **kwargs)

    def _apply(self, fn: Any, recurse: bool = True) -> Self:
        self.part._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if "part" not in self.__dict__:
                raise
            return getattr(self.__dict__["part"], name)

    def extra_repr(self) -> str:
        return f"part={type(self.part).__name__} (frozen, outside the state dict)"


class PretrainedPart:
    """Mixin: :meth:`save_pretrained` / :meth:`from_pretrained` for an ``nn.Module``.

    The constructor arguments come from :meth:`pretrained_init_args`: by default a
    LightningModule's saved hyperparameters that its constructor takes, less
    ``not_pretrained`` (arguments that say where to save, not what the model is); other modules
    override it. ``creation_hint`` (formatted with ``path``) tells a user how to create a
    missing folder.
    """

    not_pretrained: ClassVar[tuple[str, ...]] = ()
    creation_hint: ClassVar[str] = ""

    def pretrained_init_args(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this part, as JSON values."""
        hparams = getattr(self, "hparams", None)
        if hparams is None:
            raise NotImplementedError(
                f"{type(self).__name__} has no saved hyperparameters: define pretrained_init_args"
            )
        accepted = inspect.signature(type(self).__init__).parameters
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in hparams.items()
            if key in accepted and key not in self.not_pretrained
        }

    def save_pretrained(self, directory: str | Path, info: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` (class, constructor arguments, ``info``) and ``model.safetensors``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cls = type(self)
        config = {
            "class": cls.__qualname__,
            "module": cls.__module__,
            "init_args": self.pretrained_init_args(),
            "info": dict(info or {}),
            "mmflow_version": mmflow.__version__,
        }
        save_weights(directory / WEIGHTS_NAME, self.state_dict())  # type: ignore[attr-defined]
        write_json(directory / CONFIG_NAME, config)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, map_location: str | torch.device = "cpu"
    ) -> Self:
        """Rebuild a part saved by :meth:`save_pretrained`, frozen and in eval mode.

        What the trainer recorded is ``part.pretrained_info``.

        Raises:
            FileNotFoundError: no such folder or file (with the command that creates it).
            ValueError: the folder holds another class, a bad config or weights that do not fit.
        """
        directory = Path(directory)
        hint = cls.creation_hint.format(path=directory)
        how = f"; {hint}" if hint else ""
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no {cls.__name__} folder{how}")
        config_path = directory / CONFIG_NAME
        config = read_json(config_path, written_by=f"{cls.__name__}.save_pretrained")
        if not isinstance(config, dict) or not isinstance(config.get("init_args"), dict):
            # a malformed file is a bad value, reported like invalid JSON
            raise ValueError(f"{config_path}: missing the `init_args` object{how}")  # noqa: TRY004
        if config.get("class") != cls.__qualname__:
            raise ValueError(
                f"{config_path}: holds a `{config.get('class')}`, not a `{cls.__qualname__}`"
            )
        try:
            part = cls(**config["init_args"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"{config_path}: bad `init_args` ({error})") from None
        load_state(part, load_weights(directory / WEIGHTS_NAME), directory / WEIGHTS_NAME)
        part.pretrained_info = dict(config.get("info") or {})
        freeze(part)
        return part.to(map_location)


class TrainablePart(PretrainedPart, pl.LightningModule):
    """A part trained by its own recipe and saved as a folder at the end of fit.

    Subclasses save ``export_dir`` as a hyperparameter (``None`` saves nothing; it says where
    the folder goes, not what the model is, so it is not a constructor argument of the saved
    part) and implement :meth:`batch_losses`: a dict with ``"loss"``, the sum that is
    minimised, and any terms to log. ``progress_bar`` names the terms shown while training.
    """

    not_pretrained: ClassVar[tuple[str, ...]] = ("export_dir",)
    progress_bar: ClassVar[tuple[str, ...]] = ()

    def batch_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        raise NotImplementedError

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses = self.batch_losses(batch)
        self.log_losses("train", losses)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log_losses("val", self.batch_losses(batch))

    def log_losses(self, stage: str, losses: dict[str, Tensor]) -> None:
        """Log every term as ``stage/name``."""
        for name, value in losses.items():
            self.log(f"{stage}/{name}", value, prog_bar=name in self.progress_bar)

    def export(self) -> None:
        """Save to ``export_dir`` (if set, on the main process, and not in a smoke run:
        ``fast_dev_run`` must not replace a trained part by a one-step one)."""
        if self.hparams.export_dir is None or not self.trainer.is_global_zero:
            return
        if self.trainer.fast_dev_run:
            print(f"{type(self).__name__}: a fast_dev_run exports nothing")
            return
        saved = self.save_pretrained(self.hparams.export_dir)
        print(f"{type(self).__name__} saved to {saved}")

    def on_fit_end(self) -> None:
        self.export()


class LatentAutoencoderPart(TrainablePart):
    """A trainable KL auto-encoder whose flow latents are ``latent_scale * mu``.

    ``latent_scale = 1 / std(mu)`` over the posterior means of training batches, so the flow
    sees unit-variance latents. It is measured at the end of fit on
    ``hparams.latent_scale_batches`` training batches (0 keeps the current value), before the
    part is saved. Subclasses register the ``latent_scale`` buffer and implement
    :meth:`posterior_mean` for one batch.
    """

    def posterior_mean(self, batch: dict[str, Any]) -> Tensor:
        """The unscaled posterior means ``mu`` of a batch's data."""
        raise NotImplementedError

    @torch.no_grad()
    def estimate_latent_scale(
        self, batches: Iterable[dict[str, Any]], max_batches: int | None = None
    ) -> float:
        """Set and return ``latent_scale = 1 / std(mu)`` over up to ``max_batches`` batches
        (``std^2 = E[mu^2] - E[mu]^2`` over every latent element, in float64)."""
        was_training = self.training
        self.eval()
        means = (self.posterior_mean(batch) for batch in islice(batches, max_batches))
        scale = inverse_std(means, source="estimate_latent_scale: `batches`")
        self.train(was_training)
        self.latent_scale.fill_(scale)
        return scale

    def on_fit_end(self) -> None:
        if self.hparams.latent_scale_batches > 0:
            self.estimate_latent_scale(
                self.trainer.train_dataloader, self.hparams.latent_scale_batches
            )
        self.export()
