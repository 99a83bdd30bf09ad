"""Triangle meshes in: loading through trimesh, watertightness, normalisation into [-1, 1]^3.

A shape enters the modality as a closed, consistently oriented triangle mesh, because its
signed distance (negative inside) is only defined for a surface that bounds a volume.
:func:`load_mesh` reads any format trimesh reads (OBJ, OFF, PLY, STL, GLB ...), refuses what is
not a mesh (empty or unreadable files, no triangles, non-finite vertices) and repairs what
trimesh can (duplicate vertices, small holes, flipped faces); a mesh that stays open or
non-manifold is refused with a :class:`MeshError` naming the file. A mesh of several closed
parts is fused into their union (:func:`fuse_parts`): parts that overlap (convex
decompositions, limbs modelled as separate bodies) leave faces buried inside the solid, and
the nearest triangle of a point inside one part may be such a face, which gives its signed
distance the wrong sign.
:func:`normalise_mesh` moves the bounding box's centre to the origin and scales the longest
half-extent to ``margin`` (0.9 by default), so every shape fits [-0.9, 0.9]^3 and keeps room
for the sample points around its surface inside [-1, 1]^3.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

__all__ = [
    "MeshError",
    "Normalisation",
    "fuse_parts",
    "load_mesh",
    "make_watertight",
    "normalise_mesh",
]


#: What trimesh's loaders raise on a file that is not the format its suffix says.
UNREADABLE = (
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    NotImplementedError,
    OSError,
    struct.error,
)


class MeshError(ValueError):
    """A file that is not a usable closed mesh; the message names the file and the fault."""


@dataclass(frozen=True)
class Normalisation:
    """The map applied by :func:`normalise_mesh`: ``x_normalised = (x - centre) * scale``."""

    centre: tuple[float, float, float]
    scale: float


def load_mesh(path: str | Path, repair: bool = True) -> trimesh.Trimesh:
    """Read ``path`` as one triangle mesh (a multi-part scene is concatenated) and check it.

    With ``repair``, the mesh is repaired by :func:`make_watertight` and its parts fused by
    :func:`fuse_parts`. Raises :class:`MeshError` for a missing, empty or unreadable file, a
    file without triangles, non-finite vertex coordinates, and (when ``repair``) a mesh that
    is still open or non-manifold, or has a part that encloses no volume.
    """
    path = Path(path)
    if not path.is_file():
        raise MeshError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MeshError(f"{path}: empty file")
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except UNREADABLE as error:
        raise MeshError(f"{path}: not a readable mesh ({type(error).__name__}: {error})") from None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise MeshError(f"{path}: no triangles (not a mesh, or an empty one)")
    if not np.isfinite(loaded.vertices).all():
        bad = int((~np.isfinite(loaded.vertices).all(axis=1)).sum())
        raise MeshError(f"{path}: {bad} vertices have non-finite (NaN or infinite) coordinates")
    mesh = trimesh.Trimesh(loaded.vertices, loaded.faces, process=True)
    if repair:
        mesh = fuse_parts(make_watertight(mesh, str(path)), str(path))
    return mesh


def fuse_parts(mesh: trimesh.Trimesh, name: str = "mesh") -> trimesh.Trimesh:
    """The union of the closed parts of ``mesh`` (module docstring), or ``mesh`` if one part.

    The union is manifold3d's exact boolean (through trimesh), so no face is left buried in
    the solid and every point's nearest triangle lies on its boundary. A part that encloses no
    volume (a flat closed shell, whose inside is undefined) raises :class:`MeshError` naming
    ``name``.
    """
    parts = mesh.split(only_watertight=False)
    if len(parts) < 2:
        return mesh
    with np.errstate(invalid="ignore", divide="ignore"):  # a flat part's centre of mass is 0 / 0
        flat = sum(not part.is_volume for part in parts)
    if flat:
        raise MeshError(f"{name}: {flat} of its {len(parts)} parts enclose no volume")
    try:
        import manifold3d  # noqa: F401  (trimesh's boolean engine)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            'manifold3d is not installed: `pip install manifold3d` (or `pip install -e ".[shape]"`)'
            " fuses the parts of a mesh"
        ) from None
    return trimesh.boolean.union(parts, engine="manifold")


def make_watertight(mesh: trimesh.Trimesh, name: str = "mesh") -> trimesh.Trimesh:
    """Repair what trimesh can and check the result bounds a volume.

    Merges duplicate vertices, fills holes trimesh can close, makes the winding consistent
    with outward normals; then requires a watertight, consistently wound mesh with positive
    volume, else raises :class:`MeshError` naming ``name`` and its open edges (used by one face)
    and non-manifold edges (used by more than two).
    """
    mesh = mesh.copy()
    mesh.merge_vertices()
    mesh.update_faces(mesh.nondegenerate_faces())
    with np.errstate(invalid="ignore", divide="ignore"):  # a zero volume is refused below
        if not mesh.is_watertight:
            trimesh.repair.fill_holes(mesh)
        trimesh.repair.fix_normals(mesh)
    if not (mesh.is_watertight and mesh.is_winding_consistent):
        _, uses = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
        raise MeshError(
            f"{name}: not watertight after repair (open edges: {int((uses == 1).sum())}, "
            f"non-manifold edges: {int((uses > 2).sum())}, winding "
            f"{'consistent' if mesh.is_winding_consistent else 'inconsistent'}): an SDF needs a "
            "closed surface"
        )
    if not mesh.volume > 0:  # also NaN, for a closed surface around nothing
        raise MeshError(f"{name}: encloses no volume (volume {mesh.volume:.3g})")
    return mesh


def normalise_mesh(
    mesh: trimesh.Trimesh, margin: float = 0.9
) -> tuple[trimesh.Trimesh, Normalisation]:
    """Centre the bounding box at the origin and scale its longest half-extent to ``margin``.

    Returns the moved copy and the :class:`Normalisation` that maps the input onto it.
    """
    if not 0 < margin <= 1:
        raise ValueError(f"`margin` must be in (0, 1], got {margin}")
    low, high = mesh.bounds
    centre = (low + high) / 2
    half_extent = float((high - low).max() / 2)
    if half_extent <= 0:
        raise MeshError("mesh has zero extent: all vertices coincide")
    scale = margin / half_extent
    moved = mesh.copy()
    moved.apply_translation(-centre)
    moved.apply_scale(scale)
    return moved, Normalisation(tuple(float(c) for c in centre), scale)
