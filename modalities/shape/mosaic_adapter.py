"""The Mosaic-SDF flow's adapter: the flow transports standardised mosaic sets.

A shape is its Mosaic-SDF (Yariv et al. 2023; :mod:`modalities.shape.mosaic`), ``n`` rows
``(p_i, s_i, vec V_i)`` of width ``4 + k^3``, which :class:`modalities.shape.MeshFolder` serves
as ``batch["mosaic"]`` when given ``mosaic`` settings. The flow transports

    x1 = (mosaic - mean) / std        (per channel: :class:`MosaicNormaliser`),

with the statistics of the training mosaics, written beforehand by
``python -m modalities.shape.mosaic_stats`` (the adapter is built before the data, and the
statistics of the training split only must not change with the split being evaluated). A set
has no order, so the network gives its tokens no positions (``mmflow.nn.SetTokens``).

A generated set becomes a mesh by denormalising it, rebuilding the mosaic and running marching
cubes on its exact grid, NaN where no grid covers a vertex (:meth:`MosaicSDF.mesh`); the
uncovered vertices take the sign the covered values prove most strongly there
(:func:`modalities.shape.meshing.extract_mesh`), so the mesh is closed. Two things a data
mosaic never has can come out of the flow:

- a scale ``s_i <= 0``. It is clamped to :data:`MIN_SCALE` (1e-6). The weight
  ``w_i(x) = max(0, 1 - |x - p_i|_inf / s_i)`` of a grid whose scale tends to 0 from above
  vanishes everywhere but at its centre, so the clamp makes that grid a grid of no extent,
  which reads nothing and covers (almost surely) no vertex of the meshing grid: it drops out.
  Mirroring it (``|s_i|``) would instead give weight to values the flow placed for a cube it
  did not mean.
- no surface: every covered value of one sign. Such a set meshes to ``None``, which the
  evaluators count as a missing shape.

Everything else (the class condition, decoding to points, the evaluators, the media) is
:class:`modalities.shape.adapter.ShapeAdapter`'s.
"""

from __future__ import annotations

import torch
import trimesh
from torch import Tensor

from mmflow.modality import Batch, Condition

from .adapter import ShapeAdapter
from .mosaic import MosaicNormaliser, MosaicSDF
from .render import ShapeImages

__all__ = ["MIN_SCALE", "MosaicAdapter"]

#: The floor generated scales are clamped to: a grid of (almost) no extent (module docstring).
MIN_SCALE = 1e-6


class MosaicAdapter(ShapeAdapter):
    """The flow transports standardised Mosaic-SDF sets (module docstring).

    Args:
        statistics_path: the JSON of ``python -m modalities.shape.mosaic_stats`` (the
            training mosaics' per-channel mean and standard deviation).
        grid_size: ``k``, the side of each grid (the data's ``mosaic.grid_size``).
        num_grids: ``n``, grids per shape (the data's ``mosaic.num_grids``).
        num_classes, images, num_points, up: as :class:`ShapeAdapter`.
        mesh_resolution: cells over [-1, 1]^3 of the grid generated mosaics are meshed on.
            The fit covers a band of a 128-cell diagonal around the surface
            (:data:`modalities.shape.mosaic.DEFAULT_BAND`), so before refinement every cell
            the surface crosses at 128 cells or more has its eight corners covered; on coarser
            grids the fill decides more of them. On cached CGAL mosaics 128 cells also scored
            higher than
            64 (docs/shape.md), at 1 to 2 s a shape.
    """

    def __init__(
        self,
        statistics_path: str,
        grid_size: int = 5,
        num_grids: int = 64,
        num_classes: int | None = None,
        images: ShapeImages | None = None,
        mesh_resolution: int = 128,
        num_points: int = 2048,
        up: str = "y",
    ) -> None:
        normaliser = MosaicNormaliser.load(statistics_path)
        width = 4 + grid_size**3
        if len(normaliser.mean) != width:
            raise ValueError(
                f"{statistics_path}: statistics of {len(normaliser.mean)} channels, but "
                f"grid_size {grid_size} makes rows of {width} (4 + {grid_size}^3): the "
                "statistics were computed with other mosaic settings"
            )
        super().__init__((num_grids, width), num_classes, images, num_points, up)
        self.normaliser, self.grid_size = normaliser, grid_size
        self.mesh_resolution = mesh_resolution

    def encode(self, batch: Batch) -> tuple[Tensor, Condition]:
        """``((batch["mosaic"] - mean) / std, condition)`` (:meth:`ShapeAdapter.condition`)."""
        if "mosaic" not in batch:
            raise KeyError(
                "MosaicAdapter: the batch has no `mosaic` (give the MeshFolder `mosaic` settings)"
            )
        mosaic = batch["mosaic"]
        if tuple(mosaic.shape[1:]) != self.set_shape:
            raise ValueError(
                f"MosaicAdapter: batch['mosaic'] is {list(mosaic.shape)}, but the adapter "
                f"expects [B, {self.set_shape[0]}, {self.set_shape[1]}] (num_grids, 4 + "
                f"grid_size^3): the data's mosaic settings and the adapter's must agree"
            )
        return self.normaliser.normalise(mosaic.float()), self.condition(batch)

    def mosaic(self, shape_set: Tensor) -> MosaicSDF:
        """The mosaic of one generated standardised set ``[n, 4 + k^3]``: denormalised, with
        scales clamped to :data:`MIN_SCALE` (module docstring)."""
        rows = self.normaliser.denormalise(shape_set.detach().float().cpu())
        rows[:, 3] = rows[:, 3].clamp(min=MIN_SCALE)
        return MosaicSDF.from_set(rows, self.grid_size)

    @torch.no_grad()
    def mesh(self, shape_set: Tensor) -> trimesh.Trimesh | None:
        """The mesh of one generated set ``[n, 4 + k^3]``, or ``None`` if it has no surface
        (a set with non-finite values is refused: :meth:`MosaicSDF.from_set`)."""
        mosaic = self.mosaic(shape_set)
        try:
            return mosaic.mesh(self.mesh_resolution)
        except ValueError:
            return None
