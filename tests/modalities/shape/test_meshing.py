"""Marching cubes from SDF functions: dense against closed forms, hierarchical against dense."""

import math

import pytest
import torch

from modalities.shape import Primitive
from modalities.shape.evaluators import ChamferDistance
from modalities.shape.meshing import (
    dense_sdf_grid,
    extract_mesh,
    hierarchical_sdf_grid,
    mesh_from_sdf,
)


def test_a_dense_sphere_is_closed_outward_and_of_the_right_volume():
    sphere = Primitive("sphere", radius=0.6)
    mesh = mesh_from_sdf(sphere.sdf, resolution=64, hierarchical=False)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * 0.6**3, rel=0.01)
    radii = torch.as_tensor(mesh.vertices).norm(dim=1)
    assert (radii - 0.6).abs().max() < 2 / 64 * 0.1


def test_a_surface_through_grid_vertices_stays_closed():
    """Radius 0.5 on a grid of spacing 1/8 puts SDF zeros on grid vertices, where marching
    cubes makes zero-area triangles; without removing them the mesh is not closed."""
    mesh = mesh_from_sdf(lambda x: x.norm(dim=-1) - 0.5, resolution=16, hierarchical=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert (mesh.area_faces > 0).all()


@pytest.mark.parametrize(
    "shape",
    [
        Primitive("torus", radius=0.55, minor_radius=0.2),
        Primitive("box", extents=(1.2, 0.5, 0.9)),
        Primitive("capsule", radius=0.3, length=0.9),
    ],
    ids=lambda shape: shape.kind,
)
def test_hierarchical_extraction_gives_the_dense_mesh_from_fewer_evaluations(shape):
    dense = dense_sdf_grid(shape.sdf, 64)
    grid, evaluated = hierarchical_sdf_grid(shape.sdf, 64, levels=2)
    assert evaluated < dense.numel() / 3
    assert torch.equal(grid.sign(), dense.sign())
    first, second = extract_mesh(dense), extract_mesh(grid)
    assert len(first.faces) == len(second.faces)
    torch.testing.assert_close(torch.as_tensor(second.vertices), torch.as_tensor(first.vertices))
    chamfer = ChamferDistance()
    chamfer.update(
        torch.as_tensor(first.sample(2000, seed=0))[None],
        torch.as_tensor(second.sample(2000, seed=0))[None],
    )
    assert chamfer.compute().item() < 1e-6


def test_bad_settings_and_bad_functions_are_refused():
    sphere = Primitive("sphere", radius=0.5)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels = 4"):
        hierarchical_sdf_grid(sphere.sdf, 30, levels=2)
    with pytest.raises(ValueError, match="does not change sign"):
        mesh_from_sdf(lambda points: points.norm(dim=1) + 1.0, resolution=8)
    with pytest.raises(ValueError, match="returned 1 values for 729 points"):
        dense_sdf_grid(lambda points: torch.zeros(1), 8)
    with pytest.raises(ValueError, match="non-finite"):
        dense_sdf_grid(lambda points: points[:, 0] / 0.0, 8)


def test_cells_with_an_unknown_corner_make_no_surface():
    # The plane x = 0.03 crosses one layer of 16 x 16 cells; NaN above y = 0.5 removes the
    # cells touching y > 0.5, leaving 12 rows of 16 cells, two triangles each.
    grid = dense_sdf_grid(lambda points: points[:, 0] - 0.03, 16)
    axis = torch.linspace(-1, 1, 17)
    grid[:, axis > 0.5 + 1e-6, :] = torch.nan
    mesh = extract_mesh(grid)
    assert len(mesh.faces) == 12 * 16 * 2
    assert mesh.vertices[:, 1].max() == pytest.approx(0.5)
    torch.testing.assert_close(
        torch.as_tensor(mesh.vertices[:, 0]),
        torch.full((len(mesh.vertices),), 0.03, dtype=torch.float64),
    )


def test_a_band_sdf_gives_one_closed_surface_without_one_at_the_band_edges():
    sphere = Primitive("sphere", radius=0.6)

    def band(points):
        values = sphere.sdf(points)
        return torch.where(values.abs() < 0.15, values, torch.nan)

    for hierarchical in (False, True):
        mesh = mesh_from_sdf(band, resolution=64, hierarchical=hierarchical, partial=True)
        assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
        assert mesh.volume == pytest.approx(4 / 3 * math.pi * 0.6**3, rel=0.01)


def test_nan_needs_partial_and_infinity_is_always_refused():
    sphere = Primitive("sphere", radius=0.5)

    def band(points):
        values = sphere.sdf(points)
        return torch.where(values.abs() < 0.2, values, torch.nan)

    with pytest.raises(ValueError, match="must be meshed with partial=True"):
        dense_sdf_grid(band, 8)
    with pytest.raises(ValueError, match="infinite"):
        dense_sdf_grid(lambda points: points[:, 0] / 0.0, 8, partial=True)
    with pytest.raises(ValueError, match="only NaN"):
        extract_mesh(torch.full((5, 5, 5), torch.nan))
