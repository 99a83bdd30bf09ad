"""Fréchet distance: zero for identical sets, Gaussian closed forms, batching and reset."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from mmflow.metrics import FrechetDistance, frechet_distance, trace_sqrt_product


def _random_features(n: int, d: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return torch.randn(n, d, generator=generator, dtype=torch.float64) @ mixing + 3.0


def _random_spd(d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.5 * np.eye(d)


def test_identical_feature_sets_give_zero():
    features = _random_features(500, 16, seed=0)
    metric = FrechetDistance(16)
    metric.update(real_features=features, fake_features=features)
    value = metric.compute().item()
    scale = metric.statistics("real")[1].trace().item()
    assert abs(value) < 1e-6 * scale


def test_diagonal_gaussians_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
    std1, std2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 1.0, 0.5])
    expected = (mu1 - mu2).square().sum() + (std1 - std2).square().sum()
    value = frechet_distance(mu1, torch.diag(std1**2), mu2, torch.diag(std2**2))
    assert value == pytest.approx(expected.item(), rel=1e-10)


def test_full_covariance_matches_scipy_sqrtm():
    d = 6
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    cov1, cov2 = _random_spd(d, 2), _random_spd(d, 3)
    root = scipy.linalg.sqrtm(cov1 @ cov2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * root)
    value = frechet_distance(*(torch.from_numpy(v) for v in (mu1, cov1, mu2, cov2)))
    assert value == pytest.approx(expected, rel=1e-9)
    trace = trace_sqrt_product(torch.from_numpy(cov1), torch.from_numpy(cov2))
    assert trace.item() == pytest.approx(np.trace(root), rel=1e-9)


def test_metric_matches_sample_statistics():
    real, fake = _random_features(300, 5, seed=4), _random_features(200, 5, seed=5) * 0.5
    metric = FrechetDistance(5)
    metric.update(real_features=real, fake_features=fake)
    expected = frechet_distance(
        real.mean(0),
        torch.from_numpy(np.cov(real.numpy(), rowvar=False)),
        fake.mean(0),
        torch.from_numpy(np.cov(fake.numpy(), rowvar=False)),
    )
    assert metric.compute().item() == pytest.approx(expected, rel=1e-9)


def test_batched_accumulation_equals_one_batch():
    real, fake = _random_features(240, 8, seed=6), _random_features(180, 8, seed=7)
    whole = FrechetDistance(8)
    whole.update(real_features=real, fake_features=fake)
    batched = FrechetDistance(8)
    for chunk in real.split(50):
        batched.update(real_features=chunk)
    for chunk in fake.split(37):
        batched.update(fake_features=chunk.float())
    assert batched.compute().item() == pytest.approx(whole.compute().item(), rel=1e-5)


@pytest.mark.filterwarnings("ignore:The ``compute`` method.*:UserWarning")
def test_reset_clears_or_keeps_real_statistics():
    real, fake = _random_features(100, 4, seed=8), _random_features(100, 4, seed=9)
    metric = FrechetDistance(4)
    metric.update(real_features=real, fake_features=fake)
    first = metric.compute().item()
    metric.reset()
    assert metric.real_count.item() == 0 and metric.fake_count.item() == 0
    with pytest.raises(ValueError, match="at least 2 real samples"):
        metric.compute()

    keeping = FrechetDistance(4, reset_real_features=False)
    keeping.update(real_features=real, fake_features=fake)
    keeping.reset()
    assert keeping.real_count.item() == 100 and keeping.fake_count.item() == 0
    keeping.update(fake_features=fake)
    assert keeping.compute().item() == pytest.approx(first, rel=1e-12)


def test_wrong_feature_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        FrechetDistance(4).update(real_features=torch.zeros(3, 5))


def test_metric_entries_flattens_dict_results():
    from mmflow.metrics import metric_entries

    assert metric_entries("fd", torch.tensor(1.0)) == {"fd": torch.tensor(1.0)}
    per_class = {"si_sdri": torch.tensor(3.0), "si_sdri/speech": torch.tensor(4.0)}
    assert metric_entries("si_sdri", per_class) == per_class
