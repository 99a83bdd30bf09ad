"""Beat consistency (BC): how well motion beats follow the speech's onsets, by EMAGE's protocol.

A joint's motion beats are the local minima of its speed (over ``order`` frames either side)
where the speed, divided by that joint's mean speed over the dataset, is above ``threshold``:
the joint slows without stopping. For audio onset times ``A`` and a joint's beat times ``B``,

    BC_joint = (1 / |A|) sum_{a in A} exp(-min_{b in B} (a - b)^2 / (2 sigma^2)),

and BC is the mean over the scored joints (the upper body). The first and last
``skip_seconds`` are left out: onsets and beats are both taken inside the remaining span,
with times measured from its start.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.signal import argrelextrema


def joint_speed(positions: np.ndarray, fps: float) -> np.ndarray:
    """Speed of every joint, ``[F, J, 3] -> [F, J]``: central differences
    ``(p[t+1] - p[t-1]) * fps / 2`` inside, one-sided differences at the two ends."""
    if positions.ndim != 3 or positions.shape[-1] != 3 or len(positions) < 2:
        raise ValueError(f"positions must be [frames >= 2, joints, 3], got {positions.shape}")
    velocity = np.gradient(positions, 1.0 / fps, axis=0, edge_order=1)
    return np.linalg.norm(velocity, axis=-1)


def motion_beats(relative_speed: np.ndarray, threshold: float = 0.3, order: int = 7) -> np.ndarray:
    """Frames of one joint's beats: local minima of its speed relative to its mean speed
    (``argrelextrema`` over ``order`` frames either side) that stay above ``threshold``."""
    (minima,) = argrelextrema(relative_speed, np.less, order=order)
    return minima[relative_speed[minima] > threshold]


def onset_alignment(onsets: np.ndarray, beats: np.ndarray, sigma: float = 0.3) -> float:
    """``(1/|A|) sum_a exp(-min_b (a - b)^2 / (2 sigma^2))`` of onset times ``A`` against beat
    times ``B`` (0 when ``B`` is empty)."""
    if len(onsets) == 0:
        raise ValueError("no audio onsets to align with")
    if len(beats) == 0:
        return 0.0
    nearest = np.abs(onsets[:, None] - beats[None, :]).min(axis=1)
    return float(np.exp(-(nearest**2) / (2 * sigma**2)).mean())


def beat_consistency(
    positions: np.ndarray,
    fps: float,
    onset_times: np.ndarray,
    joints: Sequence[int],
    mean_speed: np.ndarray,
    threshold: float = 0.3,
    order: int = 7,
    sigma: float = 0.3,
    skip_seconds: float = 2.0,
) -> float:
    """BC of one sequence: joint positions ``[F, J, 3]`` at ``fps`` against the audio's onset
    times (seconds from the sequence's start), averaged over ``joints``; ``mean_speed``
    ``[J]`` is each joint's mean speed over the dataset (the threshold's unit).

    Raises:
        ValueError: a sequence not longer than the two skipped ends, or no onset inside
            the scored span.
    """
    skip = round(skip_seconds * fps)
    if len(positions) <= 2 * skip:
        raise ValueError(
            f"a sequence of {len(positions)} frames is too short to skip {skip_seconds} s "
            f"at each end ({2 * skip} frames at {fps} fps)"
        )
    relative = joint_speed(positions, fps) / np.asarray(mean_speed)[None, :]
    span = slice(skip, len(positions) - skip)
    start, end = skip / fps, (len(positions) - skip) / fps
    onsets = np.asarray(onset_times, dtype=np.float64)
    onsets = onsets[(onsets >= start) & (onsets < end)] - start
    if len(onsets) == 0:
        raise ValueError(f"no audio onset between {start:.2f} s and {end:.2f} s to score")
    scores = [
        onset_alignment(onsets, motion_beats(relative[span, j], threshold, order) / fps, sigma)
        for j in joints
    ]
    return float(np.mean(scores))
