"""A small CNN classifier: the feature network of FD-ours and the judge of class accuracy.

Train and cache one with::

    python -m modalities.image.classifier --dataset mnist5k --out .cache/classifiers/mnist5k

It is a pretrained part (:class:`mmflow.pretrained.PretrainedPart`): a folder with the
architecture, dataset and validation accuracy in ``config.json`` and the weights in
``model.safetensors``. Its penultimate activations (``feature_dim`` values) are the
feature space of :class:`modalities.image.evaluators.ClassifierFD` — numbers computed there are
"FD-ours", not FID.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmflow.pretrained import PretrainedPart

from .data import FashionMNIST, ImageDataModule, ImageFolder, MNIST5k, SklearnDigits

log = logging.getLogger(__name__)

__all__ = ["ClassifierConfig", "SmallCNN", "main", "train_classifier"]


@dataclass
class ClassifierConfig:
    """Architecture of :class:`SmallCNN` (stored as JSON beside the weights)."""

    in_channels: int = 1
    num_classes: int = 10
    width: int = 32
    feature_dim: int = 128


POOLED_SIZE = 4


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3×3 conv + BatchNorm + ReLU layers, then 2×2 max-pooling (halves H and W)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNN(PretrainedPart, nn.Module):
    """Two conv blocks (``width``, ``2 width`` channels), average pooling to 4×4, an MLP head.

    ``features(x)`` is the ``feature_dim``-d penultimate layer (after ReLU) used for FD-ours;
    ``forward(x)`` gives class logits. Input: images in [0, 1], ``[B, in_channels, H, W]``
    with ``H, W ≥ 4``.
    """

    creation_hint = (
        "create it with `python -m modalities.image.classifier --dataset mnist5k --out {path}`"
    )

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128
    ) -> None:
        super().__init__()
        self.config = ClassifierConfig(in_channels, num_classes, width, feature_dim)
        self.body = nn.Sequential(_conv_block(in_channels, width), _conv_block(width, 2 * width))
        self.pool = nn.AdaptiveAvgPool2d(POOLED_SIZE)
        self.embed = nn.Sequential(
            nn.Linear(2 * width * POOLED_SIZE**2, feature_dim), nn.ReLU(inplace=True)
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(feature_dim, num_classes))

    def pretrained_init_args(self) -> dict[str, int]:
        """The architecture (``config.json`` of its folder)."""
        return asdict(self.config)

    def features(self, images: Tensor) -> Tensor:
        """Penultimate features ``[B, feature_dim]`` of images in [0, 1]."""
        hidden = self.pool(self.body(2 * images - 1))
        return self.embed(hidden.flatten(1))

    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``[B, num_classes]``."""
        return self.head(self.features(images))


def _random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill), one ``grid_sample`` call."""
    batch, _, height, width = images.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (batch, 2), generator=generator).float()
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = 2 * shifts[:, 0] / width
    theta[:, 1, 2] = 2 * shifts[:, 1] / height
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def accuracy(model: nn.Module, loader) -> float:
    """Top-1 accuracy of ``model`` over a dataloader of dict batches."""
    model.eval()
    correct = total = 0
    for batch in loader:
        correct += int((model(batch["image"]).argmax(1) == batch["label"]).sum())
        total += len(batch["label"])
    return correct / max(total, 1)


def train_classifier(
    datamodule: ImageDataModule,
    out_path: str | Path | None = None,
    epochs: int = 8,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    max_shift: int = 2,
    width: int = 32,
    feature_dim: int = 128,
    seed: int = 0,
) -> tuple[SmallCNN, float]:
    """Train a :class:`SmallCNN` on the train split; returns it and its validation accuracy.

    AdamW with a cosine learning-rate decay, cross-entropy, random shifts of up to
    ``max_shift`` pixels as augmentation. If ``out_path`` is given the classifier is saved
    there as a pretrained-part folder (with the dataset and validation accuracy as its info).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    datamodule.setup("fit")
    channels = datamodule.image_shape[0]
    model = SmallCNN(channels, datamodule.num_classes, width, feature_dim)
    loader = datamodule.train_dataloader()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for batch in loader:
            images = (
                _random_shift(batch["image"], max_shift, generator) if max_shift else batch["image"]
            )
            loss = F.cross_entropy(model(images), batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        log.info(
            "epoch %d: train loss %.4f (%.1f s)",
            epoch + 1,
            loss.item(),
            time.perf_counter() - start,
        )
    val_accuracy = accuracy(model, datamodule.val_dataloader())
    log.info("validation accuracy %.4f after %.1f s", val_accuracy, time.perf_counter() - start)
    model.eval()
    if out_path is not None:
        info = {"dataset": datamodule.name, "val_accuracy": val_accuracy, "epochs": epochs}
        model.save_pretrained(out_path, info=info)
    return model, val_accuracy


DATASETS = {
    "mnist5k": MNIST5k,
    "fashion-mnist": FashionMNIST,
    "digits": SklearnDigits,
    "folder": ImageFolder,
}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m modalities.image.classifier",
        description="Train the small CNN used by FD-ours and class accuracy, and cache its weights.",
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist5k")
    parser.add_argument(
        "--root", help="data folder (fashion-mnist: IDX files; folder: class subfolders)"
    )
    parser.add_argument("--out", required=True, help="folder to write (a pretrained part)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0, help="split and training seed")
    parser.add_argument("--width", type=int, default=32, help="channels of the first conv block")
    parser.add_argument(
        "--feature-dim", type=int, default=128, help="size of the penultimate (feature) layer"
    )
    parser.add_argument("--limit", type=int, help="train on at most this many images")
    parser.add_argument(
        "--cache-dir", help="datamodule cache root (default $MMFLOW_CACHE or ~/.cache/mmflow)"
    )
    return parser.parse_args(argv)


def _datamodule(args: argparse.Namespace) -> ImageDataModule:
    common = {
        "batch_size": args.batch_size,
        "seed": args.seed,
        "limit": args.limit,
        "cache_dir": args.cache_dir,
    }
    if args.dataset in ("fashion-mnist", "folder"):
        if args.root is None and args.dataset == "folder":
            raise SystemExit("--dataset folder needs --root PATH (one subfolder per class)")
        if args.root is not None:
            common["root"] = args.root
    return DATASETS[args.dataset](**common)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parse_args(argv)
    try:
        datamodule = _datamodule(args)
        start = time.perf_counter()
        _, val_accuracy = train_classifier(
            datamodule,
            args.out,
            epochs=args.epochs,
            lr=args.lr,
            width=args.width,
            feature_dim=args.feature_dim,
            seed=args.seed,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"validation accuracy {val_accuracy:.4f} in {time.perf_counter() - start:.1f} s; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
