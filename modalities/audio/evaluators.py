"""Separation evaluators: torchmetrics ``Metric``s updated as ``metric.update(estimates, batch)``.

``estimates`` are ``[B, T]`` separated waveforms (the adapter's ``decode``); ``batch`` is the
dict batch they were separated from, with ``"target"`` ``[B, T]`` (the reference source ``s``),
``"mixture"`` ``[B, T]`` and ``"class_index"`` ``[B]``. Per example, with ``s_hat`` the estimate:

    SDR(s_hat, s)    = 10 log10(||s||^2 / ||s - s_hat||^2)
    SI-SDR(s_hat, s) = 10 log10(||a s||^2 / ||a s - s_hat||^2),   a = <s_hat, s> / ||s||^2
    SDRi             = SDR(s_hat, s) - SDR(mixture, s)      (same for SI-SDRi)
    mel L1           = mean |LogMel(s_hat) - LogMel(s)|

"SDR" here is the plain signal-to-distortion ratio of the language-queried separation
literature (AudioSep, the DCASE LASS task, FlowSep's notes): torchmetrics'
``signal_noise_ratio``, *not* its ``signal_distortion_ratio``, which is BSS-eval's SDR that
first fits a 512-tap distortion filter (a different, more lenient number, and slow). SI-SDR is
torchmetrics' ``scale_invariant_signal_distortion_ratio``.

Silence: both torchmetrics functions add ``eps = finfo(dtype).eps`` to every energy (numerator
and denominator, and to the numerator and denominator of ``a``); they are evaluated in float64
here (eps = 2.2e-16). A silent target with a non-silent estimate therefore gives a large but
finite negative value (about ``10 log10(eps / ||s_hat||^2)``), a silent estimate of a non-silent
target gives 0 dB SDR, both silent give 0 dB, and ``s_hat = s`` gives a large finite value —
never NaN or inf.

Each metric reports the mean over all examples and the mean per class, as a dict
``{"si_sdri": overall, "si_sdri/speech": ..., ...}`` (classes without examples are left out).
Sums and counts per class are the states, so batches and processes combine exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.functional.audio import (
    scale_invariant_signal_distortion_ratio,
    signal_noise_ratio,
)

from .mel import LogMel

__all__ = [
    "MelL1",
    "PerClassMean",
    "ScaleInvariantSDR",
    "ScaleInvariantSDRImprovement",
    "SignalDistortionRatio",
    "SignalDistortionRatioImprovement",
    "plain_sdr",
    "separation_metrics",
    "si_sdr",
]


def plain_sdr(estimate: Tensor, reference: Tensor) -> Tensor:
    """``10 log10(||s||^2 / ||s - s_hat||^2)`` over the last axis, in float64 (see module docs)."""
    return signal_noise_ratio(estimate.double(), reference.double())


def si_sdr(estimate: Tensor, reference: Tensor) -> Tensor:
    """``10 log10(||a s||^2 / ||a s - s_hat||^2)``, ``a = <s_hat, s> / ||s||^2``, in float64."""
    return scale_invariant_signal_distortion_ratio(estimate.double(), reference.double())


class PerClassMean(Metric):
    """Mean of a per-example score, overall and per class (``batch["class_index"]``).

    Subclasses define ``name`` and :meth:`scores` (``[B]`` values for ``update``'s arguments).

    Args:
        class_names: names of the classes ``0 .. C-1`` for the per-class keys; ``None`` reports
            only the overall mean.
    """

    name = "score"
    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.class_names = list(class_names or [])
        num_classes = max(len(self.class_names), 1)
        self.add_state("sums", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state(
            "counts", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def scores(self, estimates: Tensor, batch: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def update(self, estimates: Tensor, batch: dict[str, Any]) -> None:  # type: ignore[override]
        _check_waveforms(estimates, batch)
        values = self.scores(estimates, batch).double().to(self.total.device)
        self.total += values.sum()
        self.count += values.numel()
        if self.class_names:
            classes = self._class_indices(batch, values.numel())
            self.sums.index_add_(0, classes, values)
            self.counts.index_add_(0, classes, torch.ones_like(values))

    def compute(self) -> dict[str, Tensor]:
        if self.count == 0:
            raise ValueError(f"{type(self).__name__}: compute() called before any update()")
        results = {self.name: self.total / self.count}
        for index, class_name in enumerate(self.class_names):
            if self.counts[index] > 0:
                results[f"{self.name}/{class_name}"] = self.sums[index] / self.counts[index]
        return results

    def _class_indices(self, batch: dict[str, Any], batch_size: int) -> Tensor:
        if "class_index" not in batch:
            raise KeyError(f"{type(self).__name__}: batch has no `class_index` for per-class means")
        classes = torch.as_tensor(batch["class_index"]).reshape(-1).long().to(self.sums.device)
        if classes.numel() != batch_size:
            raise ValueError(
                f"`class_index` has {classes.numel()} entries for a batch of {batch_size}"
            )
        if classes.numel() and (classes.min() < 0 or classes.max() >= len(self.class_names)):
            raise ValueError(
                f"`class_index` values must be in [0, {len(self.class_names)}) "
                f"(len(class_names)), got {classes.tolist()}"
            )
        return classes


class SignalDistortionRatio(PerClassMean):
    """Plain SDR of the estimate against ``batch["target"]``, in dB."""

    name = "sdr"

    def scores(self, estimates: Tensor, batch: dict[str, Any]) -> Tensor:
        return plain_sdr(estimates, batch["target"])


class ScaleInvariantSDR(PerClassMean):
    """SI-SDR of the estimate against ``batch["target"]``, in dB."""

    name = "si_sdr"

    def scores(self, estimates: Tensor, batch: dict[str, Any]) -> Tensor:
        return si_sdr(estimates, batch["target"])


class SignalDistortionRatioImprovement(PerClassMean):
    """SDRi: SDR of the estimate minus SDR of ``batch["mixture"]``, both against the target."""

    name = "sdri"

    def scores(self, estimates: Tensor, batch: dict[str, Any]) -> Tensor:
        target = batch["target"]
        return plain_sdr(estimates, target) - plain_sdr(batch["mixture"], target)


class ScaleInvariantSDRImprovement(PerClassMean):
    """SI-SDRi: SI-SDR of the estimate minus SI-SDR of ``batch["mixture"]``."""

    name = "si_sdri"

    def scores(self, estimates: Tensor, batch: dict[str, Any]) -> Tensor:
        target = batch["target"]
        return si_sdr(estimates, target) - si_sdr(batch["mixture"], target)


class MelL1(PerClassMean):
    """Mean absolute difference of estimate and target log-mels (natural log, lower is better).

    Args:
        class_names: see :class:`PerClassMean`.
        mel: the log-mel transform (default: FlowSep's 64-band 16 kHz :class:`LogMel`).
    """

    name = "mel_l1"
    higher_is_better = False

    def __init__(self, class_names: list[str] | None = None, mel: LogMel | None = None) -> None:
        super().__init__(class_names)
        self.mel = mel or LogMel()

    def scores(self, estimates: Tensor, batch: dict[str, Any]) -> Tensor:
        target = batch["target"].to(estimates.dtype)
        difference = self.mel(estimates) - self.mel(target)
        return difference.abs().mean(dim=(-2, -1))


def _check_waveforms(estimates: Tensor, batch: dict[str, Any]) -> None:
    for key in ("target", "mixture"):
        if key not in batch:
            raise KeyError(f"separation metrics: batch has no `{key}`")
        if batch[key].shape != estimates.shape:
            raise ValueError(
                f"separation metrics: estimates {tuple(estimates.shape)} and batch[`{key}`] "
                f"{tuple(batch[key].shape)} differ in shape"
            )
    if estimates.ndim != 2:
        raise ValueError(
            f"separation metrics: expected estimates [B, T], got {tuple(estimates.shape)}"
        )


def separation_metrics(
    class_names: list[str] | None = None,
    mel: LogMel | None = None,
    classifier_path: str | None = None,
) -> nn.ModuleDict:
    """The separation evaluators every audio model reports, keyed by metric name.

    SDR, SI-SDR, SDRi, SI-SDRi and mel L1, each overall and per class, plus the query accuracy
    of :class:`.classifier.QueryAccuracy` when ``classifier_path`` is given; shared by the
    flow's adapter and the mask baseline, so both are scored by the same code.
    """
    metrics = {
        "sdr": SignalDistortionRatio(class_names),
        "si_sdr": ScaleInvariantSDR(class_names),
        "sdri": SignalDistortionRatioImprovement(class_names),
        "si_sdri": ScaleInvariantSDRImprovement(class_names),
        "mel_l1": MelL1(class_names, mel),
    }
    if classifier_path is not None:
        from .classifier import QueryAccuracy

        metrics["query_accuracy"] = QueryAccuracy(classifier_path, class_names)
    return nn.ModuleDict(metrics)
