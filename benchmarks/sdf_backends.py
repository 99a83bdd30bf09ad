"""Which library computes mesh signed distances for the shape modality: speed and correctness.

Run from the repository root (libigl is a dependency; install the other candidates first)::

    pip install point-cloud-utils
    python -m benchmarks.sdf_backends --out bench/sdf_backends

Each candidate computes the signed distance (negative inside) of the meshes of a sphere, a
box and a torus (:class:`modalities.shape.Primitive`, whose closed-form SDFs are the truth) at
points near the surface (surface samples plus Gaussian offsets of scale 0.02) and uniform in
[-1, 1]^3.

Reported per backend and shape: seconds per 100,000 points (median of three runs, one
thread; one run when that takes over 10 s), the largest absolute error against the closed
form (the mesh's own deviation from the smooth surface is below 2e-4 for the sphere and
torus, zero for the box) and the share of points with the wrong sign among those farther than
1e-3 from the surface. Writes ``sdf_backends.json`` and ``sdf_backends.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import trimesh

from modalities.shape import Primitive

SignedDistance = Callable[[np.ndarray, trimesh.Trimesh], np.ndarray]


def _trimesh(points: np.ndarray, mesh: trimesh.Trimesh) -> np.ndarray:
    return -trimesh.proximity.signed_distance(mesh, points)  # trimesh: positive inside


def _igl(points: np.ndarray, mesh: trimesh.Trimesh, sign: str) -> np.ndarray:
    import igl

    faces = np.asarray(mesh.faces, dtype=np.int64)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    sign_type = getattr(igl.SignedDistanceType, f"SIGNED_DISTANCE_TYPE_{sign}")
    return igl.signed_distance(points, vertices, faces, sign_type=sign_type)[0]


def _igl_pseudonormal(points: np.ndarray, mesh: trimesh.Trimesh) -> np.ndarray:
    return _igl(points, mesh, "PSEUDONORMAL")


def _igl_fast_winding_number(points: np.ndarray, mesh: trimesh.Trimesh) -> np.ndarray:
    return _igl(points, mesh, "FAST_WINDING_NUMBER")


def _point_cloud_utils(points: np.ndarray, mesh: trimesh.Trimesh) -> np.ndarray:
    import point_cloud_utils as pcu

    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    return pcu.signed_distance_to_mesh(points, vertices, faces)[0]


def _open3d(points: np.ndarray, mesh: trimesh.Trimesh) -> np.ndarray:
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(np.asarray(mesh.vertices, dtype=np.float32)),
        o3d.core.Tensor(np.asarray(mesh.faces, dtype=np.uint32)),
    )
    query = o3d.core.Tensor(points.astype(np.float32))
    return scene.compute_signed_distance(query).numpy().astype(np.float64)


BACKENDS: dict[str, tuple[str, SignedDistance]] = {
    "trimesh + rtree": ("rtree", _trimesh),
    "libigl (pseudonormal)": ("igl", _igl_pseudonormal),
    "libigl (fast winding number)": ("igl", _igl_fast_winding_number),
    "point-cloud-utils": ("point_cloud_utils", _point_cloud_utils),
    "open3d RaycastingScene": ("open3d", _open3d),
}


#: The closed-form shapes, meshed finely enough that their own error is below 2e-4.
SHAPES: dict[str, Primitive] = {
    "sphere": Primitive("sphere", radius=0.7, resolution=128),
    "box": Primitive("box", extents=(1.2, 0.8, 1.0)),
    "torus": Primitive("torus", radius=0.6, minor_radius=0.25, resolution=128),
}


def exact_sdf(shape: Primitive) -> Callable[[np.ndarray], np.ndarray]:
    """``shape``'s closed-form SDF on NumPy points (float64)."""
    return lambda points: shape.sdf(torch.from_numpy(points)).numpy()


def query_points(mesh: trimesh.Trimesh, count: int, seed: int) -> np.ndarray:
    """Half near the surface (surface samples + N(0, 0.02^2)), half uniform in [-1, 1]^3."""
    rng = np.random.default_rng(seed)
    near, _ = trimesh.sample.sample_surface(mesh, count // 2, seed=seed)
    near = near + rng.normal(scale=0.02, size=near.shape)
    uniform = rng.uniform(-1, 1, size=(count - count // 2, 3))
    return np.concatenate([near, uniform]).astype(np.float64)


def measure(
    backend: SignedDistance, mesh: trimesh.Trimesh, exact: Callable, points: np.ndarray
) -> dict[str, float]:
    """Seconds per 100k points (median of 3, or one run when it takes over 10 s), max |error|
    and the wrong-sign share."""
    times, values = [], None
    while len(times) < 3 and sum(times) < 10:
        start = time.perf_counter()
        values = backend(points, mesh)
        times.append(time.perf_counter() - start)
    truth = exact(points)
    far = np.abs(truth) > 1e-3
    return {
        "seconds_per_100k": statistics.median(times) * 1e5 / len(points),
        "max_abs_error": float(np.abs(values - truth).max()),
        "wrong_sign_share": float((np.sign(values[far]) != np.sign(truth[far])).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sdf_backends")
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    results = []
    for name, (module, backend) in BACKENDS.items():
        if importlib.util.find_spec(module) is None:
            print(f"{name}: not installed ({module}), skipped")
            continue
        for shape, primitive in SHAPES.items():
            mesh, exact = primitive.mesh(), exact_sdf(primitive)
            points = query_points(mesh, args.points, args.seed)
            row = {"backend": name, "shape": shape, "faces": len(mesh.faces)}
            row.update(measure(backend, mesh, exact, points))
            print(json.dumps(row))
            results.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sdf_backends.json").write_text(json.dumps(results, indent=2))
    lines = [
        "| backend | shape | faces | s / 100k points | max abs error | wrong sign |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['backend']} | {r['shape']} | {r['faces']} | {r['seconds_per_100k']:.3f} | "
        f"{r['max_abs_error']:.2e} | {r['wrong_sign_share']:.2%} |"
        for r in results
    ]
    (out / "sdf_backends.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
