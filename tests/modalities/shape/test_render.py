"""Conditioning images: surface points splatted into a z-buffer, Lambert-shaded."""

import math

import numpy as np
import pytest
import torch

from modalities.shape.media import CAMERA_LIGHT, UP_AXES, camera_rotation
from modalities.shape.render import ShapeImages, render_surface


def sphere_surface(count: int, radius: float, centre=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """``[count, 6]``: a Fibonacci lattice on a sphere with its outward normals."""
    index = torch.arange(count, dtype=torch.float64) + 0.5
    polar = torch.arccos(1 - 2 * index / count)
    azimuth = math.pi * (1 + 5**0.5) * index
    normals = torch.stack(
        [polar.sin() * azimuth.cos(), polar.sin() * azimuth.sin(), polar.cos()], dim=1
    )
    points = radius * normals + torch.tensor(centre, dtype=torch.float64)
    return torch.cat([points, normals], dim=1).float()


def test_a_sphere_renders_as_a_lambert_shaded_disc():
    """Orthographic view of a sphere of radius r: the disc rho < r, and at the pixel centre
    (u, v) the visible normal is n = (u, -sqrt(r^2 - u^2 - v^2), v) / r in the camera frame."""
    size, radius = 32, 0.5
    settings = ShapeImages(size, 1.0, (0.0,), elevation=0.0, point_radius=0, up="z")
    image = render_surface(sphere_surface(200_000, radius)[None], settings)[0, 0]
    centres = (torch.arange(size) + 0.5) / size * 2 - 1
    v, u = -centres[:, None].expand(size, size), centres[None, :].expand(size, size)
    rho = (u**2 + v**2).sqrt()
    pixel = 2 / size
    assert (image[rho < radius - pixel] > 0).all()  # covered without holes
    assert (image[rho > radius + pixel] == 0).all()  # nothing outside the disc
    inner = rho < 0.7 * radius
    depth = (radius**2 - rho[inner] ** 2).sqrt()
    normal = torch.stack([u[inner], -depth, v[inner]], dim=1) / radius
    expected = 0.25 + 0.75 * (normal @ torch.as_tensor(CAMERA_LIGHT).float()).clamp(min=0)
    assert (image[inner] - expected).abs().max() < 0.08


def test_the_nearer_of_two_spheres_hides_the_other():
    """Two equal spheres on the viewing axis (camera y): only the front one is seen, so the
    image equals that of the front sphere alone."""
    settings = ShapeImages(resolution=24, azimuths=(0.0,), elevation=0.0, up="z")
    front = sphere_surface(20_000, 0.3, (0.0, -0.5, 0.0))
    back = sphere_surface(20_000, 0.3, (0.0, 0.5, 0.0))
    both = render_surface(torch.cat([back, front])[None], settings)
    torch.testing.assert_close(both, render_surface(front[None], settings))
    assert not torch.equal(
        both, render_surface(back[None] * torch.tensor([1, 1, 1, 1, -1, 1]), settings)
    )


def test_turning_the_shape_equals_turning_the_camera():
    """Rendering Q p, Q n at azimuth a equals rendering p, n at azimuth a + 90 for Q the quarter
    turn about the vertical axis that the camera's azimuth undoes."""
    torch.manual_seed(0)
    surface = sphere_surface(5000, 0.4, (0.3, 0.1, -0.2))
    quarter = torch.as_tensor(camera_rotation(90.0, 0.0)).float().T  # world turn by +90 deg
    turned = torch.cat([surface[:, :3] @ quarter.T, surface[:, 3:] @ quarter.T], dim=1)

    def seen_from(azimuth: float, shape: torch.Tensor) -> torch.Tensor:
        return render_surface(shape[None], ShapeImages(resolution=16, azimuths=(azimuth,), up="z"))

    torch.testing.assert_close(seen_from(120.0, turned), seen_from(30.0, surface))


def test_views_are_channels_and_images_follow_their_shapes():
    """A sphere of radius r covers the disc of r H / (2 e) pixels' radius, give or take the
    pixels its edge touches."""
    settings = ShapeImages(32, 0.8, azimuths=(0.0, 90.0, 180.0), point_radius=0)
    small, large = sphere_surface(20_000, 0.2), sphere_surface(20_000, 0.6)
    images = render_surface(torch.stack([small, large]), settings)
    assert images.shape == (2, 3, 32, 32) and settings.channels == 3
    for image, radius in zip(images, (0.2, 0.6), strict=True):
        pixels = radius * 32 / (2 * 0.8)
        covered = (image > 0).sum(dim=(1, 2)).float()
        assert (covered > math.pi * (pixels - 1) ** 2).all()
        assert (covered < math.pi * (pixels + 1) ** 2).all()


def test_the_default_window_holds_the_normalisation_box_from_any_view():
    """The corners of [-0.9, 0.9]^3 are the farthest points a normalised shape reaches; from
    every view they land inside the image, and a corner beyond the window does not."""
    corners = torch.cartesian_prod(*[torch.tensor([-0.9, 0.9])] * 3)
    normals = torch.nn.functional.normalize(corners, dim=1)  # each corner faces outwards
    for azimuth in range(0, 360, 15):
        for elevation in (-60.0, -20.0, 0.0, 20.0, 45.0, 90.0):
            settings = ShapeImages(azimuths=(float(azimuth),), elevation=elevation, point_radius=0)
            for corner in torch.cat([corners, normals], dim=1):
                if corner[3:] @ torch.as_tensor(settings_view(settings)).float()[1] < -1e-3:
                    image = render_surface(corner[None, None], settings)
                    assert image.sum() > 0
    beyond = torch.tensor([[[1.7, 0.0, 0.0, 0.0, -1.0, 0.0]]])
    assert render_surface(beyond, ShapeImages(azimuths=(0.0,), elevation=0.0, up="z")).sum() == 0


def settings_view(settings: ShapeImages) -> np.ndarray:
    """World-to-camera rotation of the first view of ``settings``."""
    return camera_rotation(settings.azimuths[0], settings.elevation) @ UP_AXES[settings.up]


def test_bad_settings_and_surfaces_are_clear_errors():
    with pytest.raises(ValueError, match="`resolution` must be at least 4"):
        ShapeImages(resolution=2)
    with pytest.raises(ValueError, match="`extent` must be positive"):
        ShapeImages(extent=0.0)
    with pytest.raises(ValueError, match="`azimuths` must name at least one view"):
        ShapeImages(azimuths=())
    with pytest.raises(ValueError, match="`up` must be one of"):
        ShapeImages(up="w")
    with pytest.raises(ValueError, match="expected surface samples \\[B, N, 6\\]"):
        render_surface(torch.zeros(2, 100, 3))
    assert np.isclose(np.linalg.norm(CAMERA_LIGHT), 1.0)
