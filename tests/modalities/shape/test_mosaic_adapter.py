"""The Mosaic-SDF adapter: standardised sets in, meshes out, checked on fitted primitives whose
surfaces are known in closed form."""

from pathlib import Path

import pytest
import torch
import trimesh

from modalities.shape import (
    MosaicAdapter,
    MosaicNormaliser,
    MosaicSDF,
    MosaicSettings,
    Primitive,
    normalise_mesh,
)
from modalities.shape.evaluators import reconstruction_scores
from modalities.shape.meshing import dense_sdf_grid
from modalities.shape.mosaic_adapter import MIN_SCALE

SETTINGS = MosaicSettings(refine_steps=0, surface_samples=20_000)  # 64 grids of 5^3
PRIMITIVES = [
    Primitive("torus", radius=0.55, minor_radius=0.2),
    Primitive("capsule", radius=0.3, length=0.8),
    Primitive("sphere", radius=0.7),
]


@pytest.fixture(scope="module")
def fitted(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[trimesh.Trimesh], torch.Tensor, Path]:
    """The normalised primitives, their mosaics' sets ``[3, 64, 129]`` and statistics fitted
    on those sets."""
    meshes = [normalise_mesh(primitive.mesh(), SETTINGS.margin)[0] for primitive in PRIMITIVES]
    sets = torch.stack([SETTINGS.fit(mesh).to_set() for mesh in meshes])
    statistics = tmp_path_factory.mktemp("mosaic") / "statistics.json"
    MosaicNormaliser.fit(sets).save(statistics)
    return meshes, sets, statistics


def adapter(statistics: Path, **kwargs) -> MosaicAdapter:
    return MosaicAdapter(str(statistics), grid_size=5, num_grids=64, mesh_resolution=64, **kwargs)


def test_encode_standardises_and_decode_meshes_the_primitives_back(fitted):
    meshes, sets, statistics = fitted
    flow = adapter(statistics, num_classes=2, num_points=1000)
    x1, cond = flow.encode({"mosaic": sets, "label": torch.tensor([0, 1, 1])})
    # standardised over exactly these sets: every varying channel has mean 0 and deviation 1
    rows = x1.reshape(-1, 129)
    varying = sets.reshape(-1, 129).std(0) > 1e-6
    torch.testing.assert_close(rows.mean(0), torch.zeros(129), atol=1e-4, rtol=0)
    torch.testing.assert_close(rows.std(0, correction=0)[varying], torch.ones(int(varying.sum())))
    assert cond["class_labels"].tolist() == [0, 1, 1]
    shapes = flow.decode(x1, cond)
    for mesh, decoded in zip(meshes, shapes.meshes, strict=True):
        assert decoded.is_watertight
        assert reconstruction_scores(decoded, mesh, samples=20_000)["f_score"] > 0.97
    # The torus's points against its closed form in the normalised frame (scaled by 0.9 / 0.75),
    # within the trilinear bound h^2 / 8 (1 / r + 1 / (R - r)) for the grid spacing
    # h = 2 s / (k - 1) (the principal curvatures of the SDF near the tube) and 0.001 for
    # marching cubes.
    radius, minor_radius = 0.55 * 1.2, 0.2 * 1.2
    torus = Primitive("torus", radius=radius, minor_radius=minor_radius)
    spacing = 2 * sets[0, :, 3].max() / 4
    bound = spacing**2 / 8 * (1 / minor_radius + 1 / (radius - minor_radius)) + 0.001
    assert torus.sdf(shapes.points[0]).abs().max() < bound
    shape, sampled = flow.sample_conditions(4)
    assert shape == (4, 64, 129) and sampled["class_labels"].tolist() == [0, 1, 0, 1]


def test_a_set_without_surface_is_none_and_negative_scales_drop_their_grid(fitted):
    _, sets, statistics = fitted
    flow = adapter(statistics)
    positive = sets[0].clone()
    positive[:, 4:] = 0.1  # every value outside: no sign change
    assert flow.mesh(flow.normaliser.normalise(positive)) is None
    shrunk = sets[0].clone()
    shrunk[:, 3] = -0.2  # no grid has extent: no vertex is covered
    assert flow.mesh(flow.normaliser.normalise(shrunk)) is None
    one_negative = sets[1].clone()
    one_negative[5, 3] = -0.2
    clamped = flow.mosaic(flow.normaliser.normalise(one_negative))
    assert clamped.scales[5] == MIN_SCALE and (clamped.scales > 0.1).sum() == 63
    keep = torch.arange(64) != 5
    without = MosaicSDF(clamped.centres[keep], clamped.scales[keep], clamped.grids[keep])
    torch.testing.assert_close(
        clamped.sdf_grid(64), without.sdf_grid(64), equal_nan=True, rtol=0, atol=0
    )
    nan = sets[2].clone()
    nan[0, 10] = torch.nan
    with pytest.raises(ValueError, match="non-finite"):
        flow.mesh(flow.normaliser.normalise(nan))


def test_cubes_wider_than_the_domain_mesh_in_bounded_chunks(fitted):
    """Generated scales can be far above the data's: 16 grids whose cubes hold all 65^3
    vertices are splatted a few grids at a time and still give the dense grid."""
    _, sets, _ = fitted
    rows = sets[0, :16].clone()
    rows[:, 3] = 1.2
    mosaic = MosaicSDF.from_set(rows, 5)
    dense = dense_sdf_grid(mosaic.evaluate, 64, partial=True)
    torch.testing.assert_close(mosaic.sdf_grid(64), dense, equal_nan=True)


def test_bad_statistics_and_batches_are_refused_by_name(fitted, tmp_path: Path):
    _, sets, statistics = fitted
    with pytest.raises(FileNotFoundError, match="missing.json: file missing"):
        adapter(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{mean: ")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        adapter(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text('{"average": [0.0]}')
    with pytest.raises(ValueError, match="other.json: not mosaic statistics"):
        adapter(tmp_path / "other.json")
    MosaicNormaliser(torch.zeros(68), torch.ones(68)).save(tmp_path / "k4.json")
    with pytest.raises(
        ValueError, match=r"k4.json: statistics of 68 channels, but grid_size 5 makes rows of 129"
    ):
        adapter(tmp_path / "k4.json")
    flow = adapter(statistics)
    with pytest.raises(
        ValueError,
        match=r"batch\['mosaic'\] is \[3, 32, 129\], but the adapter expects \[B, 64, 129\]",
    ):
        flow.encode({"mosaic": sets[:, :32]})
    with pytest.raises(KeyError, match="the batch has no `mosaic`"):
        flow.encode({"surface": torch.zeros(1, 8, 6)})
