"""Datamodules of shapes as SDF samples: any folder of meshes, one sub-folder per class.

:class:`MeshFolder` reads every mesh under ``root`` (``OBJ, OFF, PLY, STL, GLB``). When ``root``
has sub-folders holding meshes, each is a class (sorted names are the labels); otherwise all
meshes are one class. Each file goes through :func:`modalities.shape.sdf.cached_sdf_samples`
once (checked, normalised, sampled, cached), so a user's ShapeNet-style folder drops in. A file
that is not a closed mesh stops the set-up with every such file named, unless
``skip_invalid`` is set, which leaves them out and logs each by name.

An example is one shape: ``surface`` ``[num_surface, 6]`` (surface points and their normals,
the encoder's input), ``points`` ``[num_points, 3]`` and ``sdf`` ``[num_points]`` (half near the
surface, half uniform: the decoder's targets) and ``label``. Training draws fresh random
subsets of the cached samples each time from torch's global generator (seeded by
``seed_everything`` and, in dataloader workers, per worker by PyTorch); validation and test
take the first ones, so they are fixed. With ``mosaic`` settings, an example also holds
``mosaic`` ``[n, 4 + k^3]``: the shape's Mosaic-SDF set (:meth:`MosaicSDF.to_set`, fitted once
per mesh and cached by :func:`modalities.shape.mosaic.cached_mosaic`), in the same
normalisation as the points.

Splits are a seeded permutation of the shapes. Collections of meshes often hold the same shape
twice (a refined, re-ordered or translated copy; an open copy that repair closes): with
``duplicate_tolerance`` set, shapes whose distance fields differ by less than it on average,

    mean_u |sdf_a(u) - sdf_b(u)| < duplicate_tolerance,

at the uniform points ``u`` (the same for every shape sampled with the same settings, and
independent of the tessellation) form one group, chains included, and a group goes to one
split whole, so no held-out shape has its copy in training.

Training shapes may be augmented by maps under which the SDF is known exactly:

    rotation or reflection Q (orthogonal):  sdf_Q(Q p) = sdf(p),  n -> Q n;
    uniform scale s:                        sdf_s(s p) = s sdf(p).

The quarter turns and the mirror are signed permutations, which map a mosaic's grid points onto
themselves, so the mosaic moves exactly too (:meth:`MosaicSDF.transformed`: centres ``s Q p``,
scales ``s s_i``, values ``s V`` with the grid's axes permuted and flipped).

:func:`write_primitive_folder` writes random primitives (:mod:`modalities.shape.primitives`)
as such a folder, one class per kind.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.sparse.csgraph import connected_components
from torch import Tensor
from torch.utils.data import Dataset

from mmflow.data import SplitDataModule

from .mesh import MeshError
from .mosaic import MosaicSDF, MosaicSettings, cached_mosaic
from .primitives import PRIMITIVE_KINDS, Primitive
from .sdf import SDFSamples, SDFSettings, cached_sdf_samples

log = logging.getLogger(__name__)

__all__ = [
    "MESH_SUFFIXES",
    "Augmentation",
    "MeshFolder",
    "ShapeSDFDataset",
    "duplicate_groups",
    "find_mesh_files",
    "write_primitive_folder",
]

MESH_SUFFIXES: tuple[str, ...] = (".obj", ".off", ".ply", ".stl", ".glb")


@dataclass(frozen=True)
class Augmentation:
    """Random maps applied to training shapes (module docstring).

    Args:
        quarter_turns: rotate about the z-axis by a random multiple of 90 degrees (keeps the
            normalised shape inside [-0.9, 0.9]^3).
        mirror: reflect x -> -x with probability 1/2.
        scale: a uniform scale drawn from ``[low, high]`` (at most 1 keeps points in [-1, 1]^3).
    """

    quarter_turns: bool = False
    mirror: bool = False
    scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        low, high = self.scale
        if not 0 < low <= high:
            raise ValueError(f"`scale` must be 0 < low <= high, got {self.scale}")

    @property
    def active(self) -> bool:
        return self.quarter_turns or self.mirror or self.scale != (1.0, 1.0)

    def draw(self) -> tuple[Tensor, float]:
        """A random orthogonal ``Q`` ``[3, 3]`` and scale ``s`` (torch's global generator)."""
        matrix = torch.eye(3)
        if self.quarter_turns:
            angle = math.pi / 2 * int(torch.randint(4, (1,)))
            cos, sin = round(math.cos(angle)), round(math.sin(angle))
            matrix = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
        if self.mirror and bool(torch.rand(1) < 0.5):
            matrix = matrix @ torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
        low, high = self.scale
        scale = low + (high - low) * float(torch.rand(1))
        return matrix, scale


def find_mesh_files(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Mesh files under ``root``, their class indices and the class names (module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such mesh folder")

    def meshes(folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.suffix.lower() in MESH_SUFFIXES)

    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and meshes(d))
    if not classes:
        files = meshes(root)
        if not files:
            raise FileNotFoundError(f"{root}: no mesh files ({', '.join(MESH_SUFFIXES)})")
        return files, [0] * len(files), [root.name]
    files, labels = [], []
    for index, name in enumerate(classes):
        found = meshes(root / name)
        files += found
        labels += [index] * len(found)
    return files, labels, classes


class ShapeSDFDataset(Dataset):
    """SDF samples of shapes served as examples (module docstring).

    Args:
        samples: one :class:`SDFSamples` per shape; labels: their classes.
        num_points, num_surface: points per example for the decoder and the encoder.
        train: draw random subsets (else the first points) and apply ``augmentation``.
        mosaics: one :class:`MosaicSDF` per shape, served as ``mosaic`` (moved by the same
            augmentation as the points), or ``None``.
    """

    def __init__(
        self,
        samples: list[SDFSamples],
        labels: list[int],
        num_points: int,
        num_surface: int,
        train: bool,
        augmentation: Augmentation = Augmentation(),
        mosaics: list[MosaicSDF] | None = None,
    ) -> None:
        if len(samples) != len(labels):
            raise ValueError(f"{len(samples)} shapes but {len(labels)} labels")
        if mosaics is not None and len(mosaics) != len(samples):
            raise ValueError(f"{len(samples)} shapes but {len(mosaics)} mosaics")
        self.samples, self.labels, self.mosaics = samples, labels, mosaics
        self.num_points, self.num_surface = num_points, num_surface
        self.train, self.augmentation = train, augmentation
        for shape in samples:
            available = min(len(shape.near_sdf), len(shape.uniform_sdf))
            if num_points // 2 > available or num_surface > len(shape.surface_points):
                raise ValueError(
                    f"asked for {num_points} points and {num_surface} surface points a shape, "
                    f"but the SDF settings sample {available} near/uniform and "
                    f"{len(shape.surface_points)} surface points"
                )

    def __len__(self) -> int:
        return len(self.samples)

    def _take(self, count: int, total: int) -> Tensor:
        return torch.randperm(total)[:count] if self.train else torch.arange(count)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        shape = self.samples[index]
        half = self.num_points // 2
        near = self._take(half, len(shape.near_sdf))
        uniform = self._take(self.num_points - half, len(shape.uniform_sdf))
        surface = self._take(self.num_surface, len(shape.surface_points))
        points = torch.cat([shape.near_points[near], shape.uniform_points[uniform]])
        sdf = torch.cat([shape.near_sdf[near], shape.uniform_sdf[uniform]])
        surface_points, normals = shape.surface_points[surface], shape.surface_normals[surface]
        mosaic = self.mosaics[index] if self.mosaics is not None else None
        if self.train and self.augmentation.active:
            matrix, scale = self.augmentation.draw()
            points, surface_points = scale * points @ matrix.T, scale * surface_points @ matrix.T
            normals, sdf = normals @ matrix.T, scale * sdf
            mosaic = mosaic.transformed(matrix, scale) if mosaic is not None else None
        example = {
            "surface": torch.cat([surface_points, normals], dim=1),
            "points": points,
            "sdf": sdf,
            "label": torch.tensor(self.labels[index]),
        }
        if mosaic is not None:
            example["mosaic"] = mosaic.to_set()
        return example

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        examples = [self[i] for i in indices]
        return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}


class MeshFolder(SplitDataModule):
    """Shapes from a folder of meshes (module docstring), split by ``seed``.

    Args:
        root: the folder (class sub-folders optional).
        sdf: the :class:`SDFSettings` every mesh is sampled with (cached per mesh; default
            :class:`SDFSettings`'s defaults).
        num_points, num_surface: points per example (decoder targets, encoder input).
        augmentation: maps applied to training shapes.
        skip_invalid: leave out (and log) files that are not closed meshes instead of failing.
        duplicate_tolerance: keep shapes whose SDFs differ by less than this on average in
            one split (module docstring); ``None`` splits shape by shape.
        mosaic: the :class:`MosaicSettings` every mesh's Mosaic-SDF is fitted with (cached
            per mesh), served as ``mosaic``; ``None`` (the default) fits none. Its ``margin``
            must be the SDF settings' one.
        cache_dir: cache root (default ``$MMFLOW_CACHE`` or ``~/.cache/mmflow``).
        kwargs: loader and split settings of :class:`mmflow.data.SplitDataModule`.
    """

    def __init__(
        self,
        root: str,
        sdf: SDFSettings | None = None,
        num_points: int = 2048,
        num_surface: int = 2048,
        augmentation: Augmentation = Augmentation(),
        skip_invalid: bool = False,
        duplicate_tolerance: float | None = None,
        mosaic: MosaicSettings | None = None,
        cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if duplicate_tolerance is not None and duplicate_tolerance <= 0:
            raise ValueError(
                f"`duplicate_tolerance` must be positive or None, got {duplicate_tolerance}"
            )
        self.duplicate_tolerance = duplicate_tolerance
        self.root, self.sdf, self.cache_dir = Path(root), sdf or SDFSettings(), cache_dir
        if mosaic is not None and mosaic.margin != self.sdf.margin:
            raise ValueError(
                f"`mosaic.margin` ({mosaic.margin}) must equal `sdf.margin` ({self.sdf.margin}): "
                "the mosaics and the SDF samples are of one normalisation"
            )
        self.mosaic = mosaic
        self.num_points, self.num_surface = num_points, num_surface
        self.augmentation, self.skip_invalid = augmentation, skip_invalid
        self.class_names: list[str] = []
        self.skipped: list[str] = []
        self.files: dict[str, list[Path]] = {}

    @property
    def num_classes(self) -> int:
        self.setup()
        return len(self.class_names)

    def _load_all(self) -> tuple[list[Path], list[SDFSamples], list[int]]:
        files, labels, self.class_names = find_mesh_files(self.root)
        kept, samples, kept_labels, refused = [], [], [], []
        for path, label in zip(files, labels, strict=True):
            try:
                samples.append(cached_sdf_samples(path, self.sdf, self.cache_dir))
            except MeshError as error:
                refused.append(str(error))
                continue
            kept.append(path)
            kept_labels.append(label)
        if refused and not self.skip_invalid:
            raise MeshError(
                f"{self.root}: {len(refused)} files are not closed meshes (set skip_invalid to "
                "leave them out):\n" + "\n".join(refused)
            )
        for message in refused:
            log.warning("skipped %s", message)
        self.skipped = refused
        if not kept:
            raise MeshError(f"{self.root}: no usable meshes")
        return kept, samples, kept_labels

    def setup(self, stage: str | None = None) -> None:
        """Sample and fit (or read from the cache) every mesh and split the shapes."""
        if self.datasets:
            return
        files, samples, labels = self._load_all()
        mosaics = (
            [cached_mosaic(path, self.mosaic, self.cache_dir) for path in files]
            if self.mosaic is not None
            else None
        )
        groups = (
            duplicate_groups(samples, self.duplicate_tolerance)
            if self.duplicate_tolerance is not None
            else [[index] for index in range(len(files))]
        )
        parts = self._split_groups(groups, len(files))
        for split, indices in parts.items():
            train = split == "train"
            self.files[split] = [files[i] for i in indices]
            self.datasets[split] = ShapeSDFDataset(
                [samples[i] for i in indices],
                [labels[i] for i in indices],
                self.num_points,
                self.num_surface,
                train=train,
                augmentation=self.augmentation if train else Augmentation(),
                mosaics=[mosaics[i] for i in indices] if mosaics is not None else None,
            )

    def _split_groups(self, groups: list[list[int]], total: int) -> dict[str, list[int]]:
        """Validation, then test, filled with whole groups in a seeded order until each holds
        its share of the shapes; the rest is training."""
        order = np.random.default_rng(self.seed).permutation(len(groups))
        wanted = {
            "val": round(self.val_fraction * total),
            "test": round(self.test_fraction * total),
        }
        parts: dict[str, list[int]] = {"val": [], "test": [], "train": []}
        for group in order:
            split = next((s for s in ("val", "test") if len(parts[s]) < wanted[s]), "train")
            parts[split].extend(groups[group])
        return parts


def duplicate_groups(samples: list[SDFSamples], tolerance: float) -> list[list[int]]:
    """Indices of ``samples`` grouped by a mean absolute SDF difference below ``tolerance`` at
    their shared uniform points, closed under chains (connected components)."""
    reference = samples[0].uniform_points
    if any(not torch.equal(s.uniform_points, reference) for s in samples):
        raise ValueError(
            "duplicate_groups: the shapes were sampled at different uniform points (different "
            "SDF settings); sample them with one SDFSettings"
        )
    fields = torch.stack([s.uniform_sdf for s in samples]).double()
    close = (torch.cdist(fields, fields, p=1) / fields.shape[1] < tolerance).numpy()
    _, component = connected_components(close, directed=False)
    return [np.flatnonzero(component == c).tolist() for c in np.unique(component)]


def write_primitive_folder(root: str | Path, per_kind: int, seed: int = 0) -> Path:
    """Write ``per_kind`` random primitives of every kind as ``root/<kind>/<i>.obj``.

    Sizes are drawn uniformly (radii 0.2-0.5, box sides 0.3-1.0, lengths 0.3-0.9; a torus's
    tube 0.25-0.45 of its ring), so each class varies in shape, not only in scale.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    for kind in PRIMITIVE_KINDS:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for index in range(per_kind):
            radius = float(rng.uniform(0.2, 0.5))
            primitive = Primitive(
                kind,
                radius=radius,
                extents=tuple(float(v) for v in rng.uniform(0.3, 1.0, size=3)),
                minor_radius=radius * float(rng.uniform(0.25, 0.45)),
                length=float(rng.uniform(0.3, 0.9)),
                resolution=32,
            )
            primitive.mesh().export(root / kind / f"{index:03d}.obj")
    return root
