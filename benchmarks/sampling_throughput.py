"""Sampling throughput of a flow recipe: samples per second, the cost of CFG and of decoding.

For each ``--batch_sizes`` entry ``B`` it takes the first batch of the recipe's validation
split, repeats its rows to ``B`` examples (speed does not depend on which examples), encodes
them and times, as the median of ``--repeats`` rounds after one untimed round (each round
runs every measurement once in turn, so the machine's drift reaches them alike):

- ``generate``: ``FlowMatching.generate``, the one sampling entry point, from the adapter's
  source with the recipe's validation sampler, NFE and CFG scale (the EMA network);
- ``unguided``: the same at CFG scale 1. Guidance evaluates the conditional and the null
  condition in one batched forward of ``2 B`` rows, so ``cfg_cost = generate / unguided`` is
  close to 2 where the hardware is saturated and below it where a forward is overhead-bound;
- ``decode``: the adapter's decoding of the samples to media (VAE decoders, vocoders,
  marching cubes);

and reports samples per second of generation alone and of generation plus decoding.

    python -m benchmarks.sampling_throughput --config recipes/image/mnist.yaml \\
        --batch_sizes 1 256 --out outputs/benchmarks/sampling_mnist.json

``--ckpt_path`` loads trained weights (a fixed-step sampler's speed does not depend on them;
an adaptive one's does). Options after ``--`` are recipe overrides, as for ``mmflow fit``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.recipes import build_recipe
from benchmarks.timing import interleaved_medians
from mmflow.modality import Batch, to_device
from mmflow.training import FlowMatching


def repeat_rows(batch: Batch, size: int) -> Batch:
    """``batch`` with its rows repeated in turn to ``size`` rows: row ``i`` is row ``i mod n``.

    Tensors are indexed on their first dimension, lists and tuples item by item; every entry
    must have the batch's ``n`` rows.
    """
    for key, value in batch.items():
        if not isinstance(value, Tensor | list | tuple):
            raise TypeError(f"cannot repeat batch entry `{key}` of type {type(value).__name__}")
    lengths = {key: len(value) for key, value in batch.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"the batch's entries differ in length: {lengths}")
    rows = torch.arange(size) % next(iter(lengths.values()))
    return {
        key: value[rows.to(value.device)]
        if isinstance(value, Tensor)
        else [value[int(i)] for i in rows]
        for key, value in batch.items()
    }


@torch.no_grad()
def measure(module: FlowMatching, batch: Batch, batch_size: int, repeats: int) -> dict[str, Any]:
    """The figures of one batch size (module docstring)."""
    rows = repeat_rows(batch, batch_size)
    x1, cond = module.encode(rows)
    generator = torch.Generator(x1.device).manual_seed(0)
    x0 = module.context().source_like(x1, cond, generator)
    samples, nfe = module.generate(cond, x0)
    cfg_scale = float(module.hparams.cfg_scale)
    guided = cfg_scale != 1.0 and module.adapter.conditioned()
    runs = {
        "generate": lambda: module.generate(cond, x0),
        "decode": lambda: module.adapter.decode(samples, cond, rows),
    }
    if guided:
        runs["unguided"] = lambda: module.generate(cond, x0, cfg_scale=1.0)
    seconds = interleaved_medians(runs, x1.device, repeats)
    generate, decode = seconds["generate"], seconds["decode"]
    unguided = seconds.get("unguided", generate)
    return {
        "batch_size": batch_size,
        "sampler": module.hparams.sampler,
        "nfe": nfe,
        "cfg_scale": cfg_scale if guided else 1.0,
        "generate_s": generate,
        "unguided_s": unguided,
        "decode_s": decode,
        "cfg_cost": generate / unguided,
        "samples_per_second": batch_size / generate,
        "decoded_samples_per_second": batch_size / (generate + decode),
    }


def table(results: Sequence[dict[str, Any]]) -> str:
    """A markdown table of :func:`measure`'s figures, a row per batch size."""
    lines = [
        "| batch | sampler | NFE | CFG | generate s | samples/s | CFG cost | decode s | "
        + "with decoding samples/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['batch_size']} | {r['sampler']} | {r['nfe']} | {r['cfg_scale']:g} "
            f"| {r['generate_s']:.3f} | {r['samples_per_second']:.1f} | {r['cfg_cost']:.2f}x "
            f"| {r['decode_s']:.3f} | {r['decoded_samples_per_second']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--ckpt_path", default=None, help="trained weights (default: the init)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("overrides", nargs="*", help="recipe overrides (after --)")
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.repeats < 1:
        raise ValueError("--batch_sizes and --repeats must be positive")
    module, datamodule = build_recipe(args.config, args.overrides, args.ckpt_path)
    if not isinstance(module, FlowMatching):
        raise TypeError(
            f"{args.config}: samples flow recipes; its model is {type(module).__name__}"
        )
    device = torch.device(args.device)
    module.to(device).eval()
    datamodule.prepare_data()
    datamodule.setup("validate")
    batch = to_device(next(iter(datamodule.val_dataloader())), device)
    results = [measure(module, batch, size, args.repeats) for size in args.batch_sizes]
    record = {
        "config": args.config,
        "checkpoint": args.ckpt_path,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(table(results))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
