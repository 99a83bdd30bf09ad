"""FID (fid-helper Inception): MNIST vs Fashion-MNIST is farther than MNIST vs MNIST."""

from __future__ import annotations

import torch

from modalities.image import FashionMNIST, InceptionFID, MNIST5k

from .conftest import FASHION_ROOT

SAMPLES = 48


def test_fid_separates_datasets(mnist: MNIST5k, cache_dir: str):
    fashion = FashionMNIST(root=FASHION_ROOT, cache_dir=cache_dir)
    fashion.setup()
    half_a = mnist.datasets["val"][list(range(SAMPLES))]
    half_b = mnist.datasets["test"][list(range(SAMPLES))]
    clothes = fashion.datasets["val"][list(range(SAMPLES))]

    metric = InceptionFID(max_samples=SAMPLES, reset_real_features=False)
    assert metric.display_name == "FID (fid-helper Inception)"
    metric.update(half_b["image"], half_a)
    metric.update(half_b["image"], half_a)  # both sides full: ignored
    assert metric.real_count.item() == SAMPLES and metric.fake_count.item() == SAMPLES
    within_mnist = metric.compute().item()

    metric.reset()  # keeps the real MNIST statistics
    assert metric.real_count.item() == SAMPLES and metric.fake_count.item() == 0
    metric.update(clothes["image"], half_a)
    across = metric.compute().item()
    assert 0 < within_mnist < across
    assert torch.isfinite(torch.tensor([within_mnist, across])).all()
