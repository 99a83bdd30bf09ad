"""The meshing benchmark runs and reports hierarchical extraction level with dense."""

import json
from pathlib import Path

from benchmarks.meshing import main
from modalities.shape import Primitive


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
