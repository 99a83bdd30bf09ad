"""Speech features of the gesture modality: onset times (as EMAGE's beat consistency uses them)
and per-frame features aligned with the motion's frames (the flow's speech context, and what
the motion synthesiser listens to)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Analysis hop of :func:`speech_frames` in seconds (10 ms), before resampling to motion frames.
ANALYSIS_HOP_SECONDS = 0.01


def _checked_wave(wave: np.ndarray, caller: str) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or not np.isfinite(wave).all():
        raise ValueError(f"{caller} needs a finite mono waveform, got shape {wave.shape}")
    return wave


def audio_onsets(wave: np.ndarray, sample_rate: int, hop_length: int = 512) -> np.ndarray:
    """Onset times in seconds of a mono waveform: librosa's ``onset_detect`` (spectral-flux
    onset strength, then peak picking) at ``hop_length`` samples a frame, as EMAGE scores
    beat consistency (hop 512 at 16 kHz: 32 ms frames). Silence has no onsets.

    Raises:
        ValueError: a waveform that is not one-dimensional or holds non-finite samples.
    """
    import librosa

    wave = _checked_wave(wave, "audio_onsets")
    return librosa.onset.onset_detect(
        y=wave, sr=sample_rate, hop_length=hop_length, units="time"
    ).astype(np.float64)


@dataclass(frozen=True)
class SpeechFrames:
    """Speech features at the motion's frame times ``i / fps`` (``F`` frames).

    Attributes:
        log_mel: ``[F, n_mels]`` ``log10`` mel power, shifted and scaled as ``(log10 P + 4) / 2``
            so speech sits roughly in [-2, 2].
        onset_strength: ``[F]`` spectral flux of the log mel (librosa's onset strength), divided
            by its 95th percentile over the recording (loudness-free).
        energy: ``[F]`` RMS energy divided by its 95th percentile over the recording.
    """

    log_mel: np.ndarray
    onset_strength: np.ndarray
    energy: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.energy)

    def features(self) -> np.ndarray:
        """The flow's speech context per frame, ``[F, n_mels + 1]``: log mel, onset strength."""
        return np.concatenate([self.log_mel, self.onset_strength[:, None]], axis=1).astype(
            np.float32
        )


def speech_frames(
    wave: np.ndarray, sample_rate: int, fps: float, num_frames: int, n_mels: int = 32
) -> SpeechFrames:
    """Log mel, onset strength and energy of ``wave`` at the ``num_frames`` times ``i / fps``.

    The analysis runs at a 10 ms hop (an STFT of 64 ms windows, librosa's mel filters up to
    half the sample rate) and each feature is linearly interpolated to the frame times, so
    features and motion frames share one clock whatever the ratio of the two rates. A frame
    past the end of the audio takes the last analysis frame's values.

    Raises:
        ValueError: a waveform that is not finite and mono.
    """
    import librosa

    wave = _checked_wave(wave, "speech_frames")
    hop = round(ANALYSIS_HOP_SECONDS * sample_rate)
    n_fft = 1 << int(np.ceil(np.log2(0.064 * sample_rate)))
    power = np.abs(librosa.stft(wave, n_fft=n_fft, hop_length=hop)) ** 2
    mel = librosa.feature.melspectrogram(S=power, sr=sample_rate, n_mels=n_mels)
    log_mel = (np.log10(mel + 1e-8) + 4.0) / 2.0
    flux = librosa.onset.onset_strength(S=librosa.power_to_db(mel), sr=sample_rate)
    rms = librosa.feature.rms(S=np.sqrt(power), frame_length=n_fft, hop_length=hop)[0]
    analysis_times = np.arange(power.shape[1]) * hop / sample_rate
    frame_times = np.arange(num_frames) / fps

    def at_frames(values: np.ndarray) -> np.ndarray:
        return np.interp(frame_times, analysis_times, values)

    return SpeechFrames(
        log_mel=np.stack([at_frames(band) for band in log_mel], axis=1),
        onset_strength=_by_percentile(at_frames(flux)),
        energy=_by_percentile(at_frames(rms)),
    )


def _by_percentile(values: np.ndarray, percentile: float = 95.0) -> np.ndarray:
    """``values`` divided by their ``percentile`` (unchanged when that is zero: silence)."""
    scale = float(np.percentile(values, percentile))
    return values / scale if scale > 0 else values
