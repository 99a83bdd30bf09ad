"""The generation benchmark samples a flow checkpoint, meshes and scores it against the split."""

import json
from pathlib import Path

import torch

from benchmarks.shape_generation import main
from mmflow.cli import main as cli_main
from modalities.shape import Primitive, ShapeVAE
from tests.test_recipes import build_module

NETWORK = {
    "class_path": "mmflow.nn.MMDiT",
    "init_args": {
        "tokenizer": {"class_path": "mmflow.nn.SetTokens", "init_args": {"in_channels": 2}},
        "hidden_size": 16,
        "depth": 1,
        "num_heads": 2,
        "num_classes": 1,
    },
}


def write_checkpoint(
    tmp_path: Path, network_config: dict = NETWORK, adapter_args: dict | None = None
) -> Path:
    """A Lightning-style checkpoint of an untrained latent flow over a tiny VAE's sets (one
    class unless ``adapter_args`` say otherwise)."""
    vae = ShapeVAE(width=16, num_heads=2, num_latents=4, latent_channels=2)
    vae_folder = vae.save_pretrained(tmp_path / "vae")
    adapter = {
        "class_path": "modalities.shape.ShapeLatentAdapter",
        "init_args": {
            "vae_path": str(vae_folder),
            "mesh_resolution": 16,
            **(adapter_args or {"num_classes": 1}),
        },
    }
    network = build_module(network_config)
    state = {f"network.{key}": value for key, value in network.state_dict().items()}
    hparams = {"network": network_config, "adapter": adapter, "sampler": "euler", "nfe": 2}
    path = tmp_path / "flow.ckpt"
    torch.save({"hyper_parameters": hparams, "state_dict": state}, path)
    return path


def five_primitives_and_sphere_decoder(tmp_path: Path, monkeypatch, out: Path) -> list[str]:
    """Options of a benchmark on five primitives split 3 / 1 / 1 (two held out), with every
    VAE decoding to the sphere of radius 0.5."""
    root = tmp_path / "shapes"
    root.mkdir()
    for index, kind in enumerate(["box", "torus", "capsule", "cylinder", "box"]):
        Primitive(kind, extents=(0.3 + 0.1 * index, 0.6, 0.9)).mesh().export(root / f"{index}.obj")
    monkeypatch.setattr(
        ShapeVAE, "sdf_function", lambda self, latents: lambda x: x.norm(dim=-1) - 0.5
    )
    args = ["--root", str(root), "--val-fraction", "0.2", "--test-fraction", "0.2"]
    return [*args, "--points", "256", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]


def test_generations_are_meshed_scored_and_previewed(tmp_path, monkeypatch):
    args = ["--flow", f"latent={write_checkpoint(tmp_path)}", "--num-samples", "3"]
    args += five_primitives_and_sphere_decoder(tmp_path, monkeypatch, tmp_path / "out")
    assert main(args) == 0
    result = json.loads((tmp_path / "out" / "shape_generation.json").read_text())
    (row,) = result["flows"]
    assert result["references"] == 2 and row["nfe"] == 2
    assert row["watertight_share"] == 1.0 and row["no_surface"] == 0
    assert row["parts_mean"] == 1.0 and row["one_part_share"] == 1.0
    # three identical spheres against two other shapes: they cover one reference at most, and
    # the nearest other member of each sphere is a sphere (3 of the 5 classified right)
    assert row["cov"] == 0.5 and row["1-nna"] >= 0.6
    assert (tmp_path / "out" / "latent.png").stat().st_size > 0
    assert "| latent |" in (tmp_path / "out" / "shape_generation.md").read_text()


def test_mmflow_sample_writes_the_meshes_of_a_shape_flow(tmp_path, monkeypatch):
    """``mmflow sample`` on a shape flow: the adapter draws the set shape and the classes,
    and its media are one GLB a shape and a preview grid."""
    monkeypatch.setattr(
        ShapeVAE, "sdf_function", lambda self, latents: lambda x: x.norm(dim=-1) - 0.5
    )
    out = tmp_path / "samples"
    args = ["sample", "--checkpoint", str(write_checkpoint(tmp_path)), "--num_samples", "3"]
    assert cli_main([*args, "--nfe", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "samples.png",
        "samples_0.glb",
        "samples_1.glb",
        "samples_2.glb",
    ]
