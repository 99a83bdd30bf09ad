"""The humanoid motion-capture clips that ship with pybullet, retargeted onto the project's
skeleton and resampled to a fixed frame rate.

The clips (DeepMimic's ``humanoid3d_*.txt``: walk, run, dance, kicks ...) are JSON,
``{"Frames": [[dt, root position (3), root quaternion (4), chest, neck, right hip (4 each),
right knee (1), right ankle, right shoulder (4 each), right elbow (1), left hip (4), left knee
(1), left ankle, left shoulder (4 each), left elbow (1)], ...]}``: quaternions ``(w, x, y, z)``,
knees and elbows one angle about their local z axis, positions in metres. The DeepMimic body
faces +x with its left side at -z and its arms hanging at rest; the project's skeleton faces
+z with its left side at +x in a T-pose.

Retargeting goes through world rotations: each mapped joint takes ``G = W G_dm W^T A``, with
``W`` the quarter turn about y between the two frames and ``A`` the rest-pose alignment (a
quarter turn about z that lowers each arm from the T-pose); joints without a counterpart
(clavicles, the upper chest, head, hands and fingers) keep their parent's orientation. Local
rotations follow as ``R_j = G_parent^T G_j``. The hips move as the clip's root, scaled by the
ratio of the two skeletons' leg lengths.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation, Slerp
from torch import Tensor

from .skeleton import Skeleton, default_skeleton

#: DeepMimic's joints in frame order: (name, values, parent).
_CLIP_JOINTS = (
    ("root", 4, None),
    ("chest", 4, "root"),
    ("neck", 4, "chest"),
    ("right_hip", 4, "root"),
    ("right_knee", 1, "right_hip"),
    ("right_ankle", 4, "right_knee"),
    ("right_shoulder", 4, "chest"),
    ("right_elbow", 1, "right_shoulder"),
    ("left_hip", 4, "root"),
    ("left_knee", 1, "left_hip"),
    ("left_ankle", 4, "left_knee"),
    ("left_shoulder", 4, "chest"),
    ("left_elbow", 1, "left_shoulder"),
)
FRAME_VALUES = 1 + 3 + sum(values for _, values, _ in _CLIP_JOINTS)

#: The project's joint each clip joint drives, and the rest-pose alignment (degrees about z).
_RETARGET = {
    "Hips": ("root", 0.0),
    "Spine": ("chest", 0.0),
    "Neck": ("neck", 0.0),
    "RightUpLeg": ("right_hip", 0.0),
    "RightLeg": ("right_knee", 0.0),
    "RightFoot": ("right_ankle", 0.0),
    "RightArm": ("right_shoulder", 90.0),
    "RightForeArm": ("right_elbow", 90.0),
    "LeftUpLeg": ("left_hip", 0.0),
    "LeftLeg": ("left_knee", 0.0),
    "LeftFoot": ("left_ankle", 0.0),
    "LeftArm": ("left_shoulder", -90.0),
    "LeftForeArm": ("left_elbow", -90.0),
}

#: DeepMimic's hip-to-ankle length in metres (its URDF's thigh and shin, scaled by 0.25).
CLIP_LEG_LENGTH = 0.25 * (1.686184 + 1.639480)

#: From the clips' frame (facing +x, left at -z) to the skeleton's (facing +z, left at +x).
_TO_SKELETON = Rotation.from_euler("y", -90.0, degrees=True)


def humanoid_clips() -> list[Path]:
    """The ``humanoid3d_*.txt`` clips of the installed ``pybullet_data``."""
    try:
        import pybullet_data
    except ImportError:
        raise ImportError(
            "the humanoid mocap clips ship with pybullet: pip install pybullet "
            "(make test installs it)"
        ) from None
    clips = sorted(Path(pybullet_data.getDataPath(), "data", "motions").glob("humanoid3d_*.txt"))
    if not clips:
        raise FileNotFoundError(f"{pybullet_data.getDataPath()}: no data/motions/humanoid3d_*.txt")
    return clips


def _read_frames(path: Path) -> np.ndarray:
    """The clip's frames, ``[F, 44]``, checked."""
    try:
        frames = np.asarray(json.loads(Path(path).read_text())["Frames"], dtype=np.float64)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a humanoid mocap clip ({error})") from None
    if frames.ndim != 2 or frames.shape[1] != FRAME_VALUES or len(frames) < 2:
        raise ValueError(
            f"{path}: expected at least 2 frames of {FRAME_VALUES} values, got {frames.shape}"
        )
    if not np.isfinite(frames).all() or (frames[:-1, 0] <= 0).any():
        raise ValueError(f"{path}: non-finite values or a frame duration that is not positive")
    return frames


def _clip_local_rotations(frames: np.ndarray) -> dict[str, Rotation]:
    """Each clip joint's local rotation over the frames."""
    rotations, column = {}, 4
    for name, values, _ in _CLIP_JOINTS:
        block = frames[:, column : column + values]
        if values == 4:
            rotations[name] = Rotation.from_quat(block[:, [1, 2, 3, 0]])  # (w,x,y,z) -> scalar last
        else:
            rotations[name] = Rotation.from_rotvec(block[:, :1] * np.array([[0.0, 0.0, 1.0]]))
        column += values
    return rotations


def read_humanoid_clip(
    path: str | Path, skeleton: Skeleton | None = None, fps: float = 30.0
) -> tuple[Tensor, Tensor]:
    """One clip on ``skeleton`` (default: :func:`default_skeleton`), resampled to ``fps``
    (slerp of the clip's local rotations, linear root positions): local rotations
    ``[F, J, 3, 3]`` and the root translation ``[F, 3]`` for :func:`forward_kinematics`
    (float64).

    Raises:
        ValueError: a file that is not such a clip, or a skeleton without the joints
            retargeting drives.
    """
    skeleton = skeleton or default_skeleton()
    frames = _read_frames(Path(path))
    times = np.concatenate([[0.0], np.cumsum(frames[:-1, 0])])
    targets = np.arange(0.0, times[-1] + 1e-9, 1.0 / fps)
    local = {
        name: Slerp(times, rotation)(targets)
        for name, rotation in _clip_local_rotations(frames).items()
    }
    clip_world: dict[str, Rotation] = {}
    for name, _, parent in _CLIP_JOINTS:
        clip_world[name] = local[name] if parent is None else clip_world[parent] * local[name]
    world = _skeleton_world_rotations(skeleton, clip_world, len(targets), str(path))
    rotations = np.empty((len(targets), skeleton.num_joints, 3, 3))
    for joint, parent in enumerate(skeleton.parents):
        relative = world[joint] if parent < 0 else world[parent].inv() * world[joint]
        rotations[:, joint] = relative.as_matrix()
    positions = np.stack([np.interp(targets, times, frames[:, 1 + axis]) for axis in range(3)], -1)
    return torch.from_numpy(rotations), _root_translation(skeleton, positions)


def _skeleton_world_rotations(
    skeleton: Skeleton, clip_world: dict[str, Rotation], count: int, source: str
) -> list[Rotation]:
    missing = sorted(set(_RETARGET) - set(skeleton.names))
    if missing:
        raise ValueError(f"{source}: the skeleton lacks the joints {missing} retargeting drives")
    world: list[Rotation] = []
    for joint, name in enumerate(skeleton.names):
        if name in _RETARGET:
            clip_joint, alignment = _RETARGET[name]
            rest = Rotation.from_euler("z", alignment, degrees=True)
            world.append(_TO_SKELETON * clip_world[clip_joint] * _TO_SKELETON.inv() * rest)
        elif skeleton.parents[joint] < 0:
            world.append(Rotation.identity(count))
        else:
            world.append(world[skeleton.parents[joint]])
    return world


def _root_translation(skeleton: Skeleton, positions: np.ndarray) -> Tensor:
    """Root translation placing the hips at the clip's root position, turned into the
    skeleton's frame and scaled by the leg-length ratio: ``r = s W p - o_root``."""
    legs = [skeleton.index(name) for name in ("LeftUpLeg", "LeftLeg", "LeftFoot")]
    leg_length = float(-skeleton.offsets[legs, 1].sum())
    hips = (leg_length / CLIP_LEG_LENGTH) * _TO_SKELETON.apply(positions)
    return torch.from_numpy(hips - skeleton.offsets[0].double().numpy())
