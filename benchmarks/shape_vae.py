"""How well a trained shape VAE reconstructs held-out meshes: F-score, Chamfer, normals, IoU.

Run from the repository root after training the VAE (``recipes/shape/shape_vae.yaml``)::

    python -m benchmarks.shape_vae --vae outputs/shape/vae/pretrained \
        --root .cache/data/cgal-meshes --duplicate-tolerance 0.01 --split test \
        --out bench/shape_vae

The split is the one the recipe trains with (``MeshFolder`` with the same root, seed,
fractions and duplicate tolerance), so ``test`` shapes were never seen in training. Each shape
is encoded from its first ``--num-surface`` cached surface samples, the posterior mean is
decoded and meshed coarse to fine (:func:`modalities.shape.meshing.hierarchical_sdf_grid`,
``--resolution`` cells over [-1, 1]^3), and compared with the normalised source mesh (longest
half-extent 0.9, :func:`modalities.shape.mesh.normalise_mesh`) on ``--samples`` surface samples
of each:

- F-score at ``--threshold`` (0.01 by default, in those normalised units), Chamfer-L2
  (squared distances, both directions summed) and normal consistency, with exact distances
  from each side's samples to the other side's surface
  (:func:`modalities.shape.evaluators.reconstruction_scores`), which have no floor from the
  sample spacing;
- volumetric IoU of the insides at the shape's cached uniform points in [-1, 1]^3;
- whether the extracted mesh is watertight, and the seconds of meshing.

A shape whose decoded SDF has no zero crossing scores 0 on F-score and IoU and infinite
Chamfer. Writes ``shape_vae.json`` and ``shape_vae.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.shape_split import add_split_arguments, split_datamodule
from modalities.shape import (
    SDFSettings,
    ShapeVAE,
    VolumetricIoU,
    cached_sdf_samples,
    load_mesh,
    normalise_mesh,
)
from modalities.shape.evaluators import reconstruction_scores
from modalities.shape.meshing import extract_mesh, hierarchical_sdf_grid


def score_shape(
    vae: ShapeVAE, path: Path, settings: SDFSettings, args: argparse.Namespace
) -> dict[str, Any]:
    """Encode, decode, mesh and score one mesh file (module docstring)."""
    samples = cached_sdf_samples(path, settings, args.cache_dir)
    surface = torch.cat(
        [samples.surface_points[: args.num_surface], samples.surface_normals[: args.num_surface]],
        dim=1,
    )
    with torch.no_grad():
        latents = vae.encode(surface[None])[0]
    sdf = vae.sdf_function(latents)
    iou = VolumetricIoU()
    iou.update(sdf(samples.uniform_points)[None], samples.uniform_sdf[None])
    start = time.perf_counter()
    grid, evaluated = hierarchical_sdf_grid(sdf, args.resolution, levels=args.levels)
    row: dict[str, Any] = {
        "shape": path.name,
        "iou": iou.compute().item(),
        "evaluations": evaluated,
    }
    try:
        mesh = extract_mesh(grid)
    except ValueError:
        return row | {
            "f_score": 0.0,
            "chamfer": math.inf,
            "normal_consistency": 0.0,
            "watertight": False,
            "mesh_seconds": time.perf_counter() - start,
        }
    row["mesh_seconds"] = time.perf_counter() - start
    source, _ = normalise_mesh(load_mesh(path))
    row |= reconstruction_scores(mesh, source, args.samples, args.threshold)
    row["watertight"] = bool(mesh.is_watertight)
    return row


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Means over shapes (Chamfer's mean is infinite if a shape has no surface)."""
    keys = ("f_score", "chamfer", "normal_consistency", "iou", "mesh_seconds")
    means = {key: sum(row[key] for row in rows) / len(rows) for key in keys}
    means["watertight_share"] = sum(row["watertight"] for row in rows) / len(rows)
    means["f_score_at_least_0.9"] = sum(row["f_score"] >= 0.9 for row in rows) / len(rows)
    return means


def markdown(rows: list[dict[str, Any]], means: dict[str, float], threshold: float) -> str:
    lines = [
        f"| shape | F-score@{threshold} | Chamfer-L2 | normal consistency | IoU | watertight |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['shape']} | {row['f_score']:.3f} | {row['chamfer']:.2e} | "
            f"{row['normal_consistency']:.3f} | {row['iou']:.3f} | {row['watertight']} |"
        )
    lines.append(
        f"| **mean** | **{means['f_score']:.3f}** | {means['chamfer']:.2e} | "
        f"{means['normal_consistency']:.3f} | {means['iou']:.3f} | "
        f"{means['watertight_share']:.0%} |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shape_vae")
    parser.add_argument("--vae", required=True, help="a ShapeVAE folder (save_pretrained)")
    add_split_arguments(parser)
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--num-surface", type=int, default=2048, help="encoder input points")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--samples", type=int, default=100000, help="surface samples a mesh")
    parser.add_argument("--threshold", type=float, default=0.01)
    parser.add_argument("--max-shapes", type=int, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    vae = ShapeVAE.from_pretrained(args.vae)
    datamodule = split_datamodule(args)
    files = datamodule.files[args.split][: args.max_shapes]
    rows = []
    for path in files:
        rows.append(score_shape(vae, path, datamodule.sdf, args))
        print(json.dumps(rows[-1]))
    means = summary(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"settings": vars(args), "shapes": rows, "mean": means}
    (out / "shape_vae.json").write_text(json.dumps(result, indent=2))
    table = markdown(rows, means, args.threshold)
    (out / "shape_vae.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
