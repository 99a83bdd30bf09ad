"""The corpus benchmark on the tiny corpus: its figures are there and the ground truth's beat
consistency is read beside the shifted control."""

from benchmarks.gesture_data import main
from modalities.gesture import MotionAutoencoder


def test_the_corpus_figures_are_written(tmp_path, cache_dir):
    body = MotionAutoencoder({"body": list(range(25))}, root_part="body", width=8, depth=1,
                             latent_dim=4, num_quantizers=0)  # fmt: skip
    body.save_pretrained(tmp_path / "fgd")
    figures = main(
        ["--out", str(tmp_path), "--max_prompts", "30", "--voices", "[en-us]",
         "--cache_dir", cache_dir, "--fgd_autoencoder", str(tmp_path / "fgd")]
    )  # fmt: skip
    assert (tmp_path / "gesture_data.json").is_file()
    assert figures["speech"]["recorded"] > 0 and figures["speech"]["synthetic"] > 0
    train = figures["splits"]["train"]
    assert train["bc_scored_recordings"] > 0
    assert 0 < train["bc_shifted_1s"] < train["bc_ground_truth"] <= 1
    assert train["bc_jitter_5mm"] > train["bc_ground_truth"], "jitter adds speed minima"
    assert train["l1div_ground_truth"] > 0
    for split in ("val", "test"):
        fgd = figures["fgd_ours"][split]
        assert fgd["fgd_shifted_1s"] >= 0 and fgd["fgd_training_split"] >= 0
