"""Data-parallel training equals one process: DDP on CPU (gloo) against a single process.

Run from the repository root::

    python -m benchmarks.data_parallel --processes 2 --steps 200 --out bench/data_parallel

The deterministic CPU run of ``benchmarks.kill_resume`` (class-conditional scikit-learn digits,
a tiny MMDiT with EMA, AdamW, validation with sampling) trains three times on the same global
batch of ``--batch-size`` examples:

- ``one``: one process;
- ``many``: ``--processes`` processes (Lightning's ``ddp`` strategy), each with
  ``batch-size / processes`` examples per step;
- ``switched``: as ``many``, stopped with SIGTERM once ``last.ckpt`` passes a third of the
  steps, then resumed with ``--ckpt_path last`` on one process.

Each process takes rows ``rank, rank + W, ...`` of every global batch and of every draw of
noise, time and condition dropout, so ``many`` and ``switched`` should end where ``one`` ends,
up to the order of floating-point sums (DDP averages the processes' gradients). Reported: the
largest absolute difference from ``one`` of the network weights, of the EMA weights and of the
optimizer state, with the tensor where it occurs, and the wall time of each run. Writes
``data_parallel.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.kill_resume import (
    _environment,
    fit_command,
    flat_tensors,
    run_to_end,
    saved_step,
    write_recipe,
)
from mmflow.files import read_checkpoint, write_json

SIGTERM_EXIT_STATUS = 143


def ddp_options(processes: int, global_batch: int) -> list[str]:
    """Command-line options that split each global batch of ``global_batch`` among
    ``processes`` CPU processes."""
    if global_batch % processes:
        raise ValueError(f"a global batch of {global_batch} does not split into {processes}")
    return [
        "--trainer.strategy=ddp",
        f"--trainer.devices={processes}",
        f"--data.init_args.batch_size={global_batch // processes}",
    ]


def largest_differences(reference: Path, other: Path) -> dict[str, Any]:
    """The largest absolute difference of each part of two checkpoints: ``network`` and
    ``ema`` weights and ``optimizer`` state, with the tensor where it occurs."""
    a, b = read_checkpoint(reference), read_checkpoint(other)
    groups: dict[str, dict[str, Any]] = {}
    for part, key in (("weights", "state_dict"), ("optimizer", "optimizer_states")):
        left, right = flat_tensors(a[key]), flat_tensors(b[key])
        if left.keys() != right.keys():
            raise ValueError(f"{reference} and {other} hold different {key} entries")
        for name, tensor in left.items():
            if not tensor.is_floating_point():
                continue
            group = name.split(".")[0] if part == "weights" else part
            difference = float((tensor.double() - right[name].double()).abs().max())
            if difference >= groups.get(group, {"max_abs": -1.0})["max_abs"]:
                groups[group] = {"max_abs": difference, "tensor": name}
    return {"global_steps": [a["global_step"], b["global_step"]], **groups}


def run_and_terminate(recipe: Path, options: list[str], step: int) -> int:
    """Start the recipe, send SIGTERM to the ``mmflow fit`` process once ``last.ckpt`` has
    reached ``step``; returns the exit status (143 when the signal stopped it)."""
    process = subprocess.Popen(
        fit_command(recipe, resume=False, options=options),
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    while process.poll() is None and (saved_step(recipe.parent) or 0) < step:
        time.sleep(0.05)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=300)
    if process.returncode not in (0, SIGTERM_EXIT_STATUS):
        raise RuntimeError(
            f"{recipe}: the run failed with status {process.returncode}:\n{errors[-3000:]}"
        )
    return process.returncode


def compare_processes(
    work: Path, processes: int, steps: int, global_batch: int, every: int, validate_every: int
) -> dict[str, Any]:
    """The experiment of the module docstring, in ``work`` (emptied first); returns the record."""
    if work.exists():
        shutil.rmtree(work)
    seconds, runs = {}, {}
    single = [f"--data.init_args.batch_size={global_batch}"]
    split = ddp_options(processes, global_batch)
    for name, options in (("one", single), ("many", split)):
        recipe = write_recipe(work / name, steps, every, validate_every)
        seconds[name] = run_to_end(recipe, resume=False, options=options)
        runs[name] = recipe.parent / "checkpoints" / "last.ckpt"
    recipe = write_recipe(work / "switched", steps, every, validate_every)
    start = time.perf_counter()
    status = run_and_terminate(recipe, split, step=steps // 3)
    stopped_at = saved_step(recipe.parent)
    run_to_end(recipe, resume=True, options=single)
    seconds["switched"] = time.perf_counter() - start
    runs["switched"] = recipe.parent / "checkpoints" / "last.ckpt"
    return {
        "processes": processes,
        "steps": steps,
        "global_batch": global_batch,
        "seconds": seconds,
        "switched": {"exit_status": status, "stopped_at_step": stopped_at},
        "many_vs_one": largest_differences(runs["one"], runs["many"]),
        "switched_vs_one": largest_differences(runs["one"], runs["switched"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_parallel")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16, help="the global batch")
    parser.add_argument("--every", type=int, default=10, help="checkpoint every N steps")
    parser.add_argument("--validate-every", type=int, default=50)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    record = compare_processes(
        out / "runs", args.processes, args.steps, args.batch_size, args.every, args.validate_every
    )
    write_json(out / "data_parallel.json", record)
    for comparison in ("many_vs_one", "switched_vs_one"):
        parts = {k: v for k, v in record[comparison].items() if k != "global_steps"}
        largest = ", ".join(f"{k} {v['max_abs']:.2e} ({v['tensor']})" for k, v in parts.items())
        print(
            f"{comparison}: steps {record[comparison]['global_steps']}; largest |diff|: {largest}"
        )
    print(json.dumps(record["seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
