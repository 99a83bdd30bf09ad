"""The project's joint tree, 6-D rotations and forward kinematics in torch.

A pose is one local rotation per joint (relative to its parent) and the root's translation.
Joints are stored parents first, so forward kinematics is one pass down the list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

#: The body parts GestureLSM models separately: joints of the lower body carry the root.
PART_NAMES = ("upper", "hands", "lower")


@dataclass(frozen=True)
class Skeleton:
    """A joint tree: names, parent indices (``-1`` for the root, which comes first; every
    parent before its children) and each joint's offset from its parent in the rest pose
    (metres, Y up), plus the joints of each body part.

    Raises:
        ValueError: a parent after its child, a second root, offsets of the wrong shape, or
            parts that do not cover every joint exactly once.
    """

    names: tuple[str, ...]
    parents: tuple[int, ...]
    offsets: Tensor
    parts: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        count = len(self.names)
        if len(self.parents) != count or self.offsets.shape != (count, 3):
            raise ValueError(
                f"skeleton: {count} names, {len(self.parents)} parents and offsets of shape "
                f"{tuple(self.offsets.shape)}; expected {count} parents and offsets ({count}, 3)"
            )
        if self.parents[0] != -1 or any(
            not 0 <= parent < child for child, parent in enumerate(self.parents[1:], start=1)
        ):
            raise ValueError(
                "skeleton: joint 0 must be the only root (parent -1) and every other "
                f"joint's parent must come before it, got parents {self.parents}"
            )
        if self.parts:
            covered = sorted(j for joints in self.parts.values() for j in joints)
            if covered != list(range(count)):
                raise ValueError(
                    f"skeleton: parts {sorted(self.parts)} must hold every joint exactly once"
                )

    @property
    def num_joints(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """The index of joint ``name``."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"skeleton has no joint {name!r}; joints: {list(self.names)}") from None


#: (name, parent, offset from the parent in metres, part) of the default skeleton.
_DEFAULT_JOINTS: tuple[tuple[str, str | None, tuple[float, float, float], str], ...] = (
    ("Hips", None, (0.0, 1.0, 0.0), "lower"),
    ("Spine", "Hips", (0.0, 0.1, 0.0), "upper"),
    ("Chest", "Spine", (0.0, 0.25, 0.0), "upper"),
    ("Neck", "Chest", (0.0, 0.2, 0.0), "upper"),
    ("Head", "Neck", (0.0, 0.1, 0.0), "upper"),
    ("LeftShoulder", "Chest", (0.05, 0.15, 0.0), "upper"),
    ("LeftArm", "LeftShoulder", (0.15, 0.0, 0.0), "upper"),
    ("LeftForeArm", "LeftArm", (0.28, 0.0, 0.0), "upper"),
    ("LeftHand", "LeftForeArm", (0.25, 0.0, 0.0), "hands"),
    ("LeftThumb", "LeftHand", (0.03, 0.0, 0.04), "hands"),
    ("LeftIndex", "LeftHand", (0.09, 0.0, 0.02), "hands"),
    ("LeftPinky", "LeftHand", (0.08, 0.0, -0.03), "hands"),
    ("RightShoulder", "Chest", (-0.05, 0.15, 0.0), "upper"),
    ("RightArm", "RightShoulder", (-0.15, 0.0, 0.0), "upper"),
    ("RightForeArm", "RightArm", (-0.28, 0.0, 0.0), "upper"),
    ("RightHand", "RightForeArm", (-0.25, 0.0, 0.0), "hands"),
    ("RightThumb", "RightHand", (-0.03, 0.0, 0.04), "hands"),
    ("RightIndex", "RightHand", (-0.09, 0.0, 0.02), "hands"),
    ("RightPinky", "RightHand", (-0.08, 0.0, -0.03), "hands"),
    ("LeftUpLeg", "Hips", (0.1, -0.05, 0.0), "lower"),
    ("LeftLeg", "LeftUpLeg", (0.0, -0.45, 0.0), "lower"),
    ("LeftFoot", "LeftLeg", (0.0, -0.42, 0.0), "lower"),
    ("RightUpLeg", "Hips", (-0.1, -0.05, 0.0), "lower"),
    ("RightLeg", "RightUpLeg", (0.0, -0.45, 0.0), "lower"),
    ("RightFoot", "RightLeg", (0.0, -0.42, 0.0), "lower"),
)


def default_skeleton() -> Skeleton:
    """The project's 25-joint humanoid (T-pose at rest, arms along ±X, 1 m hip height): ten
    upper-body joints, eight hand joints (wrist, thumb, index and little finger per side) and
    seven lower-body joints from the hips down."""
    names = tuple(name for name, _, _, _ in _DEFAULT_JOINTS)
    parents = tuple(
        -1 if parent is None else names.index(parent) for _, parent, _, _ in _DEFAULT_JOINTS
    )
    offsets = torch.tensor([offset for _, _, offset, _ in _DEFAULT_JOINTS], dtype=torch.float64)
    parts = {
        part: tuple(j for j, (_, _, _, of) in enumerate(_DEFAULT_JOINTS) if of == part)
        for part in PART_NAMES
    }
    return Skeleton(names, parents, offsets, parts)


def matrix_to_rotation_6d(rotations: Tensor) -> Tensor:
    """The continuous 6-D representation of Zhou et al. (2019): the first two columns of each
    rotation matrix, ``[..., 3, 3] -> [..., 6]`` as ``(R[:, 0], R[:, 1])``."""
    return torch.cat([rotations[..., :, 0], rotations[..., :, 1]], dim=-1)


def rotation_6d_to_matrix(sixd: Tensor) -> Tensor:
    """The rotation nearest in Gram-Schmidt's sense to a 6-D vector ``(a1, a2)``:
    ``b1 = a1 / |a1|``, ``b2 = (a2 - <b1, a2> b1) / |...|``, ``b3 = b1 x b2``, columns
    ``[b1 b2 b3]`` — the inverse of :func:`matrix_to_rotation_6d` on rotations, and a proper
    rotation for any input whose two halves are not parallel."""
    a1, a2 = sixd[..., :3], sixd[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def forward_kinematics(skeleton: Skeleton, rotations: Tensor, root_translation: Tensor) -> Tensor:
    """World positions of every joint, ``[..., J, 3]``.

    With local rotations ``R_j`` (``rotations``, ``[..., J, 3, 3]``), offsets ``o_j`` and the
    root's translation ``r`` (``[..., 3]``, added to the root's offset as in BVH)::

        G_0 = R_0,                  p_0 = o_0 + r
        G_j = G_parent(j) R_j,      p_j = p_parent(j) + G_parent(j) o_j
    """
    joints = skeleton.num_joints
    if rotations.shape[-3:] != (joints, 3, 3) or root_translation.shape[-1] != 3:
        raise ValueError(
            f"forward_kinematics: rotations {tuple(rotations.shape)} and root translation "
            f"{tuple(root_translation.shape)} do not fit a {joints}-joint skeleton "
            f"([..., {joints}, 3, 3] and [..., 3])"
        )
    offsets = skeleton.offsets.to(rotations)
    world = [rotations[..., 0, :, :]]
    positions = [offsets[0] + root_translation]
    for joint in range(1, joints):
        parent = skeleton.parents[joint]
        world.append(world[parent] @ rotations[..., joint, :, :])
        positions.append(
            positions[parent] + (world[parent] @ offsets[joint].unsqueeze(-1)).squeeze(-1)
        )
    return torch.stack(positions, dim=-2)
