"""The shape VAE: its pieces against closed forms, its losses on an exact SDF, and a short fit."""

import pytest
import torch

from modalities.shape import MeshFolder, ShapeVAE, mesh_from_sdf, write_primitive_folder
from modalities.shape.sdf import SDFSettings
from modalities.shape.vae import CrossAttentionBlock, FourierEmbedding, ShapeAutoencoder


def tiny_vae(**overrides) -> ShapeVAE:
    settings = {
        "width": 32,
        "num_heads": 2,
        "num_latents": 8,
        "latent_channels": 4,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "num_frequencies": 4,
        "geometric_points": 16,
    }
    return ShapeVAE(**(settings | overrides))


def sphere_batch(radii: list[float], num_points: int = 64, seed: int = 0) -> dict:
    """Exact SDF examples of spheres at the origin, in the dataset's layout (near points first,
    then uniform ones; surface points with their outward normals)."""
    generator = torch.Generator().manual_seed(seed)
    radius = torch.tensor(radii)[:, None]
    directions = torch.nn.functional.normalize(
        torch.randn(len(radii), 2 * num_points, 3, generator=generator), dim=-1
    )
    surface = torch.cat(
        [radius[..., None] * directions[:, :num_points], directions[:, :num_points]], -1
    )
    near = (radius + 0.05 * torch.randn(len(radii), num_points // 2, generator=generator))[
        ..., None
    ] * directions[:, num_points : num_points + num_points // 2]
    uniform = torch.rand(len(radii), num_points - num_points // 2, 3, generator=generator) * 2 - 1
    points = torch.cat([near, uniform], dim=1)
    return {"surface": surface, "points": points, "sdf": points.norm(dim=-1) - radius}


def test_fourier_embedding_closed_form():
    embedding = FourierEmbedding(num_frequencies=2)
    point = torch.tensor([[0.25, -0.5, 1.0]])
    angles = torch.tensor([0.25, -0.5, 1.0, 0.5, -1.0, 2.0])
    angles = angles.reshape(2, 3).T.flatten()  # per coordinate, then per frequency
    expected = torch.cat([point[0], angles.sin(), angles.cos()])
    assert embedding.out_dim == 15
    torch.testing.assert_close(embedding(point)[0], expected)


def test_cross_attention_to_one_token_passes_its_value():
    """With one context token the attention weights are all 1: every query receives that
    token's value, whatever the query."""
    torch.manual_seed(0)
    block = CrossAttentionBlock(width=8, num_heads=2)
    queries, context = torch.randn(1, 5, 8), torch.randn(1, 1, 8)
    value = block.key_value(block.norm_context(context)).chunk(2, dim=-1)[1]
    attended = queries + block.out(value)
    expected = attended + block.mlp(block.norm_mlp(attended))
    torch.testing.assert_close(block(queries, context), expected)


def test_the_decoder_sees_a_set_without_order():
    torch.manual_seed(0)
    autoencoder = ShapeAutoencoder(width=16, num_heads=2, num_latents=6, latent_channels=3)
    latents, points = torch.randn(2, 6, 3), torch.rand(2, 10, 3) * 2 - 1
    shuffled = latents[:, torch.randperm(6)]
    before = autoencoder.query(autoencoder.decode(latents), points)
    after = autoencoder.query(autoencoder.decode(shuffled), points)
    torch.testing.assert_close(before, after)
    other = autoencoder.query(autoencoder.decode(latents.flip(0)), points)
    assert not torch.allclose(before, other)


def test_sdf_gradient_matches_finite_differences():
    torch.manual_seed(0)
    vae = tiny_vae().double()
    features = vae.autoencoder.decode(torch.randn(1, 8, 4, dtype=torch.float64))
    points = torch.rand(1, 5, 3, dtype=torch.float64) * 2 - 1
    values, gradient = vae._sdf_and_gradient(features, points)
    step = 1e-6
    for axis in range(3):
        shift = torch.zeros(3, dtype=torch.float64)
        shift[axis] = step
        difference = vae.autoencoder.query(features, points + shift) - vae.autoencoder.query(
            features, points - shift
        )
        torch.testing.assert_close(
            gradient[..., axis], difference / (2 * step), rtol=1e-5, atol=1e-7
        )
    torch.testing.assert_close(values, vae.autoencoder.query(features, points))


def test_losses_vanish_for_a_decoder_that_is_the_exact_sdf(monkeypatch):
    """A decoder replaced by the exact sphere SDF |x| - r has zero SDF, surface, normal and
    eikonal terms; the loss is then the weighted KL alone, and validation's IoU is 1."""
    vae = tiny_vae(kl_weight=0.5)
    batch = sphere_batch([0.5, 0.5])
    monkeypatch.setattr(vae.autoencoder, "query", lambda features, x: x.norm(dim=-1) - 0.5)
    losses = vae.losses(batch)
    for term in ("sdf_l1", "surface_l1", "normal", "eikonal"):
        assert losses[term].item() == pytest.approx(0.0, abs=1e-6), term
    torch.testing.assert_close(losses["loss"], 0.5 * losses["kl"])
    with torch.no_grad():
        validation = vae.losses(batch, geometric=False)
    assert validation["iou"].item() == 1.0 and "eikonal" not in validation


def test_losses_measure_a_wrong_radius_exactly(monkeypatch):
    """Decoding |x| - 0.4 for spheres of radius 0.5: every SDF error is 0.1, normals and
    gradient norms are still exact."""
    vae = tiny_vae(kl_weight=0.0)
    batch = sphere_batch([0.5])
    monkeypatch.setattr(vae.autoencoder, "query", lambda features, x: x.norm(dim=-1) - 0.4)
    losses = vae.losses(batch)
    assert losses["sdf_l1"].item() == pytest.approx(0.1, abs=1e-6)
    assert losses["surface_l1"].item() == pytest.approx(0.1, abs=1e-6)
    assert losses["normal"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss"].item() == pytest.approx(0.2, abs=1e-5)


def test_a_short_fit_learns_spheres_of_two_radii_and_meshes_them():
    torch.manual_seed(0)
    vae = tiny_vae(lr=3e-3, num_latents=16, width=48)
    optimizer = vae.configure_optimizers()
    radii = [0.3, 0.7]
    first = None
    for step in range(300):
        losses = vae.losses(sphere_batch(radii, num_points=128, seed=step))
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        first = first if first is not None else losses["sdf_l1"].item()
    vae.eval()
    with torch.no_grad():
        # 4096 points: the small sphere holds about 1.4% of the cube, so 64 uniform points put
        # about one point inside it and the IoU jumped between 0.75 and 1 with the thread count.
        held_out = vae.losses(sphere_batch(radii, num_points=4096, seed=1000), geometric=False)
    assert held_out["sdf_l1"].item() < 0.2 * first
    assert held_out["iou"].item() > 0.8
    latents = vae.encode(sphere_batch(radii, num_points=128, seed=1001)["surface"])
    for radius, shape in zip(radii, latents, strict=True):
        mesh = mesh_from_sdf(vae.sdf_function(shape), resolution=32)
        mean_radius = float(torch.as_tensor(mesh.vertices).norm(dim=-1).mean())
        assert mean_radius == pytest.approx(radius, abs=0.05)


def test_save_load_keeps_the_latent_scale_and_the_decoder(tmp_path):
    torch.manual_seed(0)
    vae = tiny_vae()
    batch = sphere_batch([0.3, 0.6])
    scale = vae.estimate_latent_scale([batch, batch])
    mean, _ = vae.posterior(batch["surface"])
    assert scale == pytest.approx(1 / mean.double().std(unbiased=False).item(), rel=1e-5)
    vae.save_pretrained(tmp_path / "vae")
    loaded = ShapeVAE.from_pretrained(tmp_path / "vae")
    latents = loaded.encode(batch["surface"])
    torch.testing.assert_close(latents, vae.eval().encode(batch["surface"]))
    points = torch.rand(2, 7, 3) * 2 - 1
    torch.testing.assert_close(loaded.decode(latents, points), vae.decode(latents, points))
    assert loaded.latent_scale.item() == pytest.approx(scale)


def test_bad_input_is_refused_with_its_shape():
    vae = tiny_vae()
    with pytest.raises(ValueError, match=r"surface must be \[B, N, 6\].*\[2, 10, 3\]"):
        vae.posterior(torch.zeros(2, 10, 3))
    with pytest.raises(ValueError, match=r"one shape must be \[M, C\]"):
        vae.sdf_function(torch.zeros(1, 8, 4))
    with pytest.raises(ValueError, match="geometric_points=16 exceeds the batch's 8 points"):
        vae.losses(sphere_batch([0.5], num_points=8))
    with pytest.raises(ValueError, match="`eikonal_weight` must be >= 0"):
        ShapeVAE(eikonal_weight=-1.0)


def test_trains_on_mesh_folder_batches(tmp_path):
    write_primitive_folder(tmp_path / "shapes", per_kind=1)
    datamodule = MeshFolder(
        root=str(tmp_path / "shapes"),
        sdf=SDFSettings(num_surface=256, num_near=128, num_uniform=128),
        num_points=64,
        num_surface=64,
        batch_size=4,
        val_fraction=0.2,
        test_fraction=0.0,
        cache_dir=str(tmp_path / "cache"),
    )
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    vae = tiny_vae()
    losses = vae.batch_losses(batch)
    losses["loss"].backward()
    assert all(torch.isfinite(value) for value in losses.values())
    assert vae.autoencoder.head[1].weight.grad.abs().sum() > 0
