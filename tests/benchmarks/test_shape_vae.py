"""The shape-VAE benchmark scores a decoder that is the exact SDF as a perfect reconstruction,
and one that is off by a known amount as the closed form says."""

import json
from pathlib import Path

import pytest
import torch

from benchmarks.shape_vae import main
from modalities.shape import Primitive, ShapeVAE


def run(tmp_path: Path, radius: float, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Score four spheres (normalised to radius 0.9) with a 'decoder' ``|x| - radius``."""
    root = tmp_path / "spheres"
    root.mkdir(exist_ok=True)
    for index in range(4):
        Primitive("sphere", radius=0.2 + 0.1 * index).mesh().export(root / f"{index}.obj")
    ShapeVAE(width=16, num_heads=2, num_latents=4, latent_channels=2).save_pretrained(
        tmp_path / "vae"
    )
    monkeypatch.setattr(
        ShapeVAE, "sdf_function", lambda self, latents: lambda x: x.norm(dim=-1) - radius
    )
    out = tmp_path / f"out{radius}"
    args = ["--vae", str(tmp_path / "vae"), "--root", str(root), "--split", "train"]
    args += ["--resolution", "32", "--levels", "1", "--samples", "4000", "--out", str(out)]
    args += ["--num-surface", "64", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    assert "| **mean** |" in (out / "shape_vae.md").read_text()
    return json.loads((out / "shape_vae.json").read_text())


def test_the_exact_sdf_scores_a_perfect_reconstruction(tmp_path, monkeypatch):
    result = run(tmp_path, 0.9, monkeypatch)
    assert len(result["shapes"]) == 4
    mean = result["mean"]
    assert mean["f_score"] > 0.99 and mean["iou"] > 0.99 and mean["watertight_share"] == 1.0
    assert mean["normal_consistency"] > 0.99 and mean["chamfer"] < 1e-5


def test_a_sphere_too_small_by_twice_the_threshold_scores_no_f_score(tmp_path, monkeypatch):
    """Radius 0.88 against 0.9: every point is 0.02 from the other surface, beyond tau = 0.01,
    so F = 0; Chamfer is 2 * 0.02^2; IoU is (0.88 / 0.9)^3 up to the uniform sampling."""
    mean = run(tmp_path, 0.88, monkeypatch)["mean"]
    assert mean["f_score"] == 0.0
    assert mean["chamfer"] == pytest.approx(2 * 0.02**2, rel=0.1)
    assert mean["iou"] == pytest.approx((0.88 / 0.9) ** 3, abs=0.01)
    torch.testing.assert_close(torch.tensor(mean["watertight_share"]), torch.tensor(1.0))
