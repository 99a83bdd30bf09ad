"""The SDF backend comparison runs and scores the installed candidates against closed forms."""

import json
from pathlib import Path

from benchmarks.sdf_backends import main


def test_libigl_is_measured_exact_on_every_shape(tmp_path: Path):
    assert main(["--points", "200", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "sdf_backends.json").read_text())
    igl = {row["shape"]: row for row in rows if row["backend"] == "libigl (pseudonormal)"}
    assert set(igl) == {"sphere", "box", "torus"}
    for row in igl.values():
        assert row["max_abs_error"] < 2e-4 and row["wrong_sign_share"] == 0.0
    assert "| libigl (pseudonormal) | box |" in (tmp_path / "sdf_backends.md").read_text()
