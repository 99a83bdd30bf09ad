"""The joint tree, 6-D rotations and forward kinematics against hand-computed answers."""

import math

import pytest
import torch
from scipy.spatial.transform import Rotation

from modalities.gesture import (
    Skeleton,
    default_skeleton,
    forward_kinematics,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
)


def rot_z(degrees: float) -> torch.Tensor:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def chain() -> Skeleton:
    offsets = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    return Skeleton(("root", "elbow", "hand"), (-1, 0, 1), offsets)


def test_default_skeleton_parts_cover_every_joint_once():
    skeleton = default_skeleton()
    assert skeleton.num_joints == 25
    assert [len(skeleton.parts[p]) for p in ("upper", "hands", "lower")] == [10, 8, 7]
    assert skeleton.index("Hips") == 0


def test_skeleton_rejects_a_parent_after_its_child_and_uncovered_parts():
    offsets = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="parent must come before"):
        Skeleton(("a", "b", "c"), (-1, 2, 0), offsets)
    with pytest.raises(ValueError, match="every joint exactly once"):
        Skeleton(("a", "b", "c"), (-1, 0, 1), offsets, {"upper": (0, 1)})
    with pytest.raises(KeyError, match="no joint 'tail'"):
        chain().index("tail")


def test_forward_kinematics_of_a_bent_chain_matches_the_hand_computation():
    # p0 = o0 + r = (0.5, 1, 0); G0 = Rz(90): p1 = p0 + Rz(90)(1, 0, 0) = (0.5, 2, 0);
    # G1 = Rz(180): p2 = p1 + Rz(180)(1, 0, 0) = (-0.5, 2, 0).
    rotations = torch.stack([rot_z(90), rot_z(90), rot_z(0)])
    positions = forward_kinematics(
        chain(), rotations, torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)
    )
    expected = torch.tensor(
        [[0.5, 1.0, 0.0], [0.5, 2.0, 0.0], [-0.5, 2.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(positions, expected)


def test_rest_pose_places_the_left_hand_at_the_sum_of_its_chain_offsets():
    skeleton = default_skeleton()
    rest = torch.eye(3, dtype=torch.float64).expand(2, skeleton.num_joints, 3, 3)
    positions = forward_kinematics(skeleton, rest, torch.zeros(2, 3, dtype=torch.float64))
    hand = positions[:, skeleton.index("LeftHand")]
    torch.testing.assert_close(hand, torch.tensor([[0.73, 1.5, 0.0]] * 2, dtype=torch.float64))


def test_forward_kinematics_rejects_rotations_of_another_skeleton():
    with pytest.raises(ValueError, match="3-joint skeleton"):
        forward_kinematics(chain(), torch.eye(3).expand(4, 3, 3), torch.zeros(3))


def test_6d_round_trip_and_gram_schmidt_closed_form():
    rotations = torch.from_numpy(Rotation.random(64, random_state=0).as_matrix())
    torch.testing.assert_close(rotation_6d_to_matrix(matrix_to_rotation_6d(rotations)), rotations)
    # a1 = (2, 0, 0) and a2 = (1, 3, 0) orthonormalise to x and y, and x cross y = z.
    identity = rotation_6d_to_matrix(
        torch.tensor([2.0, 0.0, 0.0, 1.0, 3.0, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(identity, torch.eye(3, dtype=torch.float64))
    arbitrary = rotation_6d_to_matrix(
        torch.randn(16, 6, generator=torch.Generator().manual_seed(0))
    )
    torch.testing.assert_close(
        arbitrary @ arbitrary.transpose(-1, -2), torch.eye(3).expand(16, 3, 3)
    )
    torch.testing.assert_close(torch.linalg.det(arbitrary), torch.ones(16))
