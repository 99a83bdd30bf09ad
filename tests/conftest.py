"""Fixtures shared across the suite: one data cache per session and a small classifier."""

from __future__ import annotations

from pathlib import Path

import pytest

from modalities.image import MNIST5k, SmallCNN, train_classifier


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("mmflow-cache"))


@pytest.fixture(scope="session")
def trained_classifier(
    cache_dir: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SmallCNN, float, Path]:
    """A classifier trained for four epochs on 640 MNIST-5k images (about a second)."""
    path = tmp_path_factory.mktemp("classifier") / "mnist5k-small.safetensors"
    datamodule = MNIST5k(batch_size=32, cache_dir=cache_dir, limit=640)
    model, val_accuracy = train_classifier(
        datamodule, path, epochs=4, lr=2e-3, width=16, feature_dim=64
    )
    return model, val_accuracy, path
