"""Co-speech gestures (GestureLSM): the skeleton, motion files, the synthetic co-speech corpus
and BVH + WAV datamodules, the body-part auto-encoders and, as they land, the flow and
evaluators of the gesture modality."""

from .adapter import GestureAdapter
from .autoencoder import MotionAutoencoder, ResidualQuantizer
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
from .corpus import CorpusSettings, prepare_cospeech
from .data import BvhWavFolder, CoSpeechData, GestureWindows, Recording, SyntheticCoSpeech
from .evaluators import BeatConsistency, GenerationSpeed, GestureFrechetDistance, L1Diversity
from .media import save_gesture_media
from .mocap import humanoid_clips, read_humanoid_clip
from .skeleton import (
    PART_NAMES,
    Skeleton,
    default_skeleton,
    forward_kinematics,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
)
from .synthesis import STYLES, GestureStyle, synthesize_motion

__all__ = [
    "PART_NAMES",
    "STYLES",
    "BeatConsistency",
    "Bvh",
    "BvhError",
    "BvhJoint",
    "BvhWavFolder",
    "CoSpeechData",
    "CorpusSettings",
    "GenerationSpeed",
    "GestureAdapter",
    "GestureFrechetDistance",
    "GestureStyle",
    "GestureWindows",
    "L1Diversity",
    "MotionAutoencoder",
    "Recording",
    "ResidualQuantizer",
    "Skeleton",
    "SyntheticCoSpeech",
    "bvh_to_motion",
    "default_skeleton",
    "forward_kinematics",
    "humanoid_clips",
    "matrix_to_rotation_6d",
    "motion_to_bvh",
    "prepare_cospeech",
    "read_bvh",
    "read_humanoid_clip",
    "rotation_6d_to_matrix",
    "save_gesture_media",
    "skeleton_of",
    "synthesize_motion",
    "write_bvh",
]
