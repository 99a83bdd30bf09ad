"""The installed ``mmflow`` console script, called as a user would."""

import shutil
import subprocess
import sys
from pathlib import Path


def mmflow_command() -> list[str]:
    script = Path(sys.executable).parent / "mmflow"
    found = str(script) if script.exists() else shutil.which("mmflow")
    assert found, "the `mmflow` console script is not installed: run `make test` (pip install -e .)"
    return [found]


def test_info_lists_registered_components():
    out = subprocess.run(
        mmflow_command() + ["info"], capture_output=True, text=True, check=True
    ).stdout
    assert "t=0 noise, t=1 data" in out
    for name in ("heun", "rk4", "logit_normal", "linear", "stochastic"):
        assert name in out


def test_unknown_subcommand_fails_with_one_clear_line():
    result = subprocess.run(
        mmflow_command() + ["bogus"], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "invalid choice: 'bogus'" in result.stderr
    assert "Traceback" not in result.stderr
