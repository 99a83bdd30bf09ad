"""Shapes out: mesh files and PNG previews a person can look at.

:func:`save_mesh` writes what trimesh writes (GLB, OBJ, PLY, STL, OFF) and refuses any other
suffix. :func:`render_views` draws a mesh from several directions, :func:`render_grid` many
meshes from one direction each, into one PNG with
matplotlib (no OpenGL): each face is shaded by Lambert's law, ``0.25 + 0.75 max(0, n . l)``,
for a light ``l`` from the upper front of the camera, and faces are painted back to front.
``up`` names the mesh's vertical axis (``"y"`` in most OBJ, OFF and ShapeNet files, ``"z"``
in trimesh's primitives).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from mmflow.files import atomic_write

__all__ = [
    "CAMERA_LIGHT",
    "MESH_FILE_SUFFIXES",
    "UP_AXES",
    "camera_rotation",
    "render_grid",
    "render_views",
    "save_mesh",
]

MESH_FILE_SUFFIXES: tuple[str, ...] = (".glb", ".obj", ".ply", ".stl", ".off")

#: Rotations taking each named vertical axis to z (y up: a quarter turn about x).
UP_AXES: dict[str, np.ndarray] = {
    "z": np.eye(3),
    "y": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
}


#: The direction towards the light in camera coordinates: from the upper left front.
CAMERA_LIGHT: np.ndarray = np.array([-0.3, -1.0, 0.6]) / np.linalg.norm([-0.3, -1.0, 0.6])


def save_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write ``mesh`` to ``path`` in the format its suffix names, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_FILE_SUFFIXES:
        raise ValueError(f"{path}: unknown mesh suffix; use one of {', '.join(MESH_FILE_SUFFIXES)}")
    return atomic_write(path, lambda tmp: mesh.export(tmp, file_type=suffix[1:]))


def camera_rotation(azimuth: float, elevation: float) -> np.ndarray:
    """World (z up) to camera (x right, y into the screen, z up): turn by ``azimuth`` about z,
    then tilt by ``elevation`` (degrees)."""
    a, e = np.radians(azimuth), np.radians(elevation)
    turn = np.array([[np.cos(a), np.sin(a), 0], [-np.sin(a), np.cos(a), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(e), np.sin(e)], [0, -np.sin(e), np.cos(e)]])
    return tilt @ turn


def _prepared(mesh: trimesh.Trimesh, up: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Triangles and face normals turned z-up, the bounding-box centre and half-extent."""
    if len(mesh.faces) == 0:
        raise ValueError("cannot render a mesh without faces")
    if up not in UP_AXES:
        raise ValueError(f"`up` must be one of {sorted(UP_AXES)}, got {up!r}")
    z_up = UP_AXES[up]
    triangles = mesh.triangles @ z_up.T
    normals = mesh.face_normals @ z_up.T
    corners = triangles.reshape(-1, 3)
    centre = corners.min(axis=0) / 2 + corners.max(axis=0) / 2
    radius = float(np.abs(corners - centre).max()) or 1.0
    return triangles, normals, centre, radius


def _draw(axis: Any, mesh: trimesh.Trimesh, azimuth: float, elevation: float, up: str) -> None:
    """Paint ``mesh`` seen from ``azimuth`` and ``elevation`` into a matplotlib axis."""
    from matplotlib.collections import PolyCollection

    triangles, normals, centre, radius = _prepared(mesh, up)
    rotation = camera_rotation(azimuth, elevation)
    camera = (triangles - centre) @ rotation.T  # x right, y into the screen, z up
    facing = (normals @ rotation.T)[:, 1] < 0
    shade = 0.25 + 0.75 * np.clip((normals @ rotation.T) @ CAMERA_LIGHT, 0, None)
    order = np.argsort(-camera[facing][:, :, 1].mean(axis=1))
    polygons = camera[facing][order][:, :, [0, 2]]
    colours = np.repeat(shade[facing][order][:, None], 3, axis=1) * [0.55, 0.7, 0.9]
    axis.add_collection(PolyCollection(polygons, facecolors=colours, edgecolors="none"))
    axis.set_xlim(-radius, radius)
    axis.set_ylim(-radius, radius)
    axis.set_aspect("equal")


def _figure(rows: int, columns: int, size: int) -> tuple[Any, np.ndarray]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        rows, columns, figsize=(columns * size / 100, rows * size / 100), squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    figure.subplots_adjust(0, 0, 1, 1, 0, 0)
    return figure, axes


def _save(figure: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)
    return path


def render_views(
    mesh: trimesh.Trimesh,
    path: str | Path,
    azimuths: Sequence[float] = (30, 120, 210, 300),
    elevation: float = 20,
    size: int = 256,
    up: str = "y",
) -> Path:
    """Draw ``mesh`` seen from each azimuth (degrees about the vertical axis) and ``elevation``
    side by side into the PNG ``path`` (``size`` pixels a view); returns the path."""
    _prepared(mesh, up)
    figure, axes = _figure(1, len(azimuths), size)
    for axis, azimuth in zip(axes[0], azimuths, strict=True):
        _draw(axis, mesh, azimuth, elevation, up)
    return _save(figure, path)


def render_grid(
    meshes: Sequence[trimesh.Trimesh | None],
    path: str | Path,
    columns: int | None = None,
    azimuth: float = 30,
    elevation: float = 20,
    size: int = 160,
    up: str = "y",
) -> Path:
    """Draw each mesh from one view into a grid PNG (``columns`` per row, a square-ish grid by
    default); a ``None`` (a shape without surface) leaves its cell empty but for a note."""
    if not meshes:
        raise ValueError("no meshes to render")
    columns = columns or max(1, round(len(meshes) ** 0.5))
    rows = -(-len(meshes) // columns)
    figure, axes = _figure(rows, columns, size)
    for axis, mesh in zip(axes.flat, meshes, strict=False):
        if mesh is None or len(mesh.faces) == 0:
            axis.text(0.5, 0.5, "no surface", ha="center", va="center", transform=axis.transAxes)
        else:
            _draw(axis, mesh, azimuth, elevation, up)
    return _save(figure, path)
