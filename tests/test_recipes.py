"""Every recipe runs one training and one validation batch (``--trainer.fast_dev_run``).

Each runs through the installed ``mmflow`` command, with the data cache and the classifier
pointed at test fixtures, and GPU recipes moved to the CPU with tiny batches.
"""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from .mmflow.test_cli import ROOT, mmflow_command

RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


def overrides(recipe: Path, tmp_path: Path, cache_dir: str, classifier: Path) -> list[str]:
    config = yaml.safe_load(recipe.read_text())
    args = [
        "--trainer.fast_dev_run=true",
        f"--trainer.default_root_dir={tmp_path}",
        f"--data.init_args.cache_dir={cache_dir}",
    ]
    adapter_args = config["model"]["adapter"].get("init_args", {})
    if "classifier_path" in adapter_args:
        args.append(f"--model.adapter.init_args.classifier_path={classifier}")
    if adapter_args.get("fid_max_samples"):
        args.append("--model.adapter.init_args.fid_max_samples=4")
    if config["trainer"].get("accelerator") == "gpu":
        args += [
            "--trainer.accelerator=cpu",
            "--trainer.precision=32-true",
            "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0",
            "--model.nfe=2",
        ]
    return args


def test_there_are_recipes():
    assert {p.name for p in RECIPES} >= {
        "mnist.yaml",
        "fashion_mnist.yaml",
        "fashion_mnist_gpu.yaml",
    }


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_recipe_fast_dev_run(recipe, tmp_path, cache_dir, trained_classifier):
    args = [
        "fit",
        "--config",
        str(recipe),
        *overrides(recipe, tmp_path, cache_dir, trained_classifier[2]),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        mmflow_command() + args, capture_output=True, text=True, cwd=tmp_path, env=env, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "`Trainer.fit` stopped: `max_steps=1` reached" in result.stderr + result.stdout
