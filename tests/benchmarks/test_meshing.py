"""The meshing benchmark runs and reports hierarchical extraction level with dense."""

import json
from pathlib import Path

from benchmarks.meshing import main
from modalities.shape import Primitive, ShapeVAE


def test_hierarchical_matches_dense_on_a_small_grid(tmp_path: Path):
    Primitive("torus", radius=0.5, minor_radius=0.2).mesh().export(tmp_path / "torus.obj")
    args = [
        "--mesh",
        str(tmp_path / "torus.obj"),
        "--resolution",
        "32",
        "--levels",
        "2",
        "--samples",
        "2000",
    ]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "meshing.json").read_text())
    assert result["same_signs"]
    assert result["hierarchical_evaluations"] < result["dense_evaluations"] / 2
    assert 0.99 < result["chamfer_ratio"] < 1.01
    assert "| speed_up |" in (tmp_path / "out" / "meshing.md").read_text()


def test_a_shape_vae_decoder_is_meshed_from_the_mesh_encoding(tmp_path: Path, monkeypatch):
    """``--vae``: the VAE encodes the mesh's cached samples and its decoder is meshed; here a
    decoder replaced by the sphere's exact SDF, so both extractions find that sphere."""
    Primitive("sphere", radius=0.5).mesh().export(tmp_path / "sphere.obj")
    ShapeVAE(width=16, num_heads=2, num_latents=4, latent_channels=2).save_pretrained(
        tmp_path / "vae"
    )
    monkeypatch.setenv("MMFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        ShapeVAE, "sdf_function", lambda self, latents: lambda x: x.norm(dim=-1) - 0.9
    )
    args = ["--mesh", str(tmp_path / "sphere.obj"), "--vae", str(tmp_path / "vae")]
    args += ["--resolution", "32", "--levels", "2", "--samples", "2000", "--num-surface", "64"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "meshing.json").read_text())
    assert result["sdf"].startswith("ShapeVAE") and result["same_signs"]
    assert 0.99 < result["chamfer_ratio"] < 1.01
