"""The gesture metrics: FGD-ours is zero for identical motion and grows with a change, BC and
L1div equal their functions' values weighted by length, speed is seconds per second."""

import numpy as np
import pytest
import torch

from modalities.gesture.autoencoder import MotionAutoencoder
from modalities.gesture.beat import beat_consistency
from modalities.gesture.data import SyntheticCoSpeech
from modalities.gesture.diversity import l1_diversity
from modalities.gesture.evaluators import (
    BeatConsistency,
    GenerationSpeed,
    GestureFrechetDistance,
    L1Diversity,
    default_bc_joints,
    mean_joint_speed,
    motion_positions,
)
from modalities.gesture.skeleton import default_skeleton, matrix_to_rotation_6d
from modalities.gesture.speech import audio_onsets

from .test_autoencoder import motion_batch


def continuous_autoencoder(num_quantizers: int = 0) -> MotionAutoencoder:
    skeleton = default_skeleton()
    body = {"body": list(range(skeleton.num_joints))}
    torch.manual_seed(0)
    return MotionAutoencoder(body, root_part="body", width=8, depth=1, latent_dim=4,
                             num_quantizers=num_quantizers, codebook_size=8)  # fmt: skip


def test_fgd_is_zero_for_the_same_motion_and_grows_with_a_change():
    model = continuous_autoencoder()
    batch = motion_batch(batch=8, frames=32)
    model.measure_statistics([batch], 1)  # normalised features: latents of unit order
    metric = GestureFrechetDistance(model)
    metric.update(batch, batch)
    same = abs(float(metric.compute()))
    metric.reset()
    moved = {**batch, "rotations": batch["rotations"] + 0.3}
    metric.update(moved, batch)
    assert same < 1e-6 and float(metric.compute()) > 1e-2
    assert GestureFrechetDistance.display_name == "FGD-ours"
    with pytest.raises(ValueError, match="continuous auto-encoder"):
        GestureFrechetDistance(continuous_autoencoder(num_quantizers=2))


def sequences(tiny_corpus_data):
    recordings = [r for r in tiny_corpus_data.recordings["train"] if r.num_frames >= 180][:2]
    frames = min(r.num_frames for r in recordings)
    batch = {
        "rotations": torch.stack([r.rotations[:frames] for r in recordings]),
        "root": torch.stack([r.root[:frames] for r in recordings]),
        "wave": torch.stack([r.wave[: round(frames / 30 * 16000)] for r in recordings]),
    }
    return recordings, batch


@pytest.fixture(scope="module")
def tiny_corpus_data(tiny_corpus):
    _, root = tiny_corpus
    data = SyntheticCoSpeech(cache_dir=str(root), voices=["en-us"], recording_seconds=8.0,
                             max_prompts=30)  # fmt: skip
    data.setup()
    return data


def test_beat_consistency_is_the_length_weighted_mean_of_the_function(tiny_corpus_data):
    skeleton = default_skeleton()
    speed = mean_joint_speed(tiny_corpus_data.recordings["train"])
    assert speed.shape == (25,) and (speed > 0).all()
    _, batch = sequences(tiny_corpus_data)
    metric = BeatConsistency(speed)
    metric.update(batch, batch)
    metric.update({k: v[:1] for k, v in batch.items()}, {k: v[:1] for k, v in batch.items()})
    positions = motion_positions(skeleton, batch["rotations"], batch["root"]).numpy()
    joints = default_bc_joints(skeleton)
    scores = [
        beat_consistency(p, 30.0, audio_onsets(w, 16000), joints, speed)
        for p, w in zip(positions, batch["wave"].numpy())
    ]
    # Equal lengths: the weighted mean of (s0, s1, s0).
    assert float(metric.compute()) == pytest.approx((2 * scores[0] + scores[1]) / 3)
    with pytest.raises(ValueError, match="one speed per joint"):
        BeatConsistency(speed[:3])
    with (
        pytest.warns(UserWarning, match="before the ``update``"),
        pytest.raises(ValueError, match="no sequence"),
    ):
        BeatConsistency(speed).compute()


def test_l1_diversity_removes_the_root_and_weights_by_length():
    skeleton = default_skeleton()
    frames = 40
    still = torch.eye(3, dtype=torch.float64).expand(frames, 25, 3, 3)
    rotations = matrix_to_rotation_6d(still)[None].float()
    walking = torch.zeros(1, frames, 3)
    walking[..., 2] = torch.linspace(0, 2, frames)  # translation only: no spread
    metric = L1Diversity(skeleton)
    metric.update({"rotations": rotations, "root": walking})
    assert float(metric.compute()) == pytest.approx(0.0, abs=1e-6)
    batch = motion_batch(batch=2, frames=16)
    metric = L1Diversity(skeleton)
    metric.update(batch)
    positions = motion_positions(skeleton, batch["rotations"], batch["root"]).numpy()
    relative = positions - positions[:, :, :1]
    assert float(metric.compute()) == pytest.approx(l1_diversity(list(relative)))


def test_generation_speed_is_seconds_per_second_of_motion():
    metric = GenerationSpeed(fps=30.0)
    metric.update(1.5, 90)
    metric.update(0.5, 30)
    assert float(metric.compute()) == pytest.approx(2.0 / 4.0)
    with pytest.raises(ValueError, match="bad timing"):
        metric.update(1.0, 0)
    assert np.isfinite(float(metric.compute()))
