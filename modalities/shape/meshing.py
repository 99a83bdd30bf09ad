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


def _evaluate(sdf: SDFFunction, points: Tensor, batch_size: int) -> Tensor:
    values = [
        sdf(points[start : start + batch_size]) for start in range(0, len(points), batch_size)
    ]
    result = torch.cat(values).float().reshape(-1) if values else points.new_zeros(0)
    if len(result) != len(points):
        raise ValueError(f"the SDF returned {len(result)} values for {len(points)} points")
    if not torch.isfinite(result).all():
        raise ValueError("the SDF returned non-finite values")
    return result


def _vertices(resolution: int, bound: float) -> Tensor:
    axis = grid_coordinates(resolution, bound)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)


@torch.no_grad()
def dense_sdf_grid(
    sdf: SDFFunction, resolution: int, bound: float = 1.0, batch_size: int = 65536
) -> Tensor:
    """``f`` at every vertex of the grid, ``[resolution + 1] * 3`` (x, y, z order)."""
    points = _vertices(resolution, bound).reshape(-1, 3)
    return _evaluate(sdf, points, batch_size).reshape((resolution + 1,) * 3)


@torch.no_grad()
def hierarchical_sdf_grid(
    sdf: SDFFunction,
    resolution: int,
    levels: int = 2,
    bound: float = 1.0,
    margin: float = 1.0,
    batch_size: int = 65536,
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
    grid = dense_sdf_grid(sdf, cells, bound, batch_size)
    evaluated = grid.numel()
    for _ in range(levels):
        coarse_diagonal = 2 * bound / cells * 3**0.5
        cells *= 2
        grid = F.interpolate(
            grid[None, None], size=(cells + 1,) * 3, mode="trilinear", align_corners=True
        )[0, 0]
        near = grid.abs() < margin * coarse_diagonal
        points = grid_coordinates(cells, bound)[near.nonzero()]
        grid[near] = _evaluate(sdf, points, batch_size)
        evaluated += len(points)
    return grid, evaluated


def extract_mesh(grid: Tensor, bound: float = 1.0) -> trimesh.Trimesh:
    """Marching cubes at level 0 of a vertex grid over ``[-bound, bound]^3``, faces wound so
    normals point outwards (towards positive values)."""
    values = grid.detach().cpu().numpy().astype(np.float32)
    if not (values.min() < 0 < values.max()):
        raise ValueError(
            f"the SDF does not change sign on the grid (min {values.min():.3g}, max "
            f"{values.max():.3g}): no surface inside [-{bound}, {bound}]^3"
        )
    spacing = (2 * bound / (values.shape[0] - 1),) * 3
    vertices, faces, _, _ = marching_cubes(
        values, level=0.0, spacing=spacing, gradient_direction="descent"
    )
    return trimesh.Trimesh(vertices - bound, faces, process=True)


def mesh_from_sdf(
    sdf: SDFFunction,
    resolution: int = 256,
    hierarchical: bool = True,
    levels: int = 2,
    bound: float = 1.0,
) -> trimesh.Trimesh:
    """The zero level set of ``sdf`` as a mesh, by the hierarchical or the dense extractor."""
    if hierarchical:
        grid, _ = hierarchical_sdf_grid(sdf, resolution, levels, bound)
    else:
        grid = dense_sdf_grid(sdf, resolution, bound)
    return extract_mesh(grid, bound)
