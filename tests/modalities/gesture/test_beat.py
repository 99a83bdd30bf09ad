"""Beat consistency against motions whose speed minima are known in closed form."""

import math

import numpy as np
import pytest

from modalities.gesture.beat import beat_consistency, joint_speed, motion_beats, onset_alignment

FPS = 30
SECONDS = 10


def swaying_joint(pause: bool = False) -> np.ndarray:
    """One joint at x(t) = t + A sin(2 pi t) with A 2 pi = 0.5: speed 1 + 0.5 cos(2 pi t), so
    its minima (0.5, above the threshold) fall at t = 0.5 + k; with ``pause`` the joint swings
    x(t) = sin(2 pi t), whose speed minima are stops (0) at t = 0.25 + k / 2."""
    t = np.arange(SECONDS * FPS) / FPS
    x = np.sin(2 * np.pi * t) if pause else t + 0.5 / (2 * np.pi) * np.sin(2 * np.pi * t)
    return np.stack([x, np.zeros_like(t), np.zeros_like(t)], -1)[:, None, :]


def test_joint_speed_is_the_central_difference():
    positions = swaying_joint()
    speed = joint_speed(positions, FPS)[:, 0]
    t = np.arange(SECONDS * FPS) / FPS
    exact = 1 + 0.5 * np.cos(2 * np.pi * t)
    assert np.abs(speed[1:-1] - exact[1:-1]).max() < 0.01


def test_beats_are_the_speed_minima_above_the_threshold():
    speed = joint_speed(swaying_joint(), FPS)[:, 0]  # mean speed 1: relative = speed
    assert list(motion_beats(speed)) == [15 + 30 * k for k in range(SECONDS)]
    assert len(motion_beats(speed, threshold=0.6)) == 0


def test_onsets_on_the_beats_score_one_and_shifted_onsets_the_gaussian():
    positions = swaying_joint()
    on_beats = 0.5 + np.arange(SECONDS)
    assert beat_consistency(positions, FPS, on_beats, [0], np.ones(1)) == pytest.approx(1.0)
    shifted = beat_consistency(positions, FPS, on_beats + 0.2, [0], np.ones(1))
    assert shifted == pytest.approx(math.exp(-(0.2**2) / (2 * 0.3**2)), abs=1e-9)


def test_stops_are_not_beats():
    onsets = 0.25 + np.arange(2 * SECONDS) / 2
    assert beat_consistency(swaying_joint(pause=True), FPS, onsets, [0], np.full(1, 4.0)) == 0.0


def test_alignment_takes_the_nearest_beat_and_needs_onsets():
    assert onset_alignment(np.array([1.0, 3.0]), np.array([1.3, 2.0])) == pytest.approx(
        (math.exp(-0.5) + math.exp(-1 / 0.18)) / 2
    )
    with pytest.raises(ValueError, match="no audio onsets"):
        onset_alignment(np.array([]), np.array([1.0]))


def test_skipped_ends_and_short_sequences():
    positions = swaying_joint()
    with pytest.raises(ValueError, match="no audio onset between 2.00 s and 8.00 s"):
        beat_consistency(positions, FPS, np.array([0.5, 9.5]), [0], np.ones(1))
    with pytest.raises(ValueError, match="too short"):
        beat_consistency(positions[:100], FPS, np.array([1.0]), [0], np.ones(1))
