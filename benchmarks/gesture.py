"""Co-speech gesture generation on held-out speech: FGD-ours, BC, L1div and speed per model.

Run from the repository root after the gesture chain's recipes::

    python -m benchmarks.gesture --models benchmarks/gesture_models.yaml \
        --out outputs/gesture/bench

Every recording of the split (``--split``, default test) is generated whole, window by window
(:func:`modalities.gesture.generation.generate_recording`), by each model of the ``--models``
file, and scored against its ground truth (whole recordings, so the scores are not those of the
validation loop's windows):

- FGD-ours: Fréchet distance of all latent frames of the generated and the real recordings
  under the FGD-ours auto-encoder (``--fgd_autoencoder``);
- BC: beat consistency against the speech's onsets (EMAGE's protocol, weighted by length;
  recordings shorter than 6 s, too short for the skipped ends and the shift, are left out);
- L1div: L1 diversity of the generated joint positions;
- seconds of wall-clock time to generate one second of motion (windows, sampling, decoding;
  every model is timed before any scoring, after one untimed recording, each recording the
  fastest of ``--timing_repeats`` runs; ``OMP_NUM_THREADS`` sets the threads, saved with the
  figures).

Three reference rows come first: the ground truth; the same motion a second late against its
speech (frame ``f + 30`` shown at time ``f``), the control a model's FGD-ours and BC are read
beside; and the ground truth encoded and decoded by the flow's RVQ-VAE (the best a flow over
its latents can do). A model entry with ``speech: false`` generates under silence (zero speech
features, which is the null condition everywhere, so CFG changes nothing): the ablation that
shows whether the motion follows the speech.

The ``--models`` file is a list of entries::

    - name: plain flow matching        # the row's name
      checkpoint: outputs/gesture/flow/checkpoints/last.ckpt   # or pretrained: <folder>
      sampler: euler
      nfe: 20
      cfg_scale: 2.0                    # optional, default 1
      speech: true                      # optional, default true
      train_seconds: 1500               # optional, the recipe's measured training time

With ``--windows``, each model also generates the split's 64-frame windows one by one, seeded
by the ground truth's first latent frame (as the validation loop does) and with no seed, and
their FGD-ours against the real windows is saved (``windows.json``): how much of a recording's
FGD-ours comes from windows that start from generated seeds rather than from each window.

It prints a markdown table and saves it with every figure (``gesture.md``, ``gesture.json``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jsonargparse import ArgumentParser

from benchmarks.models_file import read_model_entries
from mmflow.files import atomic_write, write_json
from mmflow.hub import load_flow
from modalities.gesture import (
    BeatConsistency,
    GenerationSpeed,
    GestureFrechetDistance,
    L1Diversity,
    SyntheticCoSpeech,
    default_skeleton,
)
from modalities.gesture.data import Recording
from modalities.gesture.evaluators import mean_joint_speed
from modalities.gesture.generation import generate_recording

SHIFT_SECONDS = 1.0
MIN_BC_SECONDS = 6.0
ENTRY_KEYS = {"name", "checkpoint", "pretrained", "sampler", "nfe", "cfg_scale", "speech",
              "train_seconds"}  # fmt: skip


@dataclass(frozen=True)
class ModelEntry:
    """One model of the comparison (a ``--models`` entry)."""

    name: str
    sampler: str
    nfe: int
    cfg_scale: float = 1.0
    speech: bool = True
    checkpoint: str | None = None
    pretrained: str | None = None
    train_seconds: float | None = None


@dataclass
class GestureRow:
    """One row of the table: a model (or a reference) and its figures."""

    name: str
    fgd_ours: float
    bc: float
    l1div: float
    nfe: int | None = None
    cfg_scale: float | None = None
    seconds_per_second: float | None = None
    train_seconds: float | None = None


def read_models(path: str | Path) -> list[ModelEntry]:
    """The ``--models`` file; unknown keys and missing names are errors naming the file."""
    entries = read_model_entries(path, ENTRY_KEYS, {"name", "sampler", "nfe"})
    return [ModelEntry(**entry) for entry in entries]


class Scores:
    """FGD-ours, BC and L1div of motion against a split's recordings, accumulated one
    recording at a time."""

    def __init__(self, fgd_autoencoder: Path, mean_speed: Any, fps: float) -> None:
        self.fgd = GestureFrechetDistance(fgd_autoencoder)
        self.bc = BeatConsistency(mean_speed, default_skeleton(), fps=fps)
        self.l1div = L1Diversity(default_skeleton())
        self.fps = fps

    def update(self, motion: dict[str, torch.Tensor], recording: Recording, real_frames: slice):
        """Score ``motion`` (``[F, J, 6]`` and ``[F, 3]``) against ``recording``'s speech and
        the real motion of ``real_frames``."""
        motion = {key: value[None] for key, value in motion.items()}
        real = {
            "rotations": recording.rotations[None, real_frames],
            "root": recording.root[None, real_frames],
        }
        self.fgd.update(motion, real)
        self.l1div.update(motion)
        if recording.num_frames >= MIN_BC_SECONDS * self.fps:
            self.bc.update(motion, {"wave": recording.wave[None]})

    def figures(self) -> dict[str, float]:
        return {
            "fgd_ours": float(self.fgd.compute()),
            "bc": float(self.bc.compute()),
            "l1div": float(self.l1div.compute()),
        }


def reference_rows(
    recordings: Sequence[Recording], flow_autoencoder: Any, make_scores: Any, fps: float
) -> list[GestureRow]:
    """The ground truth, the ground truth a second late and the RVQ-VAE's reconstruction."""
    shift = round(SHIFT_SECONDS * fps)
    truth, late, rebuilt = make_scores(), make_scores(), make_scores()
    skeleton = default_skeleton()
    per_latent = flow_autoencoder.frames_per_latent
    for recording in recordings:
        whole = slice(0, recording.num_frames)
        truth.update({"rotations": recording.rotations, "root": recording.root}, recording, whole)
        length = recording.num_frames - shift
        late.update(
            {"rotations": recording.rotations[shift:], "root": recording.root[shift:]},
            recording,
            slice(0, length),
        )
        frames = recording.num_frames // per_latent * per_latent
        rotations, root = recording.rotations[None, :frames], recording.root[None, :frames]
        with torch.no_grad():
            decoded, _ = flow_autoencoder.decode(
                flow_autoencoder.encode(rotations, root), skeleton.num_joints
            )
        rebuilt.update({"rotations": decoded[0], "root": root[0]}, recording, slice(0, frames))
    return [
        GestureRow("ground truth", **truth.figures()),
        GestureRow(f"ground truth, {SHIFT_SECONDS:g} s late", **late.figures()),
        GestureRow("RVQ-VAE reconstruction", **rebuilt.figures()),
    ]


class Generated(NamedTuple):
    """One model's motion for every recording of a split, and its generation speed."""

    motions: list[dict[str, torch.Tensor]]
    seconds_per_second: float


def generate_split(
    entry: ModelEntry,
    recordings: Sequence[Recording],
    window: int,
    seed: int,
    fps: float,
    repeats: int = 3,
) -> Generated:
    """Generate every recording with one model, timing each ``repeats`` times with the same
    noise and keeping the fastest, as ``timeit`` does (the machine's other work only ever adds
    time), after one untimed recording, so that no model pays the first call's set-up."""
    if repeats < 1:
        raise ValueError(f"--timing_repeats must be at least 1, got {repeats}")
    flow = load_flow(entry.checkpoint, entry.pretrained)
    flow.eval()
    sampling = {"sampler": entry.sampler, "nfe": entry.nfe, "cfg_scale": entry.cfg_scale}
    generate_recording(flow, recordings[0].speech, window, **sampling)
    speed = GenerationSpeed(fps)
    motions = []
    for index, recording in enumerate(recordings):
        speech = recording.speech if entry.speech else torch.zeros_like(recording.speech)
        timings = []
        for _ in range(repeats):
            generator = torch.Generator().manual_seed(seed + index)
            start = time.perf_counter()
            motion = generate_recording(flow, speech, window, generator, **sampling)
            timings.append(time.perf_counter() - start)
        motions.append(motion)
        speed.update(min(timings), recording.num_frames)
    return Generated(motions, float(speed.compute()))


def model_row(
    entry: ModelEntry, generated: Generated, recordings: Sequence[Recording], scores: Scores
) -> GestureRow:
    """Score one model's generated recordings."""
    for motion, recording in zip(generated.motions, recordings, strict=True):
        motion = {**motion, "root": recording.root}  # the real root path, as EMAGE scores
        scores.update(motion, recording, slice(0, recording.num_frames))
    return GestureRow(
        entry.name, **scores.figures(), nfe=entry.nfe, cfg_scale=entry.cfg_scale,
        seconds_per_second=generated.seconds_per_second, train_seconds=entry.train_seconds,
    )  # fmt: skip


@torch.no_grad()
def window_figures(entry: ModelEntry, data: SyntheticCoSpeech, fgd_autoencoder: Path, seed: int):
    """FGD-ours of the split's windows generated with the ground truth's seed and with none."""
    flow = load_flow(entry.checkpoint, entry.pretrained)
    flow.eval()
    generator = torch.Generator().manual_seed(seed)
    scores = {"ground_truth_seed": GestureFrechetDistance(fgd_autoencoder),
              "no_seed": GestureFrechetDistance(fgd_autoencoder)}  # fmt: skip
    for batch in data.test_dataloader():
        x1, cond = flow.adapter.encode(batch)
        real = {"rotations": batch["rotations"], "root": batch["root"]}
        for name, metric in scores.items():
            seeded = cond if name == "ground_truth_seed" else {
                **cond, "pooled": torch.zeros_like(cond["pooled"])
            }  # fmt: skip
            noise = torch.randn(x1.shape, generator=generator)
            samples = flow.generate(
                seeded, noise, sampler=entry.sampler, nfe=entry.nfe, cfg_scale=entry.cfg_scale
            ).samples
            metric.update(flow.adapter.decode(samples, seeded, batch), real)
    return {name: round(float(metric.compute()), 4) for name, metric in scores.items()}


def table(rows: Sequence[GestureRow]) -> str:
    """A markdown table of the rows."""
    lines = [
        "| model | NFE | CFG | FGD-ours | BC | L1div | s per s of motion | training s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row.nfe, row.cfg_scale, row.fgd_ours, row.bc, row.l1div,
                 row.seconds_per_second, row.train_seconds]  # fmt: skip
        lines.append(f"| {row.name} | " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    """A table cell: 4 significant digits, "—" for none, 0 for a rounding error's distance."""
    if value is None:
        return "—"
    return "0" if abs(value) < 1e-9 else f"{value:.4g}"


def _parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("outputs/gesture/bench"))
    parser.add_argument(
        "--fgd_autoencoder", type=Path, default=Path("outputs/gesture/fgd_autoencoder/pretrained")
    )
    parser.add_argument("--split", type=str, default="test")
    parser.add_argument("--max_recordings", type=int | None, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--windows", type=bool, default=False)
    parser.add_argument("--timing_repeats", type=int, default=3)
    parser.add_argument("--max_prompts", type=int | None, default=None)
    parser.add_argument("--voices", type=list[str] | None, default=None)
    parser.add_argument("--cache_dir", type=str | None, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> list[GestureRow]:
    args = _parser().parse_args(argv)
    models = read_models(args.models)
    data = SyntheticCoSpeech(
        cache_dir=args.cache_dir, voices=args.voices, max_prompts=args.max_prompts
    )
    data.prepare_data()
    data.setup()
    recordings = data.recordings[args.split][: args.max_recordings]
    speed = mean_joint_speed(data.recordings["train"], default_skeleton(), data.fps)

    def make_scores() -> Scores:
        return Scores(args.fgd_autoencoder, speed, data.fps)

    generated = [
        generate_split(entry, recordings, data.window, args.seed, data.fps, args.timing_repeats)
        for entry in models
    ]  # every model is timed before any scoring starts the metrics' threads
    first = load_flow(models[0].checkpoint, models[0].pretrained)
    rows = reference_rows(recordings, first.adapter.autoencoder, make_scores, data.fps)
    for entry, motion in zip(models, generated, strict=True):
        rows.append(model_row(entry, motion, recordings, make_scores()))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    if args.windows:
        if args.split != "test":
            raise ValueError("--windows scores the test windows: use it with --split test")
        windows = {
            entry.name: window_figures(entry, data, args.fgd_autoencoder, args.seed)
            for entry in models
            if entry.speech
        }
        write_json(args.out / "windows.json", windows, indent=1)
        print(json.dumps(windows, indent=1))
    rendered = table(rows)
    atomic_write(args.out / "gesture.md", lambda path: path.write_text(rendered + "\n"))
    figures = {
        "split": args.split,
        "recordings": len(recordings),
        "models": str(args.models),
        "threads": torch.get_num_threads(),
        "rows": [asdict(row) for row in rows],
    }
    write_json(args.out / "gesture.json", figures, indent=1)
    print(rendered)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
