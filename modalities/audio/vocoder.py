"""A small neural vocoder (log-mel -> waveform): a HiFi-GAN generator trained without a GAN.

:class:`VocoderGenerator` is HiFi-GAN's generator (Kong et al., 2020), scaled down for CPU: a
convolution from the ``n_mels`` bands to ``C`` channels, then one stage per upsampling factor
``r_i`` (``prod_i r_i = hop_length``, so one frame becomes ``hop_length`` samples), each

    x <- ConvTranspose1d_{r_i}(LeakyReLU(x))                 (C_i -> C_{i+1}, length * r_i)
    x <- mean_k ResBlock_k(x)                                multi-receptive-field fusion
    ResBlock_k(x): for d in dilations: x <- x + Conv_{k,1}(LReLU(Conv_{k,d}(LReLU(x))))

and finally ``waveform = tanh(Conv1d(LeakyReLU(x)) -> 1 channel)``. Channels halve at every
stage (``C_{i+1} = max(C_i / 2, min_channels)``). The log-mel is standardised,
``(log_mel - mel_mean) / mel_std``, before the first convolution.

:class:`MelVocoder` trains it (its own LightningModule and recipe) on random segments of
``F = segment_frames`` frames of the waveforms of the audio datamodule's batches. A segment
starting at frame ``m0`` is the waveform ``y = x[m0 hop, (m0 + F) hop)`` and the generator's
input is frames ``[m0, m0 + F)`` of the log-mel of the *whole clip* (frame ``m`` covers the
samples from ``m hop - p`` on, ``p = (n_fft - hop) / 2``, so the edge frames of a segment see
real neighbouring audio, exactly as they do when a whole clip is vocoded). With
``y_hat = G(log_mel[m0 : m0 + F])`` the loss is (no discriminator: a CPU budget)

    loss = L_stft + mel_weight * mean |LogMel(y_hat) - LogMel(y)|

    L_stft = 1/R sum_r [ || |S_r y| - |S_r y_hat| ||_F / || |S_r y| ||_F          spectral conv.
                       + mean | log |S_r y| - log |S_r y_hat| | ]               log-magnitude L1

(the Frobenius norms over the whole batch, so a silent segment does not blow it up) over the
``R`` resolutions ``S_r`` of Parallel WaveGAN's multi-resolution STFT loss (Yamamoto
et al., 2020): FFT sizes (512, 1024, 2048), hops (50, 120, 240), Hann windows (240, 600, 1200),
magnitudes clamped at ``sqrt(1e-7)`` before the log. The mel term compares the mel of the
output segment with the mel of the *target segment* (both reflect-padded the same way at the
segment's edges), so its minimum is exactly ``y_hat = y``; away from the edges that is the
input log-mel itself, and on whole clips (validation) it is the input log-mel everywhere.
``mel_weight = 1`` weighs the mel L1 like the log-magnitude L1 (both in natural-log units).
Without the adversarial terms the output is over-smoothed (buzzy, muffled highs): good enough
to listen to estimates and to compute waveform metrics, not a BigVGAN.

:class:`VocoderInverter` is the :class:`~.mel.MelInverter` that loads a saved vocoder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mel import (
    F_MAX,
    F_MIN,
    HOP_LENGTH,
    N_FFT,
    N_MELS,
    SAMPLE_RATE,
    WIN_LENGTH,
    LogMel,
    MelInverter,
)
from .parts import AudioPart

__all__ = [
    "MelVocoder",
    "VocoderGenerator",
    "VocoderInverter",
    "multi_resolution_stft_loss",
]

LEAKY_SLOPE = 0.1
STFT_FLOOR = 1e-7


class ResBlock(nn.Module):
    """HiFi-GAN's ResBlock1: ``x <- x + Conv_{k,1}(LReLU(Conv_{k,d}(LReLU(x))))`` per dilation."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.dilated = nn.ModuleList(
            nn.Conv1d(
                channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2
            )
            for d in dilations
        )
        self.plain = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
            for _ in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for dilated, plain in zip(self.dilated, self.plain):
            h = dilated(F.leaky_relu(x, LEAKY_SLOPE))
            x = x + plain(F.leaky_relu(h, LEAKY_SLOPE))
        return x


class VocoderGenerator(nn.Module):
    """Log-mel ``[B, n_mels, frames]`` -> waveform ``[B, frames * hop_length]`` (see module docs).

    Args:
        n_mels: mel bands of the input.
        hop_length: samples per frame; must equal the product of ``upsample_factors``.
        channels: channels after the input convolution (halved at every stage).
        upsample_factors: the stages' upsampling factors (transposed-convolution strides).
        min_channels: lower bound of the halved channel counts.
        kernel_sizes: kernel sizes of the residual blocks averaged in each stage (odd).
        dilations: dilations of the convolutions in each residual block.
        mel_mean, mel_std: standardisation of the log-mel before the input convolution.
    """

    def __init__(
        self,
        n_mels: int = 64,
        hop_length: int = 160,
        channels: int = 128,
        upsample_factors: tuple[int, ...] = (5, 4, 4, 2),
        min_channels: int = 16,
        kernel_sizes: tuple[int, ...] = (3,),
        dilations: tuple[int, ...] = (1, 3, 5),
        mel_mean: float = -5.0,
        mel_std: float = 4.0,
    ) -> None:
        super().__init__()
        upsample_factors = tuple(upsample_factors)
        if not upsample_factors or any(r <= 0 for r in upsample_factors):
            raise ValueError(
                f"`upsample_factors` must be positive integers, got {upsample_factors}"
            )
        if math.prod(upsample_factors) != hop_length:
            raise ValueError(
                f"`upsample_factors` {upsample_factors} multiply to {math.prod(upsample_factors)}, "
                f"not hop_length={hop_length}"
            )
        if not kernel_sizes or any(k <= 0 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"`kernel_sizes` must be odd positive integers, got {kernel_sizes}")
        if not dilations or any(d <= 0 for d in dilations):
            raise ValueError(f"`dilations` must be positive integers, got {dilations}")
        if min(n_mels, channels, min_channels) <= 0:
            raise ValueError(
                f"`n_mels`, `channels` and `min_channels` must be positive, got {n_mels}, "
                f"{channels}, {min_channels}"
            )
        if mel_std <= 0:
            raise ValueError(f"`mel_std` must be positive, got {mel_std}")
        self.n_mels = n_mels
        self.hop_length = hop_length
        self.mel_mean = mel_mean
        self.mel_std = mel_std
        self.input = nn.Conv1d(n_mels, channels, 7, padding=3)
        self.upsamples = nn.ModuleList()
        self.stages = nn.ModuleList()
        width = channels
        for factor in upsample_factors:
            out = max(width // 2, min_channels)
            # length (L - 1) r - 2 pad + kernel = L r: kernel 2r (+1 if r is odd), pad ceil(r/2)
            kernel = 2 * factor + factor % 2
            self.upsamples.append(
                nn.ConvTranspose1d(width, out, kernel, stride=factor, padding=(factor + 1) // 2)
            )
            self.stages.append(
                nn.ModuleList(ResBlock(out, k, tuple(dilations)) for k in kernel_sizes)
            )
            width = out
        self.output = nn.Conv1d(width, 1, 7, padding=3)

    def forward(self, log_mel: Tensor) -> Tensor:
        if log_mel.ndim != 3 or log_mel.shape[1] != self.n_mels:
            raise ValueError(
                f"VocoderGenerator: expected a log-mel [B, {self.n_mels}, frames], "
                f"got {tuple(log_mel.shape)}"
            )
        x = self.input((log_mel - self.mel_mean) / self.mel_std)
        for upsample, blocks in zip(self.upsamples, self.stages):
            x = upsample(F.leaky_relu(x, LEAKY_SLOPE))
            x = sum(block(x) for block in blocks) / len(blocks)
        return torch.tanh(self.output(F.leaky_relu(x, LEAKY_SLOPE))).squeeze(1)


def stft_magnitude(waveform: Tensor, n_fft: int, hop_length: int, win_length: int) -> Tensor:
    """``sqrt(max(|STFT|^2, 1e-7))`` ``[B, n_fft/2 + 1, frames]`` (centred Hann window)."""
    window = torch.hann_window(win_length, device=waveform.device, dtype=waveform.dtype)
    spectrum = torch.stft(
        waveform, n_fft, hop_length, win_length, window=window, return_complex=True
    )
    return (spectrum.real.square() + spectrum.imag.square()).clamp_min(STFT_FLOOR).sqrt()


def multi_resolution_stft_loss(
    estimate: Tensor,
    reference: Tensor,
    fft_sizes: tuple[int, ...] = (512, 1024, 2048),
    hop_sizes: tuple[int, ...] = (50, 120, 240),
    win_lengths: tuple[int, ...] = (240, 600, 1200),
) -> tuple[Tensor, Tensor]:
    """Parallel WaveGAN's ``(spectral convergence, log-magnitude L1)`` of ``[B, T]`` waveforms.

    Both are averaged over the resolutions. As in Parallel WaveGAN, the spectral convergence
    takes its Frobenius norms over the whole batch, ``|| |S y| - |S y_hat| ||_F / || |S y| ||_F``:
    per example, a (near-)silent reference segment would make it explode.
    """
    if not len(fft_sizes) == len(hop_sizes) == len(win_lengths) > 0:
        raise ValueError(
            f"`fft_sizes`, `hop_sizes`, `win_lengths` must have one equal, non-zero length, got "
            f"{fft_sizes}, {hop_sizes}, {win_lengths}"
        )
    convergence = log_magnitude = estimate.new_zeros(())
    for n_fft, hop, win in zip(fft_sizes, hop_sizes, win_lengths):
        estimated = stft_magnitude(estimate, n_fft, hop, win)
        target = stft_magnitude(reference, n_fft, hop, win)
        error = torch.linalg.vector_norm(target - estimated)
        convergence = convergence + error / torch.linalg.vector_norm(target).clamp_min(1e-12)
        log_magnitude = log_magnitude + (target.log() - estimated.log()).abs().mean()
    return convergence / len(fft_sizes), log_magnitude / len(fft_sizes)


class MelVocoder(AudioPart):
    """Trains and serves the vocoder on waveform batches (see the module docstring).

    Batches are the audio datamodule's dicts; ``batch[batch_key]`` (``[B, T]`` waveforms) is
    turned into a log-mel by the module's :class:`LogMel`. Training uses one random segment of
    ``segment_frames`` frames per clip; validation vocodes whole clips.

    Args:
        sample_rate, n_fft, hop_length, win_length, n_mels, f_min, f_max: the :class:`LogMel`.
        channels, upsample_factors, min_channels, kernel_sizes, dilations, mel_mean, mel_std:
            the :class:`VocoderGenerator`.
        segment_frames: frames per training segment (32 -> 5120 samples at hop 160); must
            cover more than ``max(fft_sizes) / 2`` samples (the STFT loss's reflect padding).
        mel_weight: weight of the mel L1 next to the multi-resolution STFT loss.
        fft_sizes, hop_sizes, win_lengths: the resolutions of the STFT loss.
        batch_key: the waveform entry of a batch to train on.
        lr: AdamW learning rate (betas (0.8, 0.99) as HiFi-GAN).
        export_dir: folder :meth:`on_fit_end` saves the trained vocoder to with
            :meth:`save_pretrained`; ``None`` saves nothing.
    """

    creation_hint = "train it with `mmflow fit --config recipes/audio/vocoder.yaml`"

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = N_FFT,
        hop_length: int = HOP_LENGTH,
        win_length: int = WIN_LENGTH,
        n_mels: int = N_MELS,
        f_min: float = F_MIN,
        f_max: float = F_MAX,
        channels: int = 128,
        upsample_factors: tuple[int, ...] = (5, 4, 4, 2),
        min_channels: int = 16,
        kernel_sizes: tuple[int, ...] = (3,),
        dilations: tuple[int, ...] = (1, 3, 5),
        mel_mean: float = -5.0,
        mel_std: float = 4.0,
        segment_frames: int = 32,
        mel_weight: float = 1.0,
        fft_sizes: tuple[int, ...] = (512, 1024, 2048),
        hop_sizes: tuple[int, ...] = (50, 120, 240),
        win_lengths: tuple[int, ...] = (240, 600, 1200),
        batch_key: str = "target",
        lr: float = 2e-4,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        if segment_frames <= 0:
            raise ValueError(f"`segment_frames` must be positive, got {segment_frames}")
        if mel_weight < 0:
            raise ValueError(f"`mel_weight` must be >= 0, got {mel_weight}")
        if not len(fft_sizes) == len(hop_sizes) == len(win_lengths) > 0:
            raise ValueError(
                f"`fft_sizes`, `hop_sizes`, `win_lengths` must have one equal, non-zero length, "
                f"got {fft_sizes}, {hop_sizes}, {win_lengths}"
            )
        if any(not 0 < w <= n for w, n in zip(win_lengths, fft_sizes)):
            raise ValueError(f"need 0 < win_length <= fft_size, got {win_lengths}, {fft_sizes}")
        if segment_frames * hop_length <= max(fft_sizes) // 2:
            raise ValueError(
                f"`segment_frames` * hop_length = {segment_frames * hop_length} samples must "
                f"exceed max(fft_sizes) / 2 = {max(fft_sizes) // 2}"
            )
        self.save_hyperparameters()
        self.mel = LogMel(sample_rate, n_fft, hop_length, win_length, n_mels, f_min, f_max)
        self.generator = VocoderGenerator(
            n_mels,
            hop_length,
            channels,
            tuple(upsample_factors),
            min_channels,
            tuple(kernel_sizes),
            tuple(dilations),
            mel_mean,
            mel_std,
        )

    def vocode(self, log_mel: Tensor) -> Tensor:
        """Waveforms ``[B, frames * hop_length]`` of log-mels ``[B, n_mels, frames]``."""
        self.mel.check_mels(log_mel)
        return self.generator(log_mel)

    def forward(self, log_mel: Tensor) -> Tensor:
        return self.vocode(log_mel)

    def losses(self, log_mel: Tensor, waveform: Tensor) -> dict[str, Tensor]:
        """``{"loss", "stft_loss", "spectral_convergence", "log_magnitude", "mel_l1"}``.

        ``waveform`` ``[B, >= frames * hop]`` is the audio ``log_mel`` ``[B, n_mels, frames]``
        frames (cropped to ``frames * hop``). The losses are computed in float32 with autocast
        off, whatever the trainer's precision.
        """
        estimate = self.vocode(log_mel)
        target = waveform[:, : estimate.shape[-1]]
        if target.shape[-1] != estimate.shape[-1]:
            raise ValueError(
                f"MelVocoder: waveform of {waveform.shape[-1]} samples is shorter than the "
                f"{estimate.shape[-1]} that {log_mel.shape[-1]} frames cover"
            )
        with torch.autocast(estimate.device.type, enabled=False):
            estimate, target = estimate.float(), target.float()
            convergence, log_magnitude = multi_resolution_stft_loss(
                estimate,
                target,
                tuple(self.hparams.fft_sizes),
                tuple(self.hparams.hop_sizes),
                tuple(self.hparams.win_lengths),
            )
            with torch.no_grad():
                target_mel = self.mel(target)
            mel_l1 = (self.mel(estimate) - target_mel).abs().mean()
        stft_loss = convergence + log_magnitude
        return {
            "loss": stft_loss + self.hparams.mel_weight * mel_l1,
            "stft_loss": stft_loss,
            "spectral_convergence": convergence,
            "log_magnitude": log_magnitude,
            "mel_l1": mel_l1,
        }

    def batch_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        waveform = self.waveforms_of(batch).float()
        with torch.no_grad(), torch.autocast(waveform.device.type, enabled=False):
            log_mel = self.mel(waveform)
        if self.training:
            log_mel, waveform = self.random_segments(log_mel, waveform)
        return self.losses(log_mel, waveform)

    def random_segments(
        self, log_mel: Tensor, waveform: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """One random segment per clip: frames ``[m0, m0 + F)`` of the whole clip's log-mel and
        samples ``[m0 hop, (m0 + F) hop)`` of its waveform (the whole clip if it is shorter)."""
        size, hop = self.hparams.segment_frames, self.hparams.hop_length
        frames = log_mel.shape[-1]
        if frames <= size:
            return log_mel, waveform[:, : frames * hop]
        starts = torch.randint(0, frames - size + 1, (log_mel.shape[0],), generator=generator)
        starts = starts.to(log_mel.device)[:, None]
        frame_index = starts + torch.arange(size, device=log_mel.device)
        sample_index = starts * hop + torch.arange(size * hop, device=log_mel.device)
        log_mel = torch.gather(
            log_mel, -1, frame_index[:, None, :].expand(-1, log_mel.shape[1], -1)
        )
        return log_mel, torch.gather(waveform, -1, sample_index)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.generator.parameters(), lr=self.hparams.lr, betas=(0.8, 0.99))


class VocoderInverter(MelInverter):
    """Log-mel -> waveform with a :class:`MelVocoder` saved by :meth:`MelVocoder.save_pretrained`.

    ``self.mel`` is the vocoder's own :class:`LogMel` (compare ``self.mel.settings()`` with the
    transform the spectrograms came from); ``mixture_waveform`` is ignored. The output is
    cropped or zero-padded to ``length`` (default ``frames * hop_length``).

    Args:
        path: the folder written by :meth:`MelVocoder.save_pretrained`.
        mel: if given, the transform the spectrograms come from; its settings must match the
            vocoder's.
    """

    def __init__(self, path: str | Path, mel: LogMel | None = None) -> None:
        vocoder = MelVocoder.from_pretrained(path)
        if mel is not None and mel.settings() != vocoder.mel.settings():
            raise ValueError(
                f"{path}: the vocoder's LogMel {vocoder.mel.settings()} differs from the given "
                f"one {mel.settings()}"
            )
        super().__init__(vocoder.mel)
        self.generator = vocoder.generator

    def invert(
        self, log_mel: Tensor, mixture_waveform: Tensor | None = None, length: int | None = None
    ) -> Tensor:
        self.mel.check_mels(log_mel)
        length = self._length(log_mel, length)
        waveform = self.generator(log_mel)[:, :length]
        return F.pad(waveform, (0, length - waveform.shape[-1]))
