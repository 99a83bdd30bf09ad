"""Closed-form SDFs of the primitives, checked by hand and against their meshes."""

import math

import pytest
import torch

from modalities.shape import PRIMITIVE_KINDS, Primitive, signed_distance

SHAPES = {
    "sphere": Primitive("sphere", radius=0.6),
    "box": Primitive("box", extents=(1.2, 0.8, 1.0)),
    "torus": Primitive("torus", radius=0.55, minor_radius=0.2),
    "capsule": Primitive("capsule", radius=0.3, length=0.8),
    "cylinder": Primitive("cylinder", radius=0.4, length=1.0),
}


@pytest.mark.parametrize(
    ("shape", "point", "expected"),
    [
        (Primitive("sphere", radius=0.5), (1.0, 0.0, 0.0), 0.5),
        (Primitive("sphere", radius=0.5), (0.0, 0.0, 0.0), -0.5),
        (Primitive("box", extents=(1.0, 1.0, 1.0)), (1.0, 1.0, 1.0), math.sqrt(3) / 2),
        (Primitive("box", extents=(1.0, 2.0, 1.0)), (0.1, 0.0, 0.0), -0.4),
        (Primitive("torus", radius=0.5, minor_radius=0.2), (0.0, 0.0, 0.0), 0.3),
        (Primitive("torus", radius=0.5, minor_radius=0.2), (0.5, 0.0, 0.0), -0.2),
        (Primitive("capsule", radius=0.2, length=1.0), (0.0, 0.0, 1.0), 0.3),
        (Primitive("capsule", radius=0.2, length=1.0), (0.5, 0.0, 0.0), 0.3),
        (Primitive("cylinder", radius=0.5, length=1.0), (1.0, 0.0, 1.0), math.sqrt(0.5)),
        (Primitive("cylinder", radius=0.5, length=1.0), (0.0, 0.0, 0.4), -0.1),
    ],
)
def test_hand_computed_distances(shape: Primitive, point, expected: float):
    assert shape.sdf(torch.tensor([point])).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("kind", PRIMITIVE_KINDS)
def test_gradient_has_unit_norm_away_from_the_medial_axis(kind: str):
    """An SDF satisfies |grad f| = 1; points near the surface are off every medial axis."""
    shape = SHAPES[kind]
    surface = torch.as_tensor(shape.mesh().sample(500, seed=0), dtype=torch.float64)
    points = (surface + 0.02 * torch.randn_like(surface)).requires_grad_(True)
    (gradient,) = torch.autograd.grad(shape.sdf(points).sum(), points)
    torch.testing.assert_close(gradient.norm(dim=-1), torch.ones(500, dtype=torch.float64))


@pytest.mark.parametrize("kind", PRIMITIVE_KINDS)
def test_mesh_signed_distance_matches_the_closed_form(kind: str):
    shape = SHAPES[kind]
    mesh = shape.mesh()
    assert mesh.is_watertight and mesh.volume > 0
    generator = torch.Generator().manual_seed(0)
    uniform = torch.rand(2000, 3, generator=generator, dtype=torch.float64) * 2 - 1
    surface = torch.as_tensor(mesh.sample(2000, seed=1), dtype=torch.float64)
    near = surface + 0.02 * torch.randn(surface.shape, generator=generator, dtype=torch.float64)
    points = torch.cat([uniform, near])
    measured = torch.as_tensor(signed_distance(mesh, points))
    exact = shape.sdf(points)
    tolerance = 1e-9 if kind == "box" else 2e-3  # the curved meshes' chords
    assert (measured - exact).abs().max() < tolerance
    clear = exact.abs() > tolerance
    assert torch.equal(measured[clear].sign(), exact[clear].sign())


def test_bad_primitives_are_refused():
    with pytest.raises(ValueError, match="kind"):
        Primitive("cone")
    with pytest.raises(ValueError, match="positive"):
        Primitive("sphere", radius=0.0)
    with pytest.raises(ValueError, match="minor_radius < radius"):
        Primitive("torus", radius=0.2, minor_radius=0.3)
