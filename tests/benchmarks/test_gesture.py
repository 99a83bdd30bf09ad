"""``python -m benchmarks.gesture`` on the tiny corpus: the reference rows, a model row per
entry (one under silence), and a bad models file named."""

import json
import math

import pytest
import torch

from benchmarks.gesture import ModelEntry, generate_split, main, read_models, window_figures
from mmflow.nn import ChannelConcat, MMDiT, Patchify2D
from modalities.gesture import MotionAutoencoder, SyntheticCoSpeech, default_skeleton

SPEECH_FEATURES = 33


def write_tiny_flow(folder):
    """Folders of an untrained RVQ-VAE and FGD auto-encoder, and a checkpoint as `mmflow fit`
    writes it of an untrained flow over the RVQ-VAE's latents (speech on the channels)."""
    parts = {name: list(joints) for name, joints in default_skeleton().parts.items()}
    rvq = MotionAutoencoder(parts, width=8, depth=1, latent_dim=4, num_quantizers=2,
                            codebook_size=8)  # fmt: skip
    rvq.save_pretrained(folder / "rvq")
    body = MotionAutoencoder({"body": list(range(25))}, root_part="body", width=8, depth=1,
                             latent_dim=4, num_quantizers=0)  # fmt: skip
    body.save_pretrained(folder / "fgd")
    network_config = {
        "class_path": "mmflow.nn.ChannelConcat",
        "init_args": {
            "key": "speech",
            "network": {
                "class_path": "mmflow.nn.MMDiT",
                "init_args": {
                    "tokenizer": {
                        "class_path": "mmflow.nn.Patchify2D",
                        "init_args": {"in_channels": 4 + 4 * SPEECH_FEATURES, "patch_size": 1},
                    },
                    "hidden_size": 16, "depth": 1, "num_heads": 2, "pooled_dim": 3 * 4 + 1,
                },
            },
        },
    }  # fmt: skip
    adapter_config = {
        "class_path": "modalities.gesture.GestureAdapter",
        "init_args": {"autoencoder_path": str(folder / "rvq"), "speech_input": "channels"},
    }
    network = ChannelConcat(
        MMDiT(Patchify2D(4 + 4 * SPEECH_FEATURES, patch_size=1), hidden_size=16, depth=1,
              num_heads=2, pooled_dim=3 * 4 + 1),
        key="speech",
    )  # fmt: skip
    checkpoint = {
        "hyper_parameters": {"network": network_config, "adapter": adapter_config,
                             "sampler": "euler", "nfe": 2, "cfg_scale": 1.0},
        "state_dict": {f"network.{k}": v for k, v in network.state_dict().items()},
    }  # fmt: skip
    torch.save(checkpoint, folder / "flow.ckpt")
    return folder / "flow.ckpt", folder / "fgd"


def test_every_model_is_scored_beside_the_references(tmp_path, cache_dir):
    checkpoint, fgd = write_tiny_flow(tmp_path)
    models = tmp_path / "models.yaml"
    models.write_text(
        f"- {{name: flow, checkpoint: {checkpoint}, sampler: euler, nfe: 2, cfg_scale: 2.0,"
        " train_seconds: 7}\n"
        f"- {{name: flow under silence, checkpoint: {checkpoint}, sampler: euler, nfe: 1,"
        " speech: false}\n"
    )
    out = tmp_path / "bench"
    main(
        ["--models", str(models), "--fgd_autoencoder", str(fgd), "--out", str(out),
         "--split", "train", "--max_recordings", "3", "--max_prompts", "30",
         "--voices", "[en-us]", "--cache_dir", cache_dir]
    )  # fmt: skip
    figures = json.loads((out / "gesture.json").read_text())
    assert figures["threads"] == torch.get_num_threads(), "speed figures depend on the threads"
    rows = figures["rows"]
    names = [row["name"] for row in rows]
    assert names == ["ground truth", "ground truth, 1 s late", "RVQ-VAE reconstruction", "flow",
                     "flow under silence"]  # fmt: skip
    truth, late = rows[0], rows[1]
    assert truth["fgd_ours"] == pytest.approx(0.0, abs=1e-3) and late["fgd_ours"] > 0
    assert late["bc"] < truth["bc"]
    for row in rows:
        assert all(math.isfinite(row[key]) for key in ("fgd_ours", "bc", "l1div"))
    assert rows[3]["seconds_per_second"] > 0 and rows[3]["train_seconds"] == 7
    assert rows[2]["fgd_ours"] > 0, "an untrained auto-encoder does not rebuild the motion"
    table = (out / "gesture.md").read_text().splitlines()
    assert len(table) == 2 + len(rows) and "| flow | 2 | 2 |" in table[5]


def test_timing_needs_one_run_at_least(tmp_path):
    entry = ModelEntry(name="flow", sampler="euler", nfe=2, checkpoint=str(tmp_path / "x.ckpt"))
    with pytest.raises(ValueError, match="--timing_repeats must be at least 1, got 0"):
        generate_split(entry, [], window=64, seed=0, fps=30.0, repeats=0)


def test_a_bad_models_file_is_named(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("- {name: flow, sampler: euler, nfe: 2, steps: 3}\n")
    with pytest.raises(ValueError, match=r"models.yaml: entry 0: unknown keys \['steps'\]"):
        read_models(path)


def test_windows_are_scored_with_and_without_the_ground_truth_seed(tmp_path, cache_dir):
    checkpoint, fgd = write_tiny_flow(tmp_path)
    data = SyntheticCoSpeech(cache_dir=cache_dir, max_prompts=30, voices=["en-us"],
                             recording_seconds=8.0, batch_size=8)  # fmt: skip
    data.setup()
    entry = ModelEntry("flow", "euler", 2, checkpoint=str(checkpoint))
    figures = window_figures(entry, data, fgd, seed=0)
    assert set(figures) == {"ground_truth_seed", "no_seed"}
    assert all(math.isfinite(v) and v >= 0 for v in figures.values())
