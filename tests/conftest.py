"""Fixtures shared across the suite: one data cache per session and a small classifier."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mmflow.hub import trust_packages
from modalities.image import MNIST5k, SmallCNN, train_classifier

trust_packages("tests")  # the toy modality's classes, which the suite exports and loads


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs ``-n 2``) each worker, and every command it
    starts, computes on one thread: two workers on two cores, not four threads fighting."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("mmflow-cache"))


@pytest.fixture(scope="session")
def trained_classifier(
    cache_dir: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SmallCNN, float, Path]:
    """A classifier trained for four epochs on 640 MNIST-5k images (about a second)."""
    path = tmp_path_factory.mktemp("classifier") / "mnist5k-small"
    datamodule = MNIST5k(batch_size=32, cache_dir=cache_dir, limit=640)
    model, val_accuracy = train_classifier(
        datamodule, path, epochs=4, lr=2e-3, width=16, feature_dim=64
    )
    return model, val_accuracy, path


@pytest.fixture(scope="session")
def tiny_mel_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 8-channel mel-VAE folder with the recipes' mel and latent settings."""
    from modalities.audio import MelVAE

    path = tmp_path_factory.mktemp("mel-vae")
    MelVAE(channels=8, z_channels=8).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def untrained_audio_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained audio classifier folder over the ten LASS classes (for recipe smoke runs)."""
    from modalities.audio import ALL_CLASSES, AudioClassifier

    path = tmp_path_factory.mktemp("audio-classifier") / "lass"
    return AudioClassifier(list(ALL_CLASSES)).save_pretrained(path)


@pytest.fixture(scope="session")
def example_wav_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example captioned WAV folder with one melody per program (16 files, ~10 s)."""
    from modalities.audio.examples import write_example_folder

    folder = tmp_path_factory.mktemp("example-wavs")
    write_example_folder(folder, pieces=1, seconds=2.0)
    return folder
