"""An example captioned WAV folder: instruments the LASS mixtures never contain.

``python -m modalities.audio.examples --out .cache/audio/new_instruments`` writes the folder a
user would bring to fine-tune FlowSep (:class:`~modalities.audio.data.CaptionedWavFolder`):

- ``wav/<class>-<program>-<piece>.wav``: seeded melodies of General-MIDI instrument families
  that :data:`~modalities.audio.sources.RENDERED_PROGRAMS` leaves out (mallets, organs, synth
  leads, plucked strings), rendered with fluidsynth and the TimGM6mb soundfont (16 kHz);
- ``captions.csv`` (``file``, ``caption``, ``class``): one free-text caption per file, naming
  the instrument in words the LASS caption templates never use.

The recordings are synthetic renders (sampled instruments playing generated melodies), named
as such; any folder of WAV files with such a CSV trains the same way.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from pathlib import Path

import numpy as np

from mmflow.files import atomic_write

from .sources import midi_file_bytes, random_melody, render_midi

__all__ = ["EXAMPLE_INSTRUMENTS", "write_example_folder"]

#: Class -> (General-MIDI program -> caption, pitch range of its melodies).
EXAMPLE_INSTRUMENTS: dict[str, tuple[dict[int, str], tuple[int, int]]] = {
    "mallets": (
        {
            8: "a celesta playing a melody",
            9: "a glockenspiel tune",
            11: "someone playing the vibraphone",
            12: "a marimba melody",
        },
        (60, 96),
    ),
    "organ": (
        {
            16: "a drawbar organ playing",
            17: "a percussive organ melody",
            19: "a church organ",
            20: "a reed organ playing a tune",
        },
        (48, 84),
    ),
    "synth": (
        {
            80: "a square-wave synthesizer lead",
            81: "a sawtooth synth melody",
            82: "a calliope synth line",
            84: "a bright synth lead",
        },
        (55, 88),
    ),
    "plucked": (
        {
            46: "a harp being plucked",
            104: "a sitar playing",
            105: "a banjo tune",
            107: "a koto melody",
        },
        (48, 84),
    ),
}


def write_example_folder(
    out: str | Path, pieces: int = 16, seconds: float = 3.0, seed: int = 0
) -> Path:
    """Render ``pieces`` melodies of every program of :data:`EXAMPLE_INSTRUMENTS` into ``out``;
    returns the captions CSV. Melodies are seeded per class, so the folder is reproducible."""
    out = Path(out)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    (out / "midi").mkdir(exist_ok=True)
    rows = []
    for name, (captions, pitches) in EXAMPLE_INSTRUMENTS.items():
        class_seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
        rng = np.random.default_rng([seed, class_seed])
        for piece in range(pieces):
            for program, caption in captions.items():
                tempo = float(rng.integers(90, 141))
                notes = random_melody(pitches, rng, seconds * tempo / 60)
                stem = f"{name}-{program:03d}-{piece:02d}"
                midi = out / "midi" / f"{stem}.mid"
                midi.write_bytes(midi_file_bytes(notes, program, 0, tempo))
                render_midi(midi, out / "wav" / f"{stem}.wav")
                rows.append({"file": f"wav/{stem}.wav", "caption": caption, "class": name})

    def write_csv(path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["file", "caption", "class"])
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(out / "captions.csv", write_csv)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m modalities.audio.examples",
        description="Write a captioned WAV folder of instruments the LASS mixtures never contain.",
    )
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--pieces", type=int, default=16, help="melodies per program")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each melody")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        captions = write_example_folder(args.out, args.pieces, args.seconds, args.seed)
    except (FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {captions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
