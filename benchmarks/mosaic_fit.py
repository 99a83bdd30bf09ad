"""How well Mosaic-SDF represents held-out meshes: F-score@0.01, Chamfer-L2, fit time, storage.

Run from the repository root (after ``make cgal-meshes``)::

    python -m benchmarks.mosaic_fit --settings 64x5 128x5 256x5 256x7 1024x7 \
        --refine-steps 0 200 --out bench/mosaic_fit

The meshes are the test split of ``MeshFolder(root, skip_invalid=True, duplicate_tolerance,
seed, val_fraction, test_fraction)``, the split the shape VAE is scored on (``benchmarks.shape_split``; the split's settings are options). Each mesh is
loaded and normalised (longest half-extent 0.9), then fitted by
:func:`modalities.shape.mosaic.fit_mosaic` for every ``n x k`` of ``--settings`` and every
count of ``--refine-steps``. The mosaic is meshed by marching cubes on its exact dense grid at
``--resolution`` (:meth:`MosaicSDF.sdf_grid`, NaN outside the band) and compared with the
normalised source mesh by ``--samples`` surface points on each: F-score at 0.01 and
Chamfer-L2 with exact distances to the other surface
(:func:`modalities.shape.evaluators.reconstruction_scores`, as ``benchmarks.shape_vae``).
``--ceiling`` also meshes the exact SDF (libigl) at the same resolution: the score marching
cubes alone reaches, the ceiling of any representation at that resolution.

Reported per mesh and setting: F-score, Chamfer-L2, fit seconds and the storage of one shape
(``n (4 + k^3)`` numbers, float32 and float16); per setting the means and the worst F-score.
Writes ``mosaic_fit.json`` and ``mosaic_fit.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import trimesh

from benchmarks.shape_split import add_split_arguments, split_datamodule
from modalities.shape import load_mesh, normalise_mesh, signed_distance
from modalities.shape.evaluators import reconstruction_scores
from modalities.shape.meshing import extract_mesh, hierarchical_sdf_grid
from modalities.shape.mosaic import DEFAULT_BAND, fit_mosaic, storage_bytes


def surface_scores(
    predicted: trimesh.Trimesh, target: trimesh.Trimesh, samples: int, threshold: float = 0.01
) -> tuple[float, float]:
    """F-score at ``threshold`` and Chamfer-L2 of two meshes (``reconstruction_scores``)."""
    scores = reconstruction_scores(predicted, target, samples, threshold)
    return scores["f_score"], scores["chamfer"]


def parse_setting(text: str) -> tuple[int, int]:
    """``"256x5"`` -> ``(256, 5)``: grids and grid size."""
    try:
        num_grids, grid_size = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a setting is NUM_GRIDSxGRID_SIZE, got {text!r}"
        ) from None
    return num_grids, grid_size


def ceiling_scores(source: trimesh.Trimesh, resolution: int, samples: int) -> tuple[float, float]:
    """The scores of the mesh of ``source``'s exact SDF at ``resolution`` (hierarchical)."""

    def sdf(points: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(signed_distance(source, points.numpy()))

    grid, _ = hierarchical_sdf_grid(sdf, resolution, levels=min(3, resolution.bit_length() - 4))
    return surface_scores(extract_mesh(grid), source, samples)


def fit_one(source: trimesh.Trimesh, args: argparse.Namespace, setting, steps: int) -> dict:
    num_grids, grid_size = setting
    start = time.perf_counter()
    mosaic = fit_mosaic(
        source,
        num_grids,
        grid_size,
        band=args.band,
        refine_steps=steps,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    seconds = time.perf_counter() - start
    try:
        fscore, chamfer = surface_scores(mosaic.mesh(args.resolution), source, args.samples)
    except ValueError:  # no surface in the covered cells: scored as a total miss
        fscore, chamfer = 0.0, float("nan")
    return {
        "num_grids": num_grids,
        "grid_size": grid_size,
        "refine_steps": steps,
        "fscore": fscore,
        "chamfer": chamfer,
        "fit_seconds": seconds,
        "scale": float(mosaic.scales.mean()),
        "bytes_float32": storage_bytes(num_grids, grid_size, torch.float32),
        "bytes_float16": storage_bytes(num_grids, grid_size, torch.float16),
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Means over meshes (and the worst F-score) per setting and refinement."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if "num_grids" in row:
            groups.setdefault((row["num_grids"], row["grid_size"], row["refine_steps"]), []).append(
                row
            )
    return [
        {
            "num_grids": n,
            "grid_size": k,
            "refine_steps": steps,
            "meshes": len(group),
            "fscore": statistics.mean(r["fscore"] for r in group),
            "min_fscore": min(r["fscore"] for r in group),
            "chamfer": statistics.mean(r["chamfer"] for r in group),
            "fit_seconds": statistics.mean(r["fit_seconds"] for r in group),
            "bytes_float32": group[0]["bytes_float32"],
            "bytes_float16": group[0]["bytes_float16"],
        }
        for (n, k, steps), group in groups.items()
    ]


def markdown(summary: list[dict], rows: list[dict]) -> str:
    header = (
        "| n | k | refine steps | mean F-score@0.01 | worst F-score | mean Chamfer-L2 | fit s "
        "| KiB float32 | KiB float16 |"
    )
    lines = [
        header,
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['num_grids']} | {s['grid_size']} | {s['refine_steps']} | {s['fscore']:.4f} | "
            f"{s['min_fscore']:.4f} | {s['chamfer']:.3e} | {s['fit_seconds']:.1f} | "
            f"{s['bytes_float32'] / 1024:.1f} | {s['bytes_float16'] / 1024:.1f} |"
        )
    lines += ["", "| mesh | n | k | refine steps | F-score@0.01 | Chamfer-L2 | fit s |"]
    lines.append("|---|---|---|---|---|---|---|")
    for r in rows:
        if "num_grids" in r:
            lines.append(
                f"| {r['mesh']} | {r['num_grids']} | {r['grid_size']} | {r['refine_steps']} | "
                f"{r['fscore']:.4f} | {r['chamfer']:.3e} | {r['fit_seconds']:.1f} |"
            )
        else:
            lines.append(
                f"| {r['mesh']} | exact SDF | | | {r['fscore']:.4f} | {r['chamfer']:.3e} | |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mosaic_fit")
    add_split_arguments(parser)
    parser.add_argument("--settings", type=parse_setting, nargs="+", default=[(1024, 7)])
    parser.add_argument("--refine-steps", type=int, nargs="+", default=[0])
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--band", type=float, default=DEFAULT_BAND)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--samples", type=int, default=100_000, help="surface points per mesh")
    parser.add_argument("--ceiling", action="store_true", help="also mesh the exact SDF")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    files = split_datamodule(args).files["test"]
    rows = []
    for path in files:
        source, _ = normalise_mesh(load_mesh(path))
        if args.ceiling:
            fscore, chamfer = ceiling_scores(source, args.resolution, args.samples)
            rows.append({"mesh": path.name, "fscore": fscore, "chamfer": chamfer})
        for setting in args.settings:
            for steps in args.refine_steps:
                row = {"mesh": path.name, **fit_one(source, args, setting, steps)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = summarise(rows)
    options = {**vars(args), "settings": [f"{n}x{k}" for n, k in args.settings]}
    result = {"options": options, "files": [str(p) for p in files], "summary": summary}
    result["rows"] = rows
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mosaic_fit.json").write_text(json.dumps(result, indent=2))
    table = markdown(summary, rows)
    (out / "mosaic_fit.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
