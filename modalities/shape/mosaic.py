"""Mosaic-SDF (Yariv et al. 2023): a shape's SDF as a set of small grids spread over its surface.

A mosaic ``X = {(p_i, s_i, V_i)}, i = 1..n`` holds grid centres ``p_i`` in R^3, scales ``s_i > 0``
and ``k x k x k`` grids ``V_i`` of SDF values at the points ``p_i + s_i G``, where
``G = {-1, -1 + 2/(k-1), ..., 1}^3``. Grid ``i`` covers the cube ``p_i + s_i [-1, 1]^3``. The SDF
it stands for is the blend

    F_X(x) = sum_i w_i(x) I_i(x) / sum_j w_j(x),      w_i(x) = max(0, 1 - |x - p_i|_inf / s_i),

with ``I_i(x)`` the trilinear interpolation of ``V_i`` at the local coordinates
``u = (x - p_i) / s_i`` in [-1, 1]^3. The infinity norm makes the support of ``w_i`` exactly
grid ``i``'s cube, so every grid is read only where it is defined and no part of it is wasted
(a Euclidean ball would leave the cube's corners unused). The weights, divided by their sum,
are a partition of unity, so ``F_X`` is a convex combination of the local interpolants: it is
exact wherever every covering grid is exact (a linear SDF), and its error is at most the worst
covering grid's trilinear error, ``(h^2 / 8) (|f_xx| + |f_yy| + |f_zz|)`` for grid spacing
``h = 2 s / (k - 1)``.

Points no grid covers (``sum_j w_j(x) = 0``: the deep inside and the far outside) have no
value: :meth:`MosaicSDF.evaluate` returns NaN there. Giving them one number would be wrong
on one side of the surface (a constant of one sign puts a spurious surface at the band's edge
on the other side). :func:`modalities.shape.meshing.extract_mesh` instead gives each of them the
sign the known values prove most strongly there (the deep inside negative, the far outside
positive), so the mesh is closed, and :meth:`MosaicSDF.sdf_grid` fills a
marching-cubes grid exactly by splatting each grid onto the vertices of its own cube.

Fitting (:func:`fit_mosaic`, the paper's Algorithm 1):

1. sample points on the surface and take ``n`` of them by farthest-point sampling as centres;
2. one scale for all grids, ``s = r + band``, with ``r = max_x min_i |x - p_i|_inf`` the
   covering radius of the centres over the surface samples: every point within ``band`` of
   the surface is then within ``s`` of a centre (triangle inequality), so the whole band is
   covered. ``band`` must exceed the diagonal of the cells marching cubes will use, so that
   every cell the surface crosses has all eight corners covered. The default is the diagonal
   of a 128-cell grid over [-1, 1]^3; smaller ``s`` means finer grids (``h = 2 s / (k - 1)``);
3. ``V_i = f(p_i + s_i G)`` from the exact SDF ``f``;
4. optionally, ``refine_steps`` steps of Adam on ``(p_i, log s_i, V_i)`` minimising, over
   points near the surface, ``mean |F_X - f| + lambda mean |grad F_X - grad f|_1``.

For a flow model the mosaic is a set of ``n`` rows ``(p_i, s_i, vec(V_i))`` of width
``4 + k^3`` (:meth:`MosaicSDF.to_set`), normalised per channel by :class:`MosaicNormaliser`.
:func:`cached_mosaic` fits a mesh file's mosaic once (:class:`MosaicSettings`) and caches it.

A shape moved by ``x -> s Q x``, with ``s > 0`` and ``Q`` a signed permutation (a quarter turn
about an axis, a mirror), has the SDF ``f'(x) = s f(Q^T x / s)``, and its mosaic is exactly
(:meth:`MosaicSDF.transformed`)

    p'_i = s Q p_i,   s'_i = s s_i,   V'_i[a] = s V_i[b]  where  G[b] = Q^T G[a]:

``Q^T`` maps the grid points ``G`` onto themselves (it permutes and flips the grid's axes),
``|Q u|_inf = |u|_inf`` keeps the weights, and trilinear interpolation commutes with axis
permutations and flips, so ``F_X'(x) = s F_X(Q^T x / s)`` at every ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from torch import Tensor

from mmflow.files import read_json, write_json

from .meshing import extract_mesh, grid_coordinates
from .sampling import farthest_point_sampling
from .sdf import PIPELINE_VERSION, cached_mesh_entry, signed_distance

__all__ = [
    "DEFAULT_BAND",
    "MosaicNormaliser",
    "MosaicSDF",
    "MosaicSettings",
    "cached_mosaic",
    "covering_radius",
    "evaluate_mosaic",
    "fit_mosaic",
    "fit_mosaic_to_sdf",
    "local_grid",
    "mesh_sdf_with_gradient",
    "refine_mosaic",
    "storage_bytes",
]

#: The diagonal of one cell of a 128-cell grid over [-1, 1]^3: the band the fit covers.
DEFAULT_BAND = 2 / 128 * math.sqrt(3)

SDFWithGradient = Callable[[Tensor], tuple[Tensor, Tensor]]


def local_grid(grid_size: int) -> Tensor:
    """The ``grid_size^3`` points ``G`` of [-1, 1]^3, ``[k, k, k, 3]`` (x, y, z order)."""
    if grid_size < 2:
        raise ValueError(f"`grid_size` must be >= 2, got {grid_size}")
    axis = torch.linspace(-1.0, 1.0, grid_size)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)


def storage_bytes(num_grids: int, grid_size: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one shape's mosaic: ``n (3 + 1 + k^3)`` numbers of ``dtype``."""
    return num_grids * (4 + grid_size**3) * torch.finfo(dtype).bits // 8


@dataclass
class MosaicSDF:
    """One shape's mosaic (module docstring): ``centres`` ``[n, 3]``, ``scales`` ``[n]`` and
    ``grids`` ``[n, k, k, k]`` (``grids[i, a, b, c]`` is the value at
    ``centres[i] + scales[i] * G[a, b, c]``)."""

    centres: Tensor
    scales: Tensor
    grids: Tensor

    def __post_init__(self) -> None:
        n = len(self.centres)
        if self.centres.shape != (n, 3) or n == 0:
            raise ValueError(
                f"`centres` must be [n, 3] with n >= 1, got {list(self.centres.shape)}"
            )
        if self.scales.shape != (n,):
            raise ValueError(f"`scales` must be [{n}], got {list(self.scales.shape)}")
        k = self.grids.shape[-1] if self.grids.ndim == 4 else 0
        if self.grids.shape != (n, k, k, k) or k < 2:
            raise ValueError(
                f"`grids` must be [{n}, k, k, k] with k >= 2, got {list(self.grids.shape)}"
            )
        for name in ("centres", "scales", "grids"):
            if not torch.isfinite(getattr(self, name)).all():
                raise ValueError(f"the mosaic's `{name}` hold non-finite values")
        if not (self.scales > 0).all():
            raise ValueError(f"scales must be > 0, got a minimum of {self.scales.min().item():.3g}")

    @property
    def num_grids(self) -> int:
        return len(self.centres)

    @property
    def grid_size(self) -> int:
        return self.grids.shape[-1]

    def to_set(self) -> Tensor:
        """The mosaic as rows ``(p_i, s_i, vec(V_i))``, ``[n, 4 + k^3]``."""
        rows = [self.centres, self.scales[:, None], self.grids.reshape(self.num_grids, -1)]
        return torch.cat(rows, dim=1)

    @classmethod
    def from_set(cls, rows: Tensor, grid_size: int) -> MosaicSDF:
        """The mosaic of :meth:`to_set`'s rows ``[n, 4 + k^3]`` with ``k = grid_size``."""
        width = 4 + grid_size**3
        if rows.ndim != 2 or rows.shape[1] != width:
            raise ValueError(
                f"a mosaic set with grid_size {grid_size} must be [n, {width}] (3 + 1 + "
                f"{grid_size}^3), got {list(rows.shape)}"
            )
        return cls(
            rows[:, :3], rows[:, 3], rows[:, 4:].reshape(-1, grid_size, grid_size, grid_size)
        )

    def to(self, dtype: torch.dtype) -> MosaicSDF:
        """The mosaic with every tensor cast to ``dtype`` (float16 halves the storage)."""
        return MosaicSDF(self.centres.to(dtype), self.scales.to(dtype), self.grids.to(dtype))

    def transformed(self, matrix: Tensor, scale: float) -> MosaicSDF:
        """The exact mosaic of the shape moved by ``x -> scale * matrix @ x`` (module
        docstring), for a signed permutation ``matrix`` ``[3, 3]`` (quarter turns, mirrors)
        and ``scale > 0``: ``F'(x) = scale * F(matrix^T x / scale)``."""
        k = self.grid_size
        matrix = matrix.to(self.centres)
        if not _is_signed_permutation(matrix):
            raise ValueError(
                "only signed permutation matrices (quarter turns, mirrors) map a mosaic's grid "
                f"points onto themselves, got {matrix.tolist()}"
            )
        if not scale > 0:
            raise ValueError(f"`scale` must be > 0, got {scale}")
        source = local_grid(k).reshape(-1, 3).to(matrix) @ matrix  # rows G[a] Q = (Q^T G[a])^T
        index = ((source + 1) * ((k - 1) / 2)).round().long()
        flat = (index[:, 0] * k + index[:, 1]) * k + index[:, 2]
        grids = self.grids.reshape(self.num_grids, -1)[:, flat].reshape(self.grids.shape)
        return MosaicSDF(scale * self.centres @ matrix.T, scale * self.scales, scale * grids)

    def evaluate(self, points: Tensor, chunk: int = 2048) -> Tensor:
        """``F_X`` at ``points`` ``[P, 3]``, ``[P]``; NaN where no grid covers a point.

        Points are taken ``chunk`` at a time against all ``n`` grids (``O(P n)`` work, no
        loop over grids); the interpolation runs only on the (point, grid) pairs with
        ``w_i > 0``. Differentiable in the points and the mosaic.
        """
        return evaluate_mosaic(self.centres, self.scales, self.grids, points, chunk)

    __call__ = evaluate

    @torch.no_grad()
    def sdf_grid(self, resolution: int, bound: float = 1.0, grids_per_chunk: int = 64) -> Tensor:
        """``F_X`` on the vertices of the ``resolution``-cell grid over ``[-bound, bound]^3``,
        ``[resolution + 1] * 3``, NaN where uncovered: the values of
        ``dense_sdf_grid(mosaic.evaluate, ...)``, computed by visiting for each grid only the
        vertices inside its own cube (``O(n (2 s / h)^3)`` work instead of ``O(n R^3)``).
        A chunk holds at most ``grids_per_chunk`` grids and ``2^22`` (grid, vertex) pairs, so
        large cubes (a generated scale near 1) bound the memory, not only the time."""
        axis = grid_coordinates(resolution, bound).to(self.centres)
        spacing = 2 * bound / resolution
        reach = self.scales[:, None]
        low = torch.ceil((self.centres - reach + bound) / spacing).long().clamp(0, resolution)
        high = torch.floor((self.centres + reach + bound) / spacing).long().clamp(-1, resolution)
        span = int((high - low).max().clamp(min=0)) + 1
        steps = torch.arange(span)
        offsets = torch.stack(torch.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
        side = resolution + 1
        numerator, denominator = axis.new_zeros(side**3), axis.new_zeros(side**3)
        grids_per_chunk = max(1, min(grids_per_chunk, 2**22 // len(offsets)))
        for start in range(0, self.num_grids, grids_per_chunk):
            grid_range = torch.arange(start, min(start + grids_per_chunk, self.num_grids))
            vertex = low[grid_range, None, :] + offsets
            inside = (vertex <= high[grid_range, None, :]).all(dim=-1)
            grid_index = grid_range[:, None].expand_as(inside)[inside]
            vertex = vertex[inside]
            weighted, weight = _pair_terms(
                self.centres, self.scales, self.grids, axis[vertex], grid_index
            )
            flat = (vertex[:, 0] * side + vertex[:, 1]) * side + vertex[:, 2]
            numerator.index_add_(0, flat, weighted)
            denominator.index_add_(0, flat, weight)
        return _divide_covered(numerator, denominator).reshape((side,) * 3)

    def mesh(self, resolution: int = 256, bound: float = 1.0) -> trimesh.Trimesh:
        """The zero level set of ``F_X`` by marching cubes on :meth:`sdf_grid`."""
        return extract_mesh(self.sdf_grid(resolution, bound), bound)


def _is_signed_permutation(matrix: Tensor) -> bool:
    """Whether ``matrix`` is ``[3, 3]`` with one entry of +-1 in each row and column and zeros
    elsewhere."""
    if matrix.shape != (3, 3):
        return False
    magnitude = matrix.abs()
    entries_fit = ((magnitude == 0) | (magnitude == 1)).all()
    return bool(entries_fit and (magnitude.sum(0) == 1).all() and (magnitude.sum(1) == 1).all())


def _pair_terms(
    centres: Tensor, scales: Tensor, grids: Tensor, points: Tensor, grid_index: Tensor
) -> tuple[Tensor, Tensor]:
    """``w_i(x) I_i(x)`` and ``w_i(x)`` for pairs of ``points`` ``[m, 3]`` and grids
    ``grid_index`` ``[m]``."""
    local = (points - centres[grid_index]) / scales[grid_index, None]
    weight = (1 - local.abs().amax(dim=-1)).clamp(min=0)
    return weight * _trilinear(grids, grid_index, local), weight


def _divide_covered(numerator: Tensor, denominator: Tensor) -> Tensor:
    covered = denominator > 0
    return torch.where(covered, numerator / torch.where(covered, denominator, 1), torch.nan)


def evaluate_mosaic(
    centres: Tensor, scales: Tensor, grids: Tensor, points: Tensor, chunk: int = 2048
) -> Tensor:
    """``F_X`` of the mosaic ``(centres, scales, grids)`` at ``points`` (see
    :meth:`MosaicSDF.evaluate`; unchecked, for optimisation)."""
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [P, 3], got {list(points.shape)}")
    values = []
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]
        distance = (block[:, None, :] - centres).abs().amax(dim=-1)
        point_index, grid_index = (distance < scales).nonzero(as_tuple=True)
        weighted, weight = _pair_terms(centres, scales, grids, block[point_index], grid_index)
        numerator = block.new_zeros(len(block)).index_add(0, point_index, weighted)
        denominator = block.new_zeros(len(block)).index_add(0, point_index, weight)
        values.append(_divide_covered(numerator, denominator))
    return torch.cat(values) if values else points.new_zeros(0)


def _trilinear(grids: Tensor, grid_index: Tensor, local: Tensor) -> Tensor:
    """Trilinear interpolation of ``grids[grid_index]`` at ``local`` in [-1, 1]^3, ``[m]``."""
    k = grids.shape[-1]
    position = (local.clamp(-1, 1) + 1) * ((k - 1) / 2)
    corner = position.detach().floor().clamp(0, k - 2).long()
    fraction = position - corner
    flat = grids.reshape(-1)
    base = grid_index * k**3
    value = local.new_zeros(len(local))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                index = base + ((corner[:, 0] + dx) * k + corner[:, 1] + dy) * k + corner[:, 2] + dz
                weight = (
                    (fraction[:, 0] if dx else 1 - fraction[:, 0])
                    * (fraction[:, 1] if dy else 1 - fraction[:, 1])
                    * (fraction[:, 2] if dz else 1 - fraction[:, 2])
                )
                value = value + weight * flat[index]
    return value


def covering_radius(points: Tensor, centres: Tensor, chunk: int = 4096) -> float:
    """``max_x min_i |x - p_i|_inf`` over ``points`` ``[N, 3]`` and ``centres`` ``[n, 3]``."""
    nearest = [
        (points[start : start + chunk, None, :] - centres).abs().amax(-1).amin(-1)
        for start in range(0, len(points), chunk)
    ]
    return float(torch.cat(nearest).max())


def fit_mosaic_to_sdf(
    sdf: Callable[[Tensor], Tensor],
    surface_points: Tensor,
    num_grids: int = 1024,
    grid_size: int = 7,
    band: float = DEFAULT_BAND,
) -> MosaicSDF:
    """Steps 1 to 3 of the fit (module docstring) for any SDF function ``sdf`` (points
    ``[N, 3]`` to ``[N]``) sampled at ``surface_points`` ``[N, 3]`` on its zero level set."""
    if surface_points.ndim != 2 or surface_points.shape[1] != 3:
        raise ValueError(f"surface points must be [N, 3], got {list(surface_points.shape)}")
    if band <= 0:
        raise ValueError(f"`band` must be > 0, got {band}")
    if not 1 <= num_grids <= len(surface_points):
        raise ValueError(
            f"`num_grids` must be in [1, {len(surface_points)}] (the surface samples), got "
            f"{num_grids}"
        )
    grid = local_grid(grid_size).to(surface_points)
    centres = surface_points[farthest_point_sampling(surface_points, num_grids)]
    scale = covering_radius(surface_points, centres) + band
    scales = torch.full((num_grids,), scale, dtype=surface_points.dtype)
    grid_points = centres[:, None, None, None, :] + scale * grid
    values = sdf(grid_points.reshape(-1, 3)).to(surface_points.dtype)
    return MosaicSDF(centres, scales, values.reshape(num_grids, *grid.shape[:3]))


def mesh_sdf_with_gradient(mesh: trimesh.Trimesh) -> SDFWithGradient:
    """The exact SDF of ``mesh`` and its gradient, ``(x - c) / f(x)`` for the closest surface
    point ``c`` (the surface normal where ``f`` is nearly 0)."""
    import igl

    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    faces = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    sign = igl.SignedDistanceType.SIGNED_DISTANCE_TYPE_PSEUDONORMAL

    def sdf_and_gradient(points: Tensor) -> tuple[Tensor, Tensor]:
        query = np.ascontiguousarray(points.detach().cpu().numpy(), dtype=np.float64)
        distance, _, closest, normal = igl.signed_distance(query, vertices, faces, sign_type=sign)
        far = np.abs(distance)[:, None] > 1e-6
        safe = np.where(far[:, 0], distance, 1.0)[:, None]
        gradient = np.where(far, (query - closest) / safe, normal)
        return (
            torch.as_tensor(distance, dtype=points.dtype),
            torch.as_tensor(gradient, dtype=points.dtype),
        )

    return sdf_and_gradient


def refine_mosaic(
    mosaic: MosaicSDF,
    points: Tensor,
    target: Tensor,
    target_gradient: Tensor,
    steps: int,
    learning_rate: float = 1e-3,
    gradient_weight: float = 0.1,
    batch_size: int = 4096,
    seed: int = 0,
) -> MosaicSDF:
    """Step 4 of the fit: Adam on centres, log-scales and grids, minimising
    ``mean |F_X - f| + gradient_weight * mean |grad F_X - grad f|_1`` over random batches of
    ``points`` ``[N, 3]`` with SDF ``target`` ``[N]`` and gradient ``target_gradient``
    ``[N, 3]``. Points a step leaves uncovered drop out of that step's loss."""
    centres = mosaic.centres.clone().requires_grad_()
    log_scales = mosaic.scales.log().requires_grad_()
    grids = mosaic.grids.clone().requires_grad_()
    optimiser = torch.optim.Adam([centres, log_scales, grids], lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(len(points), (min(batch_size, len(points)),), generator=generator)
        query = points[batch].clone().requires_grad_(gradient_weight > 0)
        values = evaluate_mosaic(centres, log_scales.exp(), grids, query)
        covered = ~values.isnan()
        loss = (values[covered] - target[batch][covered]).abs().mean()
        if gradient_weight > 0:
            (gradient,) = torch.autograd.grad(values[covered].sum(), query, create_graph=True)
            difference = gradient[covered] - target_gradient[batch][covered]
            loss = loss + gradient_weight * difference.abs().sum(-1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return MosaicSDF(centres.detach(), log_scales.detach().exp(), grids.detach())


def fit_mosaic(
    mesh: trimesh.Trimesh,
    num_grids: int = 1024,
    grid_size: int = 7,
    band: float = DEFAULT_BAND,
    surface_samples: int = 50_000,
    refine_steps: int = 0,
    learning_rate: float = 1e-3,
    gradient_weight: float = 0.1,
    seed: int = 0,
) -> MosaicSDF:
    """The mosaic of a closed, normalised ``mesh`` (module docstring, Algorithm 1).

    ``surface_samples`` area-uniform surface points (seeded) give the centres and the covering
    radius; ``refine_steps > 0`` refines on as many near-surface points, half offset by
    ``N(0, (band / 4)^2)`` and half by ``N(0, band^2)`` along each axis, with their exact SDF
    and gradient (libigl).
    """
    surface, _ = trimesh.sample.sample_surface(mesh, surface_samples, seed=seed)
    surface = torch.as_tensor(surface, dtype=torch.float32)

    def sdf(points: Tensor) -> Tensor:
        return torch.as_tensor(signed_distance(mesh, points), dtype=torch.float32)

    mosaic = fit_mosaic_to_sdf(sdf, surface, num_grids, grid_size, band)
    if refine_steps <= 0:
        return mosaic
    generator = torch.Generator().manual_seed(seed)
    sigma = torch.where(torch.arange(len(surface)) % 2 == 0, band / 4, band)[:, None]
    points = surface + sigma * torch.randn(surface.shape, generator=generator)
    target, target_gradient = mesh_sdf_with_gradient(mesh)(points)
    return refine_mosaic(
        mosaic,
        points,
        target,
        target_gradient,
        refine_steps,
        learning_rate,
        gradient_weight,
        seed=seed,
    )


#: Raised when fitting changes what a mosaic cache entry holds (the mesh loading's own
#: version, :data:`modalities.shape.sdf.PIPELINE_VERSION`, is part of the key too).
MOSAIC_PIPELINE_VERSION = 1


@dataclass(frozen=True)
class MosaicSettings:
    """How :func:`cached_mosaic` fits a mesh's mosaic (the arguments of :func:`fit_mosaic`) and
    the normalisation it is fitted in (``margin``: the longest half-extent, as
    :class:`modalities.shape.SDFSettings`).

    The defaults, 64 grids of 5^3 with 200 refinement steps, are the smallest setting measured
    to reach a mean F-score@0.01 of at least 0.9 on the held-out CGAL meshes (0.938;
    docs/shape.md); a fit took 8 s a mesh on average (5 to 17 s) on one thread.
    """

    num_grids: int = 64
    grid_size: int = 5
    refine_steps: int = 200
    band: float = DEFAULT_BAND
    surface_samples: int = 50_000
    learning_rate: float = 1e-3
    gradient_weight: float = 0.1
    seed: int = 0
    margin: float = 0.9

    def __post_init__(self) -> None:
        if self.grid_size < 2 or self.num_grids < 1 or self.refine_steps < 0:
            raise ValueError(
                "mosaic settings need grid_size >= 2, num_grids >= 1 and refine_steps >= 0, got "
                f"{self.grid_size}, {self.num_grids} and {self.refine_steps}"
            )
        if self.surface_samples < self.num_grids:
            raise ValueError(
                f"`surface_samples` ({self.surface_samples}) must be at least `num_grids` "
                f"({self.num_grids}): the centres are picked among them"
            )
        if self.band <= 0 or not 0 < self.margin <= 1:
            raise ValueError(
                f"mosaic settings need band > 0 and 0 < margin <= 1, got {self.band}, {self.margin}"
            )

    @property
    def width(self) -> int:
        """Channels of one row of the mosaic's set, ``4 + k^3``."""
        return 4 + self.grid_size**3

    def fit(self, mesh: trimesh.Trimesh) -> MosaicSDF:
        """:func:`fit_mosaic` of a normalised ``mesh`` with these settings."""
        return fit_mosaic(
            mesh,
            num_grids=self.num_grids,
            grid_size=self.grid_size,
            band=self.band,
            surface_samples=self.surface_samples,
            refine_steps=self.refine_steps,
            learning_rate=self.learning_rate,
            gradient_weight=self.gradient_weight,
            seed=self.seed,
        )


def cached_mosaic(
    path: str | Path,
    settings: MosaicSettings = MosaicSettings(),
    cache_dir: str | Path | None = None,
) -> MosaicSDF:
    """The mosaic of the mesh file ``path`` after :func:`modalities.shape.load_mesh` and
    normalisation, fitted once and cached as ``<cache_dir>/shape/mosaic/<key>.safetensors``
    (tensor ``mosaic``: :meth:`MosaicSDF.to_set`) with a JSON manifest
    (:func:`modalities.shape.sdf.cached_mesh_entry`: the key hashes the file's bytes, the
    settings and the pipeline versions). An entry of the wrong shape, with non-finite values
    or scales <= 0 is refused with its file named."""
    tensors, entry = cached_mesh_entry(
        path,
        "mosaic",
        settings,
        {"mesh": PIPELINE_VERSION, "mosaic": MOSAIC_PIPELINE_VERSION},
        settings.margin,
        lambda mesh: {"mosaic": settings.fit(mesh).to_set()},
        cache_dir,
    )
    rows = tensors.get("mosaic")
    if rows is None:
        raise ValueError(f"{entry}: no `mosaic` tensor (found {sorted(tensors)})")
    if tuple(rows.shape) != (settings.num_grids, settings.width):
        raise ValueError(
            f"{entry}: the mosaic is {list(rows.shape)}, the settings make "
            f"[{settings.num_grids}, {settings.width}]"
        )
    try:
        return MosaicSDF.from_set(rows, settings.grid_size)
    except ValueError as error:
        raise ValueError(f"{entry}: {error}") from None


class MosaicNormaliser:
    """Per-channel standardisation of mosaic sets ``[..., n, 4 + k^3]`` for a flow model:
    ``(x - mean) / std`` with the mean and standard deviation of each of the ``4 + k^3``
    channels over all grids of all training shapes (a channel that never varies gets
    ``std = 1``, so it maps to 0 and back exactly)."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"mean and std must be [D] each, got {mean.shape}, {std.shape}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("mean must be finite and std finite and > 0")
        self.mean, self.std = mean, std

    @classmethod
    def fit(cls, sets: Tensor | list[Tensor], min_std: float = 1e-8) -> MosaicNormaliser:
        """The statistics of training sets ``[B, n, D]`` (or a list of ``[n_b, D]``)."""
        rows = torch.cat(list(sets)) if isinstance(sets, list) else sets.reshape(-1, sets.shape[-1])
        if len(rows) == 0 or not torch.isfinite(rows).all():
            raise ValueError("the training sets must be non-empty and finite")
        rows = rows.double()
        std = rows.std(dim=0, correction=0)
        std = torch.where(std > min_std, std, torch.ones_like(std))
        return cls(rows.mean(dim=0).float(), std.float())

    def _check(self, rows: Tensor) -> None:
        if rows.shape[-1] != len(self.mean):
            raise ValueError(
                f"mosaic sets must have {len(self.mean)} channels, got {rows.shape[-1]}"
            )

    def normalise(self, rows: Tensor) -> Tensor:
        self._check(rows)
        return (rows - self.mean.to(rows)) / self.std.to(rows)

    def denormalise(self, rows: Tensor) -> Tensor:
        self._check(rows)
        return rows * self.std.to(rows) + self.mean.to(rows)

    def save(self, path: str | Path, info: dict[str, Any] | None = None) -> None:
        """Write the statistics as JSON (``mean``, ``std``: lists of floats), atomically, with
        ``info`` (where they come from) beside them."""
        stats = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        write_json(Path(path), {**(info or {}), **stats})

    @classmethod
    def load(cls, path: str | Path) -> MosaicNormaliser:
        """The statistics :meth:`save` wrote; a bad file raises an error naming it."""
        stats = read_json(Path(path), written_by="MosaicNormaliser.save")
        try:
            mean, std = (torch.tensor(stats[key], dtype=torch.float32) for key in ("mean", "std"))
            return cls(mean, std)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: not mosaic statistics ({error})") from None
