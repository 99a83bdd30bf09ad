"""The latent-set adapter: encoding through the frozen VAE, meshes out, and its evaluators on
generations whose answers are known (decoders replaced by exact sphere SDFs)."""

from pathlib import Path

import pytest
import torch

from modalities.shape import GeneratedShapes, ShapeLatentAdapter, ShapeVAE


@pytest.fixture
def vae_folder(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    vae = ShapeVAE(width=16, num_heads=2, num_latents=6, latent_channels=3, num_frequencies=2)
    return vae.save_pretrained(tmp_path / "vae")


def sphere_surface(radius: float, count: int = 256, seed: int = 0) -> torch.Tensor:
    """``[count, 6]`` points on a sphere at the origin with their normals."""
    generator = torch.Generator().manual_seed(seed)
    normals = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=-1)
    return torch.cat([radius * normals, normals], dim=1)


def radius_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode a latent set as the sphere whose radius is its first value (no sphere for a
    negative one)."""
    monkeypatch.setattr(
        ShapeVAE,
        "sdf_function",
        lambda self, latents: lambda x: x.norm(dim=-1) - latents[0, 0].item(),
    )


def test_encode_is_the_frozen_vae_and_the_null_class_is_num_classes(vae_folder: Path):
    adapter = ShapeLatentAdapter(str(vae_folder), num_classes=3)
    batch = {
        "surface": torch.stack([sphere_surface(0.5), sphere_surface(0.7)]),
        "label": torch.tensor([0, 2]),
    }
    x1, cond = adapter.encode(batch)
    torch.testing.assert_close(x1, adapter.vae.encode(batch["surface"]))
    assert x1.shape == (2, 6, 3) and adapter.latent_shape == (6, 3)
    assert adapter.null_condition(cond)["class_labels"].tolist() == [3, 3]
    assert not any(name.startswith("vae") for name in adapter.state_dict())
    shape, sampled = adapter.sample_conditions(4)
    assert shape == (4, 6, 3) and sampled["class_labels"].tolist() == [0, 1, 2, 0]
    with pytest.raises(ValueError, match=r"labels \[0, 2\] do not fit num_classes=2"):
        ShapeLatentAdapter(str(vae_folder), num_classes=2).encode(batch)
    unconditional = ShapeLatentAdapter(str(vae_folder))
    assert unconditional.encode(batch)[1] == {} and not unconditional.conditioned()


def test_decode_meshes_each_set_and_a_set_without_surface_is_none(vae_folder, monkeypatch):
    radius_decoder(monkeypatch)
    adapter = ShapeLatentAdapter(str(vae_folder), mesh_resolution=32, num_points=500)
    latents = torch.zeros(2, 6, 3)
    latents[0, 0, 0], latents[1, 0, 0] = 0.6, -1.0
    shapes = adapter.decode(latents, {})
    assert isinstance(shapes, GeneratedShapes) and len(shapes) == 2
    assert shapes.meshes[0].is_watertight and shapes.meshes[1] is None
    radii = shapes.points[0].norm(dim=-1)
    assert radii.min() > 0.59 and radii.max() < 0.61
    assert shapes.points[1].abs().max() == 0


def test_evaluators_score_generations_against_the_batch(vae_folder, monkeypatch):
    """Generated spheres of radii 0.3 and 0.6 against real ones of 0.3 and 0.6: every real
    shape is covered and MMD is the sampling floor; one
    missing surface out of two halves the watertight share."""
    radius_decoder(monkeypatch)
    adapter = ShapeLatentAdapter(str(vae_folder), mesh_resolution=32, num_points=1500)
    latents = torch.zeros(2, 6, 3)
    latents[0, 0, 0], latents[1, 0, 0] = 0.3, 0.6
    batch = {"surface": torch.stack([sphere_surface(0.3, 1500, 1), sphere_surface(0.6, 1500, 2)])}
    metrics = adapter.evaluators()
    shapes = adapter.decode(latents, {})
    for metric in metrics.values():
        metric.update(shapes, batch)
    generation = metrics["generation"].compute()
    assert generation["cov"].item() == 1.0
    assert generation["mmd"].item() < 0.01  # the sampling floor; the radii differ by 2 * 0.3^2
    assert metrics["watertight"].compute().item() == 1.0
    latents[1, 0, 0] = -1.0
    metrics["watertight"].update(adapter.decode(latents, {}), batch)
    assert metrics["watertight"].compute().item() == pytest.approx(3 / 4)


def test_save_media_writes_meshes_and_one_preview(vae_folder, monkeypatch, tmp_path):
    radius_decoder(monkeypatch)
    adapter = ShapeLatentAdapter(str(vae_folder), mesh_resolution=16, mesh_levels=1)
    latents = torch.zeros(3, 6, 3)
    latents[:, 0, 0] = torch.tensor([0.4, -1.0, 0.8])
    written = adapter.save_media(adapter.decode(latents, {}), tmp_path / "media", "val")
    assert sorted(p.name for p in written) == ["val.png", "val_0.glb", "val_2.glb"]
    assert all(p.stat().st_size > 0 for p in written)
