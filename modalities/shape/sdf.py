"""Signed distances of a closed mesh, sampled once per mesh and cached with a manifest.

The SDF is negative inside and positive outside. It is computed by libigl's
``signed_distance`` with the pseudonormal sign (the exact distance to the nearest triangle, its
sign from the angle-weighted normal there, correct on the closed, consistently wound meshes
:func:`modalities.shape.mesh.load_mesh` guarantees). libigl was chosen by measuring the
candidates against closed-form SDFs (``python -m benchmarks.sdf_backends``; the figures and the
reasons are in docs/shape.md).

One mesh gives (:func:`sample_sdf`, every count seeded):

- ``surface_points``, ``surface_normals``: area-uniform points on the surface and the normals
  of their faces (for the VAE's encoder and its normal loss);
- ``near_points``, ``near_sdf``: surface points moved by ``N(0, sigma^2 I)``, half with each of
  ``near_scales`` (the SDF's detail lives close to the surface);
- ``uniform_points``, ``uniform_sdf``: uniform in [-1, 1]^3 (the far field and the sign).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from torch import Tensor

from mmflow.files import default_cache_dir, file_sha256, load_weights, save_weights, write_json

from .mesh import load_mesh, normalise_mesh

__all__ = [
    "SDFSamples",
    "SDFSettings",
    "cached_mesh_entry",
    "cached_sdf_samples",
    "sample_sdf",
    "signed_distance",
    "unsigned_distance",
]


def _igl_arrays(
    mesh: trimesh.Trimesh, points: np.ndarray | Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    query = np.ascontiguousarray(np.asarray(points, dtype=np.float64))
    if query.ndim != 2 or query.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got {list(query.shape)}")
    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    faces = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    return query, vertices, faces


def signed_distance(mesh: trimesh.Trimesh, points: np.ndarray | Tensor) -> np.ndarray:
    """Signed distance (negative inside) from each of ``points`` ``[N, 3]`` to ``mesh``."""
    import igl

    sign = igl.SignedDistanceType.SIGNED_DISTANCE_TYPE_PSEUDONORMAL
    return igl.signed_distance(*_igl_arrays(mesh, points), sign_type=sign)[0]


def unsigned_distance(
    mesh: trimesh.Trimesh, points: np.ndarray | Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each of ``points`` ``[N, 3]`` to the surface of ``mesh`` (closed or not),
    and the index of the face where the nearest surface point lies."""
    import igl

    squared, faces, _ = igl.point_mesh_squared_distance(*_igl_arrays(mesh, points))
    return np.sqrt(squared), np.asarray(faces, dtype=np.int64)


@dataclass(frozen=True)
class SDFSettings:
    """How many points of each kind :func:`sample_sdf` draws, and where.

    ``near_scales``: the standard deviations of the offsets of the near-surface points (half
    the points each); ``margin``: the normalisation's longest half-extent
    (:func:`modalities.shape.mesh.normalise_mesh`).
    """

    num_surface: int = 16384
    num_near: int = 16384
    num_uniform: int = 16384
    near_scales: tuple[float, float] = (0.005, 0.05)
    margin: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_surface", "num_near", "num_uniform"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if len(self.near_scales) != 2 or min(self.near_scales) <= 0:
            raise ValueError(f"`near_scales` must be two positive numbers, got {self.near_scales}")


@dataclass
class SDFSamples:
    """Points and signed distances of one normalised mesh (float32 tensors, see module doc)."""

    surface_points: Tensor
    surface_normals: Tensor
    near_points: Tensor
    near_sdf: Tensor
    uniform_points: Tensor
    uniform_sdf: Tensor

    def to_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, tensors: dict[str, Tensor], source: str | Path) -> SDFSamples:
        """The samples stored in ``tensors``; a missing or non-finite entry names ``source``."""
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in tensors]
        if missing:
            raise ValueError(f"{source}: SDF samples lack {missing}")
        bad = [name for name in names if not torch.isfinite(tensors[name]).all()]
        if bad:
            raise ValueError(f"{source}: non-finite values in {bad}")
        return cls(**{name: tensors[name] for name in names})


def sample_sdf(mesh: trimesh.Trimesh, settings: SDFSettings = SDFSettings()) -> SDFSamples:
    """Draw the points of ``settings`` around ``mesh`` (already normalised) and their SDF."""
    rng = np.random.default_rng(settings.seed)
    surface, face_index = trimesh.sample.sample_surface(
        mesh, settings.num_surface, seed=settings.seed
    )
    normals = mesh.face_normals[face_index]
    anchors, _ = trimesh.sample.sample_surface(mesh, settings.num_near, seed=settings.seed + 1)
    scales = np.where(np.arange(settings.num_near) < settings.num_near // 2, *settings.near_scales)
    near = anchors + rng.normal(size=anchors.shape) * scales[:, None]
    uniform = rng.uniform(-1.0, 1.0, size=(settings.num_uniform, 3))
    distances = signed_distance(mesh, np.concatenate([near, uniform]))

    def tensor(array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.asarray(array, dtype=np.float32))

    return SDFSamples(
        surface_points=tensor(surface),
        surface_normals=tensor(normals),
        near_points=tensor(near),
        near_sdf=tensor(distances[: settings.num_near]),
        uniform_points=tensor(uniform),
        uniform_sdf=tensor(distances[settings.num_near :]),
    )


#: Raised when loading or sampling changes what a cache entry holds, so old entries are
#: recomputed (2: the parts of a mesh are fused before sampling).
PIPELINE_VERSION = 2


def _cache_key(mesh_sha256: str, settings: Any, pipeline: Any) -> str:
    text = json.dumps(
        {"mesh": mesh_sha256, "settings": asdict(settings), "pipeline": pipeline},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_mesh_entry(
    path: str | Path,
    kind: str,
    settings: Any,
    pipeline: Any,
    margin: float,
    compute: Callable[[trimesh.Trimesh], dict[str, Tensor]],
    cache_dir: str | Path | None = None,
) -> tuple[dict[str, Tensor], Path]:
    """``compute(mesh)`` of the mesh file ``path`` after :func:`load_mesh` and normalisation to
    the longest half-extent ``margin``, computed once and cached; returns the tensors and the
    entry's file, which the caller checks (and names in its errors).

    The entry is ``<cache_dir>/shape/<kind>/<key>.safetensors`` with its manifest
    ``<key>.json`` (source file, its SHA-256, the settings, the pipeline, the normalisation,
    the seconds it took). The key hashes the file's bytes, the settings (a frozen dataclass)
    and ``pipeline`` (the versions of the code that made the entry), so an edited mesh,
    changed settings or changed code computes anew.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mesh file")
    folder = Path(cache_dir or default_cache_dir()) / "shape" / kind
    mesh_sha256 = file_sha256(path)
    entry = folder / f"{_cache_key(mesh_sha256, settings, pipeline)}.safetensors"
    if entry.is_file():
        return load_weights(entry), entry
    start = time.perf_counter()
    mesh, normalisation = normalise_mesh(load_mesh(path), margin)
    tensors = compute(mesh)
    save_weights(entry, tensors)
    manifest = {
        "source": str(path.resolve()),
        "sha256": mesh_sha256,
        "settings": asdict(settings),
        "pipeline": pipeline,
        "normalisation": asdict(normalisation),
        "faces": len(mesh.faces),
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(entry.with_suffix(".json"), manifest)
    return tensors, entry


def cached_sdf_samples(
    path: str | Path, settings: SDFSettings = SDFSettings(), cache_dir: str | Path | None = None
) -> SDFSamples:
    """:func:`sample_sdf` of the mesh file ``path`` after :func:`load_mesh` and normalisation,
    computed once and cached under ``<cache_dir>/shape/sdf`` (:func:`cached_mesh_entry`).
    A cached entry with missing or non-finite values is refused with its file named."""
    tensors, entry = cached_mesh_entry(
        path,
        "sdf",
        settings,
        PIPELINE_VERSION,
        settings.margin,
        lambda mesh: sample_sdf(mesh, settings).to_dict(),
        cache_dir,
    )
    return SDFSamples.from_dict(tensors, entry)
