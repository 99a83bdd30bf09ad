"""Kill a training run with SIGKILL at random moments, resume it each time, compare the end.

Run from the repository root::

    python -m benchmarks.kill_resume --kills 20 --out bench/kill_resume

A small deterministic CPU run (class-conditional scikit-learn digits, a tiny MMDiT with EMA,
AdamW, validation with sampling, a checkpoint every ``--every`` steps) first trains
uninterrupted to ``--steps``. Then the same recipe starts in a fresh folder and is killed
(``kill -9``, no handler runs) at a random moment, resumed with ``--ckpt_path last``, killed
again, and so on ``--kills`` times; the last resume runs to the end. The moments are seeded: a
quarter of the kills land a random fraction of the start-up time (a run of 0 steps) after
the start, in start-up or early in training; the others a random 0 to 0.3 s after ``last.ckpt`` reaches a random step, drawn so that the
kills spread over the whole run; so they land in training, validation and checkpoint writes
alike.

Reported: for each kill, the delay and the step of ``last.ckpt`` it left; at the end, whether
every tensor of the final checkpoint (network, EMA, optimizer state) equals the uninterrupted
run's bit for bit, and the first one that differs if not. Writes ``kill_resume.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mmflow.files import read_checkpoint, write_json

RECIPE = """
seed_everything: 0
trainer:
  accelerator: cpu
  max_steps: {steps}
  val_check_interval: {validate_every}
  check_val_every_n_epoch: null
  limit_val_batches: 1
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  callbacks:
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args:
        dirpath: {root}/checkpoints
        save_last: true
        every_n_train_steps: {every}
model:
  adapter:
    class_path: modalities.image.PixelAdapter
    init_args:
      num_classes: 10
      image_shape: [1, 8, 8]
  network:
    class_path: mmflow.nn.MMDiT
    init_args:
      tokenizer:
        class_path: mmflow.nn.Patchify2D
        init_args:
          in_channels: 1
          patch_size: 2
      hidden_size: 32
      depth: 2
      num_heads: 2
      num_classes: 10
  ema_decay: 0.99
  optimizer:
    class_path: torch.optim.AdamW
    init_args:
      lr: 0.001
  nfe: 2
  val_sample_batches: 1
data:
  class_path: modalities.image.SklearnDigits
  init_args:
    batch_size: 16
    cache_dir: {cache}
"""


def write_recipe(root: Path, steps: int, every: int, validate_every: int) -> Path:
    """The run's recipe in ``root`` (its checkpoints go to ``root/checkpoints``)."""
    root.mkdir(parents=True, exist_ok=True)
    recipe = root / "recipe.yaml"
    cache = root.parent / "cache"
    text = RECIPE.format(
        root=root, steps=steps, every=every, validate_every=validate_every, cache=cache
    )
    recipe.write_text(text)
    return recipe


def fit_command(recipe: Path, resume: bool, options: Sequence[str] = ()) -> list[str]:
    """``mmflow fit`` of ``recipe`` with further command-line ``options``."""
    command = [sys.executable, "-m", "mmflow.cli", "fit", "--config", str(recipe), *options]
    return [*command, "--ckpt_path", "last"] if resume else command


def _environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}


def run_to_end(recipe: Path, resume: bool, options: Sequence[str] = ()) -> float:
    """Run the recipe to its end; returns the seconds it took."""
    start = time.perf_counter()
    result = subprocess.run(
        fit_command(recipe, resume, options),
        check=False,
        env=_environment(),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{recipe}: the run failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def run_and_kill(recipe: Path, resume: bool, moment: KillMoment) -> bool:
    """Start the recipe and SIGKILL it at ``moment``; False if it ended first."""
    process = subprocess.Popen(
        fit_command(recipe, resume),
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    start = time.perf_counter()
    while process.poll() is None:
        elapsed = time.perf_counter() - start
        if moment.step is None and elapsed >= moment.delay:
            break
        if moment.step is not None and (saved_step(recipe.parent) or 0) >= moment.step:
            time.sleep(moment.delay)  # then a random moment of the steps after that checkpoint
            break
        time.sleep(0.02)
    if process.poll() is None:
        process.kill()
        process.wait()
        return True
    if process.returncode != 0:
        raise RuntimeError(f"{recipe}: the run failed:\n{process.stderr.read()[-3000:]}")
    return False


@dataclass
class KillMoment:
    """Kill ``delay`` seconds after the start (``step`` None: in start-up), or ``delay``
    seconds after ``last.ckpt`` reaches ``step``."""

    delay: float
    step: int | None = None


def draw_moment(
    rng: random.Random, startup: float, saved: int, steps: int, left: int
) -> KillMoment:
    """A quarter of the kills within the start-up time; the others after a step drawn so that
    the ``left`` kills still to come spread over the remaining steps, plus up to 0.3 s."""
    if rng.random() < 0.25:
        return KillMoment(rng.uniform(0.3, 1.0) * startup)
    step = saved + max(1, round(rng.uniform(0.2, 1.0) * (steps - saved) / (left + 1)))
    return KillMoment(rng.uniform(0.0, 0.3), step)


def saved_step(root: Path) -> int | None:
    last = root / "checkpoints" / "last.ckpt"
    return read_checkpoint(last)["global_step"] if last.exists() else None


def flat_tensors(value: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested checkpoint entry, by its path of keys."""
    if torch.is_tensor(value):
        return {prefix: value}
    if not isinstance(value, (dict, list, tuple)):
        return {}
    items = value.items() if isinstance(value, dict) else enumerate(value)
    found: dict[str, torch.Tensor] = {}
    for key, item in items:
        found.update(flat_tensors(item, f"{prefix}/{key}" if prefix else str(key)))
    return found


def compare_final(reference: Path, resumed: Path) -> dict[str, Any]:
    """Bit-for-bit comparison of the weights, EMA and optimizer states of two checkpoints."""
    a, b = read_checkpoint(reference), read_checkpoint(resumed)
    parts = {"state_dict": "state_dict", "optimizer": "optimizer_states"}
    differing, compared = [], 0
    for name, key in parts.items():
        left, right = flat_tensors(a[key]), flat_tensors(b[key])
        if left.keys() != right.keys():
            differing.append(f"{name}: other entries")
            continue
        for entry, tensor in left.items():
            compared += 1
            if not torch.equal(tensor, right[entry]):
                differing.append(f"{name}/{entry}")
    return {
        "global_steps": [a["global_step"], b["global_step"]],
        "tensors_compared": compared,
        "identical": not differing and a["global_step"] == b["global_step"],
        "differing": differing[:10],
    }


def kill_and_resume(
    work: Path, kills: int, steps: int, every: int, validate_every: int, seed: int
) -> dict[str, Any]:
    """The whole experiment of the module docstring, in ``work``; returns the record."""
    if work.exists():
        shutil.rmtree(work)
    reference = write_recipe(work / "reference", steps, every, validate_every)
    startup = run_to_end(write_recipe(work / "startup", 0, every, validate_every), resume=False)
    reference_seconds = run_to_end(reference, resume=False)
    recipe = write_recipe(work / "killed", steps, every, validate_every)
    rng = random.Random(seed)
    events = []
    for kill in range(kills):
        moment = draw_moment(rng, startup, saved_step(recipe.parent) or 0, steps, kills - kill)
        killed = run_and_kill(recipe, resume=kill > 0, moment=moment)
        events.append({"kill": kill + 1, **asdict(moment), "killed": killed})
        events[-1]["last_step"] = saved_step(recipe.parent)
        if not killed:
            break
    else:
        run_to_end(recipe, resume=True)
    comparison = compare_final(
        reference.parent / "checkpoints" / "last.ckpt", recipe.parent / "checkpoints" / "last.ckpt"
    )
    return {
        "steps": steps,
        "checkpoint_every": every,
        "validate_every": validate_every,
        "startup_s": startup,
        "uninterrupted_s": reference_seconds,
        "kills": sum(event["killed"] for event in events),
        "events": events,
        **comparison,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kill_resume")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=7, help="checkpoint every N steps")
    parser.add_argument("--validate-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    record = kill_and_resume(
        out / "runs", args.kills, args.steps, args.every, args.validate_every, args.seed
    )
    write_json(out / "kill_resume.json", record)
    for event in record["events"]:
        state = "killed" if event["killed"] else "ended"
        when = (
            f"{event['delay']:.1f} s after its start"
            if event["step"] is None
            else f"{event['delay']:.2f} s after last.ckpt reached step {event['step']}"
        )
        print(f"run {event['kill']}: {state} {when}; last.ckpt then at {event['last_step']}")
    verdict = "identical" if record["identical"] else f"DIFFERENT: {record['differing']}"
    print(
        f"{record['kills']} kills; final step {record['global_steps']}; "
        f"{record['tensors_compared']} tensors compared: {verdict}"
    )
    print(json.dumps({k: v for k, v in record.items() if k != "events"}))
    return 0 if record["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
