"""From a signed distance function to a triangle mesh: dense and hierarchical marching cubes.

An SDF function maps points ``[N, 3]`` to values ``[N]`` (negative inside). Both extractors
evaluate it on the vertices of a regular grid of ``resolution`` cells per side over
``[-bound, bound]^3`` and run scikit-image's marching cubes at level 0:

- :func:`dense_sdf_grid` evaluates every one of the ``(resolution + 1)^3`` vertices;
- :func:`hierarchical_sdf_grid` (the coarse-to-fine extraction of TripoSG and FlashVDM)
  evaluates a coarse grid, then doubles the resolution ``levels`` times, evaluating only the
  vertices near the surface. At each level the known values are interpolated trilinearly to
  the finer vertices; a vertex is evaluated exactly where the interpolated ``|f|`` is below
  ``margin`` coarse cell diagonals, and keeps the interpolated value elsewhere. Far from the
  surface only the sign matters to marching cubes, and a 1-Lipschitz SDF cannot change sign
  within a cell whose values all exceed the cell's diagonal, so the two grids give the same
  surface when ``f`` is (close to) a distance function.

An SDF defined only near its surface (Mosaic-SDF covers a band around it) returns NaN
elsewhere; the extractors accept that with ``partial=True`` (infinite values are always
refused). NaN marks a vertex as unknown. Marching cubes needs a value at every corner of a
cell, and leaving out the cells with an unknown corner cuts the surface open wherever the zero
level set reaches an unknown region: a false fragment that trilinear interpolation makes far
from the surface and the band's edge cuts, or a surface a generated band does not cover.
:func:`extract_mesh` therefore completes the grid before marching cubes:

- each unknown vertex ``u`` takes the sign of the known vertex ``k`` that proves a sign at
  ``u`` most strongly. For a distance function ``|f(u) - f(k)| <= |u - k|``, so a known value
  ``v_k`` proves its sign within ``|v_k|`` of ``k``, and the evidence it gives at ``u`` is
  ``|v_k| - |u - k|``; ``u`` takes ``sign v_k`` for ``k = argmax_k (|v_k| - |u - k|)``.
  Across a band around a closed surface the inner edge is negative and the outer positive,
  so the deep inside is filled as inside and the far outside as outside. Where a band leaves
  a gap (a generated mosaic whose grids miss part of its surface), the surface closes across
  the gap between the known values of either sign. A false fragment of small negative values
  that the band's edge cuts is capped near the edge, because the larger positive values
  around it prove more. (One sign for each connected unknown region fails at gaps, where
  inside and outside are one region and the shape becomes a hollow shell; the nearest known
  sign fails at fragments, which it extends outwards to the box.) The maximum is taken over
  the levels ``|v_k| >= j h``, ``j = 0 .. 8``, each by scipy's exact Euclidean distance
  transform to the vertices of that level, so the evidence is exact up to ``h``;
- the fill's magnitude is the grid spacing ``h``. On an edge from a known value ``a`` to the
  fill of the other sign, marching cubes (linear along the edge) puts the crossing
  ``h |a| / (|a| + h)`` from the known vertex: about ``|a|`` when ``|a| << h``, where a
  distance function whose gradient follows the edge is 0, and nearer the known vertex than the
  edge's middle while ``|a| < h``. A larger magnitude would pull these crossings onto the known
  vertices, a smaller one onto the unknown ones. Two fills of opposite signs cross midway;
- one layer of ``+h`` vertices is added around the grid (everything beyond the box is
  outside), so a surface that reaches the box's faces is closed by a cap less than ``h``
  beyond them (the open meshes of the latent flow were all of this kind).

On a grid known everywhere, marching cubes gives a closed surface, so the mesh is watertight.
The fill changes no crossing between two known vertices; it only closes the surface at the
borders of the unknown regions (a false fragment becomes a small closed part of the mesh; it
is kept, not removed). The hierarchical grid interpolates only from known values
(``sum w v / sum w`` over the known corners) and evaluates exactly every vertex whose
interpolation stencil mixes known and unknown corners, besides the near ones; a vertex whose
stencil is all unknown stays NaN. It gives the dense grid's surface when every cell the
surface crosses at the coarsest level has a known corner, which holds when the function is
defined within half a coarse cell diagonal of the surface.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy import ndimage
from skimage.measure import marching_cubes
from torch import Tensor

__all__ = [
    "SDFFunction",
    "dense_sdf_grid",
    "extract_mesh",
    "grid_coordinates",
    "hierarchical_sdf_grid",
    "mesh_from_sdf",
]

SDFFunction = Callable[[Tensor], Tensor]


def grid_coordinates(resolution: int, bound: float = 1.0) -> Tensor:
    """The ``resolution + 1`` vertex coordinates of one axis, from ``-bound`` to ``bound``."""
    if resolution < 1:
        raise ValueError(f"`resolution` must be >= 1, got {resolution}")
    return torch.linspace(-bound, bound, resolution + 1)


def _evaluate(sdf: SDFFunction, points: Tensor, batch_size: int, partial: bool = False) -> Tensor:
    values = [
        sdf(points[start : start + batch_size]) for start in range(0, len(points), batch_size)
    ]
    result = torch.cat(values).float().reshape(-1) if values else points.new_zeros(0)
    if len(result) != len(points):
        raise ValueError(f"the SDF returned {len(result)} values for {len(points)} points")
    if result.isinf().any():
        raise ValueError(
            f"the SDF returned non-finite values ({int(result.isinf().sum())} infinite)"
        )
    if not partial and result.isnan().any():
        raise ValueError(
            f"the SDF returned non-finite values (NaN at {int(result.isnan().sum())} points); an "
            "SDF defined only near its surface must be meshed with partial=True"
        )
    return result


def _vertices(resolution: int, bound: float) -> Tensor:
    axis = grid_coordinates(resolution, bound)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)


@torch.no_grad()
def dense_sdf_grid(
    sdf: SDFFunction,
    resolution: int,
    bound: float = 1.0,
    batch_size: int = 65536,
    partial: bool = False,
) -> Tensor:
    """``f`` at every vertex of the grid, ``[resolution + 1] * 3`` (x, y, z order); with
    ``partial``, NaN where ``f`` is undefined (module docstring)."""
    points = _vertices(resolution, bound).reshape(-1, 3)
    return _evaluate(sdf, points, batch_size, partial).reshape((resolution + 1,) * 3)


def _upsample(grid: Tensor, cells: int) -> tuple[Tensor, Tensor]:
    """Trilinear interpolation of ``grid`` to ``cells`` cells from its known (non-NaN) values,
    and the mask of the vertices whose stencil mixes known and unknown corners."""

    def interpolate(values: Tensor) -> Tensor:
        return F.interpolate(
            values[None, None], size=(cells + 1,) * 3, mode="trilinear", align_corners=True
        )[0, 0]

    known = ~grid.isnan()
    if known.all():
        return interpolate(grid), torch.zeros((cells + 1,) * 3, dtype=torch.bool)
    share = interpolate(known.float())
    filled = interpolate(torch.where(known, grid, 0.0))
    value = torch.where(share > 0, filled / share.clamp(min=1e-12), torch.nan)
    return value, (share > 0) & (share < 1 - 1e-6)


@torch.no_grad()
def hierarchical_sdf_grid(
    sdf: SDFFunction,
    resolution: int,
    levels: int = 2,
    bound: float = 1.0,
    margin: float = 1.0,
    batch_size: int = 65536,
    partial: bool = False,
) -> tuple[Tensor, int]:
    """The grid of :func:`dense_sdf_grid` computed coarse to fine (module docstring).

    ``resolution`` must be divisible by ``2**levels``. Returns the grid and the number of
    points ``f`` was evaluated at.
    """
    if levels < 0 or resolution % (2**levels):
        raise ValueError(f"`resolution` {resolution} must be divisible by 2**levels = {2**levels}")
    if margin <= 0:
        raise ValueError(f"`margin` must be > 0, got {margin}")
    cells = resolution // 2**levels
    grid = dense_sdf_grid(sdf, cells, bound, batch_size, partial)
    evaluated = grid.numel()
    for _ in range(levels):
        coarse_diagonal = 2 * bound / cells * 3**0.5
        cells *= 2
        grid, mixed = _upsample(grid, cells)
        near = (grid.abs() < margin * coarse_diagonal) | mixed
        points = grid_coordinates(cells, bound)[near.nonzero()]
        grid[near] = _evaluate(sdf, points, batch_size, partial)
        evaluated += len(points)
    return grid, evaluated


#: The sign evidence of known values is resolved in steps of one grid spacing up to this many.
EVIDENCE_LEVELS = 8


def _fill_signs(values: np.ndarray, unknown: np.ndarray, spacing: float) -> np.ndarray:
    """``+1`` or ``-1`` at every unknown vertex, the sign of the known vertex with the most
    evidence ``|v_k| - |u - k|`` (module docstring), and 0 at known vertices; ``spacing`` is the
    grid's ``h``.

    For each level ``j`` the nearest known vertex with ``|v_k| >= j h`` gives the evidence
    ``j h - |u - k|`` at ``u`` (a lower bound within ``h`` of its own), and ``u`` takes the
    sign of the level with the most."""
    magnitude = np.abs(np.where(unknown, 0.0, values))
    best = np.full(values.shape, -np.inf)
    signs = np.ones(values.shape)
    for level in range(EVIDENCE_LEVELS + 1):
        sources = ~unknown & (magnitude >= level * spacing)
        if not sources.any():
            break
        distance, nearest = ndimage.distance_transform_edt(~sources, return_indices=True)
        evidence = level - distance
        stronger = evidence > best
        best = np.where(stronger, evidence, best)
        signs = np.where(stronger, np.where(values[tuple(nearest)] < 0, -1.0, 1.0), signs)
    return np.where(unknown, signs, 0.0)


def _complete(values: np.ndarray, spacing: float) -> np.ndarray:
    """``values`` with every NaN vertex set to ``+-spacing`` by :func:`_fill_signs`, padded with
    one layer of ``+spacing`` (outside) on every side (module docstring)."""
    unknown = np.isnan(values)
    if unknown.any():
        fill = (spacing * _fill_signs(values, unknown, spacing)).astype(values.dtype)
        values = np.where(unknown, fill, values)
    return np.pad(values, 1, constant_values=spacing)


def _uncollapsed(faces: np.ndarray) -> np.ndarray:
    """The faces with three distinct corners once coincident vertices are merged. A face that
    is thin but not collapsed (a crossing within float precision of a grid vertex) is kept:
    removing it by its area would open a hole."""
    first, second, third = faces.T
    return (first != second) & (second != third) & (first != third)


def extract_mesh(grid: Tensor, bound: float = 1.0) -> trimesh.Trimesh:
    """Marching cubes at level 0 of a vertex grid over ``[-bound, bound]^3``, faces wound so
    normals point outwards (towards positive values). NaN vertices are unknown: each takes the
    sign the known values prove most strongly there, and the box is surrounded by outside, so
    the surface is closed (module docstring).

    Where the SDF is exactly 0 at a grid vertex, marching cubes emits triangles whose corners
    coincide; once duplicate vertices are merged those faces have a repeated corner and edges
    used four times, so they are removed, which leaves a closed surface closed."""
    values = grid.detach().cpu().numpy().astype(np.float32)
    if np.isnan(values).all():
        raise ValueError("the SDF grid holds only NaN: no vertex is covered")
    low, high = np.nanmin(values), np.nanmax(values)
    if not (low < 0 < high):
        raise ValueError(
            f"the SDF does not change sign on the grid (min {low:.3g}, max {high:.3g}): no "
            f"surface inside [-{bound}, {bound}]^3"
        )
    spacing = 2 * bound / (values.shape[0] - 1)
    vertices, faces, _, _ = marching_cubes(
        _complete(values, spacing),
        level=0.0,
        spacing=(spacing,) * 3,
        gradient_direction="descent",
    )
    mesh = trimesh.Trimesh(vertices - (bound + spacing), faces, process=True)
    mesh.update_faces(_uncollapsed(mesh.faces))
    mesh.remove_unreferenced_vertices()
    return mesh


def mesh_from_sdf(
    sdf: SDFFunction,
    resolution: int = 256,
    hierarchical: bool = True,
    levels: int = 2,
    bound: float = 1.0,
    partial: bool = False,
) -> trimesh.Trimesh:
    """The zero level set of ``sdf`` as a mesh, by the hierarchical or the dense extractor;
    ``partial`` for an SDF that is NaN where undefined (module docstring)."""
    if hierarchical:
        grid, _ = hierarchical_sdf_grid(sdf, resolution, levels, bound, partial=partial)
    else:
        grid = dense_sdf_grid(sdf, resolution, bound, partial=partial)
    return extract_mesh(grid, bound)
