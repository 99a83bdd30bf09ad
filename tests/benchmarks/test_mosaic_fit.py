"""The Mosaic-SDF benchmark fits a held-out split and scores it as the shape metrics do."""

import argparse
import json
from pathlib import Path

from benchmarks.mosaic_fit import main
from benchmarks.shape_split import add_split_arguments, split_datamodule
from modalities.shape import write_primitive_folder


def test_a_primitive_folder_is_fitted_scored_and_tabulated(tmp_path: Path):
    root = write_primitive_folder(tmp_path / "shapes", per_kind=2)
    split = ["--root", str(root), "--test-fraction", "0.2", "--cache-dir", str(tmp_path / "cache")]
    parser = argparse.ArgumentParser()
    add_split_arguments(parser)
    files = split_datamodule(parser.parse_args(split)).files["test"]
    assert len(files) == 2
    out = tmp_path / "out"
    args = ["--settings", "32x3", "--refine-steps", "0", "3", "--resolution", "32"]
    assert main([*split, *args, "--samples", "2000", "--out", str(out)]) == 0
    result = json.loads((out / "mosaic_fit.json").read_text())
    assert result["files"] == [str(path) for path in files]
    assert [(s["refine_steps"], s["meshes"]) for s in result["summary"]] == [(0, 2), (3, 2)]
    for row in result["rows"]:
        assert 0 <= row["fscore"] <= 1 and row["bytes_float32"] == 32 * (4 + 27) * 4
        assert row["bytes_float16"] == 32 * (4 + 27) * 2
    assert "| 32 | 3 | 3 |" in (out / "mosaic_fit.md").read_text()
