"""Farthest-point sampling: evenly spread subsets of point clouds.

The shape VAE's queries and Mosaic-SDF's grid centres are picked this way. Starting from one
point, each step adds the point farthest from those already chosen:

    i_1 = start,   i_{k+1} = argmax_j min_{l <= k} |x_j - x_{i_l}|,

which keeps, for every k, a 2-approximation of the best k-centre covering (Gonzalez 1985).
Each step updates every point's distance to the chosen set once: O(N k) work, on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["farthest_point_sampling"]


def farthest_point_sampling(points: Tensor, count: int, start: int = 0) -> Tensor:
    """Indices ``[count]`` of an evenly spread subset of ``points`` ``[N, D]``, beginning with
    ``start`` (batched input ``[B, N, D]`` gives ``[B, count]``, every set from ``start``)."""
    if points.ndim == 3:
        return torch.stack([farthest_point_sampling(p, count, start) for p in points])
    if points.ndim != 2:
        raise ValueError(f"points must be [N, D] or [B, N, D], got {list(points.shape)}")
    if not 1 <= count <= len(points):
        raise ValueError(f"cannot pick {count} of {len(points)} points")
    if not 0 <= start < len(points):
        raise ValueError(f"`start` {start} is not an index of {len(points)} points")
    chosen = torch.empty(count, dtype=torch.long, device=points.device)
    chosen[0] = start
    distance = (points - points[start]).square().sum(-1)
    for step in range(1, count):
        chosen[step] = distance.argmax()
        distance = torch.minimum(distance, (points - points[chosen[step]]).square().sum(-1))
    return chosen
