"""Images: pixel-space flow matching on MNIST-5k, Fashion-MNIST, sklearn digits or PNG folders.

- datamodules (:mod:`.data`) yield ``{"image": [B, C, H, W] in [0, 1], "label": [B]}``;
- :class:`PixelAdapter` maps images to ``[-1, 1]`` and labels to the MMDiT's class condition;
- evaluators: "FID (fid-helper Inception)", "FD-ours" and class accuracy with our classifier;
- :func:`save_image_grid` writes PNG grids.
"""

from .adapter import PixelAdapter
from .classifier import SmallCNN, load_classifier, save_classifier, train_classifier
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

__all__ = [
    "ClassAccuracy",
    "ClassifierFD",
    "FashionMNIST",
    "ImageDataModule",
    "ImageFolder",
    "ImageFrechetDistance",
    "InceptionFID",
    "MNIST5k",
    "PixelAdapter",
    "SklearnDigits",
    "SmallCNN",
    "default_cache_dir",
    "load_classifier",
    "read_idx",
    "save_classifier",
    "save_image_grid",
    "train_classifier",
]
