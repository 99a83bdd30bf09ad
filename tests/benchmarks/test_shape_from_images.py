"""The image benchmark generates a shape from each held-out shape's image and scores it
against that shape, beside the no-image and shuffled-image baselines."""

import json

from benchmarks.shape_from_images import main
from tests.benchmarks.test_shape_generation import (
    five_primitives_and_sphere_decoder,
    write_checkpoint,
)

NETWORK = {
    "class_path": "mmflow.nn.EncodedContext",
    "init_args": {
        "encoder": {
            "class_path": "mmflow.nn.TimmEncoder",
            "init_args": {
                "name": "vit_tiny_patch16_224",
                "in_chans": 1,
                "model_args": {
                    "img_size": 16,
                    "patch_size": 8,
                    "embed_dim": 24,
                    "depth": 1,
                    "num_heads": 2,
                },
            },
        },
        "network": {
            "class_path": "mmflow.nn.MMDiT",
            "init_args": {
                "tokenizer": {"class_path": "mmflow.nn.SetTokens", "init_args": {"in_channels": 2}},
                "hidden_size": 16,
                "depth": 1,
                "num_heads": 2,
                "context": {"image": {"dim": 24}},
            },
        },
    },
}


def test_each_image_gives_one_scored_shape_per_setting(tmp_path, monkeypatch):
    """The decoder is replaced by a sphere of radius 0.5, so every setting generates the same
    spheres and scores the same; the rows, baselines and files are what is checked."""
    checkpoint = write_checkpoint(tmp_path, NETWORK, {"images": {"resolution": 16}})
    args = ["--checkpoint", str(checkpoint), "--cfg-scale", "1", "--cfg-scale", "3"]
    args += five_primitives_and_sphere_decoder(tmp_path, monkeypatch, tmp_path / "o")
    assert main(args) == 0
    result = json.loads((tmp_path / "o" / "shape_from_images.json").read_text())
    settings = [row["setting"] for row in result["rows"]]
    assert settings == ["image, cfg 1", "image, cfg 3", "no image", "shuffled, cfg 1"]
    assert len(result["shapes"]) == 2
    chamfers = {round(row["chamfer"], 6) for row in result["rows"]}
    assert len(chamfers) == 1 and chamfers.pop() > 0.001  # spheres are not the primitives
    assert all(row["watertight_share"] == 1.0 for row in result["rows"])
    assert (tmp_path / "o" / "no_image.png").stat().st_size > 0
    assert (tmp_path / "o" / "images.png").stat().st_size > 0
    assert "| image, cfg 3 |" in (tmp_path / "o" / "shape_from_images.md").read_text()
