"""The shape modality's flow adapters: a set in, meshes out.

:class:`ShapeAdapter` holds what every shape representation shares: the conditions, decoding
to meshes, the evaluators and the media. A representation says how a batch becomes the set
the flow transports (:meth:`ShapeAdapter.encode`) and how one generated set becomes a mesh
(:meth:`ShapeAdapter.mesh`).

Two conditions, each optional, each dropped together for classifier-free guidance:

- the shape's class, ``class_labels`` (the null class ``num_classes``);
- an image of the shape the project renders from its surface samples
  (:func:`modalities.shape.render.render_surface` with the :class:`ShapeImages` settings),
  ``image`` ``[B, V, H, H]`` with ``image_mask`` ``[B]`` (``False``: no image). The network
  encodes it with an encoder that trains with the flow (:class:`mmflow.nn.EncodedContext`
  around a :class:`mmflow.nn.TimmEncoder`). Sampling without data
  (:meth:`ShapeAdapter.sample_conditions`) has no image, so its shapes are drawn
  image-unconditionally.

:class:`ShapeLatentAdapter` is TripoSG's second stage. The flow transports the latent set of a
frozen :class:`modalities.shape.ShapeVAE`, ``x1 = vae.encode(surface)`` ``[B, M, C]``, a set
without order (the MMDiT's ``SetTokens`` give it no positions). ``decode`` meshes each
generated set's decoder by marching cubes on a coarse-to-fine grid and samples points on the
result, the :class:`GeneratedShapes` the evaluators score:

- ``generation``: COV, MMD and 1-NNA with Chamfer-L2 against the batch's shapes
  (:class:`modalities.shape.GenerationMetrics`);
- ``watertight``: the share of generated meshes that are closed;
- ``image_chamfer`` (with images): Chamfer-L2 of each generated shape to the shape its image
  shows, how closely the flow follows the image.

A generated set whose SDF never changes sign has no surface: it stays ``None`` among the
meshes, is not watertight, and its points are all at the origin, far from every real shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import trimesh
from torch import Tensor, nn
from torchmetrics import Metric

from mmflow.modality import Batch, Condition, ModalityAdapter
from mmflow.pretrained import Frozen

from .evaluators import ChamferDistance, GenerationMetrics
from .media import render_grid, save_mesh
from .meshing import extract_mesh, hierarchical_sdf_grid
from .render import ShapeImages, render_surface
from .vae import ShapeVAE

__all__ = [
    "BatchGenerationMetrics",
    "GeneratedShapes",
    "ImageChamfer",
    "ShapeAdapter",
    "ShapeLatentAdapter",
    "WatertightShare",
]


@dataclass
class GeneratedShapes:
    """Decoded shapes: ``meshes`` (``None`` where no surface was found) and ``points``
    ``[B, N, 3]`` sampled on each mesh (at the origin for a missing one)."""

    meshes: list[trimesh.Trimesh | None]
    points: Tensor

    def __len__(self) -> int:
        return len(self.meshes)


def paired_points(shapes: GeneratedShapes, batch: Batch) -> tuple[Tensor, Tensor]:
    """Generated points and the batch's surface points (``batch["surface"]``), each side cut
    to as many points as the smaller one has."""
    count = min(shapes.points.shape[1], batch["surface"].shape[1])
    reference = batch["surface"][:, :count, :3]
    return shapes.points[:, :count].to(reference), reference


class BatchGenerationMetrics(GenerationMetrics):
    """:class:`GenerationMetrics` of generated shapes against the batch's own shapes, updated
    as ``update(shapes, batch)`` (:func:`paired_points`)."""

    def update(self, shapes: GeneratedShapes, batch: Batch) -> None:  # type: ignore[override]
        super().update(*paired_points(shapes, batch))


class ImageChamfer(ChamferDistance):
    """Chamfer-L2 of each generated shape to the batch's shape its condition image shows,
    updated as ``update(shapes, batch)`` (:func:`paired_points`)."""

    def update(self, shapes: GeneratedShapes, batch: Batch) -> None:  # type: ignore[override]
        super().update(*paired_points(shapes, batch))


class WatertightShare(Metric):
    """The share of generated meshes that are closed (a missing mesh is not)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("closed", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, shapes: GeneratedShapes, batch: Batch | None = None) -> None:
        self.closed += sum(mesh is not None and mesh.is_watertight for mesh in shapes.meshes)
        self.total += len(shapes)

    def compute(self) -> Tensor:
        return self.closed / self.total.clamp(min=1)


class ShapeAdapter(ModalityAdapter):
    """The shared part of the shape adapters (module docstring).

    Args:
        set_shape: ``(n, D)`` of one shape's set, what :meth:`sample_conditions` draws noise
            for.
        num_classes: the number of shape classes, or ``None`` for no class condition.
        images: how the conditioning image of a shape is rendered, or ``None`` for no image
            condition.
        num_points: points sampled on each generated mesh for the evaluators.
        up: the vertical axis of previews (``"y"`` for most mesh files).
    """

    def __init__(
        self,
        set_shape: tuple[int, int],
        num_classes: int | None = None,
        images: ShapeImages | None = None,
        num_points: int = 2048,
        up: str = "y",
    ) -> None:
        super().__init__()
        self.set_shape = tuple(set_shape)
        self.num_classes, self.images = num_classes, images
        self.num_points, self.up = num_points, up
        metrics: dict[str, Metric] = {
            "generation": BatchGenerationMetrics(),
            "watertight": WatertightShare(),
        }
        if images is not None:
            metrics["image_chamfer"] = ImageChamfer()
        self.metrics = nn.ModuleDict(metrics)

    def mesh(self, shape_set: Tensor) -> trimesh.Trimesh | None:
        """The mesh of one generated set ``[n, D]``, or ``None`` if it has no surface."""
        raise NotImplementedError

    def condition(self, batch: Batch) -> Condition:
        """``class_labels`` (checked against ``num_classes``) and the rendered ``image`` with
        ``image_mask``, as configured (``{}`` if unconditional)."""
        cond: Condition = {}
        if self.num_classes is not None:
            labels = batch["label"].long()
            if (
                labels.numel()
                and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes
            ):
                raise ValueError(
                    f"{type(self).__name__}: class labels {sorted(set(labels.tolist()))} do not "
                    f"fit num_classes={self.num_classes} (the datamodule's class sub-folders)"
                )
            cond["class_labels"] = labels
        if self.images is not None:
            cond["image"] = render_surface(batch["surface"], self.images)
            image = cond["image"]
            cond["image_mask"] = torch.ones(len(image), dtype=torch.bool, device=image.device)
        return cond

    def null_condition(self, cond: Condition) -> Condition:
        """Every label replaced by the null class ``num_classes``, every image masked out."""
        null: Condition = {}
        if "class_labels" in cond:
            null["class_labels"] = torch.full_like(cond["class_labels"], self.num_classes)
        if "image" in cond:
            null["image"] = torch.zeros_like(cond["image"])
            null["image_mask"] = torch.zeros_like(cond["image_mask"])
        return null

    def conditioned(self) -> bool:
        return self.num_classes is not None or self.images is not None

    def sample_conditions(self, num_samples: int) -> tuple[tuple[int, ...], Condition]:
        """Set shape for ``num_samples`` shapes, labels cycling over the classes, and no image
        (masked out: there is no shape to render without data)."""
        shape = (num_samples, *self.set_shape)
        cond: Condition = {}
        if self.num_classes is not None:
            cond["class_labels"] = torch.arange(num_samples) % self.num_classes
        if self.images is not None:
            size = self.images.resolution
            cond["image"] = torch.zeros(num_samples, self.images.channels, size, size)
            cond["image_mask"] = torch.zeros(num_samples, dtype=torch.bool)
        return shape, cond

    def decode(self, x1: Tensor, cond: Condition, batch: Batch | None = None) -> GeneratedShapes:
        """Mesh every generated set and sample ``num_points`` points on each."""
        meshes = [self.mesh(shape_set) for shape_set in x1]
        points = torch.zeros(len(meshes), self.num_points, 3)
        for index, mesh in enumerate(meshes):
            if mesh is not None:
                sampled, _ = trimesh.sample.sample_surface(mesh, self.num_points, seed=index)
                points[index] = torch.as_tensor(sampled, dtype=torch.float32)
        return GeneratedShapes(meshes, points)

    def evaluators(self) -> nn.ModuleDict:
        """``generation`` (COV / MMD / 1-NNA), ``watertight`` and, with images,
        ``image_chamfer``."""
        return self.metrics

    def save_media(
        self, media: Any, directory: Path, name: str, batch: Batch | None = None
    ) -> list[Path]:
        """Each mesh as ``name_<i>.glb`` and all of them in one preview ``name.png``."""
        directory = Path(directory)
        written = [
            save_mesh(mesh, directory / f"{name}_{index}.glb")
            for index, mesh in enumerate(media.meshes)
            if mesh is not None
        ]
        if written:
            written.append(render_grid(media.meshes, directory / f"{name}.png", up=self.up))
        return written


class ShapeLatentAdapter(ShapeAdapter):
    """The flow transports a frozen shape VAE's latent set (module docstring).

    Args:
        vae_path: a :class:`ShapeVAE` folder (``recipes/shape/shape_vae.yaml`` writes one).
        num_classes, images, num_points, up: as :class:`ShapeAdapter`.
        mesh_resolution, mesh_levels: the grid ``decode`` meshes at (cells over [-1, 1]^3)
            and its coarse-to-fine levels.
    """

    def __init__(
        self,
        vae_path: str,
        num_classes: int | None = None,
        images: ShapeImages | None = None,
        mesh_resolution: int = 64,
        mesh_levels: int = 2,
        num_points: int = 2048,
        up: str = "y",
    ) -> None:
        vae = ShapeVAE.from_pretrained(vae_path)
        latent_shape = (vae.hparams.num_latents, vae.hparams.latent_channels)
        super().__init__(latent_shape, num_classes, images, num_points, up)
        self.vae = Frozen(vae)
        self.mesh_resolution, self.mesh_levels = mesh_resolution, mesh_levels

    @property
    def latent_shape(self) -> tuple[int, int]:
        """``(M, C)``: tokens and channels of one shape's latent set."""
        return self.set_shape

    def encode(self, batch: Batch) -> tuple[Tensor, Condition]:
        """``(vae.encode(surface), condition)`` (:meth:`ShapeAdapter.condition`)."""
        with torch.no_grad():
            x1 = self.vae.encode(batch["surface"])
        return x1, self.condition(batch)

    def mesh(self, shape_set: Tensor) -> trimesh.Trimesh | None:
        """The mesh of one shape's latent set ``[M, C]``, or ``None`` if it has no surface."""
        sdf = self.vae.sdf_function(shape_set)
        grid, _ = hierarchical_sdf_grid(sdf, self.mesh_resolution, levels=self.mesh_levels)
        try:
            return extract_mesh(grid)
        except ValueError:
            return None
