"""Images of shapes the flows are conditioned on: surface points splatted into a z-buffer.

A shape's image is rendered from its surface samples (points ``p`` with outward normals
``n``, what every batch carries as ``surface``), so it follows the shape through the
augmentation and costs no mesh. Each view is an orthographic camera at ``azimuth`` about the
vertical axis and ``elevation`` (the rotation ``R`` of :func:`modalities.shape.media.camera_rotation`,
x right, y into the screen, z up) with a fixed window ``[-e, e]^2`` (``extent`` ``e``), so the
image keeps the shape's size and position. The default ``e = 1.6`` exceeds the circumradius
``0.9 sqrt(3) = 1.56`` of the box ``[-0.9, 0.9]^3`` shapes are normalised into, so no view
cuts a shape off. A point lands in the pixel

    column = floor((x + e) / (2 e) * H),   row = floor((e - z) / (2 e) * H),   (x, y, z) = R p,

and in the ``(2 r + 1)^2`` pixels around it (``point_radius`` ``r``, which closes the gaps
between samples). Points facing away (``(R n)_y > 0``) are dropped, and in each pixel the
point nearest the camera (least ``y``) wins the z-buffer. Its grey level is Lambert's law with
the previews' light ``l`` (:data:`modalities.shape.media.CAMERA_LIGHT`):

    I = 0.25 + 0.75 max(0, (R n) . l),      background 0.

Several views stack as channels: ``[B, V, H, H]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .media import CAMERA_LIGHT, UP_AXES, camera_rotation

__all__ = ["ShapeImages", "render_surface"]


@dataclass(frozen=True)
class ShapeImages:
    """How a shape's conditioning image is rendered (module docstring).

    Attributes:
        resolution: pixels a side.
        extent: half the window's width in the shapes' units (module docstring).
        azimuths: one view a channel, degrees about the vertical axis.
        elevation: degrees above the horizon.
        point_radius: pixels each surface point covers around its own.
        up: the shapes' vertical axis (``"y"`` for most mesh files).
    """

    resolution: int = 48
    extent: float = 1.6
    azimuths: tuple[float, ...] = (30.0,)
    elevation: float = 20.0
    point_radius: int = 1
    up: str = "y"

    def __post_init__(self) -> None:
        if self.resolution < 4:
            raise ValueError(f"`resolution` must be at least 4, got {self.resolution}")
        if not self.extent > 0:
            raise ValueError(f"`extent` must be positive, got {self.extent}")
        if not self.azimuths:
            raise ValueError("`azimuths` must name at least one view")
        if self.point_radius < 0:
            raise ValueError(f"`point_radius` must be >= 0, got {self.point_radius}")
        if self.up not in UP_AXES:
            raise ValueError(f"`up` must be one of {sorted(UP_AXES)}, got {self.up!r}")

    @property
    def channels(self) -> int:
        """Channels of an image: one a view."""
        return len(self.azimuths)


def render_surface(surface: Tensor, settings: ShapeImages = ShapeImages()) -> Tensor:
    """Images ``[B, V, H, H]`` of surface samples ``[B, N, 6]`` (points, normals)."""
    if surface.dim() != 3 or surface.shape[-1] != 6:
        raise ValueError(
            f"render_surface: expected surface samples [B, N, 6], got {tuple(surface.shape)}"
        )
    views = [_render_view(surface.float(), azimuth, settings) for azimuth in settings.azimuths]
    return torch.stack(views, dim=1)


def _render_view(surface: Tensor, azimuth: float, settings: ShapeImages) -> Tensor:
    """One view ``[B, H, H]`` (module docstring)."""
    batch = surface.shape[0]
    size, radius = settings.resolution, settings.point_radius
    world_to_camera = camera_rotation(azimuth, settings.elevation) @ UP_AXES[settings.up]
    rotation = torch.as_tensor(world_to_camera, dtype=surface.dtype, device=surface.device)
    points, normals = surface[..., :3] @ rotation.T, surface[..., 3:] @ rotation.T
    light = torch.as_tensor(CAMERA_LIGHT, dtype=surface.dtype, device=surface.device)
    shade = 0.25 + 0.75 * (normals @ light).clamp(min=0)
    extent = settings.extent
    column = torch.floor((points[..., 0] + extent) / (2 * extent) * size).long()
    row = torch.floor((extent - points[..., 2]) / (2 * extent) * size).long()
    offsets = torch.arange(-radius, radius + 1, device=surface.device)
    row = (row[..., None, None] + offsets[:, None]).expand(-1, -1, len(offsets), len(offsets))
    column = (column[..., None, None] + offsets).expand(-1, -1, len(offsets), len(offsets))
    visible = (normals[..., 1] <= 0)[..., None, None] & (row >= 0) & (row < size)
    visible &= (column >= 0) & (column < size)
    sample = torch.arange(batch, device=surface.device)[:, None, None, None]
    pixel = ((sample * size + row) * size + column)[visible]
    nearness = (-points[..., 1])[..., None, None].expand_as(visible)[visible]
    best = torch.full((batch * size * size,), -torch.inf, device=surface.device)
    best = best.scatter_reduce(0, pixel, nearness, reduce="amax")
    winner = nearness == best[pixel]
    image = torch.zeros(batch * size * size, device=surface.device)
    shades = shade[..., None, None].expand_as(visible)[visible]
    image[pixel[winner]] = shades[winner]
    return image.view(batch, size, size)
