"""Farthest-point sampling on point sets whose answer is known."""

import pytest
import torch

from modalities.shape.sampling import farthest_point_sampling


def test_points_on_a_line_are_picked_ends_first_then_the_middle():
    line = torch.linspace(0, 1, 101)[:, None]
    chosen = farthest_point_sampling(line, 3, start=0)
    assert chosen.tolist() == [0, 100, 50]


def test_one_point_per_cluster_before_any_second():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0, 0], [5.0, 0, 0], [0.0, 5, 0], [0.0, 0, 5]])
    points = (centres[:, None] + 0.1 * torch.randn(4, 50, 3, generator=generator)).reshape(-1, 3)
    chosen = farthest_point_sampling(points, 4)
    assert sorted((chosen // 50).tolist()) == [0, 1, 2, 3]


def test_covering_radius_is_within_twice_the_grids():
    """Gonzalez's bound: the covering radius of k farthest points is at most twice the best
    k-centre radius. On a 10 x 10 unit grid, 25 centres, one in each 2 x 2 block, cover every
    point within sqrt(2), so farthest-point sampling must reach 2 sqrt(2)."""
    axis = torch.arange(10.0)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    chosen = farthest_point_sampling(grid, 25)
    radius = torch.cdist(grid, grid[chosen]).min(dim=1).values.max()
    assert radius <= 2 * 2**0.5 + 1e-6
    assert chosen.unique().numel() == 25


def test_batches_and_bad_requests():
    points = torch.rand(2, 30, 3, generator=torch.Generator().manual_seed(1))
    batched = farthest_point_sampling(points, 5, start=3)
    assert batched.shape == (2, 5) and torch.equal(
        batched[1], farthest_point_sampling(points[1], 5, 3)
    )
    with pytest.raises(ValueError, match="cannot pick 31 of 30"):
        farthest_point_sampling(points[0], 31)
    with pytest.raises(ValueError, match="`start` 30"):
        farthest_point_sampling(points[0], 2, start=30)
    with pytest.raises(ValueError, match=r"\[N, D\] or \[B, N, D\]"):
        farthest_point_sampling(torch.zeros(3), 1)
