"""The latent-set adapter: encoding through the frozen VAE, the class and image conditions,
meshes out, and its evaluators on generations whose answers are known (decoders replaced by
exact sphere SDFs)."""

from pathlib import Path

import pytest
import torch

from mmflow.modality import drop_conditions
from mmflow.training import FlowMatching
from modalities.shape import (
    GeneratedShapes,
    ShapeImages,
    ShapeLatentAdapter,
    ShapeVAE,
    render_surface,
)
from tests.mmflow.nn.test_conditioning import image_conditioned_mmdit


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


def test_image_condition_is_the_rendered_surface_and_its_null_is_masked(vae_folder: Path):
    settings = ShapeImages(resolution=16)
    adapter = ShapeLatentAdapter(str(vae_folder), images=settings)
    assert adapter.conditioned() and "image_chamfer" in adapter.evaluators()
    batch = {"surface": torch.stack([sphere_surface(0.3, 2000), sphere_surface(0.7, 2000)])}
    _, cond = adapter.encode(batch)
    assert set(cond) == {"image", "image_mask"} and cond["image_mask"].tolist() == [True, True]
    torch.testing.assert_close(cond["image"], render_surface(batch["surface"], settings))
    null = adapter.null_condition(cond)
    assert null["image_mask"].tolist() == [False, False] and null["image"].abs().max() == 0
    mixed = drop_conditions(cond, null, torch.tensor([False, True]))
    assert mixed["image_mask"].tolist() == [True, False]
    torch.testing.assert_close(mixed["image"][0], cond["image"][0])
    shape, sampled = adapter.sample_conditions(3)
    assert shape == (3, 6, 3) and sampled["image"].shape == (3, 1, 16, 16)
    assert not sampled["image_mask"].any()  # no data, no image: image-unconditional samples
    both = ShapeLatentAdapter(str(vae_folder), num_classes=2, images=settings)
    _, cond = both.encode({**batch, "label": torch.tensor([1, 0])})
    assert set(both.null_condition(cond)) == {"class_labels", "image", "image_mask"}


def test_image_chamfer_scores_each_shape_against_the_one_its_image_shows(vae_folder, monkeypatch):
    """Concentric spheres of radii a and b are at Chamfer-L2 2 (a - b)^2: generated radii
    (0.3, 0.6) against imaged radii (0.3, 0.6) score the sampling floor, against (0.6, 0.3)
    the mean of 2 * 0.3^2 = 0.18."""
    radius_decoder(monkeypatch)
    adapter = ShapeLatentAdapter(
        str(vae_folder), images=ShapeImages(resolution=16), mesh_resolution=32, num_points=1500
    )
    latents = torch.zeros(2, 6, 3)
    latents[0, 0, 0], latents[1, 0, 0] = 0.3, 0.6
    shapes = adapter.decode(latents, {})
    small, large = sphere_surface(0.3, 1500, 1), sphere_surface(0.6, 1500, 2)
    metric = adapter.evaluators()["image_chamfer"]
    metric.update(shapes, {"surface": torch.stack([small, large])})
    assert metric.compute().item() < 0.005
    metric.reset()
    metric.update(shapes, {"surface": torch.stack([large, small])})
    assert metric.compute().item() == pytest.approx(0.18, rel=0.05)


def test_an_image_conditioned_flow_trains_its_image_encoder(vae_folder: Path):
    """One optimizer step of FlowMatching moves the encoder's weights, and the EMA copy holds
    an encoder of its own: the encoder is part of the network."""
    adapter = ShapeLatentAdapter(str(vae_folder), images=ShapeImages(resolution=16))
    network = image_conditioned_mmdit()  # random weights: a zero-initialised MMDiT passes no
    encoder = network.encoder  # gradient to its context on the first step
    module = FlowMatching(adapter, network, cond_dropout=0.5)
    optimizer = module.configure_optimizers()
    before = [p.detach().clone() for p in encoder.parameters()]
    batch = {"surface": torch.stack([sphere_surface(r, 2000) for r in (0.3, 0.5, 0.7, 0.4)])}
    x1, cond = module.encode(batch)
    module.objective_output(x1, cond, batch).loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder.parameters(), strict=True))
    assert any(name.startswith("module.encoder.") for name, _ in module.ema.named_parameters())
