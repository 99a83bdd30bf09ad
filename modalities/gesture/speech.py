"""Speech features of the gesture modality: onset times, as EMAGE's beat consistency uses them."""

from __future__ import annotations

import numpy as np


def audio_onsets(wave: np.ndarray, sample_rate: int, hop_length: int = 512) -> np.ndarray:
    """Onset times in seconds of a mono waveform: librosa's ``onset_detect`` (spectral-flux
    onset strength, then peak picking) at ``hop_length`` samples a frame, as EMAGE scores
    beat consistency (hop 512 at 16 kHz: 32 ms frames). Silence has no onsets.

    Raises:
        ValueError: a waveform that is not one-dimensional or holds non-finite samples.
    """
    import librosa

    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or not np.isfinite(wave).all():
        raise ValueError(f"audio_onsets needs a finite mono waveform, got shape {wave.shape}")
    return librosa.onset.onset_detect(
        y=wave, sr=sample_rate, hop_length=hop_length, units="time"
    ).astype(np.float64)
