"""pybullet's humanoid clips on the project's skeleton: real clips land on their feet, and
hand-made clips move the joints the retargeting maps them to."""

import json

import pytest
import torch

from modalities.gesture import default_skeleton, forward_kinematics
from modalities.gesture.mocap import FRAME_VALUES, humanoid_clips, read_humanoid_clip

SKELETON = default_skeleton()
#: Column of each clip joint's first value in a frame (after dt and the root position).
COLUMNS = {"root": 4, "left_elbow": 43}


def write_clip(tmp_path, edits=None, frames=3):
    """A clip at rest (identity quaternions, straight knees and elbows), 30 fps, with
    ``edits`` {column: value} applied to every frame."""
    frame = [1 / 30, 0.0, 0.85, 0.0] + [0.0] * (FRAME_VALUES - 4)
    for start in (4, 8, 12, 16, 21, 25, 30, 35, 39):  # every quaternion's w
        frame[start] = 1.0
    for column, value in (edits or {}).items():
        frame[column] = value
    path = tmp_path / "clip.txt"
    path.write_text(json.dumps({"Loop": "none", "Frames": [frame] * frames}))
    return path


def positions_of(path):
    rotations, translation = read_humanoid_clip(path)
    return forward_kinematics(SKELETON, rotations, translation)


def joint(positions, name):
    return positions[:, SKELETON.index(name)]


def test_every_real_clip_reads_at_30_fps_and_walk_keeps_its_feet_on_the_ground():
    clips = {path.stem: path for path in humanoid_clips()}
    assert len(clips) == 15
    for path in clips.values():
        rotations, translation = read_humanoid_clip(path)
        assert rotations.shape[1:] == (25, 3, 3) and len(rotations) == len(translation) > 20
        identity = torch.eye(3, dtype=torch.float64).expand_as(rotations)
        torch.testing.assert_close(rotations @ rotations.transpose(-1, -2), identity)
    positions = positions_of(clips["humanoid3d_walk"])
    feet = torch.stack([joint(positions, "LeftFoot"), joint(positions, "RightFoot")], 1)
    assert len(positions) == 38  # 37 frames of 0.033332 s: 1.233 s at 30 fps, 38 frames
    assert -0.1 < float(feet[..., 1].min()) < 0.15
    assert float(joint(positions, "Head")[:, 1].min()) > 1.5
    forward = joint(positions, "Hips")[-1] - joint(positions, "Hips")[0]
    assert float(forward[2]) > 1.0 and abs(float(forward[0])) < 0.1  # walks ahead, along +z


def test_rest_clip_hangs_the_arms_below_the_shoulders(tmp_path):
    positions = positions_of(write_clip(tmp_path))
    arm, hand = joint(positions, "LeftArm"), joint(positions, "LeftHand")
    torch.testing.assert_close(
        hand - arm, torch.tensor([[0.0, -0.53, 0.0]] * 3, dtype=torch.float64)
    )


def test_a_quarter_turn_to_the_left_puts_the_left_hip_behind(tmp_path):
    # The root turns +90 degrees about y: the clip's facing +x goes to its left, -z; on the
    # skeleton, facing +z turns to +x and the left hip (0.1, -0.05, 0) goes to (0, -0.05, -0.1).
    half = 0.5**0.5
    path = write_clip(tmp_path, {COLUMNS["root"]: half, COLUMNS["root"] + 2: half})
    positions = positions_of(path)
    offset = joint(positions, "LeftUpLeg") - joint(positions, "Hips")
    torch.testing.assert_close(offset, torch.tensor([[0.0, -0.05, -0.1]] * 3, dtype=torch.float64))


def test_a_bent_left_elbow_points_the_forearm_forward(tmp_path):
    positions = positions_of(write_clip(tmp_path, {COLUMNS["left_elbow"]: torch.pi / 2}))
    forearm = joint(positions, "LeftHand") - joint(positions, "LeftForeArm")
    torch.testing.assert_close(forearm, torch.tensor([[0.0, 0.0, 0.25]] * 3, dtype=torch.float64))


def test_a_clip_with_missing_values_fails_naming_the_file(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text(json.dumps({"Frames": [[1 / 30] + [0.0] * 40] * 3}))
    with pytest.raises(ValueError, match="short.txt: expected at least 2 frames of 44 values"):
        read_humanoid_clip(path)
