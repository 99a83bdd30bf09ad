"""Images: pixel-space flow matching on MNIST-5k, Fashion-MNIST, sklearn digits or PNG folders.

- datamodules (:mod:`.data`) yield ``{"image": [B, C, H, W] in [0, 1], "label": [B]}``;
- :class:`PixelAdapter` maps images to ``[-1, 1]`` and labels to the MMDiT's class condition;
- evaluators: "FID (fid-helper Inception)", "FD-ours" and class accuracy with our classifier;
- :func:`save_image_grid` writes PNG grids;
- degradations for inverse problems (:mod:`.operators`): :class:`Inpainting`,
  :class:`SuperResolution`, :class:`GaussianDeblur`.
"""

from .adapter import PixelAdapter
from .classifier import SmallCNN, train_classifier
from .data import (
    FashionMNIST,
    ImageDataModule,
    ImageFolder,
    MNIST5k,
    SklearnDigits,
    default_cache_dir,
    read_idx,
)
from .evaluators import ClassAccuracy, ClassifierFD, ImageFrechetDistance, InceptionFID
from .media import save_image_grid
from .operators import GaussianDeblur, Inpainting, SuperResolution

__all__ = [
    "ClassAccuracy",
    "ClassifierFD",
    "FashionMNIST",
    "GaussianDeblur",
    "ImageDataModule",
    "ImageFolder",
    "ImageFrechetDistance",
    "InceptionFID",
    "Inpainting",
    "MNIST5k",
    "PixelAdapter",
    "SklearnDigits",
    "SmallCNN",
    "SuperResolution",
    "default_cache_dir",
    "read_idx",
    "save_image_grid",
    "train_classifier",
]
