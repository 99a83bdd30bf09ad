"""BVH motion files: read, write, and convert to and from rotations on a :class:`Skeleton`.

BVH (Biovision Hierarchy) is the text format real co-speech corpora (BEAT, Trinity) ship in:
a joint tree (``OFFSET`` per joint, ``CHANNELS`` naming each joint's position and Euler
rotation values, in degrees, applied in the order listed), then one line of channel values per
frame. :func:`write_bvh` writes every number as Python's shortest exact ``repr``, so reading a
written file gives back the same values bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch import Tensor

from .skeleton import Skeleton

POSITION_CHANNELS = ("Xposition", "Yposition", "Zposition")
ROTATION_CHANNELS = ("Xrotation", "Yrotation", "Zrotation")


@dataclass(frozen=True)
class BvhJoint:
    """One joint of a BVH hierarchy; ``end_site`` is the offset of its ``End Site``, if any."""

    name: str
    parent: int
    offset: tuple[float, float, float]
    channels: tuple[str, ...]
    end_site: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class Bvh:
    """A BVH file: its joints (parents first), seconds per frame and the channel values,
    ``motion[frame]`` holding every joint's channels in hierarchy order (float64)."""

    joints: tuple[BvhJoint, ...]
    frame_time: float
    motion: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.motion)


class BvhError(ValueError):
    """A BVH file that cannot be read or converted; the message names the file."""


class _Tokens:
    """Whitespace tokens of a file with a cursor, failing with the file's name."""

    def __init__(self, text: str, source: str) -> None:
        self._tokens: Iterator[str] = iter(text.split())
        self.source = source

    def next(self, expected: str | None = None, wanted: str | None = None) -> str:
        """The next token, which must be ``expected`` if given; ``wanted`` describes it when
        the file ends early."""
        token = next(self._tokens, None)
        if token is None:
            wanted = wanted or (repr(expected) if expected else None)
            raise BvhError(
                f"{self.source}: file ends early" + (f", expected {wanted}" if wanted else "")
            )
        if expected is not None and token != expected:
            raise BvhError(f"{self.source}: expected {expected!r}, found {token!r}")
        return token

    def number(self, what: str) -> float:
        token = self.next()
        try:
            return float(token)
        except ValueError:
            raise BvhError(f"{self.source}: {what}: {token!r} is not a number") from None

    def rest(self) -> list[str]:
        return list(self._tokens)


def _read_offset(tokens: _Tokens, joint: str) -> tuple[float, float, float]:
    tokens.next("OFFSET")
    return tuple(tokens.number(f"OFFSET of {joint}") for _ in range(3))  # type: ignore[return-value]


def _read_joint(tokens: _Tokens, name: str, parent: int, joints: list[BvhJoint]) -> None:
    tokens.next("{")
    offset = _read_offset(tokens, name)
    tokens.next("CHANNELS")
    count = tokens.number(f"CHANNELS of {name}")
    channels = tuple(tokens.next() for _ in range(int(count)))
    unknown = set(channels) - set(POSITION_CHANNELS + ROTATION_CHANNELS)
    if unknown:
        raise BvhError(f"{tokens.source}: joint {name!r}: unknown channels {sorted(unknown)}")
    index = len(joints)
    joints.append(BvhJoint(name, parent, offset, channels))
    while (token := tokens.next(wanted="JOINT, End Site or '}'")) != "}":
        if token == "JOINT":
            _read_joint(tokens, tokens.next(), index, joints)
        elif token == "End":
            tokens.next("Site")
            tokens.next("{")
            end = _read_offset(tokens, f"{name}'s End Site")
            tokens.next("}")
            joints[index] = BvhJoint(name, parent, offset, channels, end)
        else:
            raise BvhError(f"{tokens.source}: joint {name!r}: unexpected {token!r}")


def read_bvh(path: str | Path) -> Bvh:
    """Parse a BVH file.

    Raises:
        BvhError: a malformed hierarchy, an unknown channel, a frame count or a frame line
            that does not match the channels, or a value that is not a finite number.
    """
    source = str(path)
    tokens = _Tokens(Path(path).read_text(), source)
    tokens.next("HIERARCHY")
    tokens.next("ROOT")
    joints: list[BvhJoint] = []
    _read_joint(tokens, tokens.next(), -1, joints)
    tokens.next("MOTION")
    tokens.next("Frames:")
    frames = tokens.number("Frames")
    tokens.next("Frame")
    tokens.next("Time:")
    frame_time = tokens.number("Frame Time")
    values = tokens.rest()
    width = sum(len(joint.channels) for joint in joints)
    if frames != int(frames) or frames < 0 or len(values) != int(frames) * width:
        raise BvhError(
            f"{source}: the header declares {frames:g} frames of {width} channels "
            f"({int(frames) * width} values) but the file holds {len(values)} values"
        )
    try:
        motion = np.asarray(values, dtype=np.float64).reshape(int(frames), width)
    except ValueError:
        raise BvhError(f"{source}: a frame value is not a number") from None
    if not np.isfinite(motion).all() or not np.isfinite(frame_time) or frame_time <= 0:
        raise BvhError(f"{source}: non-finite channel values or a frame time that is not positive")
    return Bvh(tuple(joints), frame_time, motion)


def _format(values: tuple[float, ...] | np.ndarray) -> str:
    return " ".join(repr(float(v)) for v in values)


def _depth_first(parents: tuple[int, ...] | list[int]) -> list[int]:
    """Joint indices in depth-first pre-order (children in index order): BVH's order, in which
    the hierarchy lists joints and each frame lists their channels."""
    children: dict[int, list[int]] = {}
    for index, parent in enumerate(parents):
        children.setdefault(parent, []).append(index)
    order, stack = [], [0]
    while stack:
        joint = stack.pop()
        order.append(joint)
        stack.extend(reversed(children.get(joint, [])))
    return order


def _joint_lines(bvh: Bvh, children: dict[int, list[int]], index: int, depth: int) -> list[str]:
    """The hierarchy text of joint ``index`` and everything below it."""
    joint, pad = bvh.joints[index], "  " * depth
    lines = [
        f"{pad}{'ROOT' if joint.parent < 0 else 'JOINT'} {joint.name}",
        f"{pad}{{",
        f"{pad}  OFFSET {_format(joint.offset)}",
        f"{pad}  CHANNELS {len(joint.channels)} {' '.join(joint.channels)}",
    ]
    for child in children.get(index, []):
        lines.extend(_joint_lines(bvh, children, child, depth + 1))
    if joint.end_site is not None:
        lines.extend(
            [
                f"{pad}  End Site",
                f"{pad}  {{",
                f"{pad}    OFFSET {_format(joint.end_site)}",
                f"{pad}  }}",
            ]
        )
    lines.append(f"{pad}}}")
    return lines


def write_bvh(bvh: Bvh, path: str | Path) -> Path:
    """Write ``bvh`` to ``path`` (exact: :func:`read_bvh` gives back the same values)."""
    parents = [joint.parent for joint in bvh.joints]
    if _depth_first(parents) != list(range(len(parents))):
        raise ValueError(
            f"{path}: a BVH lists its joints depth first, parents {parents} are not in that "
            "order (motion_to_bvh puts them in it)"
        )
    children: dict[int, list[int]] = {}
    for index, parent in enumerate(parents):
        children.setdefault(parent, []).append(index)
    lines = ["HIERARCHY", *_joint_lines(bvh, children, 0, 0)]
    lines += ["MOTION", f"Frames: {bvh.num_frames}", f"Frame Time: {bvh.frame_time!r}"]
    lines += [_format(frame) for frame in bvh.motion]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def _channel_columns(bvh: Bvh, source: str) -> tuple[list[int], list[tuple[list[int], str]]]:
    """Columns of the root's X, Y, Z position and, per joint, of its three rotations with
    their Euler order (e.g. ``"ZXY"``)."""
    start, rotations, position = 0, [], []
    for joint in bvh.joints:
        names = list(joint.channels)
        angles = [c for c in names if c in ROTATION_CHANNELS]
        if len(angles) != 3 or len(set(angles)) != 3:
            raise BvhError(
                f"{source}: joint {joint.name!r} has rotation channels {angles}; every joint "
                "needs Xrotation, Yrotation and Zrotation"
            )
        rotations.append(([start + names.index(c) for c in angles], "".join(c[0] for c in angles)))
        if joint.parent < 0:
            if sorted(c for c in names if c in POSITION_CHANNELS) != list(POSITION_CHANNELS):
                raise BvhError(
                    f"{source}: the root {joint.name!r} needs Xposition, Yposition and Zposition channels"
                )
            position = [start + names.index(c) for c in POSITION_CHANNELS]
        start += len(names)
    return position, rotations


def bvh_to_motion(bvh: Bvh, source: str = "bvh") -> tuple[Tensor, Tensor]:
    """Local rotation matrices ``[F, J, 3, 3]`` and the root's translation ``[F, 3]`` (float64)
    of every frame. BVH's Euler channels are intrinsic rotations in the listed order, so
    ``Zrotation Xrotation Yrotation`` is ``R = Rz Rx Ry``.

    Raises:
        BvhError: a joint without exactly three rotation channels, or a root without position
            channels (named with ``source``, usually the file).
    """
    position, rotations = _channel_columns(bvh, source)
    local = np.stack(
        [
            Rotation.from_euler(order.upper(), bvh.motion[:, columns], degrees=True).as_matrix()
            for columns, order in rotations
        ],
        axis=1,
    )
    return torch.from_numpy(local), torch.from_numpy(bvh.motion[:, position].copy())


def skeleton_of(bvh: Bvh) -> Skeleton:
    """The :class:`Skeleton` of a BVH hierarchy (its names, parents and offsets; no parts)."""
    return Skeleton(
        tuple(j.name for j in bvh.joints),
        tuple(j.parent for j in bvh.joints),
        torch.tensor([j.offset for j in bvh.joints], dtype=torch.float64),
    )


def motion_to_bvh(
    skeleton: Skeleton,
    rotations: Tensor,
    root_translation: Tensor,
    frame_time: float,
    order: str = "ZXY",
) -> Bvh:
    """A BVH of a motion on ``skeleton``: local rotations ``[F, J, 3, 3]`` as Euler angles in
    ``order`` (intrinsic, degrees; every joint), the root's translation ``[F, 3]`` as its
    position channels. The joints are listed depth first, BVH's order (the skeleton's order
    when it is already depth first, as the default skeleton is). Each leaf gets an
    ``End Site`` half its own offset long, continuing its bone, as viewers expect."""
    if sorted(order) != ["X", "Y", "Z"]:
        raise ValueError(f"order must be a permutation of 'XYZ', got {order!r}")
    frames, joints = rotations.shape[0], skeleton.num_joints
    if rotations.shape != (frames, joints, 3, 3) or root_translation.shape != (frames, 3):
        raise ValueError(
            f"motion_to_bvh: rotations {tuple(rotations.shape)} and root translation "
            f"{tuple(root_translation.shape)}; expected ({frames}, {joints}, 3, 3) and ({frames}, 3)"
        )
    listed = _depth_first(skeleton.parents)
    position_in_file = {joint: position for position, joint in enumerate(listed)}
    matrices = rotations[:, listed].detach().cpu().double().numpy().reshape(-1, 3, 3)
    angles = Rotation.from_matrix(matrices).as_euler(order, degrees=True).reshape(frames, joints, 3)
    rotation_channels = tuple(f"{axis}rotation" for axis in order)
    offsets = skeleton.offsets.double().tolist()
    leaves = set(range(joints)) - set(skeleton.parents)
    bvh_joints = tuple(
        BvhJoint(
            skeleton.names[j],
            position_in_file.get(skeleton.parents[j], -1),
            tuple(offsets[j]),
            (POSITION_CHANNELS if skeleton.parents[j] < 0 else ()) + rotation_channels,
            tuple(0.5 * v for v in offsets[j]) if j in leaves else None,
        )
        for j in listed
    )
    columns = [root_translation.detach().cpu().double().numpy(), angles[:, 0]]
    columns += [angles[:, j] for j in range(1, joints)]
    return Bvh(bvh_joints, float(frame_time), np.concatenate(columns, axis=1))
