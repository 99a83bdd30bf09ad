"""BVH files: exact round trips, Euler channels against explicit matrices, and bad files."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from modalities.gesture import (
    BvhError,
    Skeleton,
    bvh_to_motion,
    default_skeleton,
    forward_kinematics,
    motion_to_bvh,
    read_bvh,
    skeleton_of,
    write_bvh,
)

SMALL = """HIERARCHY
ROOT Hips
{
  OFFSET 0.00 1.00 0.00
  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
  JOINT Arm
  {
    OFFSET 0.25 0.00 0.00
    CHANNELS 3 Zrotation Xrotation Yrotation
    End Site
    {
      OFFSET 0.30 0.00 0.00
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.0333333
0.1 0.2 0.3 90.0 0.0 0.0 0.0 0.0 0.0
-1.5 1e-3 2.0 90.0 90.0 0.0 12.25 -33.5 7.125
"""


def small_file(tmp_path, text=SMALL):
    path = tmp_path / "small.bvh"
    path.write_text(text)
    return path


def test_read_parses_hierarchy_and_values(tmp_path):
    bvh = read_bvh(small_file(tmp_path))
    assert [j.name for j in bvh.joints] == ["Hips", "Arm"]
    assert bvh.joints[1].parent == 0 and bvh.joints[1].end_site == (0.3, 0.0, 0.0)
    assert bvh.frame_time == 0.0333333 and bvh.motion.shape == (2, 9)
    assert bvh.motion[1, 1] == 1e-3


def test_round_trip_is_exact(tmp_path):
    first = read_bvh(small_file(tmp_path))
    again = read_bvh(write_bvh(first, tmp_path / "again.bvh"))
    assert again.joints == first.joints and again.frame_time == first.frame_time
    assert np.array_equal(again.motion, first.motion)
    text = (tmp_path / "again.bvh").read_text()
    assert write_bvh(again, tmp_path / "third.bvh").read_text() == text


def test_euler_channels_are_intrinsic_in_the_listed_order(tmp_path):
    rotations, translation = bvh_to_motion(read_bvh(small_file(tmp_path)))
    rz = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    rx = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(rotations[0, 0], rz)
    torch.testing.assert_close(rotations[1, 0], rz @ rx)  # Zrotation then Xrotation: Rz Rx
    torch.testing.assert_close(translation[1], torch.tensor([-1.5, 1e-3, 2.0], dtype=torch.float64))


def test_positions_of_a_read_file_match_the_hand_computation(tmp_path):
    bvh = read_bvh(small_file(tmp_path))
    rotations, translation = bvh_to_motion(bvh)
    positions = forward_kinematics(skeleton_of(bvh), rotations, translation)
    # Frame 0: the hips at (0.1, 1.2, 0.3), the arm 0.25 along Rz(90) x = +y above them.
    torch.testing.assert_close(
        positions[0], torch.tensor([[0.1, 1.2, 0.3], [0.1, 1.45, 0.3]], dtype=torch.float64)
    )


@pytest.mark.parametrize("order", ["ZXY", "XYZ", "YZX"])
def test_motion_to_bvh_and_back_keeps_rotations_and_positions(tmp_path, order):
    skeleton = default_skeleton()
    frames = 5
    rotations = torch.from_numpy(
        Rotation.random(frames * skeleton.num_joints, random_state=1).as_matrix()
    ).reshape(frames, skeleton.num_joints, 3, 3)
    translation = torch.randn(
        frames, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    path = write_bvh(
        motion_to_bvh(skeleton, rotations, translation, 1 / 30, order), tmp_path / "m.bvh"
    )
    read = read_bvh(path)
    back, back_translation = bvh_to_motion(read, str(path))
    torch.testing.assert_close(back, rotations, atol=1e-10, rtol=0)
    torch.testing.assert_close(back_translation, translation)
    torch.testing.assert_close(
        forward_kinematics(skeleton_of(read), back, back_translation),
        forward_kinematics(skeleton, rotations, translation),
    )
    assert read.joints[skeleton.index("Head")].end_site is not None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("Frames: 2", "Frames: 3"), "declares 3 frames"),
        (("12.25", "twelve"), "not a number"),
        (("12.25", "nan"), "non-finite"),
        (("Yrotation\n  JOINT", "Yrotation\n  BONE"), "unexpected 'BONE'"),
        (("CHANNELS 3 Zrotation", "CHANNELS 3 Wrotation"), "unknown channels"),
    ],
)
def test_bad_files_fail_naming_the_file(tmp_path, edit, message):
    path = small_file(tmp_path, SMALL.replace(*edit, 1))
    with pytest.raises(BvhError, match=message) as error:
        bvh_to_motion(read_bvh(path), str(path))
    assert str(path) in str(error.value)


def test_a_joint_missing_a_rotation_channel_fails_on_conversion(tmp_path):
    two_channels = (
        SMALL.replace("CHANNELS 3 Zrotation Xrotation Yrotation", "CHANNELS 2 Zrotation Xrotation")
        .replace(" 0.0 0.0 0.0\n-1.5", " 0.0 0.0\n-1.5")
        .replace(" 7.125", "")
    )
    path = small_file(tmp_path, two_channels)
    bvh = read_bvh(path)
    with pytest.raises(BvhError, match="joint 'Arm' has rotation channels") as error:
        bvh_to_motion(bvh, str(path))
    assert str(path) in str(error.value)


def test_a_skeleton_listed_breadth_first_is_written_depth_first(tmp_path):
    offsets = torch.tensor([[0.0, 1, 0], [1, 0, 0], [-1, 0, 0], [1, 0, 0]], dtype=torch.float64)
    skeleton = Skeleton(("root", "left", "right", "left_hand"), (-1, 0, 0, 1), offsets)
    rotations = torch.from_numpy(Rotation.random(8, random_state=2).as_matrix()).reshape(2, 4, 3, 3)
    translation = torch.zeros(2, 3, dtype=torch.float64)
    bvh = motion_to_bvh(skeleton, rotations, translation, 1 / 30)
    read = read_bvh(write_bvh(bvh, tmp_path / "tree.bvh"))
    assert [j.name for j in read.joints] == ["root", "left", "left_hand", "right"]
    back, _ = bvh_to_motion(read)
    torch.testing.assert_close(back, rotations[:, [0, 1, 3, 2]], atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="depth first"):
        write_bvh(
            replace(bvh, joints=bvh.joints[:2] + bvh.joints[3:] + bvh.joints[2:3]),
            tmp_path / "x.bvh",
        )


def test_motion_to_bvh_rejects_a_bad_order_and_shapes():
    skeleton = default_skeleton()
    eye = torch.eye(3, dtype=torch.float64).expand(2, skeleton.num_joints, 3, 3)
    with pytest.raises(ValueError, match="permutation"):
        motion_to_bvh(skeleton, eye, torch.zeros(2, 3), 1 / 30, "ZZY")
    with pytest.raises(ValueError, match="expected"):
        motion_to_bvh(skeleton, eye[:, :3], torch.zeros(2, 3), 1 / 30)
    assert math.isclose(motion_to_bvh(skeleton, eye, torch.zeros(2, 3), 0.5).frame_time, 0.5)
