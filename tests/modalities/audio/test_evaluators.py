"""Separation metrics against closed forms, per-class means and batch accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from modalities.audio.evaluators import (
    MelL1,
    ScaleInvariantSDR,
    ScaleInvariantSDRImprovement,
    SignalDistortionRatio,
    SignalDistortionRatioImprovement,
    plain_sdr,
    si_sdr,
)

CLASSES = ["speech", "tone", "noise"]


def waveforms(batch: int, samples: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def separation_batch(batch: int = 6, samples: int = 4000, seed: int = 0) -> dict[str, torch.Tensor]:
    target = waveforms(batch, samples, seed)
    return {
        "target": target,
        "mixture": target + waveforms(batch, samples, seed + 100),
        "class_index": torch.arange(batch) % len(CLASSES),
    }


def noise_at_snr(target: torch.Tensor, snr_db: float, seed: int) -> torch.Tensor:
    """Noise orthogonal to each target row, scaled to ``||s||^2 / ||n||^2 = 10^(snr / 10)``."""
    noise = waveforms(*target.shape, seed=seed).double()
    target = target.double()
    noise = (
        noise
        - (noise * target).sum(-1, keepdim=True) / target.square().sum(-1, keepdim=True) * target
    )
    scale = (target.square().sum(-1) / noise.square().sum(-1) / 10 ** (snr_db / 10)).sqrt()
    return noise * scale[:, None]


def test_perfect_estimate_scores_very_high() -> None:
    batch = separation_batch()
    assert si_sdr(batch["target"], batch["target"]).min() > 100
    assert plain_sdr(batch["target"], batch["target"]).min() > 100


def test_si_sdr_equals_a_known_snr() -> None:
    target = waveforms(3, 160000, seed=1)
    for snr in (-5.0, 0.0, 12.5):
        estimate = target + noise_at_snr(target, snr, seed=2)
        assert torch.allclose(
            si_sdr(estimate, target), torch.full((3,), snr, dtype=torch.float64), atol=0.1
        )
        assert torch.allclose(
            plain_sdr(estimate, target), torch.full((3,), snr, dtype=torch.float64), atol=0.1
        )


def test_si_sdr_of_white_noise_at_a_known_snr_on_a_long_signal() -> None:
    target = waveforms(3, 160000, seed=1)
    noise = waveforms(3, 160000, seed=9)
    noise = (
        noise
        * (target.square().sum(-1) / noise.square().sum(-1) / 10 ** (10.0 / 10)).sqrt()[:, None]
    )
    assert torch.allclose(
        si_sdr(target + noise, target), torch.full((3,), 10.0, dtype=torch.float64), atol=0.1
    )


def test_si_sdr_is_scale_invariant_and_sdr_is_not() -> None:
    target = waveforms(2, 8000, seed=3)
    estimate = target + 0.5 * waveforms(2, 8000, seed=4)
    for gain in (0.1, 3.0):
        assert torch.allclose(si_sdr(gain * estimate, target), si_sdr(estimate, target), atol=1e-6)
    assert not torch.allclose(plain_sdr(0.1 * estimate, target), plain_sdr(estimate, target))


def test_improvement_of_the_mixture_is_zero() -> None:
    batch = separation_batch()
    for metric in (
        SignalDistortionRatioImprovement(CLASSES),
        ScaleInvariantSDRImprovement(CLASSES),
    ):
        metric.update(batch["mixture"], batch)
        assert all(abs(value.item()) < 1e-9 for value in metric.compute().values())


def test_improvement_is_estimate_minus_mixture() -> None:
    batch = separation_batch()
    estimate = batch["target"] + 0.1 * waveforms(6, 4000, seed=5)
    metric = SignalDistortionRatioImprovement()
    metric.update(estimate, batch)
    expected = (
        plain_sdr(estimate, batch["target"]) - plain_sdr(batch["mixture"], batch["target"])
    ).mean()
    assert metric.compute() == {"sdri": pytest.approx(expected.item())}


def test_per_class_means_on_a_toy_batch() -> None:
    batch = separation_batch()
    batch["class_index"] = torch.tensor([0, 0, 2, 2, 2, 0])
    estimate = batch["target"] + 0.3 * waveforms(6, 4000, seed=6)
    metric = ScaleInvariantSDR(CLASSES)
    metric.update(estimate, batch)
    values = si_sdr(estimate, batch["target"])
    result = metric.compute()
    assert set(result) == {"si_sdr", "si_sdr/speech", "si_sdr/noise"}
    assert result["si_sdr"].item() == pytest.approx(values.mean().item())
    assert result["si_sdr/speech"].item() == pytest.approx(values[[0, 1, 5]].mean().item())
    assert result["si_sdr/noise"].item() == pytest.approx(values[[2, 3, 4]].mean().item())


@pytest.mark.parametrize(
    "metric_class",
    [
        SignalDistortionRatio,
        ScaleInvariantSDR,
        SignalDistortionRatioImprovement,
        ScaleInvariantSDRImprovement,
        MelL1,
    ],
)
def test_accumulating_batches_equals_one_batch(metric_class) -> None:
    batch = separation_batch(batch=6, samples=3200)
    estimate = batch["target"] + 0.5 * waveforms(6, 3200, seed=7)
    whole, parts = metric_class(CLASSES), metric_class(CLASSES)
    whole.update(estimate, batch)
    for rows in (slice(0, 2), slice(2, 6)):
        parts.update(estimate[rows], {k: v[rows] for k, v in batch.items()})
    whole_result, parts_result = whole.compute(), parts.compute()
    assert whole_result.keys() == parts_result.keys()
    assert all(torch.allclose(whole_result[k], parts_result[k]) for k in whole_result)


def test_silence_gives_finite_values() -> None:
    batch = separation_batch(batch=3, samples=3200)
    batch["target"][0] = 0.0
    estimate = batch["target"].clone()
    estimate[1] = 0.0
    estimate[2] = 0.0
    batch["target"][2] = 0.0
    results = {}
    for metric_class in (
        SignalDistortionRatio,
        ScaleInvariantSDR,
        ScaleInvariantSDRImprovement,
        MelL1,
    ):
        metric = metric_class()
        metric.update(estimate, batch)
        results[metric_class] = metric.compute()
        assert all(torch.isfinite(v) for v in results[metric_class].values()), metric_class
    assert plain_sdr(estimate[1:2], batch["target"][1:2]).item() == pytest.approx(0.0, abs=1e-9)
    # Documented values: both silent (rows 0, 2) and a silent estimate (row 1) give 0 dB.
    zeros = torch.zeros(3, dtype=torch.float64)
    torch.testing.assert_close(plain_sdr(estimate, batch["target"]), zeros, atol=1e-9, rtol=0)
    torch.testing.assert_close(si_sdr(estimate, batch["target"]), zeros, atol=1e-9, rtol=0)
    assert results[SignalDistortionRatio]["sdr"].item() == pytest.approx(0.0, abs=1e-9)
    assert results[ScaleInvariantSDR]["si_sdr"].item() == pytest.approx(0.0, abs=1e-9)
    expected = (0.0 - si_sdr(batch["mixture"], batch["target"])).mean()
    assert results[ScaleInvariantSDRImprovement]["si_sdri"].item() == pytest.approx(expected.item())
    # Mel-L1: silence is the log floor log(1e-5); only row 1 differs from its target.
    row_1 = (metric.mel(batch["target"][1:2]) - math.log(1e-5)).abs().mean() / 3
    assert results[MelL1]["mel_l1"].item() == pytest.approx(row_1.item(), rel=1e-5)


def test_mel_l1_is_zero_for_the_target_and_positive_otherwise() -> None:
    batch = separation_batch(batch=2, samples=3200)
    metric = MelL1(CLASSES)
    metric.update(batch["target"], batch)
    assert metric.compute()["mel_l1"].item() == pytest.approx(0.0, abs=1e-6)
    metric.reset()
    metric.update(batch["mixture"], batch)
    assert metric.compute()["mel_l1"].item() > 0.1


def test_bad_inputs_are_named() -> None:
    batch = separation_batch(batch=2)
    with pytest.raises(ValueError, match="class_index"):
        ScaleInvariantSDR(["a"]).update(batch["target"], batch)
    with pytest.raises(ValueError, match="mixture"):
        ScaleInvariantSDR().update(batch["target"], {**batch, "mixture": batch["mixture"][:, :10]})
    with pytest.raises(KeyError, match="target"):
        ScaleInvariantSDR().update(batch["target"], {"mixture": batch["mixture"]})
    with pytest.raises(ValueError, match="before any update"):
        ScaleInvariantSDR().compute()
