"""Hierarchical against dense marching cubes: time, SDF evaluations and Chamfer distance.

Run from the repository root (after ``make cgal-meshes``)::

    python -m benchmarks.meshing --mesh .cache/data/cgal-meshes/armadillo.off \
        --resolution 256 --levels 3 --out bench/meshing

The SDF is the mesh's own (libigl, :func:`modalities.shape.sdf.signed_distance`) after
normalisation, or with ``--vae FOLDER`` a trained shape VAE's decoder of the mesh's encoding
(its first ``--num-surface`` cached surface samples): a learned decoder is only close to a
distance function, which the coarse-to-fine rule assumes. Both extractions are compared with
the source surface. Reported: seconds
of each extraction (grid and marching cubes), the points the SDF was evaluated at, the
speed-up, and Chamfer-L2 of each result against the source mesh (``--samples`` surface samples each,
:class:`modalities.shape.evaluators.ChamferDistance`) and of the two results against each other.
Writes ``meshing.json`` and ``meshing.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import trimesh

from modalities.shape import (
    ShapeVAE,
    cached_sdf_samples,
    load_mesh,
    normalise_mesh,
    signed_distance,
)
from modalities.shape.evaluators import ChamferDistance
from modalities.shape.meshing import dense_sdf_grid, extract_mesh, hierarchical_sdf_grid


def chamfer(first: trimesh.Trimesh, second: trimesh.Trimesh, count: int = 20000) -> float:
    """Chamfer-L2 between ``count`` surface samples of each mesh (seeded)."""
    metric = ChamferDistance()
    metric.update(
        torch.as_tensor(first.sample(count, seed=0), dtype=torch.float32)[None],
        torch.as_tensor(second.sample(count, seed=1), dtype=torch.float32)[None],
    )
    return metric.compute().item()


def mesh_sdf(mesh: trimesh.Trimesh) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exact SDF of ``mesh`` as points ``[N, 3]`` -> ``[N]``."""
    return lambda points: torch.from_numpy(signed_distance(mesh, points.numpy()))


def vae_sdf(
    folder: str, mesh_file: str, num_surface: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The decoder of a :class:`ShapeVAE` (``folder``) for the encoding of ``mesh_file``."""
    vae = ShapeVAE.from_pretrained(folder)
    samples = cached_sdf_samples(mesh_file)
    surface = torch.cat(
        [samples.surface_points[:num_surface], samples.surface_normals[:num_surface]], dim=1
    )
    with torch.no_grad():
        return vae.sdf_function(vae.encode(surface[None])[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.meshing")
    parser.add_argument("--mesh", default=".cache/data/cgal-meshes/armadillo.off")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20000, help="surface samples for Chamfer")
    parser.add_argument("--vae", default=None, help="a ShapeVAE folder: mesh its decoder")
    parser.add_argument("--num-surface", type=int, default=2048, help="VAE encoder input points")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    source, _ = normalise_mesh(load_mesh(args.mesh))
    sdf = mesh_sdf(source) if args.vae is None else vae_sdf(args.vae, args.mesh, args.num_surface)

    start = time.perf_counter()
    dense_grid = dense_sdf_grid(sdf, args.resolution)
    dense = extract_mesh(dense_grid)
    dense_seconds = time.perf_counter() - start
    start = time.perf_counter()
    grid, evaluated = hierarchical_sdf_grid(sdf, args.resolution, levels=args.levels)
    hierarchical = extract_mesh(grid)
    hierarchical_seconds = time.perf_counter() - start
    result = {
        "mesh": args.mesh,
        "sdf": "libigl" if args.vae is None else f"ShapeVAE {args.vae}",
        "resolution": args.resolution,
        "levels": args.levels,
        "dense_seconds": dense_seconds,
        "hierarchical_seconds": hierarchical_seconds,
        "speed_up": dense_seconds / hierarchical_seconds,
        "dense_evaluations": dense_grid.numel(),
        "hierarchical_evaluations": evaluated,
        "same_signs": bool(torch.equal(grid.sign(), dense_grid.sign())),
        "chamfer_dense_to_source": chamfer(dense, source, args.samples),
        "chamfer_hierarchical_to_source": chamfer(hierarchical, source, args.samples),
        "chamfer_hierarchical_to_dense": chamfer(hierarchical, dense, args.samples),
    }
    result["chamfer_ratio"] = (
        result["chamfer_hierarchical_to_source"] / result["chamfer_dense_to_source"]
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meshing.json").write_text(json.dumps(result, indent=2))
    table = "\n".join(
        ["| quantity | value |", "|---|---|"]
        + [
            f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
            for key, value in result.items()
        ]
    )
    (out / "meshing.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
