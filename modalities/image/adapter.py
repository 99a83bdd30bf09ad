"""Pixel-space flow adapter for images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmflow.modality import Batch, Condition, ModalityAdapter

from .classifier import SmallCNN
from .evaluators import ClassAccuracy, ClassifierFD, InceptionFID
from .media import save_image_grid

__all__ = ["PixelAdapter"]


class PixelAdapter(ModalityAdapter):
    """The flow transports pixels: ``x1 = 2 * image - 1`` (in [-1, 1]); ``decode`` inverts it.

    ``decode(x) = clamp((x + 1) / 2, 0, 1)``. Class-conditional when ``num_classes`` is set:
    the condition is ``{"class_labels": batch["label"]}`` and the null condition is the label
    ``num_classes`` (the MMDiT's null class, used for CFG dropout and guidance). With
    ``num_classes=None`` the condition is empty and :meth:`conditioned` is ``False``.

    Evaluators (built once here, so a missing file fails at construction):

    - ``fid``: :class:`InceptionFID` on ``fid_max_samples`` images per side (0 = off; about
      0.1–0.4 s an image on CPU);
    - ``fd_ours``: :class:`ClassifierFD` when ``classifier_path`` is set;
    - ``class_accuracy``: :class:`ClassAccuracy` when ``classifier_path`` is set and the
      adapter is class-conditional.

    Args:
        num_classes: number of classes, or ``None`` for unconditional generation.
        classifier_path: classifier weights from ``python -m modalities.image.classifier``.
        fid_max_samples: images per side for Inception FID; 0 disables it.
        fd_max_samples: images per side for FD-ours.
        keep_real_statistics: keep the real side of FID/FD-ours across validation epochs
            (the validation set is fixed, so its features need computing only once).
        grid_rows: images per row in saved PNG grids (``None``: a square-ish grid).
        image_shape: ``(channels, height, width)`` of generated images, needed to sample
            without data (``mmflow sample``).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        classifier_path: str | None = None,
        fid_max_samples: int = 0,
        fd_max_samples: int = 10000,
        keep_real_statistics: bool = True,
        grid_rows: int | None = None,
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.grid_rows = grid_rows
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        self.metrics = self._build_evaluators(
            classifier_path, fid_max_samples, fd_max_samples, not keep_real_statistics
        )

    def _build_evaluators(
        self,
        classifier_path: str | None,
        fid_max_samples: int,
        fd_max_samples: int,
        reset_real: bool,
    ) -> nn.ModuleDict:
        metrics = nn.ModuleDict()
        if fid_max_samples > 0:
            metrics["fid"] = InceptionFID(fid_max_samples, reset_real_features=reset_real)
        if classifier_path is not None:
            classifier = SmallCNN.from_pretrained(classifier_path)
            metrics["fd_ours"] = ClassifierFD(
                classifier, fd_max_samples, reset_real_features=reset_real
            )
            if self.conditioned():
                metrics["class_accuracy"] = ClassAccuracy(classifier)
        return metrics

    def encode(self, batch: Batch) -> tuple[Tensor, Condition]:
        """``(2 * image - 1, {"class_labels": label})`` (empty condition if unconditional)."""
        x1 = batch["image"] * 2 - 1
        if not self.conditioned():
            return x1, {}
        return x1, {"class_labels": batch["label"].long()}

    def decode(
        self, x1: Tensor, cond: Condition | None = None, batch: Batch | None = None
    ) -> Tensor:
        """Images in [0, 1]: ``clamp((x1 + 1) / 2, 0, 1)``."""
        return ((x1 + 1) / 2).clamp(0, 1)

    def null_condition(self, cond: Condition) -> Condition:
        """Every label replaced by the null class ``num_classes``."""
        if not self.conditioned():
            return {}
        return {"class_labels": torch.full_like(cond["class_labels"], self.num_classes)}

    def sample_conditions(self, num_samples: int) -> tuple[tuple[int, ...], Condition]:
        """Noise shape for ``num_samples`` images and labels cycling ``0, 1, ..., C-1, 0, ...``."""
        if self.image_shape is None:
            raise ValueError(
                "PixelAdapter: set `image_shape` (e.g. [1, 28, 28]) to sample without data"
            )
        shape = (num_samples, *self.image_shape)
        if not self.conditioned():
            return shape, {}
        return shape, {"class_labels": torch.arange(num_samples) % self.num_classes}

    def conditioned(self) -> bool:
        return self.num_classes is not None

    def evaluators(self) -> nn.ModuleDict:
        """The configured metrics, keyed ``fid``, ``fd_ours``, ``class_accuracy``."""
        return self.metrics

    def save_media(
        self, media: Any, directory: Path, name: str, batch: Batch | None = None
    ) -> list[Path]:
        """Write the decoded images as ``directory/name.png`` (one grid)."""
        return [save_image_grid(media, Path(directory) / f"{name}.png", nrow=self.grid_rows)]
