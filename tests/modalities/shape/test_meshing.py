"""Marching cubes from SDF functions: dense against closed forms, hierarchical against dense,
unknown (NaN) regions and the box's faces closed by the fill."""

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


@pytest.mark.parametrize("offset", [1e-9, -1e-9])
def test_a_surface_within_float_precision_of_a_grid_vertex_stays_closed(offset):
    """A sphere passing 1e-9 from the grid vertex (0.25, 0, -0.125): the crossings on that
    vertex's edges round onto it in float32 and merge with it, which leaves thin faces that
    are not collapsed. Removing faces by their area rather than by a repeated corner would
    open a hole there."""
    normal = torch.tensor([-0.9, 0.1, -0.5], dtype=torch.float64)
    normal /= normal.norm()
    centre = torch.tensor([0.25, 0.0, -0.125], dtype=torch.float64) - normal * (0.45 + offset)
    grid = dense_sdf_grid(lambda x: (x.double() - centre).norm(dim=-1) - 0.45, 16)
    mesh = extract_mesh(grid)
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


def sphere_band(radius: float, width: float):
    """The SDF of a sphere about the origin known only where ``|f| < width``, NaN elsewhere."""
    sphere = Primitive("sphere", radius=radius)

    def band(points):
        values = sphere.sdf(points)
        return torch.where(values.abs() < width, values, torch.nan)

    return band


def test_a_band_sdf_meshes_one_closed_sphere_with_its_inside_filled():
    """Known only within 0.15 of the surface: the deep inside and the far outside are unknown.
    The inside must be filled as inside (a hollow shell would add a second surface at the
    band's inner edge and lose volume), and no surface may appear at the band's edges."""
    band = sphere_band(0.6, 0.15)
    for hierarchical in (False, True):
        mesh = mesh_from_sdf(band, resolution=64, hierarchical=hierarchical, partial=True)
        assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
        assert mesh.volume == pytest.approx(4 / 3 * math.pi * 0.6**3, rel=0.01)
        radii = torch.as_tensor(mesh.vertices).norm(dim=1)
        assert (radii - 0.6).abs().max() < 2 / 64 * 0.1


def test_a_false_fragment_cut_by_the_band_edge_is_closed_and_capped():
    """A small ball of values down to -0.04 straddling the band's outer edge (r = 0.75) stands
    for a false zero crossing that interpolation makes far from the surface: the band's edge
    cuts it, so leaving out the cells with an unknown corner leaves it open. Filled, it is a
    small closed part beside the closed sphere, capped near the band's edge: the band's
    positive values around it (up to 0.15) prove the outside beyond it more strongly than its
    own small values prove the inside (the nearest known sign would extend it to the box)."""
    band, ball = sphere_band(0.6, 0.15), Primitive("sphere", radius=0.04)
    centre = torch.tensor([0.75, 0.0, 0.0])

    def with_fragment(points):
        values = band(points)
        return torch.where(values.isnan(), values, torch.minimum(values, ball.sdf(points - centre)))

    for hierarchical in (False, True):
        mesh = mesh_from_sdf(with_fragment, resolution=64, hierarchical=hierarchical, partial=True)
        assert mesh.is_watertight
        parts = sorted(mesh.split(only_watertight=False), key=lambda part: part.area)
        assert len(parts) == 2
        assert parts[1].volume == pytest.approx(4 / 3 * math.pi * 0.6**3, rel=0.01)
        fragment = torch.as_tensor(parts[0].vertices)
        assert ((fragment - centre).norm(dim=1) < 0.04 + 6 * 2 / 64).all()
        assert fragment[:, 0].max() < 0.95  # capped well before the box's face


def test_a_surface_leaving_the_known_region_continues_midway_between_the_fills():
    """The plane x = 0.3 known for y <= 0.5 only. Each unknown vertex above takes the sign of
    the known vertex below it, -h left of the plane and +h right of it, so marching cubes puts
    the surface there midway between the columns x = 0.25 and x = 0.375: the plane continues at
    x = 0.3125 up to the box's cap."""
    grid = dense_sdf_grid(lambda points: points[:, 0] - 0.3, 16)
    axis = torch.linspace(-1, 1, 17)
    grid[:, axis > 0.5 + 1e-6, :] = torch.nan
    mesh = extract_mesh(grid)
    assert mesh.is_watertight and mesh.is_winding_consistent
    vertices = torch.as_tensor(mesh.vertices)
    inner = (vertices.abs() < 1 - 1e-6).all(dim=1)
    known = inner & (vertices[:, 1] < 0.5 + 1e-6)
    torch.testing.assert_close(vertices[known, 0], torch.full_like(vertices[known, 0], 0.3))
    filled = inner & (vertices[:, 1] > 0.5 + 1e-6)
    assert filled.sum() > 0
    torch.testing.assert_close(vertices[filled, 0], torch.full_like(vertices[filled, 0], 0.3125))


def test_a_gap_in_the_band_closes_across_it_instead_of_hollowing_the_shape():
    """A band around a sphere of radius 0.6 with a gap: a channel along +x where nothing is
    known, joining the unknown inside to the unknown outside. One sign for the whole unknown
    region would make a hollow shell (the band's inner edge a second surface); the nearest
    known sign fills the inside as inside and closes the gap midway, so the mesh is one
    closed solid of the sphere's volume."""
    band = sphere_band(0.6, 0.15)

    def with_gap(points):
        values = band(points)
        gap = (points[:, 0] > 0) & (points[:, 1].abs() < 0.1) & (points[:, 2].abs() < 0.1)
        return torch.where(gap, torch.nan, values)

    mesh = mesh_from_sdf(with_gap, resolution=64, hierarchical=False, partial=True)
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * 0.6**3, rel=0.02)


def test_a_shape_crossing_the_box_is_closed_just_beyond_it():
    """A sphere of radius 0.5 at x = 0.8 crosses the face x = 1. Beyond the box is outside,
    so the mesh is the sphere cut by a cap between x = 1 and the padding one spacing further:
    its volume lies between those of the sphere cut at x = 1 and at x = 1 + h."""
    h = 2 / 64
    sphere = Primitive("sphere", radius=0.5)
    mesh = mesh_from_sdf(lambda x: sphere.sdf(x - torch.tensor([0.8, 0.0, 0.0])), resolution=64)
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
    assert 1 < mesh.vertices[:, 0].max() < 1 + h

    def cut_at(x: float) -> float:
        cap = 0.8 + 0.5 - x
        return 4 / 3 * math.pi * 0.5**3 - math.pi * cap**2 * (3 * 0.5 - cap) / 3

    assert cut_at(1) * 0.99 < mesh.volume < cut_at(1 + h)


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
