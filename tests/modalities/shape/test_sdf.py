"""Sampling a mesh's SDF, and the cache that computes it once."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmflow.files import load_weights, save_weights
from modalities.shape import (
    MeshError,
    Primitive,
    SDFSamples,
    SDFSettings,
    cached_sdf_samples,
    sample_sdf,
    signed_distance,
)

SMALL = SDFSettings(num_surface=300, num_near=400, num_uniform=500, seed=3)


def test_samples_have_the_settings_counts_and_the_exact_distances():
    shape = Primitive("box", extents=(1.2, 0.8, 1.0))
    samples = sample_sdf(shape.mesh(), SMALL)
    assert samples.surface_points.shape == samples.surface_normals.shape == (300, 3)
    assert samples.near_points.shape == (400, 3) and samples.near_sdf.shape == (400,)
    assert samples.uniform_points.shape == (500, 3) and samples.uniform_sdf.shape == (500,)
    assert samples.uniform_points.abs().max() <= 1
    torch.testing.assert_close(samples.near_sdf, shape.sdf(samples.near_points))
    torch.testing.assert_close(samples.uniform_sdf, shape.sdf(samples.uniform_points))
    assert shape.sdf(samples.surface_points).abs().max() < 1e-6
    torch.testing.assert_close(samples.surface_normals.norm(dim=1), torch.ones(300))


def test_near_points_use_both_offset_scales_and_the_normals_point_outwards():
    shape = Primitive("sphere", radius=0.6)
    samples = sample_sdf(shape.mesh(), SMALL)
    fine, coarse = samples.near_sdf[:200].abs(), samples.near_sdf[200:].abs()
    assert fine.median() < 0.006 < coarse.median() < 0.06
    outward = (samples.surface_normals * samples.surface_points).sum(1)
    assert (outward > 0).all()


def test_samples_are_seeded():
    mesh = Primitive("torus", radius=0.5, minor_radius=0.2).mesh()
    first, again = sample_sdf(mesh, SMALL), sample_sdf(mesh, SMALL)
    other = sample_sdf(mesh, SDFSettings(num_surface=300, num_near=400, num_uniform=500, seed=4))
    assert torch.equal(first.near_points, again.near_points)
    assert not torch.equal(first.near_points, other.near_points)


def test_bad_points_and_settings_are_refused():
    mesh = Primitive("sphere").mesh()
    with pytest.raises(ValueError, match=r"\[N, 3\], got \[4, 2\]"):
        signed_distance(mesh, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="num_near"):
        SDFSettings(num_near=0)
    with pytest.raises(ValueError, match="near_scales"):
        SDFSettings(near_scales=(0.01, -1.0))


def test_the_cache_computes_once_and_records_a_manifest(tmp_path: Path):
    mesh = Primitive("capsule", radius=0.3, length=0.8).mesh()
    mesh.apply_translation((2.0, 0.0, 0.0))
    path = tmp_path / "capsule.obj"
    mesh.export(path)
    cache = tmp_path / "cache"
    first = cached_sdf_samples(path, SMALL, cache)
    entries = sorted((cache / "shape" / "sdf").glob("*.json"))
    assert len(entries) == 1
    manifest = json.loads(entries[0].read_text())
    assert manifest["source"] == str(path.resolve())
    assert manifest["settings"]["num_near"] == 400
    assert manifest["normalisation"]["centre"] == pytest.approx([2.0, 0.0, 0.0], abs=1e-6)
    assert manifest["normalisation"]["scale"] == pytest.approx(0.9 / 0.7)
    assert first.surface_points.abs().max() <= 0.9 + 1e-5
    stored = entries[0].with_suffix(".safetensors")
    tensors = load_weights(stored)
    tensors["near_sdf"] = torch.full_like(tensors["near_sdf"], 7.0)
    save_weights(stored, tensors)
    assert torch.equal(cached_sdf_samples(path, SMALL, cache).near_sdf, tensors["near_sdf"])
    changed = SDFSettings(num_surface=300, num_near=400, num_uniform=500, seed=4)
    cached_sdf_samples(path, changed, cache)
    assert len(list((cache / "shape" / "sdf").glob("*.json"))) == 2


def test_a_corrupt_cache_entry_or_mesh_file_is_named(tmp_path: Path):
    path = tmp_path / "sphere.stl"
    Primitive("sphere").mesh().export(path)
    cache = tmp_path / "cache"
    cached_sdf_samples(path, SMALL, cache)
    (stored,) = (cache / "shape" / "sdf").glob("*.safetensors")
    tensors = load_weights(stored)
    tensors["uniform_sdf"][0] = float("nan")
    save_weights(stored, tensors)
    with pytest.raises(ValueError, match=rf"{stored.name}: non-finite values in \['uniform_sdf'\]"):
        cached_sdf_samples(path, SMALL, cache)
    with pytest.raises(ValueError, match=r"x: SDF samples lack \['surface_normals', 'near_points'"):
        SDFSamples.from_dict({"surface_points": torch.zeros(1, 3)}, "x")
    broken = tmp_path / "broken.stl"
    broken.write_bytes(b"")
    with pytest.raises(MeshError, match=r"broken\.stl: empty file"):
        cached_sdf_samples(broken, SMALL, cache)
