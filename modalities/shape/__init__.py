"""The 3D shape modality: meshes, signed distance fields and their samples.

Meshes are loaded and checked by :mod:`modalities.shape.mesh`, their signed distances sampled
and cached by :mod:`modalities.shape.sdf`; :mod:`modalities.shape.primitives` has solids with
closed-form SDFs, and :mod:`modalities.shape.data` serves folders of meshes as SDF examples;
:mod:`modalities.shape.render` renders the images the flows may be conditioned on.
See docs/shape.md.
"""

from .adapter import (
    GeneratedShapes,
    ImageChamfer,
    ShapeAdapter,
    ShapeLatentAdapter,
    WatertightShare,
)
from .data import (
    MESH_SUFFIXES,
    Augmentation,
    MeshFolder,
    ShapeSDFDataset,
    duplicate_groups,
    find_mesh_files,
    write_primitive_folder,
)
from .evaluators import (
    ChamferDistance,
    FScore,
    GenerationMetrics,
    NormalConsistency,
    VolumetricIoU,
    watertight_share,
)
from .media import render_grid, render_views, save_mesh
from .mesh import (
    MeshError,
    Normalisation,
    fuse_parts,
    load_mesh,
    make_watertight,
    normalise_mesh,
)
from .meshing import dense_sdf_grid, extract_mesh, hierarchical_sdf_grid, mesh_from_sdf
from .mosaic import MosaicNormaliser, MosaicSDF, MosaicSettings, cached_mosaic, fit_mosaic
from .mosaic_adapter import MosaicAdapter
from .primitives import PRIMITIVE_KINDS, Primitive
from .render import ShapeImages, render_surface
from .sampling import farthest_point_sampling
from .sdf import SDFSamples, SDFSettings, cached_sdf_samples, sample_sdf, signed_distance
from .vae import ShapeAutoencoder, ShapeVAE

__all__ = [
    "MESH_SUFFIXES",
    "PRIMITIVE_KINDS",
    "Augmentation",
    "ChamferDistance",
    "FScore",
    "GeneratedShapes",
    "GenerationMetrics",
    "ImageChamfer",
    "MeshError",
    "MeshFolder",
    "MosaicAdapter",
    "MosaicNormaliser",
    "MosaicSDF",
    "MosaicSettings",
    "NormalConsistency",
    "Normalisation",
    "Primitive",
    "SDFSamples",
    "SDFSettings",
    "ShapeAdapter",
    "ShapeAutoencoder",
    "ShapeImages",
    "ShapeLatentAdapter",
    "ShapeSDFDataset",
    "ShapeVAE",
    "VolumetricIoU",
    "WatertightShare",
    "cached_mosaic",
    "cached_sdf_samples",
    "dense_sdf_grid",
    "duplicate_groups",
    "extract_mesh",
    "farthest_point_sampling",
    "find_mesh_files",
    "fit_mosaic",
    "fuse_parts",
    "hierarchical_sdf_grid",
    "load_mesh",
    "make_watertight",
    "mesh_from_sdf",
    "normalise_mesh",
    "render_grid",
    "render_surface",
    "render_views",
    "sample_sdf",
    "save_mesh",
    "signed_distance",
    "watertight_share",
    "write_primitive_folder",
]
