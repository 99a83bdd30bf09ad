"""Where a separator's error comes from: SI-SDRi and SDRi per class and per input SNR.

For a flow separator (a FlowSep checkpoint) it scores, on the fixed mixtures of a split:

- ``sample``: one sample from the source, with the model's sampler, NFE and CFG scale;
- ``mean_of_K``: the mean of ``K`` samples in the latent space (an estimate of the posterior
  mean ``E[x1 | mixture, query]``, which SDR rewards), at ``K`` times the NFE;
- ``data_estimate_t``: the one-step data estimate of the (guided) velocity at time ``t`` on the
  path to the *true* latent, ``x1_hat = x_t + (1 - t) u(x_t, t)`` with
  ``x_t = t x1 + (1 - t) x0`` (linear path): how good a denoiser the network is at each ``t``.
  At ``t = 0`` it sees the source draw only, so it is the network's own posterior-mean guess.

For a mask separator (the baseline) it scores its one estimate. Every row reports the mean
over examples, per class and per SNR bin of the mixture, with the counted NFE per example.

    python -m benchmarks.separation_diagnosis --config recipes/audio/flowsep.yaml \\
        --ckpt_path outputs/audio/flowsep/checkpoints/last.ckpt --out outputs/audio/diagnosis
    python -m benchmarks.separation_diagnosis --config recipes/audio/mask_baseline.yaml \\
        --ckpt_path outputs/audio/mask_baseline/checkpoints/last.ckpt --out outputs/audio/diag_mask

Options after ``--`` are recipe overrides, as for ``mmflow evaluate``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.recipes import build_recipe
from benchmarks.samplers import guided_model
from mmflow.data import take_batches
from mmflow.hub import PretrainedFlow
from mmflow.modality import Batch
from mmflow.training import FlowMatching
from modalities.audio.evaluators import plain_sdr, si_sdr

SNR_BINS = ((-15.0, -5.0), (-5.0, 5.0), (5.0, 15.0))
ESTIMATE_TIMES = (0.0, 0.25, 0.5, 0.75, 0.9)

Separate = Callable[[Batch, torch.Generator], Tensor]


def flow_rows(module: FlowMatching, mean_of: int, times: tuple[float, ...]) -> dict[str, Any]:
    """``name -> (separate(batch, generator), NFE per example)`` for a flow separator."""
    adapter, nfe = module.adapter, module.hparams.nfe
    flow = PretrainedFlow(module.sampling_network, adapter)
    guided = guided_model(flow, module.hparams.cfg_scale)
    evals = 2 if guided is not flow.network else 1

    def samples(batch: Batch, generator: torch.Generator, count: int) -> Tensor:
        x1, cond = adapter.encode(batch)
        draws = [
            module.generate(cond, adapter.source_like(x1, cond, generator))[0] for _ in range(count)
        ]
        return adapter.decode(torch.stack(draws).mean(dim=0), cond, batch)

    def data_estimate(t: float) -> Separate:
        def separate(batch: Batch, generator: torch.Generator) -> Tensor:
            x1, cond = adapter.encode(batch)
            x0 = adapter.source_like(x1, cond, generator)
            times = torch.full((x1.shape[0],), t)
            x_t = module.path.sample(x0, x1, times).x_t
            velocity = guided(x_t, times, **cond)
            return adapter.decode(module.path.velocity_to_data(velocity, x_t, times), cond, batch)

        return separate

    rows: dict[str, Any] = {"sample": (lambda b, g: samples(b, g, 1), nfe * evals)}
    if mean_of > 1:
        rows[f"mean_of_{mean_of}"] = (lambda b, g: samples(b, g, mean_of), mean_of * nfe * evals)
    for t in times:
        rows[f"data_estimate_t{t:g}"] = (data_estimate(t), evals)
    return rows


def scores(estimates: Tensor, batch: Batch) -> dict[str, Tensor]:
    """Per-example SI-SDRi and SDRi."""
    target, mixture = batch["target"], batch["mixture"]
    return {
        "si_sdri": si_sdr(estimates, target) - si_sdr(mixture, target),
        "sdri": plain_sdr(estimates, target) - plain_sdr(mixture, target),
    }


def summarise(values: dict[str, Tensor], classes: Tensor, snr: Tensor, names: list[str]) -> dict:
    """Means overall, per class and per SNR bin."""
    summary: dict[str, Any] = {}
    for metric, value in values.items():
        entry = {"overall": value.mean().item()}
        for index, name in enumerate(names):
            chosen = classes == index
            if chosen.any():
                entry[f"class/{name}"] = value[chosen].mean().item()
        for low, high in SNR_BINS:
            chosen = (snr >= low) & (snr < high) if high < SNR_BINS[-1][1] else snr >= low
            if chosen.any():
                entry[f"snr/{low:g}..{high:g}"] = value[chosen].mean().item()
        summary[metric] = entry
    return summary


@torch.no_grad()
def diagnose(rows: dict[str, Any], batches: list[Batch], names: list[str], seed: int) -> dict:
    """Every row's scores on every batch, summarised."""
    results = {}
    for name, (separate, nfe) in rows.items():
        collected: dict[str, list[Tensor]] = defaultdict(list)
        for index, batch in enumerate(batches):
            estimates = separate(batch, torch.Generator().manual_seed(seed + index))
            for metric, value in scores(estimates, batch).items():
                collected[metric].append(value)
        values = {metric: torch.cat(parts) for metric, parts in collected.items()}
        classes = torch.cat([b["class_index"] for b in batches])
        snr = torch.cat([b["snr_db"] for b in batches])
        results[name] = {"nfe": nfe, **summarise(values, classes, snr, names)}
        print(
            f"{name:>22}: SI-SDRi {results[name]['si_sdri']['overall']:6.2f} dB, "
            f"SDRi {results[name]['sdri']['overall']:6.2f} dB, NFE {nfe}",
            flush=True,
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the recipe the checkpoint trained with")
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--out", required=True, help="folder for diagnosis.json")
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--num_examples", type=int, default=None, help="default: the split")
    parser.add_argument("--mean_of", type=int, default=4, help="K of the mean-of-K row")
    parser.add_argument("--times", type=float, nargs="*", default=list(ESTIMATE_TIMES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="recipe overrides (after --)")
    args = parser.parse_args(argv)
    module, datamodule = build_recipe(args.config, args.overrides, args.ckpt_path)
    batches = take_batches(datamodule, args.split, args.num_examples)
    if isinstance(module, FlowMatching):
        rows = flow_rows(module, args.mean_of, tuple(args.times))
        names = module.adapter.class_names
    else:
        rows = {"mask": (lambda batch, generator: module.separate(batch), 1)}
        names = module.class_names
    results = diagnose(rows, batches, names, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "config": args.config,
        "checkpoint": args.ckpt_path,
        "split": args.split,
        "examples": sum(len(b["caption"]) for b in batches),
        "rows": results,
    }
    (out / "diagnosis.json").write_text(json.dumps(record, indent=2))
    print(f"written to {out / 'diagnosis.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
