"""How well a trained motion auto-encoder reconstructs held-out motion.

Run from the repository root after its recipe::

    python -m benchmarks.gesture_autoencoder --pretrained outputs/gesture/rvqvae/pretrained \
        --out outputs/gesture/rvqvae_bench

Encodes and decodes every test window of the synthetic co-speech corpus (the recipe's data
settings: window 64, the default corpus) through the continuous latents and the quantiser,
as the flow's samples will be decoded, and prints and saves (``autoencoder.json``) the mean
joint position error per part (MPJPE, centimetres, forward kinematics of the default
skeleton with the root translation of the data, so the root's own drift is not counted) and
the same with only the first quantiser (the coarse codes quantiser dropout trains). It also
decodes every whole test recording (cut to a multiple of the latent frame) and scores beat
consistency (BC) of the reconstruction against the ground truth's (recordings of 6 s or more,
as the generation benchmark scores them): the flow's samples pass
through the same decoder, so the reconstruction's BC is about the best a flow can reach.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from jsonargparse import ArgumentParser

from benchmarks.gesture import MIN_BC_SECONDS
from mmflow.files import write_json
from modalities.gesture import (
    BeatConsistency,
    MotionAutoencoder,
    SyntheticCoSpeech,
    default_skeleton,
)
from modalities.gesture.evaluators import mean_joint_speed
from modalities.gesture.skeleton import forward_kinematics, rotation_6d_to_matrix


def positions(rotations: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    return forward_kinematics(default_skeleton(), rotation_6d_to_matrix(rotations), root)


@torch.no_grad()
def part_errors(
    model: MotionAutoencoder, data: SyntheticCoSpeech, num_quantizers: int | None
) -> dict:
    """MPJPE in centimetres per part over the test windows, decoding with the first
    ``num_quantizers`` quantisers (``None``: all)."""
    skeleton = default_skeleton()
    totals = {part: 0.0 for part in skeleton.parts}
    count = 0
    for batch in data.test_dataloader():
        latents = model.encode(batch["rotations"], batch["root"])
        features = model.decode_features(latents, num_quantizers)
        rotations, _ = model.to_motion(features, skeleton.num_joints)
        error = positions(rotations, batch["root"]) - positions(batch["rotations"], batch["root"])
        distance = error.norm(dim=-1)  # [B, W, J]
        for part, joints in skeleton.parts.items():
            totals[part] += float(distance[..., list(joints)].mean(dim=(1, 2)).sum())
        count += len(distance)
    return {part: round(100 * total / count, 3) for part, total in totals.items()}


@torch.no_grad()
def reconstruction_bc(model: MotionAutoencoder, data: SyntheticCoSpeech) -> dict:
    """BC of the test recordings and of their reconstructions, whole recordings at a time."""
    skeleton = default_skeleton()
    speed = mean_joint_speed(data.recordings["train"], skeleton, data.fps)
    scores = {name: BeatConsistency(speed, skeleton) for name in ("ground_truth", "reconstruction")}
    for recording in data.recordings["test"]:
        if recording.num_frames < MIN_BC_SECONDS * data.fps:
            continue
        frames = recording.num_frames // model.frames_per_latent * model.frames_per_latent
        rotations, root = recording.rotations[None, :frames], recording.root[None, :frames]
        decoded, _ = model.decode(model.encode(rotations, root), skeleton.num_joints)
        batch = {"wave": recording.wave[None]}
        scores["ground_truth"].update({"rotations": rotations, "root": root}, batch)
        scores["reconstruction"].update({"rotations": decoded, "root": root}, batch)
    return {name: round(float(metric.compute()), 4) for name, metric in scores.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("outputs/gesture/autoencoder_bench"))
    parser.add_argument("--max_prompts", type=int | None, default=None)
    parser.add_argument("--voices", type=list[str] | None, default=None)
    parser.add_argument("--cache_dir", type=str | None, default=None)
    args = parser.parse_args(argv)
    model = MotionAutoencoder.from_pretrained(args.pretrained)
    data = SyntheticCoSpeech(
        cache_dir=args.cache_dir, voices=args.voices, max_prompts=args.max_prompts, batch_size=64
    )
    data.setup()
    figures = {
        "pretrained": str(args.pretrained),
        "test_windows": len(data.datasets["test"]),
        "mpjpe_cm": part_errors(model, data, None),
    }
    if model.hparams.num_quantizers:
        figures["mpjpe_cm_first_quantizer"] = part_errors(model, data, 1)
    figures["bc_test_recordings"] = reconstruction_bc(model, data)
    write_json(args.out / "autoencoder.json", figures, indent=1)
    print(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
