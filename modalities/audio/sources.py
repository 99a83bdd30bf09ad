"""Real sound sources for language-queried separation, prepared once into a clip cache.

Classes and where their recordings come from (all real recordings or renders of real
sampled instruments; nothing is a synthetic tone):

- ``speech``: Asterisk voice prompts, one female speaker (``asterisk-core-sounds-en-wav``),
  8 kHz recordings resampled to 16 kHz, so they hold nothing above 4 kHz;
- ``piano``, ``strings``, ``brass``, ``woodwind``, ``guitar``, ``bass``, ``drums``:
  **renders of real sampled instruments** -- the TimGM6mb General-MIDI soundfont (``fluidsynth``
  + ``timgm6mb-soundfont``) playing seeded random melodies, chords and drum patterns from
  Standard MIDI Files this module writes itself (:func:`midi_file_bytes`), four GM programs a
  class; each render is peak-normalised to 0.9 (fluidsynth's default gain renders quietly);
- ``typing``: key press/release recordings of a mechanical keyboard (``bucklespring-data``);
- ``desktop``: the freedesktop sound theme's bells, alarms and clicks (``sound-theme-freedesktop``).

:func:`prepare_sources` turns them into fixed-length mono clips (default 2.56 s = 40960
samples at 16 kHz) under ``<cache_root>/audio/lass-<hash of settings>/``:

- a recording longer than a clip is **cut** into consecutive non-overlapping clips; its last
  partial window is zero-padded and kept if it is at least half a clip, else dropped;
- a recording shorter than a clip is **zero-padded** at the end to one clip;
- clips whose RMS is below ``rms_threshold`` (default 1e-3, about -60 dBFS) are **dropped** as
  near-silent; the manifest counts them per class;
- at most ``max_clips_per_class`` clips are kept per class (recordings are taken in a seeded
  order until the cap is reached);
- train/val/test is a seeded split **by source recording**, per class: all clips of one
  recording land in the same split.

``manifest.json`` lists every clip (file, class, source, sha256 of the source, offset, split)
plus counts and durations. A cache whose recorded settings or source checksums differ from
what is on disk is rebuilt with a log line, never reused silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmflow.files import default_cache_dir, file_sha256, reusable_manifest, write_json

from .io import load_audio, save_wav, split_into_clips

log = logging.getLogger(__name__)

__all__ = [
    "ALL_CLASSES",
    "RECORDED_CLASSES",
    "RENDERED_PROGRAMS",
    "SOUNDFONT",
    "MidiNote",
    "midi_file_bytes",
    "prepare_sources",
    "random_drum_pattern",
    "random_melody",
    "render_midi",
    "sources_cache_dir",
]

MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test")
SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
RENDER_PACKAGES = ("fluidsynth", "timgm6mb-soundfont")
DRUM_CHANNEL = 9  # MIDI channel 10, 0-based
RENDER_PEAK = 0.9


@dataclass(frozen=True)
class RecordedClass:
    """Where a recorded class lives and which Debian packages install it."""

    folder: Path
    pattern: str
    packages: tuple[str, ...]


RECORDED_CLASSES: dict[str, RecordedClass] = {
    "speech": RecordedClass(
        Path("/usr/share/asterisk/sounds/en_US_f_Allison"),
        "**/*.wav",
        ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-en"),
    ),
    "typing": RecordedClass(Path("/usr/share/buckle/wav"), "*.wav", ("bucklespring-data",)),
    "desktop": RecordedClass(
        Path("/usr/share/sounds/freedesktop/stereo"), "*.oga", ("sound-theme-freedesktop",)
    ),
}

#: General-MIDI programs (0-based) rendered for each instrument class; drums use channel 10,
#: where the program picks a drum kit (standard, room, power, electronic).
RENDERED_PROGRAMS: dict[str, tuple[int, ...]] = {
    "piano": (0, 1, 2, 4),
    "strings": (40, 42, 48, 49),
    "brass": (56, 57, 60, 61),
    "woodwind": (65, 68, 71, 73),
    "guitar": (24, 25, 26, 27),
    "bass": (32, 33, 34, 35),
    "drums": (0, 8, 16, 25),
}

#: MIDI pitch range (low, high) of the melodies of each pitched instrument class.
PITCH_RANGES: dict[str, tuple[int, int]] = {
    "piano": (48, 84), "strings": (52, 84), "brass": (50, 79), "woodwind": (60, 88),
    "guitar": (45, 76), "bass": (28, 52),
}  # fmt: skip
CHORD_CLASSES = ("piano", "strings", "guitar")

ALL_CLASSES: tuple[str, ...] = (
    "speech",
    "piano",
    "strings",
    "brass",
    "woodwind",
    "guitar",
    "bass",
    "drums",
    "typing",
    "desktop",
)


# -- Standard MIDI Files ---------------------------------------------------------------------


@dataclass(frozen=True)
class MidiNote:
    """One note: start and length in beats, MIDI pitch 0..127, velocity 1..127."""

    start: float
    duration: float
    pitch: int
    velocity: int = 100


def _variable_length(value: int) -> bytes:
    """MIDI variable-length quantity: 7 bits a byte, most significant first, high bit = more."""
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(groups))


def midi_file_bytes(
    notes: list[MidiNote],
    program: int,
    channel: int = 0,
    tempo_bpm: float = 120.0,
    ticks_per_beat: int = 480,
) -> bytes:
    """A format-0 Standard MIDI File: one track with a tempo, a program change and the notes.

    Layout: ``MThd`` (length 6, format 0, 1 track, ``ticks_per_beat``), then ``MTrk`` holding
    delta-timed events: set-tempo meta (µs per beat = 60e6 / bpm), program change ``0xC0|ch``,
    note on ``0x90|ch`` / note off ``0x80|ch`` (offs sort before ons at the same tick), and the
    end-of-track meta event.
    """
    if not 0 <= channel < 16 or not 0 <= program < 128:
        raise ValueError(f"MIDI channel must be 0..15 and program 0..127, got {channel}, {program}")
    timed: list[tuple[int, int, bytes]] = []
    for note in notes:
        on = round(note.start * ticks_per_beat)
        off = on + max(1, round(note.duration * ticks_per_beat))
        timed.append((on, 1, bytes([0x90 | channel, note.pitch, note.velocity])))
        timed.append((off, 0, bytes([0x80 | channel, note.pitch, 0])))
    timed.sort(key=lambda event: (event[0], event[1]))
    tempo = round(60_000_000 / tempo_bpm).to_bytes(3, "big")
    track = _variable_length(0) + b"\xff\x51\x03" + tempo
    track += _variable_length(0) + bytes([0xC0 | channel, program])
    now = 0
    for tick, _, message in timed:
        track += _variable_length(tick - now) + message
        now = tick
    track += _variable_length(0) + b"\xff\x2f\x00"
    header = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
    header += ticks_per_beat.to_bytes(2, "big")
    return header + b"MTrk" + len(track).to_bytes(4, "big") + track


def random_melody(
    pitch_range: tuple[int, int], rng: np.random.Generator, beats: float, chords: bool = False
) -> list[MidiNote]:
    """A seeded melody in ``pitch_range``: a random walk on a major or minor scale.

    Note lengths are drawn from {1/2, 1, 1, 2} beats; with ``chords`` a note becomes a triad
    (scale degrees +0, +2, +4) with probability 0.3.
    """
    low, high = pitch_range
    steps = (0, 2, 4, 5, 7, 9, 11) if rng.random() < 0.5 else (0, 2, 3, 5, 7, 8, 10)
    root = int(rng.integers(low, low + 12))
    scale = [root + 12 * octave + step for octave in range(5) for step in steps]
    scale = [pitch for pitch in scale if pitch <= high]
    degree = int(rng.integers(0, max(1, len(scale) // 2)))
    notes: list[MidiNote] = []
    start = 0.0
    while start < beats:
        duration = float(rng.choice([0.5, 1.0, 1.0, 2.0]))
        velocity = int(rng.integers(70, 116))
        chord = chords and rng.random() < 0.3
        for offset in (0, 2, 4) if chord else (0,):
            pitch = scale[min(degree + offset, len(scale) - 1)]
            notes.append(MidiNote(start, duration, pitch, velocity))
        degree = int(np.clip(degree + rng.integers(-2, 3), 0, len(scale) - 1))
        start += duration
    return notes


def random_drum_pattern(rng: np.random.Generator, beats: float) -> list[MidiNote]:
    """A seeded drum-kit groove on a 16th-note grid (GM percussion keys, channel 10).

    Kick (36) on beats 1 and 3 plus random extras, snare (38) on 2 and 4, closed (42) or open
    (46) hi-hat on eighths, random tom (45, 48) fills, a crash (49) at the start of each bar.
    """
    notes: list[MidiNote] = []
    for sixteenth in range(int(beats * 4)):
        beat, position = divmod(sixteenth, 4)
        start = sixteenth / 4
        hits = []
        if position == 0 and beat % 2 == 0 or rng.random() < 0.08:
            hits.append(36)
        if position == 0 and beat % 2 == 1:
            hits.append(38)
        if position % 2 == 0:
            hits.append(46 if rng.random() < 0.15 else 42)
        if rng.random() < 0.05:
            hits.append(int(rng.choice([45, 48])))
        if sixteenth % 16 == 0:
            hits.append(49)
        notes.extend(MidiNote(start, 0.25, key, int(rng.integers(70, 121))) for key in hits)
    return notes


def render_midi(midi_path: Path, wav_path: Path, sample_rate: int = 16000) -> Path:
    """Render a MIDI file with fluidsynth and the TimGM6mb soundfont to a WAV file.

    Runs ``fluidsynth -ni -F wav_path -r sample_rate TimGM6mb.sf2 midi_path`` (stereo output).
    """
    require_packages(["piano"])
    command = [
        "fluidsynth", "-ni", "-F", str(wav_path), "-r", str(sample_rate),
        str(SOUNDFONT), str(midi_path),
    ]  # fmt: skip
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or not wav_path.is_file():
        raise RuntimeError(
            f"fluidsynth failed to render {midi_path} (exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}"
        )
    return wav_path


# -- what each class is made of --------------------------------------------------------------


def require_packages(classes: list[str]) -> None:
    """Raise one ``FileNotFoundError`` naming the ``apt-get install`` that provides ``classes``."""
    missing: list[str] = []
    problems: list[str] = []
    for name in classes:
        if name in RECORDED_CLASSES:
            spec = RECORDED_CLASSES[name]
            if not any(spec.folder.glob(spec.pattern)):
                problems.append(f"{name}: no {spec.pattern} files in {spec.folder}")
                missing.extend(p for p in spec.packages if p not in missing)
        elif name in RENDERED_PROGRAMS:
            if shutil.which("fluidsynth") is None or not SOUNDFONT.is_file():
                problems.append(f"{name}: needs the fluidsynth program and {SOUNDFONT}")
                missing.extend(p for p in RENDER_PACKAGES if p not in missing)
        else:
            raise ValueError(f"unknown audio class {name!r}; known: {list(ALL_CLASSES)}")
    if missing:
        raise FileNotFoundError(
            f"audio sources missing ({'; '.join(problems)}); "
            f"run `apt-get install {' '.join(missing)}`"
        )


@dataclass(frozen=True)
class SourceRecording:
    """One source recording: its id (path or MIDI name), checksum and how to load it."""

    class_name: str
    source: str
    sha256: str
    load: Callable[[], Tensor]


def recorded_sources(class_name: str, sample_rate: int) -> list[SourceRecording]:
    """The recordings of a recorded class, sorted by path."""
    spec = RECORDED_CLASSES[class_name]
    paths = sorted(spec.folder.glob(spec.pattern))
    return [
        SourceRecording(
            class_name,
            str(path),
            file_sha256(path),
            lambda path=path: load_audio(path, sample_rate),
        )
        for path in paths
    ]


def rendered_sources(
    class_name: str, sample_rate: int, renders_per_program: int, render_seconds: float, seed: int
) -> list[SourceRecording]:
    """Seeded MIDI pieces of an instrument class, ordered melody-major, program-minor.

    Each piece lasts ``render_seconds`` (plus fluidsynth's release tail) at a tempo drawn from
    90-140 bpm. The checksum is the SHA-256 of the MIDI bytes
    (the soundfont's checksum is recorded once in the manifest).
    """
    programs = RENDERED_PROGRAMS[class_name]
    class_seed = int.from_bytes(hashlib.sha256(class_name.encode()).digest()[:4], "little")
    rng = np.random.default_rng([seed, class_seed])
    sources = []
    for piece in range(renders_per_program):
        for program in programs:
            tempo = float(rng.integers(90, 141))
            beats = render_seconds * tempo / 60
            if class_name == "drums":
                notes, channel = random_drum_pattern(rng, beats), DRUM_CHANNEL
            else:
                pitches, chords = PITCH_RANGES[class_name], class_name in CHORD_CLASSES
                notes, channel = random_melody(pitches, rng, beats, chords), 0
            midi = midi_file_bytes(notes, program, channel, tempo)
            name = f"midi:{class_name}/program{program:03d}-piece{piece:02d}"
            sources.append(
                SourceRecording(
                    class_name,
                    name,
                    hashlib.sha256(midi).hexdigest(),
                    lambda midi=midi: _render_bytes(midi, sample_rate),
                )
            )
    return sources


def _render_bytes(midi: bytes, sample_rate: int) -> Tensor:
    """Render MIDI bytes to a mono waveform peak-normalised to :data:`RENDER_PEAK`."""
    with tempfile.TemporaryDirectory() as folder:
        midi_path = Path(folder) / "piece.mid"
        midi_path.write_bytes(midi)
        audio = load_audio(render_midi(midi_path, Path(folder) / "piece.wav", sample_rate))
    peak = audio.abs().max()
    return audio * (RENDER_PEAK / peak) if peak > 0 else audio


# -- the prepared cache ----------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSettings:
    """Everything that changes the prepared clips (hashed into the cache folder name)."""

    classes: tuple[str, ...]
    sample_rate: int
    clip_samples: int
    max_clips_per_class: int
    seed: int
    val_fraction: float
    test_fraction: float
    rms_threshold: float
    renders_per_program: int
    render_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"version": MANIFEST_VERSION, **asdict(self), "classes": list(self.classes)}

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]


def sources_cache_dir(cache_root: Path, settings: SourceSettings) -> Path:
    """``<cache_root>/audio/lass-<hash of settings>``."""
    return cache_root / "audio" / f"lass-{settings.key()}"


def _class_sources(name: str, settings: SourceSettings) -> list[SourceRecording]:
    if name in RECORDED_CLASSES:
        return recorded_sources(name, settings.sample_rate)
    return rendered_sources(
        name,
        settings.sample_rate,
        settings.renders_per_program,
        settings.render_seconds,
        settings.seed,
    )


def prepare_sources(settings: SourceSettings, cache_root: Path | None = None) -> dict[str, Any]:
    """Prepare (once) the clip cache for ``settings`` and return its manifest.

    Reuses an existing cache only if its manifest records the same settings and the same
    source checksums; otherwise rebuilds it with a log line.
    """
    require_packages(list(settings.classes))
    folder = sources_cache_dir(cache_root or default_cache_dir(), settings)
    manifest_path = folder / "manifest.json"
    sources = {name: _class_sources(name, settings) for name in settings.classes}
    fingerprints = {
        name: {source.source: source.sha256 for source in recordings}
        for name, recordings in sources.items()
    }
    if any(name in RENDERED_PROGRAMS for name in settings.classes):
        fingerprints["soundfont"] = {str(SOUNDFONT): file_sha256(SOUNDFONT)}
    recorded = reusable_manifest(manifest_path, settings.as_dict(), fingerprints, "audio sources")
    if recorded is not None:
        return recorded
    log.info("audio sources: preparing %s into %s", list(settings.classes), folder)
    manifest = _build_cache(folder, sources, fingerprints, settings)
    write_json(manifest_path, manifest, indent=1)
    return manifest


def _build_cache(
    folder: Path,
    sources: dict[str, list[SourceRecording]],
    fingerprints: dict[str, Any],
    settings: SourceSettings,
) -> dict[str, Any]:
    clips: list[dict[str, Any]] = []
    dropped: dict[str, int] = {}
    for class_index, (name, recordings) in enumerate(sources.items()):
        class_clips, dropped[name] = _cut_class(folder, name, recordings, settings, class_index)
        clips.extend(class_clips)
    clip_seconds = settings.clip_samples / settings.sample_rate
    summary = {
        name: {
            split: sum(1 for c in clips if c["class"] == name and c["split"] == split)
            for split in SPLITS
        }
        for name in settings.classes
    }
    return {
        "version": MANIFEST_VERSION,
        "settings": settings.as_dict(),
        "sources": fingerprints,
        "class_names": list(settings.classes),
        "counts": summary,
        "dropped_silent": dropped,
        "seconds_per_class": {
            name: round(sum(counts.values()) * clip_seconds, 2) for name, counts in summary.items()
        },
        "clips": clips,
    }


def _cut_class(
    folder: Path,
    name: str,
    recordings: list[SourceRecording],
    settings: SourceSettings,
    class_index: int,
) -> tuple[list[dict[str, Any]], int]:
    """Clips of one class (up to the cap) with their split, and how many were near-silent."""
    order = np.random.default_rng([settings.seed, class_index]).permutation(len(recordings))
    kept: list[tuple[SourceRecording, int, Tensor, float]] = []
    dropped = 0
    for position in order:
        if len(kept) >= settings.max_clips_per_class:
            break
        recording = recordings[position]
        audio = recording.load()
        pieces = split_into_clips(audio, settings.clip_samples)
        loud = pieces.square().mean(dim=1).sqrt() >= settings.rms_threshold
        dropped += int((~loud).sum())
        room = settings.max_clips_per_class - len(kept)
        content = audio.shape[-1] / settings.sample_rate
        kept.extend(
            (recording, int(k), pieces[k], content) for k in torch.nonzero(loud).flatten()[:room]
        )
    split_of = _split_by_source([r.source for r, *_ in kept], settings, class_index)
    clips = []
    for number, (recording, piece, audio, content) in enumerate(kept):
        relative = Path("clips") / name / f"{number:05d}.wav"
        save_wav(folder / relative, audio, settings.sample_rate)
        clips.append(
            {
                "file": str(relative),
                "class": name,
                "source": recording.source,
                "source_sha256": recording.sha256,
                "source_seconds": round(content, 4),
                "offset_seconds": piece * settings.clip_samples / settings.sample_rate,
                "duration": settings.clip_samples / settings.sample_rate,
                "split": split_of[recording.source],
            }
        )
    return clips, dropped


def _split_by_source(
    sources: list[str], settings: SourceSettings, class_index: int
) -> dict[str, str]:
    """Seeded split of one class's distinct recordings into train/val/test.

    With three or more recordings val and test get at least one each
    (``max(1, round(fraction * n))``); with fewer, everything is train.
    """
    distinct = list(dict.fromkeys(sources))
    order = np.random.default_rng([settings.seed, class_index, 1]).permutation(len(distinct))
    n = len(distinct)
    n_val = max(1, round(settings.val_fraction * n)) if n >= 3 and settings.val_fraction else 0
    n_test = max(1, round(settings.test_fraction * n)) if n >= 3 and settings.test_fraction else 0
    names = ["val"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    return {distinct[i]: split for i, split in zip(order, names)}
