"""The synthetic co-speech corpus: real and espeak-ng speech paired with motion synthesised from it.

No package ships co-speech data, so :func:`prepare_cospeech` builds a stand-in, once, into a
folder of BVH + WAV pairs (the layout :class:`.data.BvhWavFolder` reads, so a real corpus drops
in the same way) with a ``manifest.json``:

- **speech, recorded**: the Asterisk voice prompts (one female speaker, 8 kHz recordings,
  ``asterisk-core-sounds-en-wav``) with a transcript, resampled to ``sample_rate`` and joined
  into recordings of about ``recording_seconds`` with pauses of 0.4 to 1 s between prompts;
- **speech, synthetic**: the same transcripts read by espeak-ng voices (``espeak-ng``),
  a recording per group of prompts, at a seeded speaking rate;
- **motion, synthetic**: :func:`.synthesis.synthesize_motion` of each recording's speech in a
  seeded speaking style, on the posture of a seeded frame of a pybullet mocap clip.

Splits are by prompt: each prompt (its recording and its transcript) belongs to one split, and
every recording, recorded or synthetic, is made of prompts of one split, so no sentence of the
validation or test speech is heard in training. A cache whose manifest records other settings
or other source checksums is rebuilt with a log line, never reused silently.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF
from scipy.spatial.transform import Rotation

from mmflow.files import default_cache_dir, file_sha256, reusable_manifest, write_json
from mmflow.waveforms import load_audio, save_wav

from .bvh import motion_to_bvh, write_bvh
from .mocap import humanoid_clips, read_humanoid_clip
from .skeleton import default_skeleton
from .synthesis import POSTURE_JOINTS, STYLES, synthesize_motion

log = logging.getLogger(__name__)

ASTERISK_FOLDER = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
ASTERISK_PACKAGES = ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-en")
MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Prompt:
    """One Asterisk voice prompt: its name (path under the sounds folder, no suffix), file and
    transcript."""

    name: str
    path: Path
    text: str


@dataclass(frozen=True)
class CorpusSettings:
    """Everything that decides the prepared corpus (its cache folder is a hash of these).

    Attributes:
        sample_rate: of the written WAVs.
        fps: motion frames per second.
        recording_seconds: length a recording of joined prompts reaches before a new one starts.
        voices: espeak-ng voices reading the transcripts (none: recorded speech only).
        styles: speaking styles drawn per recording (:data:`.synthesis.STYLES`).
        posture_mix: weight of the mocap frame's posture.
        max_prompts: use only this many prompts (seeded choice; ``None``: all), for tiny corpora.
        seed, val_fraction, test_fraction: the split by prompt and every random draw.
    """

    sample_rate: int = 16000
    fps: float = 30.0
    recording_seconds: float = 12.0
    voices: tuple[str, ...] = ("en-us", "en-gb-x-rp")
    styles: tuple[str, ...] = tuple(STYLES)
    posture_mix: float = 0.3
    max_prompts: int | None = None
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        unknown = sorted(set(self.styles) - set(STYLES))
        if unknown or not self.styles:
            raise ValueError(f"styles: unknown {unknown}; known: {sorted(STYLES)}")

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def asterisk_prompts() -> list[Prompt]:
    """The Asterisk prompts with a spoken transcript, in name order: tones (``[beep]``) and
    silences (``(10 seconds of silence)``), whose transcripts are bracketed, are left out.

    Raises:
        FileNotFoundError: the packages are not installed (the message says how to get them).
    """
    if not ASTERISK_TRANSCRIPTS.is_file() or not ASTERISK_FOLDER.is_dir():
        raise FileNotFoundError(
            f"the Asterisk voice prompts are missing ({ASTERISK_FOLDER}, {ASTERISK_TRANSCRIPTS}); "
            f"run `apt-get install {' '.join(ASTERISK_PACKAGES)}`"
        )
    with gzip.open(ASTERISK_TRANSCRIPTS, "rt", encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()
    prompts = []
    for line in lines:
        name, colon, text = line.partition(":")
        name, text = name.strip(), " ".join(text.split())
        path = ASTERISK_FOLDER / f"{name}.wav"
        if (
            line.startswith(";")
            or not colon
            or not text
            or text.startswith(("[", "("))
            or not path.is_file()
        ):
            continue
        prompts.append(Prompt(name, path, text))
    return sorted(prompts, key=lambda prompt: prompt.name)


def split_prompts(prompts: list[Prompt], settings: CorpusSettings) -> dict[str, list[Prompt]]:
    """A seeded split of the prompts: ``test_fraction`` and ``val_fraction`` of them (at least
    one each when the fraction is positive) to test and validation, the rest to training."""
    order = np.random.default_rng(settings.seed).permutation(len(prompts))
    count = len(prompts)
    test = max(1, round(settings.test_fraction * count)) if settings.test_fraction else 0
    val = max(1, round(settings.val_fraction * count)) if settings.val_fraction else 0
    if test + val >= count:
        raise ValueError(f"{count} prompts are too few for a train / val / test split")
    chosen = [prompts[i] for i in order]
    return {"test": chosen[:test], "val": chosen[test : test + val], "train": chosen[test + val :]}


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesize_speech(
    text: str, voice: str, words_per_minute: int, sample_rate: int
) -> torch.Tensor:
    """``text`` read by the espeak-ng ``voice`` at ``words_per_minute``, a mono waveform at
    ``sample_rate`` (espeak-ng writes 22.05 kHz; resampled with torchaudio).

    Raises:
        FileNotFoundError: espeak-ng is not installed.
        RuntimeError: espeak-ng failed (an unknown voice, say), with its message.
    """
    if not espeak_available():
        raise FileNotFoundError("espeak-ng is missing; run `apt-get install espeak-ng`")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "speech.wav"
        command = ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(out), text]
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
        if result.returncode != 0 or not out.is_file() or out.stat().st_size <= 44:
            raise RuntimeError(
                f"espeak-ng -v {voice} failed (exit {result.returncode}): {result.stderr.strip()}"
            )
        samples, rate = soundfile.read(out, dtype="float32")
    wave = torch.from_numpy(samples)
    return AF.resample(wave, rate, sample_rate) if rate != sample_rate else wave


def join_with_pauses(waves: list[torch.Tensor], rng: np.random.Generator, sample_rate: int):
    """The waveforms one after another with 0.3 s of silence at both ends and a pause of 0.4
    to 1 s (seeded) between each two."""
    edge = torch.zeros(round(0.3 * sample_rate))
    pieces = [edge]
    for index, wave in enumerate(waves):
        if index:
            pieces.append(torch.zeros(round(rng.uniform(0.4, 1.0) * sample_rate)))
        pieces.append(wave)
    pieces.append(edge)
    return torch.cat(pieces)


def _group_by_length(seconds: list[float], target: float) -> list[list[int]]:
    """Consecutive prompts grouped until each group reaches ``target`` seconds (the last group
    keeps what is left)."""
    groups: list[list[int]] = [[]]
    total = 0.0
    for index, length in enumerate(seconds):
        if total >= target:
            groups.append([])
            total = 0.0
        groups[-1].append(index)
        total += length
    return [group for group in groups if group]


def cospeech_cache_dir(cache_root: Path, settings: CorpusSettings) -> Path:
    digest = hashlib.sha256(json.dumps(settings.as_dict(), sort_keys=True).encode()).hexdigest()
    return cache_root / "gesture" / f"cospeech-{digest[:12]}"


def prepare_cospeech(settings: CorpusSettings, cache_root: Path | None = None) -> dict[str, Any]:
    """Prepare (once) the synthetic co-speech corpus of ``settings``; returns its manifest.

    Reuses an existing folder only if its manifest records the same settings and the same
    source checksums; otherwise rebuilds it with a log line.

    Raises:
        FileNotFoundError: a Debian package or pybullet is missing (the message names it).
    """
    prompts = asterisk_prompts()
    if settings.voices and not espeak_available():
        raise FileNotFoundError("espeak-ng is missing; run `apt-get install espeak-ng`")
    if settings.max_prompts is not None:
        keep = np.random.default_rng(settings.seed).permutation(len(prompts))
        prompts = sorted((prompts[i] for i in keep[: settings.max_prompts]), key=lambda p: p.name)
    clips = humanoid_clips()
    folder = cospeech_cache_dir(cache_root or default_cache_dir(), settings)
    manifest_path = folder / "manifest.json"
    fingerprints = {str(p.path): file_sha256(p.path) for p in prompts}
    fingerprints.update({str(clip): file_sha256(clip) for clip in clips})
    recorded = reusable_manifest(
        manifest_path, settings.as_dict(), fingerprints, "co-speech corpus"
    )
    if recorded is not None:
        return recorded
    log.info("co-speech corpus: preparing %d prompts into %s", len(prompts), folder)
    if folder.exists():
        shutil.rmtree(folder)
    recordings = _build(folder, split_prompts(prompts, settings), clips, settings)
    manifest = {
        "version": MANIFEST_VERSION,
        "what": "recorded (Asterisk) and synthetic (espeak-ng) speech with synthetic motion",
        "settings": settings.as_dict(),
        "sources": fingerprints,
        "recordings": recordings,
        "seconds": {
            split: round(sum(r["seconds"] for r in recordings if r["split"] == split), 2)
            for split in SPLITS
        },
    }
    write_json(manifest_path, manifest, indent=1)
    return manifest


def _build(
    folder: Path, splits: dict[str, list[Prompt]], clips: list[Path], settings: CorpusSettings
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(settings.seed)
    skeleton = default_skeleton()
    postures = {clip.name: read_humanoid_clip(clip, skeleton, settings.fps)[0] for clip in clips}
    recordings: list[dict[str, Any]] = []
    for split in SPLITS:
        prompts = [splits[split][i] for i in rng.permutation(len(splits[split]))]
        recorded = [load_audio(p.path, settings.sample_rate) for p in prompts]
        seconds = [len(w) / settings.sample_rate for w in recorded]
        for group in _group_by_length(seconds, settings.recording_seconds):
            sources = [prompts[i].name for i in group]
            speeches = [
                ("asterisk/allison", "recorded", [recorded[i] for i in group]),
                *(
                    (
                        "espeak-ng/" + voice,
                        "synthetic",
                        [_read_aloud(prompts, group, voice, rng, settings)],
                    )
                    for voice in settings.voices
                ),
            ]
            for speaker, kind, waves in speeches:
                speech = join_with_pauses(waves, rng, settings.sample_rate)
                entry = {"split": split, "speaker": speaker, "speech": kind, "prompts": sources}
                recordings.append(
                    _write_recording(
                        folder, len(recordings), entry, speech, postures, rng, settings
                    )
                )
    return recordings


def _read_aloud(
    prompts: list[Prompt],
    group: list[int],
    voice: str,
    rng: np.random.Generator,
    settings: CorpusSettings,
) -> torch.Tensor:
    """The group's transcripts read by an espeak-ng voice at a seeded rate (140-180 wpm)."""
    text = " ".join(prompts[i].text for i in group)
    return synthesize_speech(text, voice, int(rng.integers(140, 181)), settings.sample_rate)


def _write_recording(
    folder: Path,
    index: int,
    entry: dict[str, Any],
    speech: torch.Tensor,
    postures: dict[str, torch.Tensor],
    rng: np.random.Generator,
    settings: CorpusSettings,
) -> dict[str, Any]:
    """Synthesise the motion of one recording, write its WAV and BVH, and return its manifest
    entry (``entry`` completed)."""
    style = STYLES[settings.styles[int(rng.integers(len(settings.styles)))]]
    clip = sorted(postures)[int(rng.integers(len(postures)))]
    frame = int(rng.integers(len(postures[clip])))
    skeleton = default_skeleton()
    posture = {
        name: Rotation.from_matrix(postures[clip][frame, skeleton.index(name)].numpy())
        for name in POSTURE_JOINTS
    }
    rotations, root = synthesize_motion(
        speech.numpy(), settings.sample_rate, style, rng, skeleton, settings.fps, posture,
        settings.posture_mix,
    )  # fmt: skip
    split, speaker = entry["split"], entry["speaker"]
    name = f"{split}/{index:04d}_{speaker.replace('/', '-')}_{style.name}"
    save_wav(folder / f"{name}.wav", speech, settings.sample_rate)
    bvh = motion_to_bvh(
        skeleton, torch.from_numpy(rotations), torch.from_numpy(root), 1 / settings.fps
    )
    write_bvh(bvh, folder / f"{name}.bvh")
    return {
        "name": name,
        **entry,
        "motion": "synthetic",
        "style": style.name,
        "posture": {"clip": clip, "frame": frame},
        "seconds": round(len(speech) / settings.sample_rate, 3),
        "frames": len(rotations),
    }
