"""Quality against NFE for several samplers on one trained flow (``mmflow benchmark samplers``).

For every sampler and every NFE budget, the same noise and the same real batches are used:
each batch is encoded by the modality adapter, generated from fixed noise under the batch's
condition, decoded, and given to the adapter's evaluators (``metric.update(media, batch)``).
NFE is counted by the sampler, never inferred. Budgets a sampler cannot spend exactly (Heun at
NFE 1) are reported as not applicable rather than rounded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmflow.hub import PretrainedFlow
from mmflow.metrics import metric_entries
from mmflow.modality import Batch, to_device
from mmflow.sampling import get_sampler


@dataclass
class SweepRow:
    """One (sampler, NFE) cell: the metrics, or why it was not run."""

    sampler: str
    nfe: int
    cfg_scale: float
    metrics: dict[str, float] = field(default_factory=dict)
    counted_nfe: int | None = None
    seconds: float | None = None
    not_applicable: str | None = None


def _run_cell(
    flow: PretrainedFlow, batches: list[Batch], sampler: str, nfe: int, cfg_scale: float, seed: int
) -> tuple[SweepRow, tuple[Any, Batch | None]]:
    device = next(flow.network.parameters()).device
    metrics = flow.adapter.evaluators()
    first_media, first_batch, counted = None, None, 0
    start = time.perf_counter()
    for index, batch in enumerate(batches):
        batch = to_device(batch, device)
        x1, cond = flow.adapter.encode(batch)
        generator = torch.Generator().manual_seed(seed + index)
        noise = flow.adapter.noise_like(x1.cpu(), generator=generator).to(device)
        result = flow.generate(cond, noise, sampler=sampler, nfe=nfe, cfg_scale=cfg_scale)
        counted = result.nfe
        media = flow.adapter.decode(result.samples, cond, batch)
        for metric in metrics.values():
            metric.update(media, batch)
        if first_media is None:
            first_media, first_batch = media, batch
    values = {
        key: float(entry)
        for name, metric in metrics.items()
        for key, entry in metric_entries(name, metric.compute()).items()
    }
    for metric in metrics.values():
        metric.reset()
    row = SweepRow(sampler, nfe, cfg_scale, values, counted, time.perf_counter() - start)
    return row, (first_media, first_batch)


def sampler_sweep(
    flow: PretrainedFlow,
    batches: Iterable[Batch],
    samplers: Sequence[str],
    nfes: Sequence[int],
    cfg_scale: float | None = None,
    seed: int = 0,
    media_dir: Path | None = None,
) -> list[SweepRow]:
    """Evaluate every (sampler, NFE) pair on the same batches and noise.

    Writes the first batch's media of each cell to ``media_dir`` (if given) as
    ``{sampler}_nfe{nfe}``.
    """
    batches = list(batches)
    scale = flow.defaults.cfg_scale if cfg_scale is None else cfg_scale
    rows = []
    for name in samplers:
        per_step = get_sampler(name).evals_per_step
        for nfe in nfes:
            if nfe % per_step:
                reason = f"{name} uses {per_step} evaluations per step"
                rows.append(SweepRow(name, nfe, scale, not_applicable=reason))
                continue
            row, (media, batch) = _run_cell(flow, batches, name, nfe, scale, seed)
            if row.counted_nfe != nfe:
                raise RuntimeError(f"{name}: asked for NFE {nfe}, counted {row.counted_nfe}")
            if media_dir is not None:
                flow.adapter.save_media(media, media_dir, f"{name}_nfe{nfe}", batch)
            rows.append(row)
            print(
                f"{name:>10} NFE {nfe:>3}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in row.metrics.items())
            )
    return rows


def write_report(
    rows: Sequence[SweepRow], out_dir: Path, context: dict[str, Any]
) -> tuple[Path, Path]:
    """``metrics.json`` (every row plus ``context``) and ``metrics_vs_nfe.png`` (one panel a metric).

    Panels are titled by ``context["metric_names"]`` where given (e.g. "FD-ours").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "metrics.json"
    json_path.write_text(json.dumps({**context, "rows": [asdict(r) for r in rows]}, indent=2))
    names = sorted({k for r in rows for k in r.metrics})
    figure, axes = plt.subplots(
        1, max(len(names), 1), figsize=(5 * max(len(names), 1), 3.6), squeeze=False
    )
    for axis, metric in zip(axes[0], names, strict=False):
        for sampler in dict.fromkeys(r.sampler for r in rows):
            points = [
                (r.nfe, r.metrics[metric])
                for r in rows
                if r.sampler == sampler and metric in r.metrics
            ]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=sampler)
        axis.set_xscale("log", base=2)
        values = [r.metrics[metric] for r in rows if metric in r.metrics]
        if min(values) > 0 and max(values) > 20 * min(values):
            axis.set_yscale("log")
        axis.set_xlabel("NFE (counted model evaluations)")
        axis.set_title(context.get("metric_names", {}).get(metric, metric))
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    plot_path = out_dir / "metrics_vs_nfe.png"
    figure.savefig(plot_path, dpi=120)
    plt.close(figure)
    return json_path, plot_path
