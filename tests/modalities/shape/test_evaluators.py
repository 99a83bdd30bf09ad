"""Shape metrics against hand-computed cases."""

import math

import pytest
import torch
import trimesh

from modalities.shape import Primitive
from modalities.shape.evaluators import (
    ChamferDistance,
    FScore,
    GenerationMetrics,
    NormalConsistency,
    VolumetricIoU,
    nearest_neighbours,
    pairwise_chamfer,
    reconstruction_scores,
    surface_distances,
    watertight_share,
)


def points(*rows) -> torch.Tensor:
    return torch.tensor([list(rows)], dtype=torch.float32)


def test_nearest_neighbours_by_hand_and_across_chunks():
    a = torch.tensor([[0.0, 0, 0], [3.0, 0, 0], [0.0, 0, 2]])
    b = torch.tensor([[1.0, 0, 0], [0.0, 0, 1.5]])
    distances, indices = nearest_neighbours(a, b, chunk=2)
    torch.testing.assert_close(distances, torch.tensor([1.0, 4.0, 0.25]))
    assert indices.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="M > 0"):
        nearest_neighbours(a, b[:0])


def test_chamfer_by_hand():
    metric = ChamferDistance()
    metric.update(points((0.0, 0, 0)), points((1.0, 0, 0)))
    assert metric.compute().item() == pytest.approx(2.0)  # 1 each way
    metric.reset()
    metric.update(points((0.0, 0, 0), (1.0, 0, 0)), points((0.0, 0, 0)))
    assert metric.compute().item() == pytest.approx(0.5)  # (0 + 1) / 2 forward, 0 backward
    metric.update(points((0.0, 0, 0), (1.0, 0, 0)), points((0.0, 0, 0), (1.0, 0, 0)))
    assert metric.compute().item() == pytest.approx(0.25)  # mean over the two shapes


def test_f_score_by_hand():
    pred, target = points((0.0, 0, 0), (1.0, 0, 0)), points((0.0, 0, 0))
    metric = FScore(threshold=0.5)
    metric.update(pred, target)
    assert metric.compute().item() == pytest.approx(2 * 0.5 * 1 / 1.5)  # P = 1/2, R = 1
    far = FScore(threshold=0.5)
    far.update(points((0.0, 0, 0)), points((1.0, 0, 0)))
    assert far.compute().item() == 0.0
    near = FScore(threshold=1.5)
    near.update(points((0.0, 0, 0)), points((1.0, 0, 0)))
    assert near.compute().item() == 1.0
    with pytest.raises(ValueError, match="threshold"):
        FScore(threshold=0.0)


def test_normal_consistency_by_hand():
    up, side = (0.0, 0, 1), (0.0, 1, 0)
    metric = NormalConsistency()
    metric.update(points((0.0, 0, 0, *up)), points((0.1, 0, 0, 0.0, 0, -2.0)))
    assert metric.compute().item() == pytest.approx(1.0)  # flipped and unnormalised: still 1
    metric.reset()
    tilted = (0.0, math.sqrt(0.5), math.sqrt(0.5))
    metric.update(points((0.0, 0, 0, *up), (5.0, 0, 0, *side)), points((0.0, 0, 0, *tilted)))
    # forward: |up . tilted| = |side . tilted| = sqrt(1/2); backward: nearest is (0,0,0): sqrt(1/2)
    assert metric.compute().item() == pytest.approx(math.sqrt(0.5))


def test_volumetric_iou_by_hand_and_of_two_spheres():
    metric = VolumetricIoU()
    metric.update(torch.tensor([[-1.0, -1, 1, 1]]), torch.tensor([[-1.0, 1, -1, 1]]))
    assert metric.compute().item() == pytest.approx(1 / 3)
    metric.reset()
    metric.update(torch.ones(1, 4), torch.ones(1, 4))
    assert metric.compute().item() == 1.0
    generator = torch.Generator().manual_seed(0)
    queries = torch.rand(200_000, 3, generator=generator) * 2 - 1
    small, large = Primitive("sphere", radius=0.5), Primitive("sphere", radius=0.8)
    metric.reset()
    metric.update(small.sdf(queries)[None], large.sdf(queries)[None])
    assert metric.compute().item() == pytest.approx((0.5 / 0.8) ** 3, abs=0.01)


def test_a_sphere_against_itself_and_a_larger_one():
    """Surface samples of a sphere against another sample of it, and against the same points
    pushed radially onto a sphere 0.05 larger: each point's nearest neighbour is then its own
    image (for c = k a with |a_i| = |a_j|, |a_i - k a_j| is least at j = i), every distance is
    0.05 and Chamfer-L2 is exactly 2 * 0.05^2."""
    sphere = Primitive("sphere", radius=0.6)
    a = torch.as_tensor(sphere.mesh().sample(4000, seed=0), dtype=torch.float64)
    a = (0.6 * a / a.norm(dim=1, keepdim=True))[None]
    b = torch.as_tensor(sphere.mesh().sample(4000, seed=1), dtype=torch.float64)[None]
    c = a * 0.65 / 0.6
    f_score = FScore(threshold=0.05)
    f_score.update(a, b)
    assert f_score.compute().item() > 0.99
    chamfer = ChamferDistance()
    chamfer.update(a, c)
    assert chamfer.compute().item() == pytest.approx(2 * 0.05**2, rel=1e-6)
    below, above = FScore(threshold=0.049), FScore(threshold=0.051)
    below.update(a, c)
    above.update(a, c)
    assert below.compute().item() == 0.0 and above.compute().item() == 1.0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same B"):
        ChamferDistance().update(torch.zeros(2, 3, 3), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="6 values"):
        NormalConsistency().update(torch.zeros(1, 3, 3), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="non-finite point"):
        FScore().update(torch.full((1, 2, 3), float("nan")), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="non-finite SDF"):
        VolumetricIoU().update(torch.tensor([[float("inf")]]), torch.zeros(1, 1))


def single_points(*xs: float) -> torch.Tensor:
    """One-point shapes on the x-axis: their Chamfer distance is 2 (x - y)^2."""
    return torch.tensor([[[x, 0.0, 0.0]] for x in xs], dtype=torch.float64)


def test_pairwise_chamfer_by_hand():
    distances = pairwise_chamfer(single_points(0.0, 1.0), single_points(0.0, 3.0))
    torch.testing.assert_close(
        distances, torch.tensor([[0.0, 18.0], [2.0, 8.0]], dtype=torch.float64)
    )


def test_generation_metrics_by_hand():
    """Generated 0.3, 0.45, 20.1 against reference 0, 10, 20 (see the comments)."""
    metric = GenerationMetrics()
    metric.update(single_points(0.3, 0.45), single_points(0.0, 10.0))
    metric.update(single_points(20.1), single_points(20.0))
    scores = metric.compute()
    # nearest references of the generated shapes: 0, 0, 20 -> two of three covered
    assert scores["cov"].item() == pytest.approx(2 / 3)
    # per reference, the closest generated shape: 2 * 0.3^2, 2 * 9.55^2, 2 * 0.1^2
    assert scores["mmd"].item() == pytest.approx((0.18 + 2 * 9.55**2 + 0.02) / 3)
    # leave-one-out nearest: 0.3 <-> 0.45 (right), 20.1 -> 20, 0 -> 0.3, 10 -> 0.45, 20 -> 20.1
    assert scores["1-nna"].item() == pytest.approx(2 / 6)


def test_generation_metrics_of_sets_gathered_from_processes_are_the_same():
    """After a multi-process sync torchmetrics holds each list state as one tensor."""
    metric = GenerationMetrics()
    metric.update(single_points(0.3, 0.45), single_points(0.0, 10.0))
    metric.update(single_points(20.1), single_points(20.0))
    expected = metric.compute()
    metric._computed = None
    metric.generated, metric.reference = torch.cat(metric.generated), torch.cat(metric.reference)
    for name, value in metric.compute().items():
        assert value.item() == pytest.approx(expected[name].item()), name


def test_generation_metrics_refuse_bad_or_missing_sets():
    metric = GenerationMetrics()
    with pytest.raises(ValueError, match=r"generated point sets must be \[B, N, 3\]"):
        metric.update(torch.zeros(2, 3), torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match="non-finite point coordinates in the reference"):
        metric.update(torch.zeros(1, 1, 3), torch.full((1, 1, 3), float("nan")))
    with pytest.raises(ValueError, match="needs generated and reference"):
        metric.compute()


def test_watertight_share():
    closed, open_surface = Primitive("box").mesh(), Primitive("box").mesh()
    open_surface.update_faces(range(10))
    assert watertight_share([closed, open_surface, closed]) == pytest.approx(2 / 3)
    assert watertight_share([]) == 0.0


def test_surface_distances_of_a_cube_by_hand():
    cube = trimesh.creation.box()  # [-0.5, 0.5]^3
    points = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [0.5, 0.5, 0.5], [1.5, 1.5, 0.0]])
    expected = torch.tensor([0.5, 1.0, 0.0, 2**0.5], dtype=torch.float64)
    torch.testing.assert_close(surface_distances(points, cube), expected)


def test_distances_to_the_surface_have_no_sampling_floor():
    """Points on a sphere of radius 0.9 against the surface of one of 0.88 (a fine mesh): every
    distance is 0.02 up to the facets, so F@0.01 = 0, F@0.03 = 1, Chamfer = 2 * 0.02^2. Against
    a second sampling of the same sphere, point-to-point F@0.01 falls short of 1, point-to-
    surface does not."""
    outer = Primitive("sphere", radius=0.9, resolution=256).mesh()
    inner = Primitive("sphere", radius=0.88, resolution=256).mesh()
    a = torch.as_tensor(outer.sample(4000, seed=0), dtype=torch.float32)
    b = torch.as_tensor(inner.sample(4000, seed=1), dtype=torch.float32)
    forward, backward = surface_distances(a, inner)[None], surface_distances(b, outer)[None]
    for threshold, expected in ((0.01, 0.0), (0.03, 1.0)):
        metric = FScore(threshold)
        metric.update(forward, backward)
        assert metric.compute().item() == expected
    chamfer = ChamferDistance()
    chamfer.update(forward, backward)
    assert chamfer.compute().item() == pytest.approx(2 * 0.02**2, rel=0.01)
    again = torch.as_tensor(outer.sample(4000, seed=2), dtype=torch.float32)
    sampled, exact = FScore(0.01), FScore(0.01)
    sampled.update(a[None], again[None])
    exact.update(surface_distances(a, outer)[None], surface_distances(again, outer)[None])
    assert sampled.compute().item() < 0.5 and exact.compute().item() == 1.0
    with pytest.raises(ValueError, match=r"distances must be \[B, N\] and \[B, M\]"):
        chamfer.update(forward, backward[0])


def test_reconstruction_scores_of_two_concentric_spheres():
    """Radii 0.5 and 0.505: every point is 0.005 from the other surface (up to the facets), so
    F@0.01 = 1 and F@0.004 = 0, Chamfer = 2 * 0.005^2 and the normals agree."""
    inner = Primitive("sphere", radius=0.5, resolution=256).mesh()
    outer = Primitive("sphere", radius=0.505, resolution=256).mesh()
    scores = reconstruction_scores(inner, outer, samples=3000)
    assert scores["f_score"] == 1.0
    assert scores["chamfer"] == pytest.approx(2 * 0.005**2, rel=0.02)
    assert scores["normal_consistency"] == pytest.approx(1.0, abs=1e-3)
    assert reconstruction_scores(inner, outer, samples=3000, threshold=0.004)["f_score"] == 0.0
