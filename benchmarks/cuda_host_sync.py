"""Which sampling methods synchronise with the GPU, counted by CUDA's sync debug mode.

On a CUDA device, every registered method (adaptive solvers and diffusers' schedulers
included) samples the exact velocity of a Gaussian target under
``torch.cuda.set_sync_debug_mode("warn")``, once at a small and once at a four times larger
budget; each host synchronisation (``.item()``, a device-to-host copy, ``nonzero`` ...) is one
warning. A method whose count does not grow with the budget synchronises only while it sets
up (reading or checking its time grid); one whose count grows synchronises inside its steps.

    python -m benchmarks.cuda_host_sync --out outputs/bench/cuda_host_sync.json

The CPU test ``tests/mmflow/sampling/test_host_sync.py`` checks the steps of every method but
the adaptive ones and diffusers' with a tensor type that refuses host reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from mmflow.sampling import SAMPLERS, Denoising, GaussianLinearFlow, sample


def _options(name: str, device: torch.device, measurement: torch.Tensor) -> dict[str, Any]:
    spec = SAMPLERS[name]
    generator = torch.Generator(device=device).manual_seed(0)
    if spec.kind == "search":
        reward = lambda x1, **_: -(x1 - 1).square().sum(dim=1)
        extra = {"initial_particles": 3} if name == "rbf" else {}
        return {"reward": reward, "steps": 4, "generator": generator, **extra}
    if spec.kind == "adaptive":
        return {"rtol": 1e-4, "atol": 1e-4}
    return {
        "sde": {"generator": generator},
        "guidance": {"loss_fn": lambda x: x.square().sum(dim=1), "step_size": 0.1},
        "inverse": {"operator": Denoising(), "measurement": measurement, "noise_std": 0.1},
    }.get(spec.kind, {})


def _budget(name: str, scale: int, options: dict[str, Any]) -> int | None:
    spec = SAMPLERS[name]
    if spec.kind == "adaptive":
        return None
    if spec.kind == "search":
        return 24 * scale
    return 4 * scale * (spec.evals_per_step or 1) + spec.warmup_evals(options)


def count_syncs(name: str, device: torch.device, scale: int) -> int:
    """Host synchronisations of one ``sample`` call of method ``name``."""
    field = GaussianLinearFlow(
        torch.tensor([1.0, -0.5], device=device), torch.tensor([0.5, 1.5], device=device)
    )
    noise = torch.randn(64, 2, device=device, generator=torch.Generator(device).manual_seed(1))
    options = _options(name, device, noise + 1)
    sample(field, noise, name, _budget(name, scale, options), solver_options=options)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sample(field, noise, name, _budget(name, scale, options), solver_options=options)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cuda_host_sync")
    parser.add_argument("--out", default="outputs/bench/cuda_host_sync.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA device", file=sys.stderr)
        return 1
    device = torch.device("cuda")
    rows = {}
    for name, spec in SAMPLERS.items():
        if spec.kind == "diffusers":
            try:
                import diffusers  # noqa: F401
            except ImportError:
                continue
        small, large = count_syncs(name, device, 1), count_syncs(name, device, 4)
        where = "none" if large == 0 else "setup only" if large == small else "in the steps"
        rows[name] = {"kind": spec.kind, "syncs": small, "syncs_4x_budget": large, "where": where}
        print(f"{name:<26} {spec.kind:<10} {small:>4} {large:>4}  {where}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
