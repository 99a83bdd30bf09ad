"""The auto-encoder benchmark on the tiny corpus: per-part errors in centimetres, finite, and
positive for an untrained model."""

import math

from benchmarks.gesture_autoencoder import main
from modalities.gesture import MotionAutoencoder, default_skeleton


def test_part_errors_are_reported(tmp_path, cache_dir):
    parts = {name: list(joints) for name, joints in default_skeleton().parts.items()}
    model = MotionAutoencoder(
        parts, width=8, depth=1, latent_dim=4, num_quantizers=2, codebook_size=8
    )
    model.save_pretrained(tmp_path / "untrained")
    figures = main(
        ["--pretrained", str(tmp_path / "untrained"), "--out", str(tmp_path / "bench"),
         "--max_prompts", "30", "--voices", "[en-us]", "--cache_dir", cache_dir]
    )  # fmt: skip
    assert (tmp_path / "bench" / "autoencoder.json").is_file()
    assert figures["test_windows"] > 0
    for key in ("mpjpe_cm", "mpjpe_cm_first_quantizer"):
        assert set(figures[key]) == {"upper", "hands", "lower"}
        assert all(math.isfinite(v) and v > 0 for v in figures[key].values())
