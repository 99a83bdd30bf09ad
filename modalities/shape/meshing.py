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
refused). NaN marks a vertex as unknown, never as inside or outside: :func:`extract_mesh` runs
marching cubes only on the cells whose eight corners are known, so the band's edges, where
the values are far from 0, make no surface. The hierarchical grid interpolates only from known
values (``sum w v / sum w`` over the known corners) and evaluates exactly every vertex whose
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


def _known_cells(unknown: np.ndarray) -> np.ndarray:
    """The marching-cubes mask that keeps the cells whose eight corners are all known.

    scikit-image's ``mask`` gates the cell ``[i, i + 1] x [j, j + 1] x [l, l + 1]`` by its
    entry at the far corner ``(i + 1, j + 1, l + 1)`` (checked by the tests)."""
    known = ~unknown
    size = tuple(n - 1 for n in known.shape)
    cells = np.ones(size, dtype=bool)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                cells &= known[dx : dx + size[0], dy : dy + size[1], dz : dz + size[2]]
    mask = np.zeros_like(known)
    mask[1:, 1:, 1:] = cells
    return mask


def extract_mesh(grid: Tensor, bound: float = 1.0) -> trimesh.Trimesh:
    """Marching cubes at level 0 of a vertex grid over ``[-bound, bound]^3``, faces wound so
    normals point outwards (towards positive values). NaN vertices are unknown: cells with a
    NaN corner are left out (module docstring).

    Where the SDF is exactly 0 at a grid vertex, marching cubes emits triangles whose corners
    coincide; once duplicate vertices are merged those are zero-area faces whose edges are
    used four times, so they are removed, which leaves a closed surface closed."""
    values = grid.detach().cpu().numpy().astype(np.float32)
    unknown = np.isnan(values)
    if unknown.all():
        raise ValueError("the SDF grid holds only NaN: no vertex is covered")
    low, high = np.nanmin(values), np.nanmax(values)
    if not (low < 0 < high):
        raise ValueError(
            f"the SDF does not change sign on the grid (min {low:.3g}, max {high:.3g}): no "
            f"surface inside [-{bound}, {bound}]^3"
        )
    mask = _known_cells(unknown) if unknown.any() else None
    spacing = (2 * bound / (values.shape[0] - 1),) * 3
    try:
        vertices, faces, _, _ = marching_cubes(
            np.where(unknown, high, values),
            level=0.0,
            spacing=spacing,
            gradient_direction="descent",
            mask=mask,
        )
    except RuntimeError:
        raise ValueError("no cell with eight known corners changes sign: no surface") from None
    mesh = trimesh.Trimesh(vertices - bound, faces, process=True)
    mesh.update_faces(mesh.nondegenerate_faces())
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
