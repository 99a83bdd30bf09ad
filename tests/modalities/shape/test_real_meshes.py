"""The real CGAL demo meshes: which load as closed solids, and their sampled SDFs."""

from pathlib import Path

import numpy as np
import pytest

from modalities.shape import MeshError, SDFSettings, load_mesh, normalise_mesh, sample_sdf

MESH_SUFFIXES = {".off", ".obj", ".ply", ".stl"}


def test_most_demo_meshes_load_and_the_rest_are_refused_by_name(cgal_meshes: Path):
    files = sorted(p for p in cgal_meshes.rglob("*") if p.suffix.lower() in MESH_SUFFIXES)
    loaded, refused = [], []
    for path in files:
        try:
            loaded.append(load_mesh(path))
        except MeshError as error:
            assert str(error).startswith(f"{path}: ")
            refused.append(path.name)
    assert len(files) == 143 and len(loaded) == 97
    assert all(mesh.is_watertight and mesh.volume > 0 for mesh in loaded)
    assert {"cylinder.off", "elephant-with-holes.off", "diplodocus.off"} <= set(refused)
    assert "tetra_intersected_by_triangle.off" in refused  # a flat part: no inside


@pytest.mark.parametrize("name", ["armadillo.off", "bunny00.off", "cow.off"])
def test_sampled_sdf_agrees_with_an_independent_inside_test(cgal_meshes: Path, name: str):
    mesh, _ = normalise_mesh(load_mesh(cgal_meshes / name))
    settings = SDFSettings(num_surface=500, num_near=1000, num_uniform=2000, seed=0)
    samples = sample_sdf(mesh, settings)
    assert np.abs(mesh.bounds).max() == pytest.approx(0.9)
    points = samples.uniform_points.double().numpy()
    inside = mesh.contains(points)  # ray casting, not libigl
    clear = samples.uniform_sdf.abs().numpy() > 1e-3
    agree = (samples.uniform_sdf.numpy() < 0) == inside
    assert agree[clear].mean() > 0.995
    assert (samples.near_sdf.abs() < 0.25).all()
