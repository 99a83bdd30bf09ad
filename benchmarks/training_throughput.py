"""Training steps per second of a recipe, and where the time of a step goes.

Runs ``--steps`` training steps of a flow recipe's module on its training data (after
``--warmup`` untimed ones) and times each stage of a step:

- ``data``: drawing the next batch (mixing, augmentation, loading);
- ``encode``: the adapter's encoding (frozen encoders, feature extraction);
- ``objective``: the network's forward pass and the loss;
- ``backward`` and ``optimizer`` (the optimizer step and the EMA update);

plus the time spent inside each ``--parts`` callable (dotted paths from the module, e.g.
``adapter.vae.encode`` or ``adapter.text_encoder.forward``), counted within its stage. Prints
and saves ``{"steps_per_second", "seconds": {stage: s per step}, "parts": {...}}``.

    python -m benchmarks.training_throughput --config recipes/audio/flowsep.yaml \\
        --parts adapter.vae.mel.forward adapter.vae.encode adapter.text_encoder.forward \\
        --out outputs/audio/throughput.json
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from benchmarks.recipes import build_recipe
from mmflow.modality import to_device
from mmflow.training import FlowMatching

STAGES = ("data", "encode", "objective", "backward", "optimizer")


class StageClock:
    """Seconds spent per named stage, summed over the timed steps."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.timing = False

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.timing:
                self.seconds[name] += time.perf_counter() - start

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        """Replace ``owner.<attribute>`` by a callable that also times itself as ``name``."""
        original: Callable[..., Any] = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name):
                return original(*args, **kwargs)

        object.__setattr__(owner, attribute, timed)


def resolve_owner(root: Any, dotted: str) -> tuple[Any, str]:
    """The object holding the last name of ``dotted`` (from ``root``), and that name."""
    *path, attribute = dotted.split(".")
    owner = root
    for name in path:
        owner = getattr(owner, name)
    if not callable(getattr(owner, attribute, None)):
        raise TypeError(f"--parts {dotted}: not a callable of the module")
    return owner, attribute


def measure(
    module: FlowMatching, batches: Iterator[Any], steps: int, warmup: int, parts: list[str]
) -> dict[str, Any]:
    """Time ``steps`` training steps after ``warmup`` untimed ones."""
    clock = StageClock()
    for dotted in parts:
        clock.wrap(*resolve_owner(module, dotted), name=dotted)
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    module.train()
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            clock.timing, start = True, time.perf_counter()
        with clock.stage("data"):
            batch = to_device(next(batches), module.device)
        with clock.stage("encode"):
            x1, cond = module.encode(batch)
        generator = torch.Generator(x1.device).manual_seed(step)
        with clock.stage("objective"):
            loss = module.objective_output(x1, cond, batch, generator).loss
        with clock.stage("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with clock.stage("optimizer"):
            optimizer.step()
            if module.ema is not None:
                module.ema.update_parameters(module.network)
    elapsed = time.perf_counter() - start
    return {
        "steps": steps,
        "threads": torch.get_num_threads(),
        "steps_per_second": steps / elapsed,
        "seconds": {name: clock.seconds[name] / steps for name in STAGES},
        "parts": {name: clock.seconds[name] / steps for name in parts},
    }


def endless(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--parts", nargs="*", default=[], help="dotted callables to time")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("overrides", nargs="*", help="recipe overrides (after --)")
    args = parser.parse_args(argv)
    module, datamodule = build_recipe(args.config, args.overrides)
    if not isinstance(module, FlowMatching):
        raise TypeError(f"{args.config}: times flow recipes; its model is {type(module).__name__}")
    datamodule.prepare_data()
    datamodule.setup("fit")
    result = measure(
        module, endless(datamodule.train_dataloader()), args.steps, args.warmup, args.parts
    )
    result["config"] = args.config
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
