"""What the synthetic co-speech corpus holds, and whether beat consistency measures alignment on it.

Run from the repository root::

    python -m benchmarks.gesture_data --out outputs/gesture/data

Prepares the corpus (:class:`modalities.gesture.SyntheticCoSpeech`'s defaults, or
``--max_prompts`` / ``--voices`` for a smaller one), then per split prints and saves
(``gesture_data.json``):

- recordings, hours of speech, recorded and synthetic recordings;
- beat consistency (EMAGE's protocol, upper body and wrists, mean speed of the training split)
  of the ground-truth motion against its speech, and of the same motion a second late (frame
  ``f + 30`` shown at time ``f``): the control a gesture model's BC is read beside; and of the
  ground truth with 5 mm of Gaussian noise on every joint position (seeded), and smoothed by a
  Gaussian of 2 frames: how BC moves with jitter and with smoothing, not with alignment;
- L1 diversity of the ground truth (joint positions, root translation removed);
- with ``--fgd_autoencoder`` (the folder of ``recipes/gesture/fgd_autoencoder.yaml``), FGD-ours
  of the validation and test ground truth against the same motion a second late (near zero:
  the same poses) and against the training split's ground truth.

Recordings shorter than 6 s (the two skipped 2 s ends and the shift) are left out of BC.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from jsonargparse import ArgumentParser
from scipy.ndimage import gaussian_filter1d

from mmflow.files import write_json
from mmflow.metrics import FrechetDistance
from modalities.gesture import SyntheticCoSpeech, default_skeleton
from modalities.gesture.beat import beat_consistency
from modalities.gesture.diversity import l1_diversity
from modalities.gesture.evaluators import (
    GestureFrechetDistance,
    default_bc_joints,
    mean_joint_speed,
    motion_positions,
)
from modalities.gesture.speech import audio_onsets

SHIFT_SECONDS = 1.0
JITTER_METRES = 0.005
SMOOTHING_FRAMES = 2.0


def positions_of(recording) -> np.ndarray:
    """Joint positions ``[F, J, 3]`` of a loaded recording."""
    rotations, root = recording.rotations[None], recording.root[None]
    return motion_positions(default_skeleton(), rotations, root)[0].numpy()


def split_figures(recordings, mean_speed: np.ndarray, fps: float, rate: int) -> dict:
    joints = default_bc_joints(default_skeleton())
    shift = round(SHIFT_SECONDS * fps)
    aligned, shifted, jittered, smoothed, weights, diversity = [], [], [], [], [], []
    noise = np.random.default_rng(0)
    for recording in recordings:
        positions = positions_of(recording)
        diversity.append(positions - positions[:, :1])
        if len(positions) < 6 * fps:
            continue
        onsets = audio_onsets(recording.wave.numpy(), rate)
        aligned.append(beat_consistency(positions, fps, onsets, joints, mean_speed))
        shifted.append(beat_consistency(positions[shift:], fps, onsets, joints, mean_speed))
        noisy = positions + noise.normal(0.0, JITTER_METRES, positions.shape)
        jittered.append(beat_consistency(noisy, fps, onsets, joints, mean_speed))
        smooth = gaussian_filter1d(positions, SMOOTHING_FRAMES, axis=0)
        smoothed.append(beat_consistency(smooth, fps, onsets, joints, mean_speed))
        weights.append(len(positions))
    return {
        "recordings": len(recordings),
        "hours": round(sum(r.num_frames for r in recordings) / fps / 3600, 3),
        "bc_scored_recordings": len(aligned),
        "bc_ground_truth": round(float(np.average(aligned, weights=weights)), 4),
        "bc_shifted_1s": round(float(np.average(shifted, weights=weights)), 4),
        "bc_jitter_5mm": round(float(np.average(jittered, weights=weights)), 4),
        "bc_smoothed_2_frames": round(float(np.average(smoothed, weights=weights)), 4),
        "l1div_ground_truth": round(l1_diversity(diversity), 4),
    }


def whole(recording, start: int = 0, frames: int | None = None) -> dict:
    """A recording's motion from ``start`` as a batch of one, ``frames`` long (a multiple of 4,
    the auto-encoder's latent frame)."""
    frames = frames or (recording.num_frames - start) // 4 * 4
    window = slice(start, start + frames)
    return {"rotations": recording.rotations[None, window], "root": recording.root[None, window]}


def fgd_figures(data: SyntheticCoSpeech, autoencoder: Path, fps: float) -> dict:
    """FGD-ours of each held-out split's ground truth against the same motion a second late,
    and against the training split's ground truth (the scale of a real difference)."""
    shift = round(SHIFT_SECONDS * fps)
    encoder = GestureFrechetDistance(autoencoder)  # loaded once; its latent frames serve all
    train = torch.cat([encoder.latent_frames(**whole(r)) for r in data.recordings["train"]])
    figures = {}
    for split in ("val", "test"):
        late = FrechetDistance(encoder.num_features)
        other = FrechetDistance(encoder.num_features)
        for recording in data.recordings[split]:
            frames = (recording.num_frames - shift) // 4 * 4
            late.update(
                real_features=encoder.latent_frames(**whole(recording, 0, frames)),
                fake_features=encoder.latent_frames(**whole(recording, shift, frames)),
            )
            other.update(real_features=encoder.latent_frames(**whole(recording)))
        other.update(fake_features=train)
        figures[split] = {
            "fgd_shifted_1s": round(float(late.compute()), 4),
            "fgd_training_split": round(float(other.compute()), 4),
        }
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/gesture/data"))
    parser.add_argument("--max_prompts", type=int | None, default=None)
    parser.add_argument("--voices", type=list[str] | None, default=None)
    parser.add_argument("--cache_dir", type=str | None, default=None)
    parser.add_argument("--fgd_autoencoder", type=Path | None, default=None)
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
    train_speed = mean_joint_speed(data.recordings["train"], fps=data.fps)
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
    if args.fgd_autoencoder is not None:
        figures["fgd_ours"] = fgd_figures(data, args.fgd_autoencoder, data.fps)
    write_json(args.out / "gesture_data.json", figures, indent=1)
    print(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
