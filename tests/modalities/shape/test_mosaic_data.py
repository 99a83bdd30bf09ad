"""Mosaics as data: the per-mesh cache and its manifest, MeshFolder's ``mosaic``, the exact
augmentation of a mosaic and the statistics command."""

import json
import math
from pathlib import Path

import pytest
import torch

from mmflow.files import load_weights, save_weights
from modalities.shape import (
    Augmentation,
    MeshFolder,
    MosaicNormaliser,
    MosaicSDF,
    MosaicSettings,
    Primitive,
    SDFSettings,
    cached_mosaic,
    load_mesh,
    normalise_mesh,
    write_primitive_folder,
)
from modalities.shape.mosaic_stats import main, training_statistics

SMALL = MosaicSettings(num_grids=64, grid_size=5, refine_steps=0, surface_samples=4000)
SMALL_SDF = SDFSettings(num_surface=256, num_near=256, num_uniform=256)


def signed_permutations() -> list[torch.Tensor]:
    """The eight maps of :class:`Augmentation`: quarter turns about z, each with and without
    the mirror x -> -x."""
    matrices = []
    for quarter in range(4):
        cos, sin = round(math.cos(math.pi / 2 * quarter)), round(math.sin(math.pi / 2 * quarter))
        rotation = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
        for mirror in (1.0, -1.0):
            matrices.append(rotation @ torch.diag(torch.tensor([mirror, 1.0, 1.0])))
    return matrices


def mesh_file(tmp_path: Path) -> Path:
    mesh = Primitive("capsule", radius=0.3, length=0.8).mesh()
    mesh.apply_translation((2.0, 0.0, 0.0))
    path = tmp_path / "capsule.obj"
    mesh.export(path)
    return path


def folder(root: Path, cache: Path, **kwargs) -> MeshFolder:
    settings = {"num_points": 64, "num_surface": 32, "batch_size": 8, "mosaic": SMALL}
    return MeshFolder(str(root), sdf=SMALL_SDF, cache_dir=str(cache), **{**settings, **kwargs})


def test_the_cache_fits_once_and_records_a_manifest(tmp_path: Path):
    path, cache = mesh_file(tmp_path), tmp_path / "cache"
    first = cached_mosaic(path, SMALL, cache)
    (manifest_file,) = (cache / "shape" / "mosaic").glob("*.json")
    manifest = json.loads(manifest_file.read_text())
    assert manifest["source"] == str(path.resolve())
    assert manifest["settings"]["num_grids"] == 64 and manifest["pipeline"] == {
        "mesh": 2,
        "mosaic": 1,
    }
    assert manifest["normalisation"]["centre"] == pytest.approx([2.0, 0.0, 0.0], abs=1e-6)
    normalised, _ = normalise_mesh(load_mesh(path), SMALL.margin)
    assert torch.equal(first.to_set(), SMALL.fit(normalised).to_set())
    # The second call reads the entry (a changed value shows it), a changed setting fits anew.
    stored = manifest_file.with_suffix(".safetensors")
    tensors = load_weights(stored)
    tensors["mosaic"][:, 4:] = 7.0
    save_weights(stored, tensors)
    assert (cached_mosaic(path, SMALL, cache).grids == 7.0).all()
    cached_mosaic(path, MosaicSettings(num_grids=16, grid_size=4, refine_steps=0), cache)
    assert len(list((cache / "shape" / "mosaic").glob("*.json"))) == 2


def test_a_corrupt_cache_entry_is_refused_naming_its_file(tmp_path: Path):
    path, cache = mesh_file(tmp_path), tmp_path / "cache"
    cached_mosaic(path, SMALL, cache)
    (stored,) = (cache / "shape" / "mosaic").glob("*.safetensors")
    good = load_weights(stored)["mosaic"]
    cases = {
        "nan": (
            good.clone().index_fill_(1, torch.tensor([9]), torch.nan),
            "`grids` hold non-finite",
        ),
        "scale": (good.clone().index_fill_(1, torch.tensor([3]), 0.0), "scales must be > 0"),
        "shape": (good[:, :20], r"the mosaic is \[64, 20\], the settings make \[64, 129\]"),
    }
    for bad, message in cases.values():
        save_weights(stored, {"mosaic": bad})
        with pytest.raises(ValueError, match=rf"{stored.name}: .*{message}"):
            cached_mosaic(path, SMALL, cache)
    save_weights(stored, {"grids": good})
    with pytest.raises(ValueError, match=rf"{stored.name}: no `mosaic` tensor"):
        cached_mosaic(path, SMALL, cache)
    stored.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=rf"{stored.name}: not a readable safetensors file"):
        cached_mosaic(path, SMALL, cache)
    with pytest.raises(FileNotFoundError, match="missing.obj: no such mesh file"):
        cached_mosaic(tmp_path / "missing.obj", SMALL, cache)
    with pytest.raises(ValueError, match="surface_samples"):
        MosaicSettings(num_grids=64, surface_samples=10)


def test_examples_carry_the_mosaic_in_the_points_normalisation(tmp_path: Path):
    """Each example's ``mosaic`` is its mesh's cached mosaic, and it is in the frame of the
    example's points: near the surface it gives the exact SDF stored beside it, up to the fit."""
    root = write_primitive_folder(tmp_path / "shapes", per_kind=1)
    data = folder(root, tmp_path / "cache", val_fraction=0.4, test_fraction=0.0)
    batch = next(iter(data.val_dataloader()))
    assert batch["mosaic"].shape == (2, 64, 4 + 5**3)
    for index, path in enumerate(data.files["val"]):
        rows = batch["mosaic"][index]
        assert torch.equal(rows, cached_mosaic(path, SMALL, tmp_path / "cache").to_set())
        points, sdf = batch["points"][index, :32], batch["sdf"][index, :32]
        close = sdf.abs() < 0.02  # inside the band every point is covered
        values = MosaicSDF.from_set(rows, 5).evaluate(points[close])
        # the fit's error is about 0.005; the points moved by 5 % are off by 0.02 or more
        assert close.sum() > 10 and (values - sdf[close]).abs().mean() < 0.01
    with pytest.raises(
        ValueError, match=r"`mosaic.margin` \(0.8\) must equal `sdf.margin` \(0.9\)"
    ):
        MeshFolder(str(root), mosaic=MosaicSettings(margin=0.8))
    without = folder(root, tmp_path / "cache", val_fraction=0.4, test_fraction=0.0, mosaic=None)
    assert "mosaic" not in next(iter(without.val_dataloader()))


def test_a_moved_mosaic_is_the_mosaic_of_the_moved_shape():
    """``F'(x) = s F(Q^T x / s)`` at every point, uncovered points included, for all eight
    quarter turns and mirrors; other matrices do not map the grid onto itself."""
    generator = torch.Generator().manual_seed(0)
    mosaic = MosaicSDF(
        torch.rand(24, 3, generator=generator, dtype=torch.float64) - 0.5,
        torch.rand(24, generator=generator, dtype=torch.float64) * 0.2 + 0.15,
        torch.randn(24, 4, 4, 4, generator=generator, dtype=torch.float64),
    )
    points = torch.rand(4000, 3, generator=generator, dtype=torch.float64) * 1.4 - 0.7
    for matrix in signed_permutations():
        matrix = matrix.double()
        for scale in (1.0, 0.7):
            moved, query = mosaic.transformed(matrix, scale), scale * points
            expected = scale * mosaic.evaluate(query @ matrix / scale)
            torch.testing.assert_close(moved.evaluate(query), expected, equal_nan=True)
            assert 0.05 < expected.isnan().double().mean() < 0.95
    turn = torch.tensor([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="only signed permutation matrices"):
        mosaic.transformed(turn, 1.0)
    with pytest.raises(ValueError, match="`scale` must be > 0"):
        mosaic.transformed(torch.eye(3), 0.0)


def test_augmented_examples_carry_the_moved_box_mosaic(tmp_path: Path):
    """A box of three different sides, augmented: each example's mosaic gives the example's SDF
    (the exact SDF of the moved box) near the surface, and is exactly the unmoved mosaic moved
    by the example's map, which its scales and centres reveal."""
    (tmp_path / "one").mkdir()
    Primitive("box", extents=(1.8, 0.6, 1.2)).mesh().export(tmp_path / "one" / "box.obj")
    augmentation = Augmentation(quarter_turns=True, mirror=True, scale=(0.6, 1.0))
    data = folder(tmp_path / "one", tmp_path / "cache", augmentation=augmentation)
    data.val_fraction = data.test_fraction = 0.0
    data.setup()
    original = data.datasets["train"].mosaics[0]
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        example = data.datasets["train"][0]
        moved = MosaicSDF.from_set(example["mosaic"], 5)
        scale = (moved.scales / original.scales).mean().item()
        matrix = torch.linalg.lstsq(original.centres, moved.centres / scale).solution.T.round()
        assert any(torch.equal(matrix, q) for q in signed_permutations())
        seen.add((tuple(matrix.flatten().tolist()), round(scale, 3)))
        points, sdf = example["points"][:32], example["sdf"][:32]
        torch.testing.assert_close(
            moved.evaluate(points),
            scale * original.evaluate(points @ matrix / scale),
            equal_nan=True,
        )
        close = sdf.abs() < 0.02 * scale
        assert (moved.evaluate(points[close]) - sdf[close]).abs().mean() < 0.01
    assert len({m for m, _ in seen}) > 3 and len({s for _, s in seen}) > 3


def test_the_statistics_command_standardises_the_training_mosaics_only(tmp_path: Path):
    root = write_primitive_folder(tmp_path / "shapes", per_kind=2)
    cache, out = tmp_path / "cache", tmp_path / "stats.json"
    options = {
        "root": root,
        "out": out,
        "cache_dir": cache,
        "num_points": 64,
        "num_surface": 32,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "sdf.num_surface": 256,
        "sdf.num_near": 256,
        "sdf.num_uniform": 256,
        **{f"mosaic.{key}": getattr(SMALL, key) for key in ("num_grids", "grid_size")},
        "mosaic.refine_steps": 0,
        "mosaic.surface_samples": 4000,
    }
    main([f"--{key}={value}" for key, value in options.items()])
    written = json.loads(out.read_text())
    training = [Path(name) for name in written["training_files"]]
    assert len(training) == 6 and written["mosaic"]["num_grids"] == 64
    expected = MosaicNormaliser.fit([cached_mosaic(p, SMALL, cache).to_set() for p in training])
    loaded = MosaicNormaliser.load(out)
    torch.testing.assert_close(loaded.mean, expected.mean)
    torch.testing.assert_close(loaded.std, expected.std)
    held_out = folder(root, cache, val_fraction=0.2, test_fraction=0.2)
    held_out.setup()
    assert set(training) == set(held_out.files["train"])
    everything = MosaicNormaliser.fit(
        [cached_mosaic(p, SMALL, cache).to_set() for p in sorted(root.rglob("*.obj"))]
    )
    assert not torch.allclose(everything.mean, loaded.mean)
    with pytest.raises(ValueError, match="no `mosaic` settings"):
        training_statistics(MeshFolder(str(root)))
