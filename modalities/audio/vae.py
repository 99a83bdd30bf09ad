"""A KL-regularised mel auto-encoder (AudioLDM's ``AutoencoderKL``, scaled down for CPU).

The encoder maps a log-mel ``[B, 1, n_mels, frames]`` to a diagonal Gaussian posterior
``q(z | x) = N(mu, diag(sigma^2))`` over latents ``[B, z_channels, n_mels / f, frames / f]``,
with ``f = 2^(len(channel_multipliers) - 1)`` (one stride-2 convolution per extra level). The
decoder maps ``z`` back to a log-mel. Training minimises

    loss = mean |x - x_hat|   (or mean (x - x_hat)^2)          reconstruction of the log-mel
         + beta * mean 0.5 (mu^2 + sigma^2 - 1 - log sigma^2)   KL(q(z | x) || N(0, I))

with ``z = mu + sigma * eps`` (reparameterisation) during training; both terms are means over
elements (mel bins, latent elements), so ``beta`` does not depend on the clip length. A small
``beta`` keeps the latent close to a Gaussian's scale without blurring the reconstruction.
AudioLDM's LPIPS and discriminator terms are left out: they need pretrained or adversarial
networks that a CPU recipe cannot afford.

Clips whose ``n_mels`` or frame count is not a multiple of ``f`` are padded on the high side
with the log floor (``log 1e-5``, silence) up to the next multiple before encoding, and the
decoder's output is cropped back, so any length round-trips.

:class:`MelVAE` trains it (its own LightningModule and recipe, not ``FlowMatching``) from the
dict batches of the audio datamodule, measures ``latent_scale = 1 / std(z)`` at the end of fit
(FlowSep scales latents the same way), and saves to a folder that the flow recipe loads with
:meth:`MelVAE.from_pretrained`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmflow.losses import kl_to_standard_normal
from mmflow.numerics import gaussian_sample
from mmflow.pretrained import LatentAutoencoderPart

from .mel import F_MAX, F_MIN, HOP_LENGTH, LOG_FLOOR, N_FFT, N_MELS, SAMPLE_RATE, WIN_LENGTH, LogMel
from .parts import AudioPart

__all__ = ["MelAutoencoder", "MelVAE"]

PAD_VALUE = math.log(LOG_FLOOR)


class ChannelNorm(nn.Module):
    """Layer norm over the channels of each position: ``(x - mean_c x) / std_c x * g + b``.

    Unlike GroupNorm, whose statistics span the whole spectrogram, it sees one time-frequency
    position at a time, so the auto-encoder is local: a model trained on short crops encodes
    and decodes whole clips of any length exactly as it did the crops.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


def _norm(channels: int) -> nn.Module:
    return ChannelNorm(channels)


class ResidualBlock(nn.Module):
    """``x + conv(SiLU(norm(conv(SiLU(norm(x))))))`` with a 1x1 skip when channels change."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            _norm(out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


def _stage(in_channels: int, out_channels: int, num_blocks: int) -> list[nn.Module]:
    blocks = [ResidualBlock(in_channels, out_channels)]
    blocks += [ResidualBlock(out_channels, out_channels) for _ in range(num_blocks - 1)]
    return blocks


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MelAutoencoder(nn.Module):
    """Convolutional encoder/decoder between ``[B, 1, H, W]`` mels and ``[B, z, H/f, W/f]`` latents.

    Level ``i`` has ``channels * channel_multipliers[i]`` channels and ``num_res_blocks``
    residual blocks; every level but the last ends with a stride-2 convolution (encoder) or
    starts with an upsampling (decoder, mirrored). ``H`` and ``W`` must be multiples of ``f``
    (:class:`MelVAE` pads to that).
    """

    def __init__(
        self,
        channels: int = 32,
        channel_multipliers: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        z_channels: int = 4,
    ) -> None:
        super().__init__()
        widths = [channels * m for m in channel_multipliers]
        self.downsample_factor = 2 ** (len(widths) - 1)
        self.encoder = nn.Sequential(*self._encoder_layers(widths, num_res_blocks, z_channels))
        self.decoder = nn.Sequential(*self._decoder_layers(widths, num_res_blocks, z_channels))

    @staticmethod
    def _encoder_layers(widths: list[int], num_blocks: int, z_channels: int) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(1, widths[0], 3, padding=1)]
        for level, width in enumerate(widths):
            layers += _stage(widths[max(level - 1, 0)], width, num_blocks)
            if level < len(widths) - 1:
                layers.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        layers += [
            _norm(widths[-1]),
            nn.SiLU(),
            nn.Conv2d(widths[-1], 2 * z_channels, 3, padding=1),
        ]
        return layers

    @staticmethod
    def _decoder_layers(widths: list[int], num_blocks: int, z_channels: int) -> list[nn.Module]:
        reverse = widths[::-1]
        layers: list[nn.Module] = [nn.Conv2d(z_channels, reverse[0], 3, padding=1)]
        for level, width in enumerate(reverse):
            if level > 0:
                layers.append(Upsample(reverse[level - 1]))
            layers += _stage(reverse[max(level - 1, 0)], width, num_blocks)
        layers += [_norm(reverse[-1]), nn.SiLU(), nn.Conv2d(reverse[-1], 1, 3, padding=1)]
        return layers

    def encode(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior ``(mean, logvar)``, each ``[B, z, H/f, W/f]``; logvar clamped to [-30, 20]."""
        mean, logvar = self.encoder(mel).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(latents)


class MelVAE(AudioPart, LatentAutoencoderPart):
    """Trains and serves the mel auto-encoder on waveform batches.

    Batches are the audio datamodule's dicts; ``batch[batch_key]`` (``[B, T]`` waveforms, e.g.
    ``"target"`` or ``"mixture"``) is turned into a log-mel by the module's :class:`LogMel`.
    Inputs are standardised, ``(log_mel - mel_mean) / mel_std``, before the encoder and the
    decoder's output is mapped back, so the reconstruction is in log-mel units.

    For the flow: ``encode(log_mel)`` returns ``latent_scale * mu`` (or a posterior sample), and
    ``decode(latents, num_frames)`` divides by ``latent_scale`` and returns the log-mel.

    Args:
        sample_rate, n_fft, hop_length, win_length, n_mels, f_min, f_max: the :class:`LogMel`.
        channels, channel_multipliers, num_res_blocks, z_channels: the :class:`MelAutoencoder`
            (downsampling factor ``f = 2^(len(channel_multipliers) - 1)``).
        beta: weight of the KL term.
        reconstruction: ``"l1"`` or ``"l2"`` reconstruction loss on the log-mel.
        batch_key: the waveform entry of a batch to train on.
        mel_mean, mel_std: standardisation of the log-mel before the encoder.
        lr: AdamW learning rate.
        latent_scale_batches: training batches that :meth:`on_fit_end` uses to measure
            ``latent_scale`` (0 keeps the current value).
        crop_frames: train on a random window of this many mel frames of each clip (the
            network is fully convolutional, so short windows train it for any length at a
            fraction of the cost); ``None`` trains on whole clips. Validation uses whole clips.
        export_dir: folder :meth:`on_fit_end` saves the trained VAE to (after measuring
            ``latent_scale``) with :meth:`save_pretrained`; ``None`` saves nothing.
    """

    creation_hint = "train it with `mmflow fit --config recipes/audio/mel_vae.yaml`"

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = N_FFT,
        hop_length: int = HOP_LENGTH,
        win_length: int = WIN_LENGTH,
        n_mels: int = N_MELS,
        f_min: float = F_MIN,
        f_max: float = F_MAX,
        channels: int = 32,
        channel_multipliers: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        z_channels: int = 4,
        beta: float = 1e-5,
        reconstruction: str = "l1",
        batch_key: str = "target",
        mel_mean: float = -5.0,
        mel_std: float = 4.0,
        lr: float = 2e-4,
        latent_scale_batches: int = 8,
        crop_frames: int | None = None,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        if reconstruction not in ("l1", "l2"):
            raise ValueError(f"`reconstruction` must be 'l1' or 'l2', got {reconstruction!r}")
        if beta < 0:
            raise ValueError(f"`beta` must be >= 0, got {beta}")
        if mel_std <= 0:
            raise ValueError(f"`mel_std` must be positive, got {mel_std}")
        if crop_frames is not None and crop_frames <= 0:
            raise ValueError(f"`crop_frames` must be positive or None, got {crop_frames}")
        if not channel_multipliers:
            raise ValueError("`channel_multipliers` must name at least one level")
        self.save_hyperparameters()
        self.mel = LogMel(sample_rate, n_fft, hop_length, win_length, n_mels, f_min, f_max)
        self.autoencoder = MelAutoencoder(
            channels, tuple(channel_multipliers), num_res_blocks, z_channels
        )
        self.register_buffer("latent_scale", torch.ones(()))

    @property
    def downsample_factor(self) -> int:
        return self.autoencoder.downsample_factor

    def latent_shape(self, num_frames: int) -> tuple[int, int, int]:
        """``(z_channels, ceil(n_mels / f), ceil(frames / f))`` of a clip of ``num_frames``."""
        f = self.downsample_factor
        return (
            self.hparams.z_channels,
            -(-self.hparams.n_mels // f),
            -(-num_frames // f),
        )

    def posterior(self, log_mel: Tensor) -> tuple[Tensor, Tensor]:
        """Unscaled ``(mean, logvar)`` of ``q(z | log_mel)`` for ``[B, n_mels, frames]`` input."""
        self.mel.check_mels(log_mel)
        normalised = (log_mel - self.hparams.mel_mean) / self.hparams.mel_std
        return self.autoencoder.encode(self._pad(normalised.unsqueeze(1)))

    def decode_unscaled(self, latents: Tensor, num_frames: int | None = None) -> Tensor:
        """Log-mel ``[B, n_mels, num_frames]`` from unscaled latents (crop of the padded output)."""
        num_frames = (
            latents.shape[-1] * self.downsample_factor if num_frames is None else num_frames
        )
        mel = self.autoencoder.decode(latents)[:, 0, : self.hparams.n_mels, :num_frames]
        return mel * self.hparams.mel_std + self.hparams.mel_mean

    def encode(
        self, log_mel: Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Flow latents ``latent_scale * z``, ``z = mu`` (or ``mu + sigma eps`` if ``sample``)."""
        mean, logvar = self.posterior(log_mel)
        latents = gaussian_sample(mean, logvar, generator) if sample else mean
        return latents * self.latent_scale

    def decode(self, latents: Tensor, num_frames: int | None = None) -> Tensor:
        """Log-mel ``[B, n_mels, num_frames]`` from flow latents (divided by ``latent_scale``)."""
        return self.decode_unscaled(latents / self.latent_scale, num_frames)

    def forward(
        self, log_mel: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(reconstruction, mean, logvar)`` with a reparameterised posterior sample."""
        mean, logvar = self.posterior(log_mel)
        latents = gaussian_sample(mean, logvar, generator)
        return self.decode_unscaled(latents, log_mel.shape[-1]), mean, logvar

    def losses(self, log_mel: Tensor) -> dict[str, Tensor]:
        """``{"loss", "mel_l1", "kl"}`` of a log-mel batch (see the module docstring)."""
        reconstruction, mean, logvar = self(log_mel)
        mel_l1 = (reconstruction - log_mel).abs().mean()
        if self.hparams.reconstruction == "l1":
            reconstruction_loss = mel_l1
        else:
            reconstruction_loss = (reconstruction - log_mel).square().mean()
        kl = kl_to_standard_normal(mean, logvar).mean()
        return {
            "loss": reconstruction_loss + self.hparams.beta * kl,
            "mel_l1": mel_l1,
            "kl": kl,
        }

    def batch_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        with torch.no_grad():
            log_mel = self.mel(self.waveforms_of(batch))
        if self.training:
            log_mel = self._random_crop(log_mel)
        return self.losses(log_mel)

    def _random_crop(self, log_mel: Tensor) -> Tensor:
        """One random window of ``crop_frames`` frames per clip (the whole clip if shorter)."""
        size = self.hparams.crop_frames
        if size is None or log_mel.shape[-1] <= size:
            return log_mel
        starts = torch.randint(0, log_mel.shape[-1] - size + 1, (log_mel.shape[0],))
        index = starts.to(log_mel.device)[:, None] + torch.arange(size, device=log_mel.device)
        return torch.gather(log_mel, -1, index[:, None, :].expand(-1, log_mel.shape[1], -1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.autoencoder.parameters(), lr=self.hparams.lr)

    def posterior_mean(self, batch: dict[str, Any]) -> Tensor:
        return self.posterior(self.mel(self.waveforms_of(batch).to(self.device)))[0]

    def _pad(self, mel: Tensor) -> Tensor:
        f = self.downsample_factor
        pad_mels = -mel.shape[-2] % f
        pad_frames = -mel.shape[-1] % f
        value = (PAD_VALUE - self.hparams.mel_mean) / self.hparams.mel_std
        return F.pad(mel, (0, pad_frames, 0, pad_mels), value=value)
