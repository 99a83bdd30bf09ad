"""Image fixtures: the MNIST-5k datamodule (the cache folder and classifier are in tests/conftest.py)."""

from __future__ import annotations

import pytest

from modalities.image import MNIST5k

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def mnist(cache_dir: str) -> MNIST5k:
    datamodule = MNIST5k(batch_size=64, cache_dir=cache_dir)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule
