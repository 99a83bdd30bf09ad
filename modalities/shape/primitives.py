"""Primitive solids whose signed distance is known in closed form (negative inside).

Each :class:`Primitive` builds its trimesh mesh and evaluates its exact SDF, so the mesh SDF
pipeline is tested against the truth and the primitives serve as data with exact targets:

    sphere     |p| - r
    box        |max(q, 0)| + min(max_i q_i, 0),                    q = |p| - h
    torus      |(sqrt(x^2 + y^2) - R, z)| - r                      (ring in the xy-plane)
    capsule    |p - (0, 0, clamp(z, -l/2, l/2))| - r               (axis z, segment length l)
    cylinder   |max(d, 0)| + min(max(d_1, d_2), 0),  d = (sqrt(x^2 + y^2) - r, |z| - l/2)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import trimesh
from torch import Tensor

__all__ = ["PRIMITIVE_KINDS", "Primitive"]

PRIMITIVE_KINDS: tuple[str, ...] = ("sphere", "box", "torus", "capsule", "cylinder")


@dataclass(frozen=True)
class Primitive:
    """A solid of kind ``kind`` with its sizes:

    - sphere: ``radius``; box: ``extents`` (full side lengths);
    - torus: ``radius`` (ring, R) and ``minor_radius`` (tube, r);
    - capsule, cylinder: ``radius`` and ``length`` (along z; the capsule's straight part).

    ``resolution`` sets the mesh's fineness (subdivisions of the sphere, sections otherwise).
    """

    kind: str
    radius: float = 0.5
    extents: tuple[float, float, float] = (1.0, 1.0, 1.0)
    minor_radius: float = 0.2
    length: float = 1.0
    resolution: int = field(default=64, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in PRIMITIVE_KINDS:
            raise ValueError(f"`kind` must be one of {PRIMITIVE_KINDS}, got {self.kind!r}")
        sizes = (self.radius, self.minor_radius, self.length, *self.extents)
        if min(sizes) <= 0:
            raise ValueError(f"primitive sizes must be positive, got {self}")
        if self.kind == "torus" and self.minor_radius >= self.radius:
            raise ValueError("a torus needs minor_radius < radius")

    def mesh(self) -> trimesh.Trimesh:
        """The solid as a closed triangle mesh (trimesh.creation), centred at the origin."""
        if self.kind == "sphere":
            subdivisions = max(1, min(7, self.resolution.bit_length() - 2))
            return trimesh.creation.icosphere(subdivisions=subdivisions, radius=self.radius)
        if self.kind == "box":
            return trimesh.creation.box(extents=self.extents)
        if self.kind == "torus":
            return trimesh.creation.torus(
                self.radius,
                self.minor_radius,
                major_sections=2 * self.resolution,
                minor_sections=self.resolution,
            )
        if self.kind == "capsule":
            return trimesh.creation.capsule(
                height=self.length, radius=self.radius, count=[self.resolution, self.resolution]
            )
        return trimesh.creation.cylinder(
            radius=self.radius, height=self.length, sections=self.resolution
        )

    def sdf(self, points: Tensor) -> Tensor:
        """The exact signed distance at ``points`` ``[..., 3]`` (module docstring)."""
        x, y, z = points.unbind(-1)
        if self.kind == "sphere":
            return points.norm(dim=-1) - self.radius
        if self.kind == "box":
            q = points.abs() - points.new_tensor(self.extents) / 2
            return q.clamp(min=0).norm(dim=-1) + q.amax(-1).clamp(max=0)
        if self.kind == "torus":
            ring = torch.sqrt(x**2 + y**2) - self.radius
            return torch.sqrt(ring**2 + z**2) - self.minor_radius
        if self.kind == "capsule":
            half = self.length / 2
            nearest = torch.stack([torch.zeros_like(z), torch.zeros_like(z), z.clamp(-half, half)])
            return (points - nearest.movedim(0, -1)).norm(dim=-1) - self.radius
        d = torch.stack([torch.sqrt(x**2 + y**2) - self.radius, z.abs() - self.length / 2], -1)
        return d.clamp(min=0).norm(dim=-1) + d.amax(-1).clamp(max=0)
