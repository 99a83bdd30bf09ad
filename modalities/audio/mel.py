"""Log-mel spectrograms of 16 kHz audio and three ways back to a waveform.

The representation is FlowSep's / AudioLDM's (HiFi-GAN framing): the waveform is reflect-padded
by ``p = (n_fft - hop) / 2`` samples on each side and cut into frames without centring, so a
clip of ``T = k * hop`` samples gives exactly ``k`` frames (10.24 s -> 1024 frames). With
``X[f, m]`` the STFT (periodic Hann window of ``win_length``) and ``M`` the ``[n_freqs, n_mels]``
Slaney mel filterbank (Slaney scale, Slaney area normalisation, as librosa's default),

    log_mel[b, m] = log(max(sum_f M[f, b] |X[f, m]|, 1e-5))

i.e. a *magnitude* (power 1) mel spectrogram under a natural log with a floor of 1e-5
(log floor ``-11.51``, the value of silence).

Back to a waveform (:class:`MelInverter`):

- :class:`MixturePhaseInverter` — mel -> linear magnitude (band gains applied to the mixture's
  magnitude, or the filterbank's pseudo-inverse), combined with the *mixture's* STFT phase
  and inverted by overlap-add. It is what makes SDR-type metrics fair for a separator that
  estimates only magnitudes.
- :class:`GriffinLimInverter` — torchaudio's (fast) Griffin-Lim from the same magnitude.
- a neural vocoder (BigVGAN in FlowSep; :mod:`.vocoder` here) is the third option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

__all__ = [
    "GriffinLimInverter",
    "LogMel",
    "MelInverter",
    "MixturePhaseInverter",
    "spectral_convergence",
]

LOG_FLOOR = 1e-5

#: FlowSep's mel framing (16 kHz, 1024-point FFT, hop 160, 64 bands up to 8 kHz): the defaults
#: of :class:`LogMel` and of every audio part that owns one (the VAE, the vocoder).
SAMPLE_RATE = 16000
N_FFT = 1024
HOP_LENGTH = 160
WIN_LENGTH = 1024
N_MELS = 64
F_MIN = 0.0
F_MAX = 8000.0


class LogMel(nn.Module):
    """Waveforms ``[B, T]`` -> log-mel spectrograms ``[B, n_mels, frames]`` (see module docs).

    Also holds the matching STFT / inverse STFT and the mel -> magnitude map used by the
    inverters, so every part of the audio modality frames audio the same way.

    Args:
        sample_rate: sampling rate of the waveforms, in Hz.
        n_fft: FFT size.
        hop_length: samples between frames (one frame per ``hop_length`` samples).
        win_length: Hann window length (``<= n_fft``, zero-padded to ``n_fft``).
        n_mels: mel bands.
        f_min: lowest filterbank frequency, in Hz.
        f_max: highest filterbank frequency, in Hz (``<= sample_rate / 2``).
    """

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = N_FFT,
        hop_length: int = HOP_LENGTH,
        win_length: int = WIN_LENGTH,
        n_mels: int = N_MELS,
        f_min: float = F_MIN,
        f_max: float = F_MAX,
    ) -> None:
        super().__init__()
        _check_positive(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)
        if not 0 < win_length <= n_fft:
            raise ValueError(f"`win_length` must be in (0, n_fft={n_fft}], got {win_length}")
        if hop_length > n_fft or (n_fft - hop_length) % 2:
            raise ValueError(
                f"`n_fft - hop_length` must be even and >= 0 for symmetric padding, "
                f"got n_fft={n_fft}, hop_length={hop_length}"
            )
        if not 0 <= f_min < f_max <= sample_rate / 2:
            raise ValueError(
                f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}, "
                f"sample_rate={sample_rate}"
            )
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.n_mels = n_mels
        self.f_min = f_min
        self.f_max = f_max
        self.padding = (n_fft - hop_length) // 2
        filterbank = torchaudio.functional.melscale_fbanks(
            n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate, norm="slaney", mel_scale="slaney"
        )
        window = F.pad(torch.hann_window(win_length), _centre_padding(win_length, n_fft))
        self.register_buffer("filterbank", filterbank, persistent=False)
        self.register_buffer("filterbank_pinv", torch.linalg.pinv(filterbank.T), persistent=False)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("bin_weights", _bin_weights(filterbank), persistent=False)

    def frames_for(self, num_samples: int) -> int:
        """Frames of a ``num_samples`` clip: ``floor((T + 2p - n_fft) / hop) + 1`` (= T / hop)."""
        return (num_samples + 2 * self.padding - self.n_fft) // self.hop_length + 1

    def samples_for(self, num_frames: int) -> int:
        """The clip length ``frames * hop`` that a spectrogram of ``num_frames`` frames covers."""
        return num_frames * self.hop_length

    def forward(self, waveform: Tensor) -> Tensor:
        """``[B, T]`` (or ``[T]``) waveforms -> ``[B, n_mels, frames]`` natural-log mel."""
        return self.log_mel_from_magnitude(self.stft(waveform).abs())

    def stft(self, waveform: Tensor) -> Tensor:
        """Complex STFT ``[B, n_fft/2 + 1, frames]`` in the reflect-padded, uncentred framing."""
        waveform = self._as_batch(waveform)
        padded = F.pad(waveform.unsqueeze(1), (self.padding, self.padding), mode="reflect")
        return torch.stft(
            padded.squeeze(1),
            self.n_fft,
            self.hop_length,
            window=self.window.to(waveform.dtype),
            center=False,
            return_complex=True,
        )

    def istft(self, spectrum: Tensor, length: int | None = None) -> Tensor:
        """Inverse of :meth:`stft` by weighted overlap-add, cropped to ``length`` samples.

        ``y[n] = sum_m w[n - m hop] frame_m[n - m hop] / sum_m w[n - m hop]^2`` with
        ``frame_m = irfft(spectrum[:, :, m])``, the least-squares signal whose STFT is closest
        to ``spectrum`` (Griffin & Lim, 1984). The padding ``p`` is removed from both ends;
        ``length`` defaults to ``frames * hop``.
        """
        frames = spectrum.shape[-1]
        length = self.samples_for(frames) if length is None else length
        window = self.window.to(spectrum.real.dtype)
        segments = torch.fft.irfft(spectrum, n=self.n_fft, dim=-2) * window[:, None]
        padded_length = self.n_fft + self.hop_length * (frames - 1)
        signal = _overlap_add(segments, padded_length, self.hop_length)
        envelope = _overlap_add(
            window.square()[None, :, None].expand(1, -1, frames), padded_length, self.hop_length
        )
        signal = signal / envelope.clamp_min(1e-8)
        signal = signal[:, self.padding : self.padding + length]
        return F.pad(signal, (0, length - signal.shape[-1]))

    def log_mel_from_magnitude(self, magnitude: Tensor) -> Tensor:
        """``log(max(M^T |X|, 1e-5))`` for a linear magnitude ``[B, n_freqs, frames]``."""
        mel = torch.matmul(self.filterbank.T.to(magnitude.dtype), magnitude)
        return mel.clamp_min(LOG_FLOOR).log()

    def magnitude_from_log_mel(self, log_mel: Tensor) -> Tensor:
        """A linear magnitude ``[B, n_freqs, frames]`` whose mel is ``exp(log_mel)``.

        ``|X| ~= max((M^T)^+ exp(log_mel), 0)``: the minimum-norm least-squares solution of
        ``M^T |X| = mel`` (Moore-Penrose pseudo-inverse, precomputed once) with negative values
        set to zero. This is what torchaudio's ``InverseMelScale`` computes with ``lstsq`` per
        call; the precomputed matrix makes it one matmul, and the result is smooth across the
        bins a mel band covers, so no energy is put where the mel says there is none.
        """
        self.check_mels(log_mel)
        mel = log_mel.exp()
        return torch.matmul(self.filterbank_pinv.to(mel.dtype), mel).clamp_min(0.0)

    def bin_gain(self, band_gain: Tensor) -> Tensor:
        """Per-band gains ``[B, n_mels, frames]`` -> per-bin gains ``[B, n_freqs, frames]``.

        Bin ``f`` takes the average of the gains of the bands covering it, weighted by the
        filterbank, ``W[f, b] = M[f, b] / sum_b' M[f, b']``. Bins no band covers (DC, Nyquist,
        anything outside ``[f_min, f_max]``) take the gain of the nearest band.
        """
        return torch.matmul(self.bin_weights.to(band_gain.dtype), band_gain)

    def settings(self) -> dict[str, float]:
        """The framing and filterbank settings, to check two transforms agree."""
        return {
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "win_length": self.win_length,
            "n_mels": self.n_mels,
            "f_min": self.f_min,
            "f_max": self.f_max,
        }

    def _as_batch(self, waveform: Tensor) -> Tensor:
        if waveform.ndim == 1:
            waveform = waveform.unsqueeze(0)
        if waveform.ndim != 2:
            raise ValueError(
                f"LogMel: expected a waveform [B, T] or [T], got shape {tuple(waveform.shape)}"
            )
        if waveform.shape[-1] <= self.padding:
            raise ValueError(
                f"LogMel: waveform of {waveform.shape[-1]} samples is too short; need more "
                f"than (n_fft - hop_length) / 2 = {self.padding}"
            )
        return waveform

    def check_mels(self, log_mel: Tensor) -> None:
        """Refuse anything but a ``[B, n_mels, frames]`` log-mel of this transform."""
        if log_mel.ndim != 3 or log_mel.shape[1] != self.n_mels:
            raise ValueError(
                f"expected a log-mel [B, {self.n_mels}, frames], got {tuple(log_mel.shape)}"
            )


class MelInverter(nn.Module):
    """Log-mel ``[B, n_mels, frames]`` -> waveform ``[B, length]``: the seam for vocoders.

    Subclasses implement :meth:`invert`. ``mixture_waveform`` is the ``[B, T]`` mixture the
    mel was separated from; inverters that do not use it ignore it. ``length`` defaults to
    ``frames * hop_length``.
    """

    def __init__(self, mel: LogMel | None = None) -> None:
        super().__init__()
        self.mel = mel or LogMel()

    def invert(
        self, log_mel: Tensor, mixture_waveform: Tensor | None = None, length: int | None = None
    ) -> Tensor:
        raise NotImplementedError

    def forward(
        self, log_mel: Tensor, mixture_waveform: Tensor | None = None, length: int | None = None
    ) -> Tensor:
        return self.invert(log_mel, mixture_waveform, length)

    def _length(self, log_mel: Tensor, length: int | None) -> int:
        return self.mel.samples_for(log_mel.shape[-1]) if length is None else length


class MixturePhaseInverter(MelInverter):
    """The estimate's magnitude with the mixture's phase: ``y = iSTFT(|X_hat| e^{i angle X_mix})``.

    Two ways to get the linear magnitude ``|X_hat|`` from the estimated log-mel:

    - ``"mixture_gain"`` (default): each linear bin of the *mixture* is scaled by the gain of
      the mel bands covering it,

          |X_hat|[f, m] = |X_mix|[f, m] * sum_b W[f, b] * mel_hat[b, m] / mel_mix[b, m],
          W[f, b] = M[f, b] / sum_b' M[f, b'],

      so the fine structure inside a band (harmonics, the mixture's own detail) comes from the
      mixture and only the band energies from the estimate — the mel estimate acts as a
      band-wise mask.
    - ``"pinv"``: the filterbank pseudo-inverse of :meth:`LogMel.magnitude_from_log_mel`,
      which spreads each band's energy smoothly over its bins. It does not look at the
      mixture's magnitude, and with the true source's mel it scores well below
      ``"mixture_gain"`` (``docs/audio.md`` has both oracle figures).

    The mixture's STFT is taken in the same framing as the mel, so frame ``m`` of the estimate
    meets frame ``m`` of the mixture.

    Args:
        mel: the log-mel transform the spectrograms came from.
        magnitude: ``"mixture_gain"`` or ``"pinv"`` (see above).
        max_gain: upper clamp of the band gain (``mel_hat / mel_mix``) in ``"mixture_gain"``.
    """

    def __init__(
        self, mel: LogMel | None = None, magnitude: str = "mixture_gain", max_gain: float = 2.0
    ) -> None:
        super().__init__(mel)
        if magnitude not in ("mixture_gain", "pinv"):
            raise ValueError(f"`magnitude` must be 'mixture_gain' or 'pinv', got {magnitude!r}")
        if max_gain <= 0:
            raise ValueError(f"`max_gain` must be positive, got {max_gain}")
        self.magnitude = magnitude
        self.max_gain = max_gain

    def invert(
        self, log_mel: Tensor, mixture_waveform: Tensor | None = None, length: int | None = None
    ) -> Tensor:
        if mixture_waveform is None:
            raise ValueError("MixturePhaseInverter.invert needs `mixture_waveform` (its phase)")
        self.mel.check_mels(log_mel)
        mixture_spectrum = self.mel.stft(mixture_waveform.to(log_mel.dtype))
        if mixture_spectrum.shape[-1] != log_mel.shape[-1]:
            raise ValueError(
                f"`mixture_waveform` gives {mixture_spectrum.shape[-1]} frames but the log-mel "
                f"has {log_mel.shape[-1]}"
            )
        if self.magnitude == "pinv":
            magnitude = self.mel.magnitude_from_log_mel(log_mel)
            spectrum = torch.polar(magnitude, mixture_spectrum.angle())
        else:
            mixture_log_mel = self.mel.log_mel_from_magnitude(mixture_spectrum.abs())
            band_gain = (log_mel - mixture_log_mel).exp().clamp(max=self.max_gain)
            spectrum = mixture_spectrum * self.mel.bin_gain(band_gain)
        return self.mel.istft(spectrum, self._length(log_mel, length))


class GriffinLimInverter(MelInverter):
    """Phase from torchaudio's fast Griffin-Lim (momentum 0.99) on the estimated magnitude.

    Each iteration projects onto consistent spectrograms and back onto the magnitude,
    ``x_{k+1} = iSTFT(|X_hat| e^{i angle STFT(x_k)})`` (with Perraudin et al.'s momentum).
    torchaudio frames with centred windows (frame ``m`` centred on sample ``m hop``), while the
    mel frames are centred on ``m hop + hop / 2``; the output is shifted right by ``hop / 2``
    samples (the first ``hop / 2`` samples are zero) to line up with the mel.

    Args:
        mel: the log-mel transform the spectrograms came from.
        n_iter: Griffin-Lim iterations.
        momentum: fast Griffin-Lim momentum in [0, 1).
    """

    def __init__(self, mel: LogMel | None = None, n_iter: int = 32, momentum: float = 0.99) -> None:
        super().__init__(mel)
        _check_positive(n_iter=n_iter)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1), got {momentum}")
        self.n_iter = n_iter
        self.momentum = momentum

    def invert(
        self, log_mel: Tensor, mixture_waveform: Tensor | None = None, length: int | None = None
    ) -> Tensor:
        length = self._length(log_mel, length)
        shift = self.mel.hop_length // 2
        griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=self.mel.n_fft,
            n_iter=self.n_iter,
            win_length=self.mel.win_length,
            hop_length=self.mel.hop_length,
            power=1.0,
            momentum=self.momentum,
            length=max(length - shift, 1),
        ).to(log_mel.device)
        waveform = griffin_lim(self.mel.magnitude_from_log_mel(log_mel))
        return F.pad(waveform, (shift, 0))[:, :length]


def spectral_convergence(estimate: Tensor, reference: Tensor, eps: float = 1e-12) -> Tensor:
    """``|| |S_ref| - |S_est| ||_F / || |S_ref| ||_F`` per example (magnitudes ``[B, F, M]``)."""
    error = torch.linalg.vector_norm(reference - estimate, dim=(-2, -1))
    return error / torch.linalg.vector_norm(reference, dim=(-2, -1)).clamp_min(eps)


def _bin_weights(filterbank: Tensor) -> Tensor:
    """``W[f, b] = M[f, b] / sum_b' M[f, b']``; uncovered bins copy the nearest band."""
    coverage = filterbank.sum(1)
    weights = filterbank / coverage.clamp_min(1e-12)[:, None]
    covered = torch.nonzero(coverage > 0).flatten()
    for index in torch.nonzero(coverage <= 0).flatten().tolist():
        band = 0 if index < covered[0] else filterbank.shape[1] - 1
        weights[index, band] = 1.0
    return weights


def _overlap_add(segments: Tensor, length: int, hop: int) -> Tensor:
    """Sum ``[B, n_fft, frames]`` segments placed every ``hop`` samples into ``[B, length]``."""
    n_fft = segments.shape[-2]
    summed = F.fold(segments, output_size=(1, length), kernel_size=(1, n_fft), stride=(1, hop))
    return summed.reshape(segments.shape[0], length)


def _centre_padding(win_length: int, n_fft: int) -> tuple[int, int]:
    left = (n_fft - win_length) // 2
    return left, n_fft - win_length - left


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"`{name}` must be positive, got {value}")
