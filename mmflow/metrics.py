"""Modality-free metrics: the Fréchet distance between two sets of feature vectors.

Every "FID-style" number in mmflow (Inception FID on images, FD-ours in a small classifier's
feature space, FGD on gestures, FAD on audio) is the Fréchet distance between Gaussians fitted
to real and generated features:

    FD = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})

Only the feature network changes, and a metric is named after its feature network.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["FrechetDistance", "frechet_distance", "trace_sqrt_product"]


def _symmetric_sqrt(matrix: Tensor) -> Tensor:
    """Principal square root of a symmetric positive semi-definite matrix via ``eigh``.

    ``A = V diag(l) V^T  =>  A^{1/2} = V diag(sqrt(max(l, 0))) V^T``; eigenvalues that are
    slightly negative from round-off are clamped to zero.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    roots = eigenvalues.clamp_min(0).sqrt()
    return (eigenvectors * roots) @ eigenvectors.T


def trace_sqrt_product(cov1: Tensor, cov2: Tensor) -> Tensor:
    """``Tr((S1 S2)^{1/2})`` for symmetric PSD ``S1``, ``S2``, computed in a symmetric form.

    ``S1 S2`` is similar to ``S1^{1/2} S2 S1^{1/2}`` (conjugate by ``S1^{1/2}``), which is
    symmetric PSD, so its eigenvalues are real and non-negative and

        Tr((S1 S2)^{1/2}) = sum_i sqrt(eig_i(S1^{1/2} S2 S1^{1/2})).

    This avoids the complex intermediates (and tiny imaginary parts) of a general ``sqrtm``.
    """
    root1 = _symmetric_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    middle = (middle + middle.T) / 2
    return torch.linalg.eigvalsh(middle).clamp_min(0).sqrt().sum()


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """Fréchet distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``.

    ``||mu1 - mu2||^2 + Tr(cov1) + Tr(cov2) - 2 Tr((cov1 cov2)^{1/2})``, evaluated in float64.
    """
    mu1, cov1, mu2, cov2 = (torch.as_tensor(v, dtype=torch.float64) for v in (mu1, cov1, mu2, cov2))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (*mu1.shape, *mu1.shape):
        raise ValueError(
            f"frechet_distance: shapes do not match: mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
            f"cov {tuple(cov1.shape)}/{tuple(cov2.shape)}"
        )
    mean_term = (mu1 - mu2).square().sum()
    trace_term = cov1.trace() + cov2.trace() - 2 * trace_sqrt_product(cov1, cov2)
    return float(mean_term + trace_term)


class FrechetDistance(Metric):
    """Fréchet distance between accumulated real and generated feature vectors.

    States per side (all float64, summed across processes): the feature sum ``s = sum x``, the
    sum of outer products ``P = sum x x^T`` and the count ``n``, so batches (and processes)
    combine exactly. At ``compute``: ``mu = s / n`` and the unbiased covariance
    ``S = (P - n mu mu^T) / (n - 1)``, then :func:`frechet_distance`.

    Args:
        num_features: feature dimension ``D``.
        reset_real_features: if ``False``, :meth:`reset` keeps the real statistics, so the real
            side of a fixed validation set is computed only once.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, num_features: int, reset_real_features: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.reset_real_features = reset_real_features
        for side in ("real", "fake"):
            zeros = torch.zeros(num_features, dtype=torch.float64)
            self.add_state(f"{side}_sum", zeros, dist_reduce_fx="sum")
            self.add_state(
                f"{side}_outer_sum",
                torch.zeros(num_features, num_features, dtype=torch.float64),
                dist_reduce_fx="sum",
            )
            self.add_state(
                f"{side}_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum"
            )

    def update(
        self, real_features: Tensor | None = None, fake_features: Tensor | None = None
    ) -> None:
        """Add ``[N, D]`` real and/or generated features."""
        if real_features is not None:
            self._accumulate("real", real_features)
        if fake_features is not None:
            self._accumulate("fake", fake_features)

    def _accumulate(self, side: str, features: Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(
                f"FrechetDistance: expected {side} features of shape [N, {self.num_features}], "
                f"got {tuple(features.shape)}"
            )
        features = features.detach().to(torch.float64)
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + features.sum(0))
        setattr(
            self, f"{side}_outer_sum", getattr(self, f"{side}_outer_sum") + features.T @ features
        )
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + features.shape[0])

    def statistics(self, side: str) -> tuple[Tensor, Tensor]:
        """Mean and unbiased covariance of the ``"real"`` or ``"fake"`` features so far."""
        count = getattr(self, f"{side}_count")
        if count < 2:
            raise ValueError(
                f"FrechetDistance needs at least 2 {side} samples, got {int(count)}; "
                "call update() with more samples before compute()"
            )
        mean = getattr(self, f"{side}_sum") / count
        covariance = (getattr(self, f"{side}_outer_sum") - count * torch.outer(mean, mean)) / (
            count - 1
        )
        return mean, covariance

    def compute(self) -> Tensor:
        """The Fréchet distance between the real and generated Gaussians (a float64 scalar)."""
        real_mean, real_cov = self.statistics("real")
        fake_mean, fake_cov = self.statistics("fake")
        value = frechet_distance(real_mean, real_cov, fake_mean, fake_cov)
        return torch.tensor(value, dtype=torch.float64, device=real_mean.device)

    def reset(self) -> None:
        """Reset the generated side; reset the real side too unless ``reset_real_features=False``."""
        if self.reset_real_features:
            super().reset()
            return
        kept = {name: deepcopy(getattr(self, name)) for name in self._real_state_names()}
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)

    @staticmethod
    def _real_state_names() -> tuple[str, ...]:
        return ("real_sum", "real_outer_sum", "real_count")


def metric_entries(name: str, value: Tensor | dict[str, Tensor]) -> dict[str, Tensor]:
    """A metric's result by reporting key: ``{name: value}``, or each entry of a dict result.

    Metrics that report several numbers (per-class SI-SDRi, say) return a dict from
    ``compute()``; training logs and benchmark tables flatten them with this.
    """
    return dict(value) if isinstance(value, dict) else {name: value}


def log_and_reset(module: Any, metrics: dict[str, Metric], stage: str) -> None:
    """Log every updated metric as ``{stage}/<key>`` with ``module.log_dict``, then reset it.

    Shared by the LightningModules that score generations at the end of a validation or test
    epoch; a metric returning a dict logs each entry (see :func:`metric_entries`).
    """
    for name, metric in metrics.items():
        if metric.update_count:
            entries = metric_entries(name, metric.compute())
            logged = {f"{stage}/{key}": entry for key, entry in entries.items()}
            module.log_dict(logged, sync_dist=True)
        metric.reset()
