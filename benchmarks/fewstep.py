"""Few-step and one-step models side by side: quality, size, training time and speed.

Run from the repository root::

    python -m benchmarks.fewstep --config recipes/image/mnist.yaml \
        --models benchmarks/fewstep_mnist.yaml --out bench/fewstep_mnist

``--models`` is a YAML list; each entry names a trained model and how it samples::

    - name: teacher                  # the row's label
      checkpoint: outputs/mnist/checkpoints/last.ckpt
      sampler: heun                  # a registered method (step_euler for step-size models)
      nfe: [32]                      # the budgets to score
      cfg_scale: 2.0                 # classifier-free guidance while sampling (1 = none)
      train_seconds: 291             # measured by the run that trained it (the docs say how)
      solver_options: {...}          # the sampler's own settings (FlowTurbo's step counts);
                                     # without it, the model's stored ones for its own sampler

Every row generates from the same noise under the same test conditions and is scored with
the modality's evaluators (FD-ours and class accuracy for images), through
:func:`benchmarks.samplers.sampler_sweep`. Speed is samples per second of ``generate`` at
batch ``--speed_batch`` on this machine (median of three timed runs after one warm-up), so a
row's speed-up over the reference row is its cost ratio in wall-clock time, guidance included.
Straightness (:mod:`mmflow.fewstep.straightness`) is measured for models sampled with an ODE
solver, along 32 Euler steps of their guided velocity from the first batch's conditions.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser

from benchmarks.models_file import read_model_entries
from benchmarks.samplers import guided_model, sampler_sweep
from mmflow.cli import run_command
from mmflow.data import load_datamodule, take_batches
from mmflow.fewstep.straightness import straightness
from mmflow.hub import PretrainedFlow, load_flow
from mmflow.pretrained import Frozen
from mmflow.sampling import get_sampler

SPEED_BATCH = 256
SPEED_REPEATS = 3
STRAIGHTNESS_NFE = 32
ENTRY_KEYS = {
    "name",
    "checkpoint",
    "pretrained",
    "sampler",
    "nfe",
    "cfg_scale",
    "train_seconds",
    "solver_options",
}


@dataclass(frozen=True)
class ModelEntry:
    """One model of the comparison (a ``--models`` entry)."""

    name: str
    sampler: str
    nfe: tuple[int, ...]
    cfg_scale: float = 1.0
    checkpoint: str | None = None
    pretrained: str | None = None
    train_seconds: float | None = None
    solver_options: dict[str, Any] | None = None


@dataclass
class FewStepRow:
    """A model at one budget: its metrics, size, training time and speed."""

    name: str
    sampler: str
    nfe: int
    cfg_scale: float
    metrics: dict[str, float]
    parameters: int
    train_seconds: float | None
    samples_per_second: float
    straightness: float | None


def read_models(path: str | Path) -> list[ModelEntry]:
    """The ``--models`` file; unknown keys and missing names are errors naming the file."""
    entries = read_model_entries(path, ENTRY_KEYS, {"name", "sampler", "nfe"})
    return [ModelEntry(**{**entry, "nfe": tuple(entry["nfe"])}) for entry in entries]


def parameter_count(network: torch.nn.Module) -> int:
    """Every parameter the network samples with, frozen parts held outside its state dict
    (FlowTurbo's base flow) included."""
    frozen = [m.part for m in network.modules() if isinstance(m, Frozen)]
    return sum(p.numel() for part in (network, *frozen) for p in part.parameters())


def samples_per_second(
    flow: PretrainedFlow, sampler: str, nfe: int, cfg_scale: float, batch: int
) -> float:
    """Throughput of ``flow.generate`` on ``batch`` conditions the adapter draws (median of
    :data:`SPEED_REPEATS` timed runs after a warm-up)."""
    shape, cond = flow.adapter.sample_conditions(batch)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    timings = []
    for repeat in range(SPEED_REPEATS + 1):
        start = time.perf_counter()
        flow.generate(cond, noise, sampler=sampler, nfe=nfe, cfg_scale=cfg_scale)
        if repeat:
            timings.append(time.perf_counter() - start)
    return batch / statistics.median(timings)


def model_straightness(
    flow: PretrainedFlow, entry: ModelEntry, batch: Any, seed: int
) -> float | None:
    """Straightness of the (guided) velocity along its Euler trajectories from the first batch's
    conditions; ``None`` for models sampled by a step-size rule (their velocity at a step is
    not the instantaneous one)."""
    if get_sampler(entry.sampler).kind not in ("ode", "multistep"):
        return None
    x1, cond = flow.adapter.encode(batch)
    noise = flow.adapter.source_like(x1, cond, generator=torch.Generator().manual_seed(seed))
    model = guided_model(flow, entry.cfg_scale)
    return float(straightness(model, noise, STRAIGHTNESS_NFE, **cond))


def evaluate_model(
    entry: ModelEntry,
    batches: list[Any],
    seed: int,
    speed_batch: int,
    adapter_args: dict[str, Any] | None = None,
) -> list[FewStepRow]:
    """Every budget of one model: metrics on ``batches``, parameters and speed. ``adapter_args``
    change the adapter's settings first (``{"fid_max_samples": 1000}`` adds Inception FID)."""
    flow = load_flow(entry.checkpoint, entry.pretrained)
    if adapter_args:
        flow = flow.with_adapter_args(**adapter_args)
    if entry.solver_options is not None:
        flow.defaults = replace(
            flow.defaults, sampler=entry.sampler, solver_options=entry.solver_options
        )
    parameters = parameter_count(flow.network)
    straight = model_straightness(flow, entry, batches[0], seed)
    rows = []
    for nfe in entry.nfe:
        sweep = sampler_sweep(flow, batches, [entry.sampler], [nfe], entry.cfg_scale, seed)
        (result,) = sweep
        if result.metrics is None:
            raise ValueError(f"{entry.name}: {entry.sampler} at NFE {nfe}: {result.not_applicable}")
        speed = samples_per_second(flow, entry.sampler, nfe, entry.cfg_scale, speed_batch)
        rows.append(
            FewStepRow(
                entry.name,
                entry.sampler,
                nfe,
                entry.cfg_scale,
                result.metrics,
                parameters,
                entry.train_seconds,
                speed,
                straight,
            )
        )
    return rows


def table(rows: Sequence[FewStepRow], reference: FewStepRow) -> str:
    """A Markdown table; ``speed-up`` is samples per second over the reference row's."""
    metric_names = list(reference.metrics)
    head = [
        "model",
        "sampler",
        "NFE",
        *metric_names,
        "straightness",
        "params",
        "train s",
        "samples/s",
        "speed-up",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        values = [f"{row.metrics.get(name, float('nan')):.4g}" for name in metric_names]
        train = "—" if row.train_seconds is None else f"{row.train_seconds:.0f}"
        speed_up = row.samples_per_second / reference.samples_per_second
        straight = "—" if row.straightness is None else f"{row.straightness:.4f}"
        cells = [
            row.name,
            row.sampler,
            str(row.nfe),
            *values,
            straight,
            f"{row.parameters / 1e6:.2f} M",
            train,
            f"{row.samples_per_second:.1f}",
            f"{speed_up:.1f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m benchmarks.fewstep",
        description="Few-step models against their teacher: metrics at each NFE, parameters, "
        "training time and samples per second.",
    )
    parser.add_argument("--config", type=str, required=True, help="recipe whose `data` is scored")
    parser.add_argument("--models", type=str, required=True, help="YAML list of models")
    parser.add_argument("--reference", type=str | None, default=None, help="default: first model")
    parser.add_argument("--split", type=str, default="test", help="test, val or train")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--speed_batch", type=int, default=SPEED_BATCH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--adapter_args",
        type=dict[str, Any] | None,
        default=None,
        help="adapter settings to change, e.g. '{fid_max_samples: 1000}' for Inception FID",
    )
    parser.add_argument("--out", type=str, required=True)
    return parser


def _benchmark(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    models = read_models(args.models)
    torch.manual_seed(args.seed)  # the training split's shuffle, when it is the one scored
    batches = take_batches(load_datamodule(args.config), args.split, args.num_samples)
    rows = [
        row
        for entry in models
        for row in evaluate_model(entry, batches, args.seed, args.speed_batch, args.adapter_args)
    ]
    reference_name = args.reference or models[0].name
    reference = next((row for row in rows if row.name == reference_name), None)
    if reference is None:
        raise ValueError(f"--reference {reference_name!r} is not a model of {args.models}")
    text = table(rows, reference)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fewstep.md").write_text(text + "\n")
    (out / "fewstep.json").write_text(json.dumps([asdict(row) for row in rows], indent=2))
    print(out / "fewstep.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(
        "benchmarks.fewstep", lambda: _benchmark(sys.argv[1:] if argv is None else argv)
    )


if __name__ == "__main__":
    raise SystemExit(main())
