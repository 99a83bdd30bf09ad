"""Shape generation side by side: COV, MMD, 1-NNA, the watertight share and samples a second.

Run from the repository root after training the flows (``recipes/shape/*_flow.yaml``)::

    python -m benchmarks.shape_generation \
        --flow latent=outputs/shape/latent_flow/checkpoints/last.ckpt \
        --flow mosaic=outputs/shape/mosaic_flow/checkpoints/last.ckpt \
        --num-samples 50 --out bench/shape_generation

Each flow (a Lightning checkpoint of a shape recipe, sampled with its EMA weights and the
recipe's sampler settings unless ``--nfe`` says otherwise) generates ``--num-samples`` shapes
from seeded noise under the conditions its adapter draws (classes in turn); its adapter meshes
them. They are scored against the reference shapes of the recipe's split (``--split``:
``held_out`` is validation and test together, the shapes no flow trained on) with
:class:`modalities.shape.GenerationMetrics` on ``--points`` surface points a shape, Chamfer-L2
in the normalisation of :func:`modalities.shape.mesh.normalise_mesh`:

- COV (higher is better), MMD (lower is better), 1-NNA (0.5 is best);
- the share of generated meshes that are watertight, their mean number of connected parts and
  the share that are one part (floating fragments show here);
- samples a second: the flow's sampling and the meshing, timed together and apart.

Writes ``shape_generation.json``, ``shape_generation.md`` and a preview grid
``<name>.png`` per flow under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.shape_split import add_scoring_arguments, add_split_arguments, scored_surfaces
from mmflow.hub import pretrained_from_checkpoint
from modalities.shape import GenerationMetrics, render_grid


def score_flow(name: str, checkpoint: str, reference: torch.Tensor, args) -> dict[str, Any]:
    """Generate, mesh and score ``--num-samples`` shapes of one flow (module docstring)."""
    flow = pretrained_from_checkpoint(checkpoint)
    flow.adapter.num_points = args.points
    shape, cond = flow.adapter.sample_conditions(args.num_samples)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    result = flow.generate(cond, noise, nfe=args.nfe)
    sampled = time.perf_counter()
    shapes = flow.adapter.decode(result.samples, cond)
    meshed = time.perf_counter()
    metrics = GenerationMetrics()
    metrics.update(shapes.points, reference)
    scores = {key: value.item() for key, value in metrics.compute().items()}
    closed = sum(mesh is not None and mesh.is_watertight for mesh in shapes.meshes)
    parts = [len(mesh.split(only_watertight=False)) for mesh in shapes.meshes if mesh is not None]
    render_grid(shapes.meshes[:16], Path(args.out) / f"{name}.png", up=args.up)
    return {
        "flow": name,
        "checkpoint": checkpoint,
        **scores,
        "watertight_share": closed / len(shapes),
        "no_surface": sum(mesh is None for mesh in shapes.meshes),
        "parts_mean": sum(parts) / max(len(parts), 1),
        "one_part_share": sum(count == 1 for count in parts) / len(shapes),
        "nfe": result.nfe,
        "sampling_seconds": sampled - start,
        "meshing_seconds": meshed - sampled,
        "samples_per_second": args.num_samples / (meshed - start),
    }


def markdown(rows: list[dict[str, Any]], num_references: int) -> str:
    lines = [
        f"{num_references} reference shapes.",
        "",
        "| flow | COV | MMD | 1-NNA | watertight | parts (one part) | NFE | samples / s (sampling only) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        sampling_rate = row["samples_per_second"] * (
            (row["sampling_seconds"] + row["meshing_seconds"]) / row["sampling_seconds"]
        )
        lines.append(
            f"| {row['flow']} | {row['cov']:.3f} | {row['mmd']:.2e} | {row['1-nna']:.3f} | "
            f"{row['watertight_share']:.0%} | {row['parts_mean']:.1f} ({row['one_part_share']:.0%}) | "
            f"{row['nfe']} | {row['samples_per_second']:.2f} "
            f"({sampling_rate:.1f}) |"
        )
    return "\n".join(lines)


def named_checkpoint(text: str) -> tuple[str, str]:
    """``"latent=path.ckpt"`` -> ``("latent", "path.ckpt")``."""
    name, separator, path = text.partition("=")
    if not separator or not name or not path:
        raise argparse.ArgumentTypeError(f"a flow is NAME=CHECKPOINT, got {text!r}")
    return name, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shape_generation")
    parser.add_argument("--flow", type=named_checkpoint, action="append", required=True)
    parser.add_argument("--num-samples", type=int, default=50)
    parser.add_argument("--nfe", type=int, default=None, help="default: the recipe's")
    add_split_arguments(parser)
    add_scoring_arguments(parser)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    reference = scored_surfaces(args)[0][:, :, :3]
    rows = []
    for name, checkpoint in args.flow:
        rows.append(score_flow(name, checkpoint, reference, args))
        print(json.dumps(rows[-1]))
    out = Path(args.out)
    result = {"settings": {**vars(args), "flow": args.flow}, "references": len(reference)}
    (out / "shape_generation.json").write_text(json.dumps(result | {"flows": rows}, indent=2))
    table = markdown(rows, len(reference))
    (out / "shape_generation.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
