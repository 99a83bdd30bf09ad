"""What the synthetic co-speech corpus holds, and whether beat consistency measures alignment on it.

Run from the repository root::

    python -m benchmarks.gesture_data --out outputs/gesture/data

Prepares the corpus (:class:`modalities.gesture.SyntheticCoSpeech`'s defaults, or
``--max_prompts`` / ``--voices`` for a smaller one), then per split prints and saves
(``gesture_data.json``):

- recordings, hours of speech, recorded and synthetic recordings;
- beat consistency (EMAGE's protocol, upper body and wrists, mean speed of the training split)
  of the ground-truth motion against its speech, and of the same motion a second late (frame
  ``f + 30`` shown at time ``f``): the control a gesture model's BC is read beside;
- L1 diversity of the ground truth (joint positions, root translation removed).

Recordings shorter than 6 s (the two skipped 2 s ends and the shift) are left out of BC.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from jsonargparse import ArgumentParser

from modalities.gesture import SyntheticCoSpeech, default_skeleton, forward_kinematics
from modalities.gesture.beat import beat_consistency, joint_speed
from modalities.gesture.diversity import l1_diversity
from modalities.gesture.skeleton import rotation_6d_to_matrix
from modalities.gesture.speech import audio_onsets

SHIFT_SECONDS = 1.0


def bc_joints() -> list[int]:
    """The joints BC scores: the upper body and both wrists (EMAGE's upper-body set)."""
    skeleton = default_skeleton()
    return [*skeleton.parts["upper"], skeleton.index("LeftHand"), skeleton.index("RightHand")]


def positions_of(recording) -> np.ndarray:
    """Joint positions ``[F, J, 3]`` of a loaded recording."""
    rotations = rotation_6d_to_matrix(recording.rotations.double())
    return forward_kinematics(default_skeleton(), rotations, recording.root.double()).numpy()


def split_figures(recordings, mean_speed: np.ndarray, fps: float, rate: int) -> dict:
    joints = bc_joints()
    shift = round(SHIFT_SECONDS * fps)
    aligned, shifted, weights, diversity = [], [], [], []
    for recording in recordings:
        positions = positions_of(recording)
        diversity.append(positions - positions[:, :1])
        if len(positions) < 6 * fps:
            continue
        onsets = audio_onsets(recording.wave.numpy(), rate)
        aligned.append(beat_consistency(positions, fps, onsets, joints, mean_speed))
        shifted.append(beat_consistency(positions[shift:], fps, onsets, joints, mean_speed))
        weights.append(len(positions))
    return {
        "recordings": len(recordings),
        "hours": round(sum(r.num_frames for r in recordings) / fps / 3600, 3),
        "bc_scored_recordings": len(aligned),
        "bc_ground_truth": round(float(np.average(aligned, weights=weights)), 4),
        "bc_shifted_1s": round(float(np.average(shifted, weights=weights)), 4),
        "l1div_ground_truth": round(l1_diversity(diversity), 4),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/gesture/data"))
    parser.add_argument("--max_prompts", type=int | None, default=None)
    parser.add_argument("--voices", type=list[str] | None, default=None)
    parser.add_argument("--cache_dir", type=str | None, default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    data = SyntheticCoSpeech(
        cache_dir=args.cache_dir, voices=args.voices, max_prompts=args.max_prompts
    )
    data.prepare_data()
    prepared = time.perf_counter() - start
    data.setup()
    loaded = time.perf_counter() - start - prepared
    manifest = data.manifest()
    train_speed = np.concatenate(
        [joint_speed(positions_of(r), data.fps) for r in data.recordings["train"]]
    ).mean(axis=0)
    figures = {
        "settings": manifest["settings"],
        "prepare_seconds": round(prepared, 1),
        "load_seconds": round(loaded, 1),
        "speech": {
            kind: sum(1 for r in manifest["recordings"] if r["speech"] == kind)
            for kind in ("recorded", "synthetic")
        },
        "splits": {
            split: split_figures(data.recordings[split], train_speed, data.fps, data.sample_rate)
            for split in ("train", "val", "test")
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gesture_data.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
