"""Co-speech data: recordings of motion (BVH) with their speech (WAV), served as windows.

Two datamodules read the same layout, a folder of ``<name>.bvh`` + ``<name>.wav`` pairs:

- :class:`SyntheticCoSpeech` prepares the project's synthetic corpus (:mod:`.corpus`: real and
  espeak-ng speech, motion synthesised from it) once, then reads it;
- :class:`BvhWavFolder` reads a folder a user brings (BEAT-style: any depth of sub-folders,
  each BVH beside the WAV of the same name), split by recording.

Every recording is loaded whole (motion as 6-D rotations and root translation at ``fps``, the
waveform at ``sample_rate``, speech features per motion frame) and cut into windows of
``window`` frames: every ``stride`` frames for training, back to back for validation and test.

Fix-ups and errors, each naming the file:

- a BVH at another frame rate is resampled to ``fps`` (slerp of rotations, linear root);
- motion and speech whose lengths differ by at most ``max_length_mismatch`` seconds are both
  cut to the shorter; a larger difference is an error;
- a BVH with missing rotation or root position channels, a skeleton other than the first
  file's, a recording shorter than one window, or a silent WAV (RMS below ``1e-4``) is an error.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial.transform import Rotation, Slerp
from torch import Tensor
from torch.utils.data import Dataset

from mmflow.data import SPLITS, SplitDataModule
from mmflow.files import default_cache_dir
from mmflow.waveforms import load_audio

from .bvh import BvhError, bvh_to_motion, read_bvh, skeleton_of
from .corpus import CorpusSettings, cospeech_cache_dir, prepare_cospeech
from .skeleton import PART_NAMES, Skeleton, default_skeleton, matrix_to_rotation_6d
from .speech import speech_frames

#: Name fragments (lower case) that put a joint in the hands or the lower body.
HAND_WORDS = ("hand", "thumb", "index", "middle", "ring", "pinky", "finger", "wrist")
LOWER_WORDS = ("hip", "pelvis", "leg", "knee", "foot", "ankle", "toe")
SILENCE_RMS = 1e-4


def infer_parts(skeleton: Skeleton) -> Skeleton:
    """``skeleton`` with its joints put into GestureLSM's parts by name: hands (``HAND_WORDS``),
    lower body (the root and ``LOWER_WORDS``), upper body (the rest)."""

    def part(index: int, name: str) -> str:
        lowered = name.lower()
        if any(word in lowered for word in HAND_WORDS):
            return "hands"
        if index == 0 or any(word in lowered for word in LOWER_WORDS):
            return "lower"
        return "upper"

    named = [part(i, name) for i, name in enumerate(skeleton.names)]
    parts = {p: tuple(i for i, of in enumerate(named) if of == p) for p in PART_NAMES}
    return Skeleton(skeleton.names, skeleton.parents, skeleton.offsets, parts)


@dataclass(frozen=True)
class Recording:
    """One recording: ``rotations`` ``[F, J, 6]`` (6-D), ``root`` ``[F, 3]`` (metres),
    ``wave`` ``[S]`` and ``speech`` features ``[F, D]`` (:func:`.speech.speech_frames`)."""

    name: str
    rotations: Tensor
    root: Tensor
    wave: Tensor
    speech: Tensor

    @property
    def num_frames(self) -> int:
        return len(self.rotations)


def resample_motion(
    rotations: np.ndarray, root: np.ndarray, frame_time: float, fps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Motion sampled every ``frame_time`` seconds, resampled to ``fps``: slerp of each joint's
    rotations ``[F, J, 3, 3]``, linear interpolation of the root ``[F, 3]``."""
    times = np.arange(len(rotations)) * frame_time
    targets = np.arange(0.0, times[-1] + 1e-9, 1.0 / fps)
    joints = rotations.shape[1]
    out = np.stack(
        [
            Slerp(times, Rotation.from_matrix(rotations[:, j]))(targets).as_matrix()
            for j in range(joints)
        ],
        axis=1,
    )
    root_out = np.stack([np.interp(targets, times, root[:, a]) for a in range(3)], axis=1)
    return out, root_out


def load_recording(
    bvh_path: Path,
    wav_path: Path,
    skeleton: Skeleton,
    sample_rate: int,
    fps: float,
    n_mels: int,
    max_length_mismatch: float = 0.5,
) -> Recording:
    """Read one BVH + WAV pair onto ``skeleton``'s joint order (module docstring: fix-ups and
    errors)."""
    bvh = read_bvh(bvh_path)
    if [j.name for j in bvh.joints] != list(skeleton.names) or tuple(
        j.parent for j in bvh.joints
    ) != tuple(skeleton.parents):
        raise BvhError(
            f"{bvh_path}: its joint tree differs from the dataset's ({len(bvh.joints)} joints "
            f"against {skeleton.num_joints}); every BVH of a dataset needs the same skeleton"
        )
    rotations, root = (t.numpy() for t in bvh_to_motion(bvh, str(bvh_path)))
    if abs(bvh.frame_time * fps - 1.0) > 1e-6:
        rotations, root = resample_motion(rotations, root, bvh.frame_time, fps)
    wave = load_audio(wav_path, sample_rate)
    if float(wave.square().mean().sqrt()) < SILENCE_RMS:
        raise ValueError(f"{wav_path}: the speech is silent (RMS below {SILENCE_RMS:g})")
    motion_seconds, speech_seconds = len(rotations) / fps, len(wave) / sample_rate
    if abs(motion_seconds - speech_seconds) > max_length_mismatch:
        raise ValueError(
            f"{bvh_path} lasts {motion_seconds:.2f} s but {wav_path} {speech_seconds:.2f} s; "
            f"pairs may differ by at most {max_length_mismatch} s (then both are cut to the shorter)"
        )
    frames = min(len(rotations), int(speech_seconds * fps))
    wave = wave[: round(frames / fps * sample_rate)]
    speech = speech_frames(wave.numpy(), sample_rate, fps, frames, n_mels).features()
    sixd = matrix_to_rotation_6d(torch.from_numpy(rotations[:frames])).float()
    return Recording(
        bvh_path.stem,
        sixd,
        torch.from_numpy(root[:frames]).float(),
        wave,
        torch.from_numpy(speech),
    )


class GestureWindows(Dataset):
    """Windows of ``window`` frames of recordings, starting every ``stride`` frames (the last
    start is the last that fits). ``__getitems__`` returns a dict batch:

    - ``rotations`` ``[B, W, J, 6]``, ``root`` ``[B, W, 3]``, ``speech`` ``[B, W, D]``;
    - ``wave`` ``[B, round(W / fps * sample_rate)]``: the speech under the window;
    - ``recording`` and ``start`` ``[B]``: which recording, from which frame.
    """

    def __init__(
        self,
        recordings: list[Recording],
        window: int,
        stride: int,
        fps: float,
        sample_rate: int,
    ) -> None:
        self.recordings, self.window, self.fps, self.sample_rate = (
            recordings,
            window,
            fps,
            sample_rate,
        )
        self.samples = round(window / fps * sample_rate)
        self.index = [
            (r, start)
            for r, recording in enumerate(recordings)
            for start in range(0, recording.num_frames - window + 1, stride)
        ]

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        items = [self.index[i] for i in indices]
        window = self.window
        waves = []
        for r, start in items:
            offset = round(start / self.fps * self.sample_rate)
            wave = self.recordings[r].wave[offset : offset + self.samples]
            waves.append(torch.nn.functional.pad(wave, (0, self.samples - len(wave))))
        return {
            "rotations": torch.stack(
                [self.recordings[r].rotations[s : s + window] for r, s in items]
            ),
            "root": torch.stack([self.recordings[r].root[s : s + window] for r, s in items]),
            "speech": torch.stack([self.recordings[r].speech[s : s + window] for r, s in items]),
            "wave": torch.stack(waves),
            "recording": torch.tensor([r for r, _ in items]),
            "start": torch.tensor([s for _, s in items]),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])


class CoSpeechData(SplitDataModule):
    """The windows of BVH + WAV recordings, per split (subclasses say which files).

    Args:
        window: frames per window (64 to 128 at 30 fps in the recipes).
        stride: frames between training windows' starts (validation and test: ``window``).
        fps: motion frames per second (BVHs at another rate are resampled).
        sample_rate: of the loaded speech.
        n_mels: mel bands of the speech features (``n_mels + 1`` features with onset strength).
        max_length_mismatch: seconds motion and speech of a pair may differ by.
        (others: see :class:`mmflow.data.SplitDataModule`)
    """

    def __init__(
        self,
        window: int = 64,
        stride: int = 8,
        fps: float = 30.0,
        sample_rate: int = 16000,
        n_mels: int = 32,
        max_length_mismatch: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if window < 2 or stride < 1:
            raise ValueError(
                f"window must be at least 2 and stride at least 1, got {window}, {stride}"
            )
        self.window, self.stride, self.fps = window, stride, fps
        self.sample_rate, self.n_mels = sample_rate, n_mels
        self.max_length_mismatch = max_length_mismatch
        self.recordings: dict[str, list[Recording]] = {}
        self.skeleton: Skeleton | None = None

    @property
    def speech_dim(self) -> int:
        return self.n_mels + 1

    def pairs(self) -> dict[str, list[tuple[Path, Path]]]:
        """The ``(bvh, wav)`` files of each split."""
        raise NotImplementedError

    def skeleton_for(self, first_bvh: Path) -> Skeleton:
        """The dataset's skeleton, with parts (from the first BVH of the training split)."""
        return infer_parts(skeleton_of(read_bvh(first_bvh)))

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        pairs = self.pairs()
        self.skeleton = self.skeleton_for(pairs["train"][0][0])
        for split in SPLITS:
            recordings = [self._load(bvh, wav) for bvh, wav in pairs[split]]
            self.recordings[split] = recordings
            stride = self.stride if split == "train" else self.window
            self.datasets[split] = GestureWindows(
                recordings, self.window, stride, self.fps, self.sample_rate
            )

    def _load(self, bvh: Path, wav: Path) -> Recording:
        recording = load_recording(
            bvh,
            wav,
            self.skeleton,
            self.sample_rate,
            self.fps,
            self.n_mels,
            self.max_length_mismatch,
        )
        if recording.num_frames < self.window:
            raise ValueError(
                f"{wav}: {recording.num_frames} frames ({recording.num_frames / self.fps:.2f} s) "
                f"are shorter than one window of {self.window} frames"
            )
        return recording


class SyntheticCoSpeech(CoSpeechData):
    """The project's synthetic co-speech corpus (:mod:`.corpus`), prepared once into
    ``<cache_dir>/gesture/cospeech-<hash>/``: recorded (Asterisk) and synthetic (espeak-ng)
    speech with **synthetic motion** synthesised from it, split by prompt.

    Args:
        cache_dir: cache root; ``None`` means ``$MMFLOW_CACHE`` or ``~/.cache/mmflow``.
        voices: espeak-ng voices reading the transcripts (an empty list: recorded speech only).
        recording_seconds: length of a recording of joined prompts.
        max_prompts: use only this many prompts (tiny corpora for tests).
        (others: see :class:`CoSpeechData`)
    """

    def __init__(
        self,
        cache_dir: str | None = None,
        voices: list[str] | None = None,
        recording_seconds: float = 12.0,
        max_prompts: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        defaults = CorpusSettings()
        self.cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.settings = CorpusSettings(
            sample_rate=self.sample_rate,
            fps=self.fps,
            recording_seconds=recording_seconds,
            voices=tuple(defaults.voices if voices is None else voices),
            max_prompts=max_prompts,
            seed=self.seed,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
        )
        self._manifest: dict[str, Any] | None = None

    def prepare_data(self) -> None:
        self._manifest = prepare_cospeech(self.settings, self.cache_root)

    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            self.prepare_data()
        return self._manifest

    @property
    def folder(self) -> Path:
        return cospeech_cache_dir(self.cache_root, self.settings)

    def pairs(self) -> dict[str, list[tuple[Path, Path]]]:
        entries = self.manifest()["recordings"]
        return {
            split: [
                (self.folder / f"{e['name']}.bvh", self.folder / f"{e['name']}.wav")
                for e in entries
                if e["split"] == split
            ]
            for split in SPLITS
        }

    def skeleton_for(self, first_bvh: Path) -> Skeleton:
        return default_skeleton()


class BvhWavFolder(CoSpeechData):
    """A folder of BVH + WAV pairs a user brings (BEAT, Trinity ...).

    Layout: ``root/**/<name>.bvh`` with ``<name>.wav`` beside it, all BVHs on one skeleton
    (its parts are inferred from joint names, :func:`infer_parts`). The split is a seeded one
    by recording (``val_fraction``, ``test_fraction``) unless ``root/splits.csv`` gives it:
    columns ``name`` (the BVH's path under ``root`` without its suffix) and ``split``.

    Raises (in ``setup``): ``FileNotFoundError`` for a missing folder, no BVH or a BVH without
    its WAV; ``ValueError`` naming ``splits.csv`` for a bad row; the errors of
    :func:`load_recording`.
    """

    def __init__(self, root: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)

    def pairs(self) -> dict[str, list[tuple[Path, Path]]]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"co-speech folder {self.root} not found")
        names = sorted(
            p.relative_to(self.root).with_suffix("").as_posix() for p in self.root.rglob("*.bvh")
        )
        if not names:
            raise FileNotFoundError(
                f"{self.root}: no .bvh files (expected <name>.bvh + <name>.wav)"
            )
        for name in names:
            if not (self.root / f"{name}.wav").is_file():
                raise FileNotFoundError(
                    f"{self.root / name}.bvh has no {Path(name).name}.wav beside it"
                )
        split_of = self._splits(names)
        pairs = {
            split: [
                (self.root / f"{n}.bvh", self.root / f"{n}.wav")
                for n in names
                if split_of[n] == split
            ]
            for split in SPLITS
        }
        for split, chosen in pairs.items():
            if not chosen:
                raise ValueError(f"{self.root}: the {split} split holds no recording")
        return pairs

    def _splits(self, names: list[str]) -> dict[str, str]:
        table = self.root / "splits.csv"
        if table.is_file():
            return self._read_splits(table, names)
        order = np.random.default_rng(self.seed).permutation(len(names))
        n_val = max(1, round(self.val_fraction * len(names)))
        n_test = max(1, round(self.test_fraction * len(names)))
        chosen = ["val"] * n_val + ["test"] * n_test
        chosen += ["train"] * (len(names) - len(chosen))
        return {names[i]: split for i, split in zip(order, chosen)}

    def _read_splits(self, table: Path, names: list[str]) -> dict[str, str]:
        with open(table, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"name", "split"} <= set(reader.fieldnames):
                raise ValueError(f"{table}: needs the columns name,split, got {reader.fieldnames}")
            rows = {
                row["name"].strip(): (row["split"].strip(), line)
                for line, row in enumerate(reader, start=2)
            }
        for split, line in rows.values():
            if split not in SPLITS:
                raise ValueError(
                    f"{table} row {line}: split must be one of {SPLITS}, got {split!r}"
                )
        missing = [name for name in names if name not in rows]
        if missing:
            raise ValueError(
                f"{table}: no split for {missing[:5]}{' ...' if len(missing) > 5 else ''}"
            )
        return {name: rows[name][0] for name in names}
