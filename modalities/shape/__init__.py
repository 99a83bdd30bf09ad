"""The 3D shape modality: meshes, signed distance fields and their samples.

Meshes are loaded and checked by :mod:`modalities.shape.mesh`, their signed distances sampled
and cached by :mod:`modalities.shape.sdf`; :mod:`modalities.shape.primitives` has solids with
closed-form SDFs. See docs/shape.md.
"""

from .mesh import MeshError, Normalisation, load_mesh, make_watertight, normalise_mesh
from .primitives import PRIMITIVE_KINDS, Primitive
from .sdf import SDFSamples, SDFSettings, cached_sdf_samples, sample_sdf, signed_distance

__all__ = [
    "PRIMITIVE_KINDS",
    "MeshError",
    "Normalisation",
    "Primitive",
    "SDFSamples",
    "SDFSettings",
    "cached_sdf_samples",
    "load_mesh",
    "make_watertight",
    "normalise_mesh",
    "sample_sdf",
    "signed_distance",
]
