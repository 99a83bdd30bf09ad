"""Co-speech gestures (GestureLSM): the skeleton, motion files and, as they land, the data,
body-part auto-encoders, flow and evaluators of the gesture modality."""

from .bvh import (
    Bvh,
    BvhError,
    BvhJoint,
    bvh_to_motion,
    motion_to_bvh,
    read_bvh,
    skeleton_of,
    write_bvh,
)
from .mocap import humanoid_clips, read_humanoid_clip
from .skeleton import (
    PART_NAMES,
    Skeleton,
    default_skeleton,
    forward_kinematics,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
)

__all__ = [
    "PART_NAMES",
    "Bvh",
    "BvhError",
    "BvhJoint",
    "Skeleton",
    "bvh_to_motion",
    "default_skeleton",
    "forward_kinematics",
    "humanoid_clips",
    "matrix_to_rotation_6d",
    "motion_to_bvh",
    "read_bvh",
    "read_humanoid_clip",
    "rotation_6d_to_matrix",
    "skeleton_of",
    "write_bvh",
]
