"""Synthetic co-speech motion: stresses and beat bumps in closed form; the synthesised wrists
dip on the speech's stresses, not a second later; nothing beats in silence."""

import numpy as np
import pytest
import torch
from scipy.signal import argrelextrema

from mmflow.waveforms import load_audio
from modalities.gesture.beat import beat_consistency, joint_speed
from modalities.gesture.corpus import asterisk_prompts, join_with_pauses
from modalities.gesture.skeleton import default_skeleton, forward_kinematics
from modalities.gesture.speech import SpeechFrames, audio_onsets, speech_frames
from modalities.gesture.synthesis import (
    STYLES,
    GestureStyle,
    beat_bumps,
    stresses,
    synthesize_motion,
)

from .test_speech import RATE

FPS = 30


def frames_with_strength(strength: np.ndarray) -> SpeechFrames:
    count = len(strength)
    return SpeechFrames(np.zeros((count, 2)), strength, np.ones(count))


def test_stresses_keep_the_strongest_onsets_at_least_the_gap_apart():
    strength = np.zeros(100)
    onsets = np.array([0.5, 0.6, 1.5, 2.0, 2.9])  # frames 15, 18, 45, 60, 87
    strength[[15, 18, 45, 60, 87]] = [1.0, 4.0, 2.0, 0.5, 3.0]
    times, strengths = stresses(frames_with_strength(strength), onsets, FPS, 0.8, 0.3)
    # Top 4 by strength: 0.6 (4), 2.9 (3), 1.5 (2), 0.5 (1); 0.5 is within 0.3 s of 0.6.
    assert list(times) == [0.6, 1.5, 2.9]
    np.testing.assert_allclose(strengths, 0.8 + 0.2 * np.array([4.0, 2.0, 3.0]) / 4.0)
    assert len(stresses(frames_with_strength(strength), np.zeros(0), FPS, 1.0, 0.3)[0]) == 0


def test_beat_bumps_are_gaussians_of_the_strengths():
    times = np.arange(0, 3, 1 / FPS)
    bumps = beat_bumps(times, np.array([1.0, 2.0]), np.array([0.5, 1.0]), 0.1)
    expected = 0.5 * np.exp(-((times - 1) ** 2) / 0.02) + np.exp(-((times - 2) ** 2) / 0.02)
    np.testing.assert_allclose(bumps, expected)
    assert bumps[30] == pytest.approx(0.5) and bumps[60] == pytest.approx(1.0)


def positions_of(rotations: np.ndarray, root: np.ndarray) -> np.ndarray:
    skeleton = default_skeleton()
    return forward_kinematics(skeleton, torch.from_numpy(rotations), torch.from_numpy(root)).numpy()


def real_speech(count: int = 8) -> np.ndarray:
    """``count`` Asterisk prompts joined with pauses, 16 kHz."""
    prompts = asterisk_prompts()[10 : 10 + count]
    waves = [load_audio(p.path) for p in prompts]
    return join_with_pauses(waves, np.random.default_rng(0), RATE).numpy()


def test_the_gesturing_wrist_slows_on_the_stresses_and_beat_consistency_sees_it():
    wave = real_speech()
    style = STYLES["right-handed"]
    rotations, root = synthesize_motion(wave, RATE, style, np.random.default_rng(0))
    frames = int(len(wave) / RATE * FPS)
    assert rotations.shape == (frames, 25, 3, 3) and root.shape == (frames, 3)
    products = rotations @ rotations.swapaxes(-1, -2)
    np.testing.assert_allclose(products, np.broadcast_to(np.eye(3), products.shape), atol=1e-9)
    positions = positions_of(rotations, root)
    wrist = default_skeleton().index("RightHand")
    speed = joint_speed(positions, FPS)[:, wrist]
    onsets = audio_onsets(wave, RATE)
    stress_times, _ = stresses(
        speech_frames(wave, RATE, FPS, frames), onsets, FPS, style.stress_share, 0.3
    )
    (slow,) = argrelextrema(speed, np.less, order=2)
    near = [np.abs(slow - t * FPS).min() <= 2 for t in stress_times]
    assert np.mean(near) > 0.8  # the wrist slows at (nearly) every stress
    mean_speed = joint_speed(positions, FPS).mean(axis=0)
    aligned = beat_consistency(positions, FPS, onsets, [wrist], mean_speed)
    shifted = beat_consistency(positions[FPS:], FPS, onsets, [wrist], mean_speed)
    assert aligned > shifted, (aligned, shifted)  # the corpus test measures the margin


def test_silence_gives_no_beats_and_a_seed_gives_the_same_motion():
    silence = np.zeros(6 * RATE)
    style = STYLES["emphatic"]
    first = synthesize_motion(silence, RATE, style, np.random.default_rng(3))
    again = synthesize_motion(silence, RATE, style, np.random.default_rng(3))
    other = synthesize_motion(silence, RATE, style, np.random.default_rng(4))
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.allclose(first[0], other[0])  # the drift is seeded
    positions = positions_of(*first)
    wrist = default_skeleton().index("RightHand")
    # Idle: the hands hang at their rest height (the drift moves them by centimetres).
    assert positions[:, wrist, 1].max() - positions[:, wrist, 1].min() < 0.15
    with pytest.raises(ValueError, match="shorter than one frame"):
        synthesize_motion(np.zeros(10), RATE, style, np.random.default_rng(0))


def test_styles_are_checked():
    with pytest.raises(ValueError, match="hands must be"):
        GestureStyle("odd", "feet", 0.1, 0.1, 0.1, 0.1, 0.5, 0.1, 0.1, 0.1)
