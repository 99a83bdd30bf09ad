"""A small audio classifier on the source classes, and the query accuracy it scores.

Train and cache one with::

    python -m modalities.audio.classifier --out .cache/classifiers/lass

It is trained on the *clean target clips* of :class:`~modalities.audio.data.LASSMixtures`
(train split) and judges separated estimates: :class:`QueryAccuracy` is the fraction of
estimates that the classifier assigns to the class the text query asked for. The command also
reports the classifier's accuracy on the *unseparated* validation mixtures, the number an
estimate must beat to show that separation moved it towards the query. A mixture holds two
classes and the classifier names one of them, so the mixture number should not go much above
0.5 with SNRs symmetric about 0 dB; an estimate that beats it has moved towards the queried
source. ``docs/audio.md`` has the figures of the default command.

The classifier is a pretrained part (:class:`mmflow.pretrained.PretrainedPart`): a folder with
the architecture and class names (checked against the data's by :class:`QueryAccuracy`) and
the training report in ``config.json``, and the weights in ``model.safetensors``.

Query accuracy is *our* classifier's judgement on *our* ten classes. It is not CLAPScore (which
compares CLAP audio and text embeddings), and it is not comparable with numbers from other
classifiers or class sets.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmflow.pretrained import Frozen, PretrainedPart

from .data import LASSMixtures, MixtureDataModule, MixtureDataset
from .evaluators import PerClassMean
from .mel import LogMel

log = logging.getLogger(__name__)

__all__ = [
    "AudioClassifier",
    "QueryAccuracy",
    "classifier_accuracy",
    "main",
    "train_audio_classifier",
]

LOG_MEL_MEAN = -5.0
LOG_MEL_STD = 4.0
TRAIN_COMMAND = "python -m modalities.audio.classifier --out {path}"


def _conv_block(
    in_channels: int, out_channels: int, pool: bool = False, stride: int = 1
) -> nn.Sequential:
    """3×3 conv (``stride``) + BatchNorm + ReLU, then 2×2 max-pooling if ``pool``."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    return nn.Sequential(*layers)


class AudioClassifier(PretrainedPart, nn.Module):
    """Waveforms ``[B, T]`` at 16 kHz -> class logits ``[B, num_classes]``.

    The waveform becomes a log-mel (:class:`LogMel`, 64 bands, hop 160), standardised with
    the fixed ``(log_mel + 5) / 4``; four 3×3 conv blocks (``width``, ``2 width``, ``4 width``,
    ``4 width`` channels; the first with stride 2, the next two followed by 2×2 max-pooling, so
    64 mels × 128 frames become 8 × 16) and a global average over mels and frames give one
    ``4 width`` vector, and a linear layer the logits. The global pooling makes any clip
    length work (about 0.3 s and longer is sensible; LogMel needs more than 432 samples).

    Args:
        class_names: the classes, in logit order.
        width: channels of the first conv block.
        mel: the log-mel transform or its settings (default: FlowSep's 64-band 16 kHz
            :class:`LogMel`).
    """

    creation_hint = f"create it with `{TRAIN_COMMAND}`"

    def __init__(
        self,
        class_names: Sequence[str],
        width: int = 16,
        mel: LogMel | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(class_names) < 2 or len(set(class_names)) != len(class_names):
            raise ValueError(
                f"AudioClassifier needs at least two distinct class names, got {list(class_names)}"
            )
        if width < 1:
            raise ValueError(f"`width` must be positive, got {width}")
        self.class_names = tuple(class_names)
        self.width = width
        self.mel = LogMel(**mel) if isinstance(mel, dict) else mel or LogMel()
        self.body = nn.Sequential(
            _conv_block(1, width, stride=2),
            _conv_block(width, 2 * width, pool=True),
            _conv_block(2 * width, 4 * width, pool=True),
            _conv_block(4 * width, 4 * width),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * width, len(self.class_names)))
        self.pretrained_info: dict[str, Any] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def pretrained_init_args(self) -> dict[str, Any]:
        """The constructor arguments (``config.json`` of its folder)."""
        return {
            "class_names": list(self.class_names),
            "width": self.width,
            "mel": self.mel.settings(),
        }

    def forward(self, waveforms: Tensor) -> Tensor:
        """Class logits ``[B, num_classes]`` of waveforms ``[B, T]`` (or ``[T]``)."""
        features = (self.mel(waveforms) - LOG_MEL_MEAN) / LOG_MEL_STD
        hidden = self.body(features.unsqueeze(1))
        return self.head(hidden.mean(dim=(-2, -1)))

    @torch.no_grad()
    def predict(self, waveforms: Tensor, batch_size: int = 64) -> Tensor:
        """Predicted class indices ``[B]`` (float32, autocast off, in chunks of ``batch_size``).

        A clip whose logits are not finite gets ``-1`` (no class), so it never counts as right.
        """
        with torch.autocast(waveforms.device.type, enabled=False):
            logits = torch.cat([self(chunk.float()) for chunk in waveforms.split(batch_size)])
        finite = torch.isfinite(logits).all(dim=1)
        return torch.where(
            finite, logits.argmax(dim=1), torch.full_like(finite, -1, dtype=torch.long)
        )


# -- training --------------------------------------------------------------------------------


@torch.no_grad()
def classifier_accuracy(
    model: AudioClassifier, dataset: MixtureDataset, key: str = "target", batch_size: int = 64
) -> tuple[float, dict[str, float]]:
    """Accuracy of ``model`` on ``dataset[i][key]`` (``"target"`` or ``"mixture"``), overall and per class.

    The label is the mixture's target class, so on ``"mixture"`` it is the accuracy of
    "naming the queried source from the unseparated mixture".
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros(model.num_classes, dtype=torch.float64)
    counts = torch.zeros(model.num_classes, dtype=torch.float64)
    for start in range(0, len(dataset), batch_size):
        batch = dataset.__getitems__(list(range(start, min(start + batch_size, len(dataset)))))
        labels = batch["class_index"]
        hits = (model.predict(batch[key]) == labels).double()
        correct.index_add_(0, labels, hits)
        counts.index_add_(0, labels, torch.ones_like(hits))
    model.train(was_training)
    per_class = {
        name: (correct[i] / counts[i]).item()
        for i, name in enumerate(model.class_names)
        if counts[i] > 0
    }
    return (correct.sum() / counts.sum().clamp_min(1)).item(), per_class


def _random_gain(
    waveforms: Tensor, gain_db: tuple[float, float], generator: torch.Generator
) -> Tensor:
    """Scale each clip by a gain drawn uniformly in ``gain_db`` (dB)."""
    low, high = gain_db
    decibels = low + (high - low) * torch.rand(len(waveforms), 1, generator=generator)
    return waveforms * torch.pow(10.0, decibels / 20)


def _class_weights(dataset: MixtureDataset, num_classes: int, balance: bool) -> Tensor | None:
    """``N / (C n_c)`` per class over the split's clips (``None`` without ``balance``)."""
    if not balance:
        return None
    labels = dataset.clip_set.class_index
    counts = torch.bincount(labels[labels >= 0], minlength=num_classes).float()
    if (counts == 0).any():
        missing = [i for i, count in enumerate(counts.tolist()) if count == 0]
        raise ValueError(f"the training split holds no clips of classes {missing}")
    return counts.sum() / (num_classes * counts)


def _endless(loader) -> Iterator[dict[str, Any]]:
    while True:
        yield from loader


def train_audio_classifier(
    datamodule: MixtureDataModule,
    out_path: str | Path | None = None,
    gain_db: tuple[float, float] = (-20.0, 6.0),
    balance_classes: bool = True,
    steps: int = 700,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    width: int = 16,
    seed: int = 0,
) -> tuple[AudioClassifier, dict[str, Any]]:
    """Train an :class:`AudioClassifier` on the clean targets of the datamodule's train split.

    Batches come from ``datamodule.train_dataloader()``; the classifier sees ``batch["target"]``
    scaled by a random gain (uniform in ``gain_db``) and learns ``batch["class_index"]`` with
    cross-entropy (with ``balance_classes``, each class weighted by ``N / (C n_c)`` for its
    ``n_c`` of the ``N`` training clips, so a rare class such as ``desktop`` counts as much as
    a common one), AdamW and a cosine learning-rate decay over ``steps``. Returns the model (eval
    mode) and a report: validation accuracy on clean targets (``val_accuracy``) and on the
    unseparated mixtures (``val_mixture_accuracy``), each also per class, plus the settings.
    If ``out_path`` is given the classifier is saved there as a folder, the report as its info.
    """
    if steps < 1:
        raise ValueError(f"`steps` must be positive, got {steps}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    class_names = list(datamodule.class_names)
    model = AudioClassifier(class_names, width, LogMel(sample_rate=datamodule.sample_rate))
    class_weight = _class_weights(datamodule.datasets["train"], len(class_names), balance_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    batches = _endless(datamodule.train_dataloader())
    start = time.perf_counter()
    model.train()
    running = None
    for step in range(1, steps + 1):
        batch = next(batches)
        labels = batch["class_index"]
        if (labels < 0).any():
            raise ValueError("the training clips need class labels (`class_index` >= 0)")
        logits = model(_random_gain(batch["target"], gain_db, generator))
        loss = F.cross_entropy(logits, labels, weight=class_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if step % 50 == 0 or step == steps:
            log.info(
                "step %d/%d: train loss %.4f (%.1f s)",
                step,
                steps,
                running,
                time.perf_counter() - start,
            )
    model.eval()
    train_seconds = time.perf_counter() - start
    val = datamodule.datasets["val"]
    val_accuracy, val_per_class = classifier_accuracy(model, val, "target")
    mixture_accuracy, mixture_per_class = classifier_accuracy(model, val, "mixture")
    report = {
        "val_accuracy": val_accuracy,
        "val_mixture_accuracy": mixture_accuracy,
        "val_accuracy_per_class": val_per_class,
        "val_mixture_accuracy_per_class": mixture_per_class,
        "val_clips": len(val),
        "train_seconds": round(train_seconds, 1),
        "steps": steps,
        "batch_size": datamodule.batch_size,
        "lr": lr,
        "gain_db": list(gain_db),
        "balance_classes": balance_classes,
        "seed": seed,
        "clip_seconds": datamodule.clip_seconds,
        "snr_range": list(datamodule.snr_range),
        "datamodule": type(datamodule).__name__,
    }
    log.info(
        "validation accuracy %.4f on clean targets, %.4f on mixtures, after %.1f s of training",
        val_accuracy,
        mixture_accuracy,
        train_seconds,
    )
    if out_path is not None:
        model.save_pretrained(out_path, info=report)
    model.pretrained_info = report
    return model, report


# -- evaluator -------------------------------------------------------------------------------


class QueryAccuracy(PerClassMean):
    """Query accuracy: how often the estimate is classified as the class the query asked for.

    Per example the score is 1 if the audio classifier of :mod:`modalities.audio.classifier`
    (trained on the clean source clips) gives the estimate the class ``batch["class_index"]``
    (the queried class) as its top class, else 0; the metric reports the mean overall and per
    class. It is a proxy for "does the estimate sound like the query": a separator that only
    passes the mixture through is scored like the mixture itself (the classifier then mostly
    names the louder source), so compare with the mixture accuracy the training command prints.
    It says nothing about artefacts or leakage that leave the class recognisable — read it
    beside SI-SDR.

    This is **not CLAPScore**: no audio-text embedding model is involved, only a small CNN on
    our own source classes, so the number is not comparable with published CLAP-based scores.

    The classifier is a :class:`mmflow.pretrained.Frozen` part: it never enters a checkpoint,
    and it follows the estimates to their device on use.

    Args:
        classifier_path: a folder written by ``python -m modalities.audio.classifier --out PATH``.
        class_names: names of the classes ``0 .. C-1`` of ``batch["class_index"]``; they must
            equal the classifier's. ``None`` reports the overall mean only (no check).

    Raises:
        FileNotFoundError: the classifier folder is missing (the message has the command).
        ValueError: the folder is unreadable, or its class names differ from ``class_names``.
    """

    name = "query_accuracy"
    higher_is_better = True

    def __init__(self, classifier_path: str | Path, class_names: list[str] | None = None) -> None:
        super().__init__(class_names)
        classifier = AudioClassifier.from_pretrained(classifier_path)
        if class_names is not None and list(classifier.class_names) != list(class_names):
            raise ValueError(
                f"audio classifier {classifier_path} was trained on the classes "
                f"{list(classifier.class_names)}, but the data's classes are {list(class_names)}; "
                f"retrain it with `{TRAIN_COMMAND.format(path=classifier_path)}`"
            )
        self.classifier_path = str(classifier_path)
        self.classifier = Frozen(classifier)

    def scores(self, estimates: Tensor, batch: dict[str, Any]) -> Tensor:
        queried = torch.as_tensor(batch["class_index"]).reshape(-1).long().to(estimates.device)
        if queried.numel() != len(estimates):
            raise ValueError(
                f"`class_index` has {queried.numel()} entries for {len(estimates)} estimates"
            )
        classifier = self.classifier.to(estimates.device)
        if queried.numel() and (queried.min() < 0 or queried.max() >= classifier.num_classes):
            raise ValueError(
                f"QueryAccuracy: `class_index` values must be in [0, {classifier.num_classes}) "
                f"(the classifier's classes), got {queried.tolist()}"
            )
        return (classifier.predict(estimates) == queried).double()


# -- command line ----------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m modalities.audio.classifier",
        description="Train the audio classifier behind query accuracy on the LASS source clips "
        "and cache it (a pretrained-part folder).",
    )
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--clip_seconds", "--clip-seconds", type=float, default=1.28)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch_size", "--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="data split and training seed")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: this small CNN gains little from more, and on a "
        "CPU shared with another job extra OpenMP threads made each step ~5x slower)",
    )
    parser.add_argument(
        "--cache_dir",
        "--cache-dir",
        help="clip cache root (default $MMFLOW_CACHE or ~/.cache/mmflow)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        datamodule = LASSMixtures(
            cache_dir=args.cache_dir,
            clip_seconds=args.clip_seconds,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        _, report = train_audio_classifier(
            datamodule, args.out, steps=args.steps, lr=args.lr, width=args.width, seed=args.seed
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    chance = 1 / len(datamodule.class_names)
    for name, accuracy in report["val_accuracy_per_class"].items():
        mixed = report["val_mixture_accuracy_per_class"].get(name, math.nan)
        print(f"  {name:>10}: clean {accuracy:.3f}  mixture {mixed:.3f}")
    print(
        f"validation accuracy {report['val_accuracy']:.4f} on clean targets, "
        f"{report['val_mixture_accuracy']:.4f} on unseparated mixtures (chance {chance:.2f}); "
        f"{time.perf_counter() - start:.1f} s in all; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
