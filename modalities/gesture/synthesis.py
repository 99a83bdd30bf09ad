"""Motion synthesised from speech: the stand-in for a co-speech corpus while none installs here.
Everything this module makes is **synthetic motion**, and the data built from it says so.

Gesture studies describe beat gestures as small rhythmic strokes of the hands whose end lands
on a stressed syllable, made inside a "gesture space" in front of the torso that the hands
enter while a person speaks and leave in pauses; the head nods on stresses and the torso
sways with the voice. :func:`synthesize_motion` writes that down for one recording, at the
motion's frame times ``t``:

1. **Analysis** (:func:`.speech.speech_frames`): energy ``e(t)`` and onset strength, both
   relative to their 95th percentile. *Stresses* ``t_k`` are the detected onsets
   (:func:`.speech.audio_onsets`) whose onset strength is in the top ``style.stress_share``,
   at least ``min_beat_gap`` apart; their strengths ``s_k`` lie in [0.8, 1].
2. **Activity** ``a(t)``: twice ``e(t)`` smoothed over ``activity_seconds``, clipped to
   [0, 1] (about 1 while speaking, falling to 0 in pauses): how fast the hands move. The same
   smoothed over three times as long is how far they are raised into gesture space, so that
   rising and lowering stay slower than the beats.
3. **Beats**: while speaking, the gesturing hand keeps circling in gesture space (the upper
   arm's flexion and its lowering from the T-pose follow ``sin`` and ``cos`` of a phase, radius
   ``style.sweep``) with an angular speed ``omega(t) = 2 pi f a(t) (1 - d min(b(t), 1))`` that
   drops at each stress, ``b(t) = sum_k s_k exp(-(t - t_k)^2 / (2 w^2))`` (``w =
   style.width``, ``f = 0.8`` loops a second, ``d = 0.75``); on top, the hand dips by
   ``style.beat * b`` and its fingers open. So at each stress the wrist *slows without
   stopping* -- a local minimum of its speed above the beat threshold of beat consistency,
   where a plain back-and-forth stroke would stop dead between stresses and put its minima
   there. The head, neck and spine circle with the phase of every stress (the head also nods
   on each), and the hips circle 2 cm with it.
4. **Drift** ``n(t)``: per degree of freedom, three sinusoids of 0.05 to 0.25 Hz with random
   phases: slow changes of posture, too slow to put speed minima of their own among the
   beats.
5. **Posture**: the idle pose (arms lowered 70 degrees from the T-pose, elbows bent 20) and the
   spine and legs of one frame of a pybullet mocap clip mixed in with weight ``posture_mix``
   (a slerp from the identity): every recording stands a little differently.
6. **Weight shift**: the hips move sideways as ``x(t) = A sin(2 pi f t + phi)`` and roll with
   it; the thighs counter-rotate so the legs stay under the body.

The left arm's rotations are written once; the right arm takes their mirror image in the
body's sagittal plane (Euler angles about x kept, about y and z negated), which maps the
T-pose skeleton onto itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.spatial.transform import Rotation

from .skeleton import Skeleton, default_skeleton
from .speech import SpeechFrames, audio_onsets, speech_frames


@dataclass(frozen=True)
class GestureStyle:
    """How one synthetic speaker gestures.

    Attributes:
        name: the style's name (recorded in the data's manifest).
        hands: which hand beats: ``"right"``, ``"left"``, ``"both"`` or ``"alternate"``
            (stresses taken in turn).
        beat: dip of shoulder and elbow flexion at a full-strength stress (radians).
        sweep: radius of the upper arm's circling in gesture space (radians).
        width: ``w``, the half-width of a beat's bump (seconds).
        lift: extra elbow flexion at full activity (radians): how high the hands rise.
        stress_share: the share of onsets, the strongest, that get a beat.
        sway: amplitude of the torso's and head's drift (radians).
        nod: head nod at a full-strength stress (radians).
        weight_shift: amplitude of the hips' sideways shift (metres).
    """

    name: str
    hands: str
    beat: float
    sweep: float
    width: float
    lift: float
    stress_share: float
    sway: float
    nod: float
    weight_shift: float

    def __post_init__(self) -> None:
        if self.hands not in ("right", "left", "both", "alternate"):
            raise ValueError(
                f"style {self.name!r}: hands must be right, left, both or alternate, "
                f"got {self.hands!r}"
            )
        if not 0 < self.stress_share <= 1 or self.width <= 0:
            raise ValueError(
                f"style {self.name!r}: stress_share must be in (0, 1] and width positive"
            )


#: The speaking styles of the synthetic corpus.
STYLES: dict[str, GestureStyle] = {
    style.name: style
    for style in (
        GestureStyle("calm", "right", 0.10, 0.15, 0.10, 0.6, 0.6, 0.02, 0.06, 0.01),
        GestureStyle("emphatic", "both", 0.20, 0.25, 0.08, 1.1, 0.9, 0.03, 0.12, 0.02),
        GestureStyle("right-handed", "right", 0.15, 0.2, 0.09, 0.9, 0.8, 0.02, 0.08, 0.015),
        GestureStyle("left-handed", "left", 0.15, 0.2, 0.09, 0.9, 0.8, 0.02, 0.08, 0.015),
        GestureStyle("alternating", "alternate", 0.15, 0.2, 0.09, 0.9, 0.8, 0.02, 0.08, 0.015),
        GestureStyle("swaying", "both", 0.12, 0.2, 0.11, 0.7, 0.7, 0.05, 0.08, 0.04),
    )
}

#: Joints whose posture may come from a mocap frame.
POSTURE_JOINTS = (
    "Spine", "Chest", "LeftUpLeg", "LeftLeg", "LeftFoot", "RightUpLeg", "RightLeg", "RightFoot",
)  # fmt: skip


def stresses(
    speech: SpeechFrames,
    onsets: np.ndarray,
    fps: float,
    share: float,
    min_gap: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Stress times (seconds) and strengths in [0.8, 1]: the onsets whose onset strength (at
    their frame) is in the top ``share``, strongest first, dropping any closer than
    ``min_gap`` to one already kept; returned in time order."""
    frames = np.clip(np.round(onsets * fps).astype(int), 0, speech.num_frames - 1)
    strength = speech.onset_strength[frames]
    if len(onsets) == 0:
        return np.zeros(0), np.zeros(0)
    keep_count = max(1, round(share * len(onsets)))
    kept: list[int] = []
    for index in np.argsort(-strength, kind="stable")[:keep_count]:
        if all(abs(onsets[index] - onsets[other]) >= min_gap for other in kept):
            kept.append(int(index))
    kept.sort()
    top = strength[kept]
    scale = top.max() if len(top) and top.max() > 0 else 1.0
    return onsets[kept], 0.8 + 0.2 * np.clip(top / scale, 0.0, 1.0)


def beat_bumps(times: np.ndarray, stress_times: np.ndarray, strengths: np.ndarray, width: float):
    """``b(t) = sum_k s_k exp(-(t - t_k)^2 / (2 w^2))`` at ``times``."""
    if len(stress_times) == 0:
        return np.zeros_like(times)
    delta = times[:, None] - stress_times[None, :]
    return (strengths[None, :] * np.exp(-(delta**2) / (2 * width**2))).sum(axis=1)


def beat_phase(
    activity: np.ndarray,
    dips: np.ndarray,
    fps: float,
    loops_per_second: float = 0.8,
    depth: float = 0.75,
) -> np.ndarray:
    """``theta(t) = sum_{s < t} omega(s) / fps`` with ``omega = 2 pi f a (1 - d min(b, 1))``:
    a phase that advances while speaking and slows at each stress."""
    omega = 2 * np.pi * loops_per_second * activity * (1.0 - depth * np.minimum(dips, 1.0))
    return np.concatenate([[0.0], np.cumsum(omega[:-1]) / fps])


def drift(times: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` smooth signals ``[F, count]`` of unit-order amplitude: each the mean of three
    sinusoids with random frequencies in [0.05, 0.25] Hz and random phases, times sqrt(2)."""
    freqs = rng.uniform(0.05, 0.25, size=(3, count))
    phases = rng.uniform(0.0, 2 * np.pi, size=(3, count))
    waves = np.sin(2 * np.pi * freqs[None] * times[:, None, None] + phases[None])
    return waves.mean(axis=1) * np.sqrt(2.0)


def _euler(angles: np.ndarray, order: str = "XYZ") -> Rotation:
    return Rotation.from_euler(order, angles)


def _mirror(angles: np.ndarray) -> np.ndarray:
    """Euler angles ``(x, y, z)`` of a left joint -> its right mirror image ``(x, -y, -z)``."""
    return angles * np.array([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class _Signals:
    """What drives one recording's motion, at the frame times."""

    times: np.ndarray
    activity: np.ndarray
    height: np.ndarray
    dips: dict[str, np.ndarray]  # per side ("left", "right"), and "all" for head and spine
    phases: dict[str, np.ndarray]
    noise: np.ndarray  # [F, 24] drift channels


def _signals(
    wave: np.ndarray,
    sample_rate: int,
    fps: float,
    num_frames: int,
    style: GestureStyle,
    rng: np.random.Generator,
    min_beat_gap: float,
    activity_seconds: float,
) -> _Signals:
    speech = speech_frames(wave, sample_rate, fps, num_frames)
    times = np.arange(num_frames) / fps
    stress_times, strengths = stresses(
        speech, audio_onsets(wave, sample_rate), fps, style.stress_share, min_beat_gap
    )
    window = max(1, round(activity_seconds * fps))
    activity = np.clip(2.0 * uniform_filter1d(speech.energy, window, mode="nearest"), 0.0, 1.0)
    chosen = _beat_sides(style.hands, len(stress_times))
    chosen["all"] = np.ones(len(stress_times), bool)
    dips = {
        side: beat_bumps(times, stress_times[mask], strengths[mask], style.width)
        for side, mask in chosen.items()
    }
    phases = {side: beat_phase(activity, dip, fps) for side, dip in dips.items()}
    slow = max(1, round(3 * activity_seconds * fps))
    height = np.clip(2.0 * uniform_filter1d(speech.energy, slow, mode="nearest"), 0.0, 1.0)
    return _Signals(times, activity, height, dips, phases, drift(times, rng, 24))


def _beat_sides(hands: str, count: int) -> dict[str, np.ndarray]:
    """Which stresses each hand beats on (boolean masks)."""
    every, alternate = np.ones(count, bool), np.arange(count) % 2 == 0
    none = np.zeros(count, bool)
    return {
        "right": {"right": every, "both": every, "alternate": alternate}.get(hands, none),
        "left": {"left": every, "both": every, "alternate": ~alternate}.get(hands, none),
    }


def _arm_angles(
    signals: _Signals, side: str, style: GestureStyle, noise: np.ndarray
) -> dict[str, np.ndarray]:
    """Euler angles ``[F, 3]`` (radians, ``XYZ``) of one arm's joints, written for the left
    side. A hand that does not beat on this style still rises a little while speaking and
    circles, more slowly, with every stress."""
    gesturing = bool(signals.dips[side].any())
    beat = signals.dips[side]
    phase = signals.phases[side if gesturing else "all"]
    radius = style.sweep * (1.0 if gesturing else 0.3)
    lift = style.lift * signals.height * (1.0 if gesturing else 0.35)
    zeros = np.zeros_like(beat)
    circle_up, circle_side = radius * np.sin(phase), radius * np.cos(phase)
    shoulder_flex = 0.25 + 0.5 * lift - 0.3 * style.beat * beat + circle_up + 0.08 * noise[:, 0]
    shoulder_down = np.deg2rad(70.0) - 0.3 * lift + circle_side + 0.06 * noise[:, 1]
    elbow = np.deg2rad(20.0) + lift - style.beat * beat + 0.1 * noise[:, 2]
    wrist = 0.1 + 0.3 * beat + 0.1 * noise[:, 3]
    curl = 0.8 - 0.6 * beat + 0.15 * noise[:, 4]
    return {
        "Shoulder": np.stack([zeros, zeros, 0.03 * noise[:, 5]], axis=1),
        "Arm": np.stack([-shoulder_flex, zeros, -shoulder_down], axis=1),
        "ForeArm": np.stack([zeros, -elbow, zeros], axis=1),
        "Hand": np.stack([zeros, zeros, -wrist], axis=1),
        "Thumb": np.stack([zeros, 0.5 * curl, zeros], axis=1),
        "Index": np.stack([zeros, zeros, -curl], axis=1),
        "Pinky": np.stack([zeros, zeros, -1.2 * curl], axis=1),
    }


def _body_angles(signals: _Signals, style: GestureStyle, shift: np.ndarray) -> dict:
    """Euler angles ``[F, 3]`` of the spine, head and legs."""
    n, phase = signals.noise, signals.phases["all"]
    nod = style.nod * signals.dips["all"]
    circle_x, circle_y = style.nod * np.sin(phase), style.nod * np.cos(phase)
    lean = 0.05 * signals.height
    roll = -2.0 * shift
    zeros = np.zeros_like(shift)
    return {
        "Hips": np.stack([zeros, 0.03 * n[:, 12], roll], axis=1),
        "Spine": np.stack([lean + 0.3 * circle_x + style.sway * n[:, 13],
                           0.3 * circle_y + style.sway * n[:, 14],
                           -roll + 0.5 * style.sway * n[:, 15]], axis=1),
        "Chest": np.stack([0.5 * lean + 0.3 * circle_x + 0.5 * style.sway * n[:, 16],
                           0.3 * circle_y + 0.5 * style.sway * n[:, 17], zeros], axis=1),
        "Neck": np.stack([0.3 * circle_x + 0.5 * style.sway * n[:, 18], 0.3 * circle_y, zeros],
                         axis=1),
        "Head": np.stack([nod + 0.5 * circle_x + style.sway * n[:, 19],
                          circle_y + 2.0 * style.sway * n[:, 20], 0.5 * style.sway * n[:, 21]],
                         axis=1),
        "LeftUpLeg": np.stack([zeros, zeros, -roll], axis=1),
        "RightUpLeg": np.stack([zeros, zeros, -roll], axis=1),
        "LeftLeg": np.stack([0.05 + 0.03 * n[:, 22], zeros, zeros], axis=1),
        "RightLeg": np.stack([0.05 + 0.03 * n[:, 23], zeros, zeros], axis=1),
    }  # fmt: skip


def synthesize_motion(
    wave: np.ndarray,
    sample_rate: int,
    style: GestureStyle,
    rng: np.random.Generator,
    skeleton: Skeleton | None = None,
    fps: float = 30.0,
    posture: dict[str, Rotation] | None = None,
    posture_mix: float = 0.3,
    min_beat_gap: float = 0.3,
    activity_seconds: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic co-speech motion for ``wave`` (the module docstring gives the model): local
    rotations ``[F, J, 3, 3]`` and the root translation ``[F, 3]`` (float64) on ``skeleton``
    (default: :func:`default_skeleton`, whose joint names it drives), ``F = floor(duration *
    fps)``. ``posture`` maps joints of :data:`POSTURE_JOINTS` to a rotation (one mocap frame's
    local rotation) mixed in with weight ``posture_mix``; ``rng`` draws the drift and weight
    shift, so a seed gives the same motion back.

    Raises:
        ValueError: a waveform shorter than one frame, or not finite and mono.
    """
    skeleton = skeleton or default_skeleton()
    num_frames = int(len(wave) / sample_rate * fps)
    if num_frames < 1:
        raise ValueError(f"a waveform of {len(wave)} samples is shorter than one frame")
    signals = _signals(
        wave, sample_rate, fps, num_frames, style, rng, min_beat_gap, activity_seconds
    )
    frequency, phase = rng.uniform(0.1, 0.25), rng.uniform(0.0, 2 * np.pi)
    shift = style.weight_shift * np.sin(2 * np.pi * frequency * signals.times + phase)
    angles = _body_angles(signals, style, shift)
    for side, noise in (("left", signals.noise[:, :6]), ("right", signals.noise[:, 6:12])):
        prefix = side.capitalize()
        for joint, values in _arm_angles(signals, side, style, noise).items():
            angles[prefix + joint] = values if side == "left" else _mirror(values)
    rotations = np.tile(np.eye(3), (num_frames, skeleton.num_joints, 1, 1))
    for name, values in angles.items():
        local = _euler(values)
        if posture is not None and name in posture:
            local = Rotation.from_rotvec(posture_mix * posture[name].as_rotvec()) * local
        rotations[:, skeleton.index(name)] = local.as_matrix()
    root = np.zeros((num_frames, 3))
    # The hips circle 2 cm with the phase of every stress: the spine's beats.
    phase = signals.phases["all"]
    root[:, 0] = shift + 0.02 * np.sin(phase)
    root[:, 2] = 0.02 * np.cos(phase) + 0.02 * signals.noise[:, 12]
    return rotations, root
