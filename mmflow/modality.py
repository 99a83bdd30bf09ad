"""The modality contract: what a modality package gives the shared core.

A modality provides a ``LightningDataModule`` that yields dict batches of tensors, and a
:class:`ModalityAdapter` that turns a batch into what the flow transports and back. The
training module (:class:`mmflow.training.FlowMatching`) only ever calls the adapter, so images,
audio, gestures and shapes train with one module.

The condition dict returned by :meth:`ModalityAdapter.encode` holds exactly the keyword
arguments of the network (``model(x_t, t, **cond)``), e.g. ``class_labels``, ``context``,
``context_mask``, ``pooled`` or ``x_mask`` for :class:`mmflow.nn.MMDiT`. A key ``x_mask``
(bool, ``True`` = real element) also masks the loss over padded elements.

How each planned modality fits the same shape:

- **Images** (pixels or a VAE latent): ``encode`` scales pixels to [-1, 1] (or encodes them
  with a frozen VAE) and returns ``{"class_labels": y}`` or text tokens as a context stream;
  ``null_condition`` swaps in the null class / the empty caption; ``decode`` maps back to
  images in [0, 1]; evaluators are FID-style metrics and classifier accuracy.
- **Language-queried audio separation** (FlowSep): ``x1`` is the mel-VAE latent of the target
  source; the condition is the *mixture* latent (a context stream with its own positions, or
  channels concatenated by the adapter before patchify) plus the text query as a second
  context stream with a padding mask. ``null_condition`` replaces only the text query (the
  mixture is never dropped: separation without it is meaningless). ``decode`` runs the frozen
  VAE decoder and the vocoder to a waveform; evaluators are SI-SDR and friends.
- **Co-speech gestures** (GestureLSM): ``x1`` is a sequence of body-part motion latents
  ``[B, T, C]`` from a frozen motion VAE, with ``x_mask`` for variable length; speech
  features per frame form a context stream (1-D RoPE aligned in time with the motion), seed
  frames may be a pooled vector; shortcut training adds ``step_size``. ``decode`` gives joint
  rotations; evaluators are FGD and beat consistency.
- **3D shapes** (TripoSG-style latents, Mosaic-SDF): ``x1`` is a *set* of latent tokens
  ``[B, N, C]`` (no positions: the MMDiT set tokenizer keeps permutation equivariance) from a
  frozen SDF VAE, or a set of local SDF grids; the condition is a class or an image/text
  embedding. ``decode`` runs the VAE decoder and marching cubes to meshes; evaluators are
  Chamfer distance and F-score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmflow.sources import GaussianSource, Source

Batch = dict[str, Any]
Condition = dict[str, Any]


class ModalityAdapter(nn.Module):
    """Base class of a modality's adapter between dict batches, the flow and media.

    Subclasses implement :meth:`encode`, :meth:`decode` and :meth:`null_condition`; they may
    override :meth:`evaluators` and :meth:`save_media`.

    Frozen sub-models (a VAE, a text encoder, a vocoder) are loaded in ``__init__`` from their
    own local files (:meth:`mmflow.pretrained.PretrainedPart.from_pretrained`) and held as
    :class:`mmflow.pretrained.Frozen` parts: no gradients, eval mode while the flow trains,
    and *out of the adapter's* ``state_dict`` — a flow checkpoint holds what the flow learned,
    not copies of 90 MB encoders, and swapping one frozen part for another (Griffin-Lim for a
    vocoder) at evaluation time loads the same checkpoint.

    :attr:`source` is the distribution the flow starts from (:mod:`mmflow.sources`): standard
    Gaussian noise unless an adapter takes another, e.g. one centred on its condition.
    """

    source: Source = GaussianSource()

    def encode(self, batch: Batch) -> tuple[Tensor, Condition]:
        """``(x1, cond)``: the data the flow transports and the network's keyword arguments."""
        raise NotImplementedError

    def decode(self, x1: Tensor, cond: Condition, batch: Batch | None = None) -> Any:
        """Generated ``x1`` back to media (images, waveforms, meshes, joint rotations).

        ``batch`` is the data batch ``cond`` was encoded from, when there is one: decoding may
        need more of it than the network saw (a separator reuses the mixture's STFT phase).
        """
        raise NotImplementedError

    def null_condition(self, cond: Condition) -> Condition:
        """The unconditional version of ``cond`` (for CFG dropout in training and guidance)."""
        raise NotImplementedError

    def sample_conditions(self, num_samples: int) -> tuple[tuple[int, ...], Condition]:
        """The shape of ``x1`` and a condition for ``num_samples`` generations without data.

        Used by ``mmflow sample`` (e.g. class labels cycling through the classes). Modalities
        whose conditions only come from data (a mixture to separate, speech to gesture to)
        keep this default, and are sampled from a datamodule instead.
        """
        raise NotImplementedError(
            f"{type(self).__name__} draws its conditions from data: sample with a datamodule"
        )

    def conditioned(self) -> bool:
        """Whether ``null_condition`` differs from the condition (``False`` for unconditional)."""
        return True

    def noise_like(self, x1: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Standard Gaussian noise of ``x1``'s shape, the ``eps`` of :attr:`source`."""
        return torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)

    def source_like(
        self, x1: Tensor, cond: Condition, generator: torch.Generator | None = None
    ) -> Tensor:
        """A sample ``x0`` of :attr:`source` for each example of ``x1`` under ``cond``."""
        return self.source.from_noise(self.noise_like(x1, generator), cond)

    def evaluators(self) -> nn.ModuleDict:
        """Metrics updated as ``metric.update(generated_media, batch)`` during validation."""
        return nn.ModuleDict()

    def metric_names(self) -> dict[str, str]:
        """Evaluator key -> the name to report it under (a metric's ``display_name`` if set)."""
        return {
            key: getattr(metric, "display_name", key) for key, metric in self.evaluators().items()
        }

    def save_media(
        self, media: Any, directory: Path, name: str, batch: Batch | None = None
    ) -> list[Path]:
        """Write media a person can look at or listen to; returns the written files.

        ``batch`` (when the media came from data) lets a modality write references beside
        the generations, e.g. the mixture and the true source beside a separated estimate.
        """
        return []


def drop_conditions(cond: Condition, null: Condition, drop: Tensor) -> Condition:
    """Per-sample mix of ``cond`` and ``null``: sample ``b`` takes ``null`` where ``drop[b]``.

    Tensors with a leading batch dimension are mixed with ``torch.where``; dicts recursively;
    other values (``None``, numbers) must be equal in both and pass through.
    """
    mixed: Condition = {}
    for key, value in cond.items():
        other = null.get(key, value)
        if isinstance(value, Tensor):
            if other.shape != value.shape:
                raise ValueError(
                    f"null_condition changed the shape of `{key}`: "
                    f"{tuple(value.shape)} -> {tuple(other.shape)}"
                )
            mask = drop.view(-1, *([1] * (value.ndim - 1)))
            mixed[key] = torch.where(mask, other, value)
        elif isinstance(value, dict):
            mixed[key] = drop_conditions(value, other, drop)
        else:
            mixed[key] = value
    return mixed


def condition_rows(cond: Condition, start: int, stop: int) -> Condition:
    """Examples ``start:stop`` of a condition: tensors and lists sliced along their first (batch)
    dimension, as CFG batches them, dicts recursively; other values (``None``, numbers,
    strings) are not per example and pass through."""
    return {
        key: condition_rows(value, start, stop)
        if isinstance(value, dict)
        else value[start:stop]
        if isinstance(value, Tensor | list | tuple)
        else value
        for key, value in cond.items()
    }


def to_device(values: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move the tensors of a batch or condition dict (nested dicts included) to ``device``."""
    return {
        k: v.to(device)
        if isinstance(v, Tensor)
        else to_device(v, device)
        if isinstance(v, dict)
        else v
        for k, v in values.items()
    }
