"""Every CPU recipe trains under DDP: two CPU processes (gloo), a few steps, one validation.

Run from the repository root, after the recipes' prerequisites exist (the data, classifiers
and parent models each recipe's header names)::

    python -m benchmarks.ddp_recipes --out bench/ddp_recipes

Each recipe under ``recipes/`` but the GPU ones (``*_gpu.yaml``, whose accelerator is a GPU)
runs as ``mmflow fit --trainer.strategy=ddp --trainer.devices=2`` for ``--steps`` steps with a
validation (sampling, evaluators, media) at the last step, its outputs moved under ``--out``.
A recipe whose prerequisites are missing is reported as such, not run. Reported: the exit
status, the seconds it took, the step of its ``last.ckpt`` and the last error line of a
failed run. Writes ``ddp_recipes.json`` (a
later run with ``--only`` updates its recipes' entries).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.kill_resume import _environment
from mmflow.files import read_checkpoint, read_json, write_json

RECIPES = Path("recipes")

# settings naming what a recipe reads; a Mosaic-SDF recipe writes its `statistics_path` itself
_PREREQUISITE = re.compile(r"^(?!class_path$|statistics_path$).*(path|root|couplings|init_from)$")


def cpu_recipes() -> list[Path]:
    """Every recipe but the GPU ones."""
    return sorted(p for p in RECIPES.rglob("*.yaml") if not p.stem.endswith("_gpu"))


def missing_prerequisites(recipe: Path) -> list[str]:
    """Files and folders the recipe reads (``*_path``, ``root``, ``couplings``, ``init_from``
    settings) that do not exist here."""
    config = yaml.safe_load(recipe.read_text())
    missing: list[str] = []

    def visit(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                visit(item, str(name))
        elif isinstance(value, list):
            for item in value:
                visit(item, key)
        elif isinstance(value, str) and _PREREQUISITE.search(key) and not Path(value).exists():
            missing.append(value)

    visit({k: v for k, v in config.items() if k != "trainer"})
    return missing


def ddp_smoke_run(
    recipe: Path, out: Path, steps: int, options: Sequence[str] = ()
) -> dict[str, Any]:
    """``recipe`` for ``steps`` steps on two CPU processes, with further command-line
    ``options``; the record of the run."""
    root = out / recipe.relative_to(RECIPES).with_suffix("")
    command = [
        sys.executable,
        "-m",
        "mmflow.cli",
        "fit",
        "--config",
        str(recipe),
        f"--trainer.default_root_dir={root}",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={steps}",
        "--trainer.check_val_every_n_epoch=null",
        "--trainer.limit_val_batches=1",
        *options,
    ]
    start = time.perf_counter()
    result = subprocess.run(
        command, check=False, env=_environment(), capture_output=True, text=True
    )
    record: dict[str, Any] = {
        "status": result.returncode,
        "seconds": round(time.perf_counter() - start, 1),
    }
    last = next(root.rglob("last.ckpt"), None)
    if last is not None:
        checkpoint = read_checkpoint(last)
        record["last_step"] = checkpoint["global_step"]
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        record["error"] = errors[-1] if errors else ""
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ddp_recipes")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="recipe paths (default: every CPU recipe)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        help="a further mmflow fit option, e.g. "
        "--option=--model.adapter.init_args.vae_path=DIR (repeatable; the options then stand "
        "in for the prerequisites, which are not checked)",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    summary = out / "ddp_recipes.json"
    records: dict[str, Any] = read_json(summary) if summary.exists() else {}
    for recipe in [Path(p) for p in args.only] if args.only else cpu_recipes():
        missing = [] if args.option else missing_prerequisites(recipe)
        if missing:
            records[str(recipe)] = {"status": None, "missing": missing}
        else:
            records[str(recipe)] = ddp_smoke_run(recipe, out, args.steps, args.option)
        print(f"{recipe}: {json.dumps(records[str(recipe)])}", flush=True)
        write_json(summary, records)
    failed = [name for name, record in records.items() if record["status"] not in (0, None)]
    ran = sum(record["status"] is not None for record in records.values())
    print(f"{ran - len(failed)} of {ran} recipes trained under DDP; failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
