"""Onsets of click tracks land on the clicks; silence has none."""

import numpy as np
import pytest

from modalities.gesture.speech import audio_onsets

RATE = 16000


def click_track(times: np.ndarray, seconds: float = 8.0) -> np.ndarray:
    """Decaying 1 kHz bursts of 50 ms at ``times`` over a faint noise floor."""
    rng = np.random.default_rng(0)
    wave = 1e-4 * rng.standard_normal(int(seconds * RATE))
    burst_t = np.arange(int(0.05 * RATE)) / RATE
    burst = np.sin(2 * np.pi * 1000 * burst_t) * np.exp(-burst_t / 0.01)
    for time in times:
        start = int(time * RATE)
        wave[start : start + len(burst)] += burst
    return wave


def test_every_click_has_an_onset_and_every_onset_a_click():
    # librosa's peak picking may also mark the frame after a burst's start (its defaults wait
    # no frames at hop 512 and 16 kHz), so onsets are matched to clicks, not counted.
    clicks = np.array([0.5, 1.3, 2.0, 3.1, 4.4, 5.0, 6.2, 7.1])
    onsets = audio_onsets(click_track(clicks), RATE)
    frame = 512 / RATE
    distance = np.abs(onsets[:, None] - clicks[None, :])
    # Frames quantise the times (32 ms) and the flux peaks a frame late: two frames of slack,
    # far below BC's sigma of 0.3 s and the clicks' spacing of 0.6 s or more.
    assert distance.min(axis=0).max() <= 2 * frame  # every click found
    assert distance.min(axis=1).max() <= 2 * frame  # nothing found away from the clicks


def test_silence_has_no_onsets_and_bad_input_fails():
    assert len(audio_onsets(np.zeros(RATE * 2), RATE)) == 0
    with pytest.raises(ValueError, match="finite mono"):
        audio_onsets(np.full(RATE, np.nan), RATE)
    with pytest.raises(ValueError, match="finite mono"):
        audio_onsets(np.zeros((2, RATE)), RATE)
