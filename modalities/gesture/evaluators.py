"""Gesture metrics as torchmetrics ``Metric`` objects, updated as ``metric.update(motion, batch)``.

``motion`` is what the gesture adapter decodes: a dict with ``rotations`` ``[B, F, J, 6]``
(6-D) and ``root`` ``[B, F, 3]``; ``batch`` holds the data's ``rotations``, ``root`` and
``wave`` over the same frames. Sequences are scored whole, so these metrics are meant for
long sequences (a test recording generated window by window), not for training windows:

- :class:`GestureFrechetDistance` ("FGD-ours"): Fréchet distance between the latent frames of
  real and generated motion under a continuous motion auto-encoder trained on the training
  split (:class:`.autoencoder.MotionAutoencoder` with no quantiser), as EMAGE built its FGD
  evaluator on BEAT2; ours is trained on our data, hence the name.
- :class:`BeatConsistency` ("BC"): :func:`.beat.beat_consistency` of the generated motion against
  the speech's onsets, averaged over sequences weighted by their length (EMAGE).
- :class:`L1Diversity` ("L1div"): :func:`.diversity.l1_diversity` of the generated motion.
- :class:`GenerationSpeed`: seconds of wall-clock time per second of generated motion.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from mmflow.metrics import FrechetDistance
from mmflow.pretrained import Frozen

from .autoencoder import MotionAutoencoder
from .beat import beat_consistency, joint_speed
from .diversity import l1_diversity
from .skeleton import Skeleton, default_skeleton, forward_kinematics, rotation_6d_to_matrix
from .speech import audio_onsets


def motion_positions(skeleton: Skeleton, rotations: Tensor, root: Tensor) -> Tensor:
    """Joint positions ``[B, F, J, 3]`` of 6-D rotations ``[B, F, J, 6]`` and root ``[B, F, 3]``."""
    return forward_kinematics(skeleton, rotation_6d_to_matrix(rotations.double()), root.double())


def default_bc_joints(skeleton: Skeleton) -> list[int]:
    """The upper body and both wrists (EMAGE scores its upper-body joints, wrists included)."""
    wrists = [skeleton.index(name) for name in ("LeftHand", "RightHand") if name in skeleton.names]
    return [*skeleton.parts["upper"], *wrists]


class GestureFrechetDistance(FrechetDistance):
    """FGD-ours: Fréchet distance of real and generated motion's latent frames under a frozen
    continuous motion auto-encoder (module docstring).

    Args:
        autoencoder: a folder saved by the FGD auto-encoder's recipe, or the model itself.
        reset_real_features: ``False`` keeps the real statistics across :meth:`reset`.
    """

    display_name = "FGD-ours"

    def __init__(
        self, autoencoder: str | Path | MotionAutoencoder, reset_real_features: bool = True
    ) -> None:
        model = (
            autoencoder
            if isinstance(autoencoder, MotionAutoencoder)
            else MotionAutoencoder.from_pretrained(autoencoder)
        )
        if model.hparams.num_quantizers:
            raise ValueError(
                "FGD-ours needs a continuous auto-encoder (num_quantizers: 0), not the RVQ-VAE "
                "the flow runs on: its own latents would score the flow in its own space"
            )
        super().__init__(model.hparams.latent_dim * len(model.part_names), reset_real_features)
        self._autoencoder = Frozen(model)

    @torch.no_grad()
    def latent_frames(self, rotations: Tensor, root: Tensor) -> Tensor:
        """``[B * F / 2^down, P * D]``: every latent frame of the motion, parts side by side."""
        frames = rotations.shape[1] - rotations.shape[1] % self._autoencoder.frames_per_latent
        model = self._autoencoder.to(rotations.device)
        latents = model.encode_unscaled(rotations[:, :frames].float(), root[:, :frames].float())
        return latents.flatten(2).flatten(0, 1)

    def update(self, motion: dict[str, Tensor], batch: dict[str, Any]) -> None:  # type: ignore[override]
        """Add the generated ``motion`` and the real motion of ``batch``."""
        super().update(
            real_features=self.latent_frames(batch["rotations"], batch["root"]),
            fake_features=self.latent_frames(motion["rotations"], motion["root"]),
        )


class BeatConsistency(Metric):
    """BC of generated motion against its speech, weighted by sequence length.

    Args:
        mean_speed: each joint's mean speed over the training split ``[J]`` (BC's unit).
        skeleton: the motion's skeleton (default: :func:`.skeleton.default_skeleton`).
        joints: the scored joints (default: :func:`default_bc_joints`).
        fps, sample_rate: of the motion and of ``batch["wave"]``.
    """

    display_name = "BC"
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        mean_speed: Sequence[float] | Tensor,
        skeleton: Skeleton | None = None,
        joints: Sequence[int] | None = None,
        fps: float = 30.0,
        sample_rate: int = 16000,
    ) -> None:
        super().__init__()
        self.skeleton = skeleton or default_skeleton()
        self.joints = list(joints) if joints is not None else default_bc_joints(self.skeleton)
        self.mean_speed = np.asarray(mean_speed, dtype=np.float64)
        if self.mean_speed.shape != (self.skeleton.num_joints,):
            raise ValueError(
                f"mean_speed: expected one speed per joint ({self.skeleton.num_joints}), "
                f"got shape {self.mean_speed.shape}"
            )
        self.fps, self.sample_rate = fps, sample_rate
        self.add_state("weighted", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("frames", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, motion: dict[str, Tensor], batch: dict[str, Any]) -> None:  # type: ignore[override]
        positions = motion_positions(self.skeleton, motion["rotations"], motion["root"])
        for sequence, wave in zip(positions.cpu().numpy(), batch["wave"].cpu().numpy()):
            onsets = audio_onsets(wave, self.sample_rate)
            score = beat_consistency(sequence, self.fps, onsets, self.joints, self.mean_speed)
            self.weighted += score * len(sequence)
            self.frames += len(sequence)

    def compute(self) -> Tensor:
        if self.frames == 0:
            raise ValueError("BeatConsistency: no sequence scored yet")
        return self.weighted / self.frames


def mean_joint_speed(
    recordings: Sequence[Any], skeleton: Skeleton | None = None, fps: float = 30.0
) -> np.ndarray:
    """Each joint's mean speed ``[J]`` over recordings (``rotations`` 6-D ``[F, J, 6]``,
    ``root`` ``[F, 3]``): the unit of BC's threshold, measured on the training split."""
    skeleton = skeleton or default_skeleton()
    speeds = [
        joint_speed(motion_positions(skeleton, r.rotations[None], r.root[None])[0].numpy(), fps)
        for r in recordings
    ]
    return np.concatenate(speeds).mean(axis=0)


class L1Diversity(Metric):
    """L1div of generated motion: per-frame L1 distance of each pose (joint positions, root
    translation removed) from its sequence's mean pose, over all frames."""

    display_name = "L1div"
    higher_is_better = True
    full_state_update = False

    def __init__(self, skeleton: Skeleton | None = None) -> None:
        super().__init__()
        self.skeleton = skeleton or default_skeleton()
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("frames", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, motion: dict[str, Tensor], batch: dict[str, Any] | None = None) -> None:  # type: ignore[override]
        positions = motion_positions(self.skeleton, motion["rotations"], motion["root"])
        relative = (positions - positions[:, :, :1]).cpu().numpy()
        for sequence in relative:
            self.total += l1_diversity([sequence]) * len(sequence)
            self.frames += len(sequence)

    def compute(self) -> Tensor:
        if self.frames == 0:
            raise ValueError("L1Diversity: no sequence scored yet")
        return self.total / self.frames


class GenerationSpeed(Metric):
    """Wall-clock seconds spent generating per second of generated motion (lower is faster):
    ``update(seconds_spent, frames_generated)``; ``fps`` converts frames to seconds."""

    display_name = "seconds per second of motion"
    higher_is_better = False
    full_state_update = False

    def __init__(self, fps: float = 30.0) -> None:
        super().__init__()
        self.fps = fps
        self.add_state("seconds", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("frames", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, seconds: float, frames: int) -> None:  # type: ignore[override]
        if seconds < 0 or frames <= 0:
            raise ValueError(f"GenerationSpeed: bad timing ({seconds} s for {frames} frames)")
        self.seconds += seconds
        self.frames += frames

    def compute(self) -> Tensor:
        if self.frames == 0:
            raise ValueError("GenerationSpeed: nothing timed yet")
        return self.seconds / (self.frames / self.fps)
