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
    ``start`` (batched input ``[B, N, D]`` gives ``[B, count]``, every set from ``start``; the
    sets are processed together, one step at a time)."""
    if points.ndim not in (2, 3):
        raise ValueError(f"points must be [N, D] or [B, N, D], got {list(points.shape)}")
    batched = points if points.ndim == 3 else points[None]
    num_points = batched.shape[1]
    if not 1 <= count <= num_points:
        raise ValueError(f"cannot pick {count} of {num_points} points")
    if not 0 <= start < num_points:
        raise ValueError(f"`start` {start} is not an index of {num_points} points")
    rows = torch.arange(len(batched), device=points.device)
    chosen = torch.empty(len(batched), count, dtype=torch.long, device=points.device)
    chosen[:, 0] = start
    distance = (batched - batched[:, start : start + 1]).square().sum(-1)
    for step in range(1, count):
        chosen[:, step] = distance.argmax(dim=1)
        newest = batched[rows, chosen[:, step]]
        distance = torch.minimum(distance, (batched - newest[:, None]).square().sum(-1))
    return chosen if points.ndim == 3 else chosen[0]
