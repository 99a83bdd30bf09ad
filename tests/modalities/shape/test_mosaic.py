"""Mosaic-SDF against closed forms: exact on linear SDFs, within the trilinear bound on a sphere,
the partition of unity with the infinity-norm support, the set layout and the normaliser."""

import math
from pathlib import Path

import pytest
import torch

from modalities.shape import Primitive, signed_distance
from modalities.shape.meshing import dense_sdf_grid, extract_mesh, hierarchical_sdf_grid
from modalities.shape.mosaic import (
    MosaicNormaliser,
    MosaicSDF,
    covering_radius,
    evaluate_mosaic,
    fit_mosaic,
    fit_mosaic_to_sdf,
    local_grid,
    mesh_sdf_with_gradient,
    refine_mosaic,
    storage_bytes,
)


def sphere_points(count: int, radius: float, seed: int = 0) -> torch.Tensor:
    directions = torch.randn(count, 3, generator=torch.Generator().manual_seed(seed))
    return radius * directions / directions.norm(dim=1, keepdim=True)


def test_a_linear_sdf_is_reproduced_exactly_everywhere_in_the_band():
    normal = torch.tensor([0.48, -0.6, 0.64])  # unit length

    def plane(points):
        return points @ normal - 0.1

    generator = torch.Generator().manual_seed(0)
    on_plane = torch.rand(3000, 3, generator=generator) * 1.2 - 0.6
    on_plane -= plane(on_plane)[:, None] * normal
    mosaic = fit_mosaic_to_sdf(plane, on_plane, num_grids=40, grid_size=3, band=0.05)
    # The scale rule covers every point within `band` of a surface sample.
    offsets = (torch.rand(3000, generator=generator) * 2 - 1) * 0.049
    queries = on_plane[torch.randperm(3000, generator=generator)] + offsets[:, None] * normal
    values = mosaic.evaluate(queries)
    assert not values.isnan().any()
    torch.testing.assert_close(values, plane(queries), atol=2e-6, rtol=0)


def test_a_sphere_is_within_the_trilinear_error_bound_which_shrinks_with_the_grid_size():
    radius, band = 0.5, 0.05
    surface = sphere_points(4000, radius)

    def sphere(points):
        return points.norm(dim=1) - radius

    queries = surface[:2000] * (1 + (torch.rand(2000, 1) * 2 - 1) * 0.9 * band / radius)
    errors = {}
    for grid_size in (5, 9):
        mosaic = fit_mosaic_to_sdf(sphere, surface, num_grids=64, grid_size=grid_size, band=band)
        scale = mosaic.scales[0].item()
        assert scale == pytest.approx(covering_radius(surface, mosaic.centres) + band)
        spacing = 2 * scale / (grid_size - 1)
        # |f - I f| <= h^2 / 8 (f_xx + f_yy + f_zz) = h^2 / 8 * 2 / |x|, with |x| >= R - sqrt(3) s
        bound = spacing**2 / 8 * 2 / (radius - math.sqrt(3) * scale)
        errors[grid_size] = (mosaic.evaluate(queries) - sphere(queries)).abs().max().item()
        assert errors[grid_size] <= bound
    assert errors[9] < errors[5] / 3  # second order: (4 / 8)^2 = 1 / 4


def two_grids(first: float, second: float) -> MosaicSDF:
    centres = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
    grids = torch.tensor([first, second])[:, None, None, None].expand(2, 3, 3, 3)
    return MosaicSDF(centres, torch.tensor([0.3, 0.3]), grids.clone())


def test_weights_are_a_partition_of_unity_over_infinity_norm_cubes():
    mosaic = two_grids(1.0, 3.0)
    points = torch.tensor(
        [
            [0.25, 0.0, 0.0],  # both grids, equal weights
            [0.1, 0.2, 0.0],  # the first only (|.|_inf = 0.4 from the second centre)
            [0.4, 0.15, 0.0],  # the second only (0.4 from the first centre)
            [0.1, 0.28, 0.28],  # in the first cube, outside its inscribed ball (|.|_2 = 0.41)
            [2.0, 0.0, 0.0],  # in no cube
        ]
    )
    values = mosaic.evaluate(points)
    torch.testing.assert_close(values[:4], torch.tensor([2.0, 1.0, 3.0, 1.0]))
    assert values[4].isnan()
    # unequal weights: at (0.2, 0, 0) w = (1 - 0.2/0.3, 1 - 0.3/0.3) = (1/3, 0); at x = 0.3,
    # w = (0, 1 - 0.2/0.3): the blend moves from 1 to 3 linearly in between.
    line = torch.tensor([[0.22, 0.0, 0.0], [0.25, 0.05, 0.0]])
    w_first = torch.tensor([1 - 0.22 / 0.3, 1 - 0.25 / 0.3])
    w_second = torch.tensor([1 - 0.28 / 0.3, 1 - 0.25 / 0.3])
    expected = (w_first * 1 + w_second * 3) / (w_first + w_second)
    torch.testing.assert_close(mosaic.evaluate(line), expected)


def test_the_set_round_trips_with_its_channel_layout():
    generator = torch.Generator().manual_seed(0)
    mosaic = MosaicSDF(
        torch.rand(6, 3, generator=generator),
        torch.rand(6, generator=generator) + 0.1,
        torch.randn(6, 4, 4, 4, generator=generator),
    )
    rows = mosaic.to_set()
    assert rows.shape == (6, 4 + 4**3)
    assert rows[2, 3] == mosaic.scales[2]
    assert rows[2, 4 + (1 * 4 + 2) * 4 + 3] == mosaic.grids[2, 1, 2, 3]
    back = MosaicSDF.from_set(rows, 4)
    for name in ("centres", "scales", "grids"):
        assert torch.equal(getattr(back, name), getattr(mosaic, name))
    assert storage_bytes(1024, 7) == 1024 * 347 * 4
    assert storage_bytes(1024, 7, torch.float16) == 1024 * 347 * 2


def test_bad_sets_and_bad_points_are_refused():
    rows = two_grids(1.0, 2.0).to_set()
    with pytest.raises(ValueError, match=r"must be \[n, 68\] \(3 \+ 1 \+ 4\^3\), got \[2, 31\]"):
        MosaicSDF.from_set(rows, 4)
    bad = rows.clone()
    bad[1, 7] = torch.nan
    with pytest.raises(ValueError, match="`grids` hold non-finite values"):
        MosaicSDF.from_set(bad, 3)
    bad = rows.clone()
    bad[0, 3] = -0.1
    with pytest.raises(ValueError, match="scales must be > 0"):
        MosaicSDF.from_set(bad, 3)
    with pytest.raises(ValueError, match=r"points must be \[P, 3\]"):
        two_grids(1.0, 2.0).evaluate(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="grid_size"):
        local_grid(1)


def test_the_normaliser_standardises_each_channel_and_inverts_exactly(tmp_path: Path):
    generator = torch.Generator().manual_seed(0)
    sets = torch.randn(3, 50, 12, generator=generator) * torch.arange(1, 13) + 5
    sets[..., 3] = 0.2  # a constant channel (one scale for all grids)
    normaliser = MosaicNormaliser.fit(sets)
    normalised = normaliser.normalise(sets).reshape(-1, 12)
    torch.testing.assert_close(normalised.mean(0), torch.zeros(12), atol=1e-5, rtol=0)
    expected_std = torch.ones(12)
    expected_std[3] = 0
    torch.testing.assert_close(normalised.std(0, correction=0), expected_std, atol=1e-5, rtol=0)
    torch.testing.assert_close(normaliser.denormalise(normaliser.normalise(sets)), sets)
    normaliser.save(tmp_path / "stats.json")
    loaded = MosaicNormaliser.load(tmp_path / "stats.json")
    assert torch.equal(loaded.mean, normaliser.mean) and torch.equal(loaded.std, normaliser.std)
    with pytest.raises(ValueError, match="must have 12 channels, got 13"):
        normaliser.normalise(torch.zeros(5, 13))
    (tmp_path / "bad.json").write_text('{"mean": [0.0]}')
    with pytest.raises(ValueError, match=r"bad.json: not mosaic statistics"):
        MosaicNormaliser.load(tmp_path / "bad.json")


def test_the_mesh_of_a_fitted_torus_matches_the_torus():
    torus = Primitive("torus", radius=0.55, minor_radius=0.2)
    mosaic = fit_mosaic(torus.mesh(), num_grids=256, grid_size=5, surface_samples=8000)
    mesh = mosaic.mesh(resolution=96)
    assert mesh.is_watertight  # no surface at the band's edges, no hole at the surface
    # F-score@0.01 with exact point-to-surface distances (closed form one way, the extracted
    # mesh the other), free of the sampling floor of point-set distances.
    predicted = torch.as_tensor(mesh.sample(5000, seed=0), dtype=torch.float32)
    target = torch.as_tensor(torus.mesh().sample(5000, seed=1), dtype=torch.float32)
    precision = (torus.sdf(predicted).abs() < 0.01).double().mean()
    recall = (torch.as_tensor(signed_distance(mesh, target)).abs() < 0.01).double().mean()
    assert 2 * precision * recall / (precision + recall) > 0.99
    assert torus.sdf(torch.as_tensor(mesh.vertices)).abs().max() < 0.005


def test_the_splatted_grid_and_the_hierarchical_grid_give_the_dense_grid():
    sphere = Primitive("sphere", radius=0.5)
    mosaic = fit_mosaic_to_sdf(sphere.sdf, sphere_points(3000, 0.5), 48, 4, band=0.12)
    dense = dense_sdf_grid(mosaic.evaluate, 32, partial=True)
    splatted = mosaic.sdf_grid(32)
    assert torch.equal(splatted.isnan(), dense.isnan())
    assert 0.05 < dense.isnan().float().mean() < 0.95  # inside and outside are uncovered
    torch.testing.assert_close(splatted, dense, equal_nan=True)
    grid, evaluated = hierarchical_sdf_grid(mosaic.evaluate, 32, levels=1, partial=True)
    assert evaluated < dense.numel()
    known = ~grid.isnan()
    assert torch.equal(grid[known].sign(), dense[known].sign())
    near = dense.abs() < 1 / 16 * math.sqrt(3)  # within half a coarse diagonal: exact
    torch.testing.assert_close(grid[near], dense[near])
    first, second = extract_mesh(dense), extract_mesh(grid)
    assert len(first.faces) == len(second.faces)
    torch.testing.assert_close(torch.as_tensor(second.vertices), torch.as_tensor(first.vertices))


def test_refinement_lowers_the_error_near_the_surface():
    sphere = Primitive("sphere", radius=0.5)
    surface = sphere_points(2000, 0.5)
    mosaic = fit_mosaic_to_sdf(sphere.sdf, surface, num_grids=16, grid_size=3, band=0.05)
    points = surface * (1 + 0.05 * torch.randn(2000, 1, generator=torch.Generator().manual_seed(1)))
    target, gradient = sphere.sdf(points), points / points.norm(dim=1, keepdim=True)

    def error(m: MosaicSDF) -> float:
        values = evaluate_mosaic(m.centres, m.scales, m.grids, points)
        return (values - target).abs().nanmean().item()

    refined = refine_mosaic(mosaic, points, target, gradient, steps=40, learning_rate=3e-3)
    assert error(refined) < 0.7 * error(mosaic)


def test_the_mesh_sdf_gradient_is_the_radial_direction_on_a_sphere():
    mesh = Primitive("sphere", radius=0.5, resolution=128).mesh()
    points = sphere_points(200, 0.5) * torch.linspace(0.3, 1.6, 200)[:, None]
    distance, gradient = mesh_sdf_with_gradient(mesh)(points)
    radial = points / points.norm(dim=1, keepdim=True)
    torch.testing.assert_close(distance, points.norm(dim=1) - 0.5, atol=2e-3, rtol=0)
    assert ((gradient * radial).sum(1) > 0.99).all()
