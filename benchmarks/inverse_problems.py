"""Linear inverse problems on MNIST with the trained flow as prior, against naive baselines.

For N test digits ``x1`` (in the flow's [-1, 1] pixel space) and each task — centre-box and
half-image inpainting, 4x super-resolution (average pooling), denoising, Gaussian deblurring —
a measurement ``y = A x1 + sigma_y n`` is restored by

- a naive baseline: mean fill (inpainting), bicubic upsampling (super-resolution), the noisy
  image (denoising), the blurred image and a Tikhonov (Wiener-type) inverse (deblurring);
- the flow prior with :func:`mmflow.sampling.sample` and the methods ``inverse_projection``
  and ``inverse_gradient`` (:mod:`mmflow.sampling.inverse`): the range-null-space projection with the model's noise estimate (DDNM, "projection/model") and with the corrected
  noise estimate ("projection/corrected"), and gradient data-consistency steps
  ("gradient/corrected"). The network is the class-conditional MMDiT run without guidance,
  conditioned on the digit's true label ("true") or on the null class ("null").

Reported per method: the mean data-consistency residual ``||A x - y||`` per sample next to the
noise level ``sigma_y sqrt(m)``, PSNR against the truth (images in [0, 1]), FD-ours (Fréchet
distance in our MNIST classifier's features, against the same N true digits; not FID) and
class accuracy of our classifier. Writes a JSON file and, per task, a PNG grid whose rows are
truth, measurement (``A^+ y``), baseline and flow ("projection/corrected", true label).

    OMP_NUM_THREADS=1 python -m benchmarks.inverse_problems \
        --checkpoint outputs/mnist/checkpoints/last.ckpt --config recipes/image/mnist.yaml
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmflow.data import load_datamodule, take_batches
from mmflow.hub import PretrainedFlow, pretrained_from_checkpoint
from mmflow.metrics import metric_entries
from mmflow.sampling import Denoising, LinearOperator, sample
from modalities.image import save_image_grid
from modalities.image.operators import GaussianDeblur, Inpainting, SuperResolution

IMAGE_SIZE = (28, 28)
GRID_COLUMNS = 8

Baseline = Callable[[Tensor], Tensor]


@dataclass
class Task:
    """One inverse problem: the operator, its noise level and the naive restorations."""

    name: str
    operator: LinearOperator
    noise_std: float
    baselines: dict[str, Baseline]


@dataclass
class Row:
    """The scores of one restoration of one task."""

    task: str
    method: str
    label: str
    noise_std: float
    noise_level: float
    residual: float
    psnr: float
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    nfe: int = 0


def mean_fill(operator: Inpainting) -> Baseline:
    """Hidden pixels set to the mean of each image's seen pixels."""

    def restore(y: Tensor) -> Tensor:
        seen = operator.adjoint(y)
        fill = y.flatten(1).mean(1).view(-1, 1, 1, 1)
        return seen + (~operator.mask).to(y.dtype) * fill

    return restore


def bicubic(factor: int) -> Baseline:
    def restore(y: Tensor) -> Tensor:
        return F.interpolate(y, scale_factor=factor, mode="bicubic", align_corners=False)

    return restore


def build_tasks(noise_std: float, denoise_std: float, deblur_std: float) -> list[Task]:
    """The five problems; noise levels are in the flow's [-1, 1] units."""
    box = Inpainting.centre_box(IMAGE_SIZE, (14, 14))
    half = Inpainting.box(IMAGE_SIZE, 0, IMAGE_SIZE[1] // 2, IMAGE_SIZE[0], IMAGE_SIZE[1] // 2)
    blur = GaussianDeblur(kernel_size=9, blur_std=2.0, padding="circular")
    # Tikhonov inverse with the noise-to-signal ratio of pixels of variance ~0.5.
    wiener_damping = deblur_std**2 / 0.5
    return [
        Task("inpaint_box", box, noise_std, {"mean_fill": mean_fill(box)}),
        Task("inpaint_half", half, noise_std, {"mean_fill": mean_fill(half)}),
        Task("super_resolution_4x", SuperResolution(4), noise_std, {"bicubic": bicubic(4)}),
        Task("denoise", Denoising(), denoise_std, {"noisy_image": lambda y: y}),
        Task(
            "deblur",
            blur,
            deblur_std,
            {
                "blurred_image": lambda y: y,
                "wiener": lambda y: blur.regularized_inverse(y, wiener_damping),
            },
        ),
    ]


def load_digits(config: str, num_samples: int) -> dict[str, Tensor]:
    """The first ``num_samples`` test digits of the recipe's datamodule as one batch."""
    batches = take_batches(load_datamodule(config), "test", num_samples)
    return {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}


def residual_norm(operator: LinearOperator, x: Tensor, y: Tensor) -> Tensor:
    return (operator.forward(x) - y).flatten(1).norm(dim=1)


def psnr(images: Tensor, truth: Tensor) -> Tensor:
    """``10 log10(1 / MSE)`` per image, both in [0, 1]."""
    mse = (images - truth).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return -10 * torch.log10(mse)


def score(
    flow: PretrainedFlow, batch: dict[str, Tensor], task: Task, y: Tensor, estimate: Tensor
) -> dict[str, Any]:
    """Residual, PSNR and the adapter's evaluators (FD-ours, class accuracy) of ``estimate``."""
    images = flow.adapter.decode(estimate)
    metrics = flow.adapter.evaluators()
    values = {}
    for name, metric in metrics.items():
        metric.reset()
        metric.update(images, batch)
        values.update({k: float(v) for k, v in metric_entries(name, metric.compute()).items()})
    return {
        "residual": float(residual_norm(task.operator, estimate, y).mean()),
        "psnr": float(psnr(images, batch["image"]).mean()),
        "metrics": values,
    }


def run_flow(
    flow: PretrainedFlow,
    task: Task,
    y: Tensor,
    noise: Tensor,
    method: str,
    options: dict[str, Any],
    condition: dict[str, Tensor],
    nfe: int,
) -> tuple[Tensor, int, float]:
    start = time.perf_counter()
    problem = {"operator": task.operator, "measurement": y, "noise_std": task.noise_std}
    result = sample(
        flow.network, noise, method, nfe=nfe, solver_options={**problem, **options}, **condition
    )
    return result.samples, result.nfe, time.perf_counter() - start


FLOW_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "projection/model": ("inverse_projection", {"noise_estimate": "model"}),
    "projection/corrected": ("inverse_projection", {"noise_estimate": "corrected"}),
    "gradient/corrected": ("inverse_gradient", {"noise_estimate": "corrected"}),
}
SHOWN_METHOD = "projection/corrected"


def benchmark_task(
    flow: PretrainedFlow,
    batch: dict[str, Tensor],
    task: Task,
    args: argparse.Namespace,
    out_dir: Path,
) -> list[Row]:
    x1, cond = flow.adapter.encode(batch)
    seed = torch.Generator().manual_seed(args.seed)
    y = task.operator.measure(x1, task.noise_std, seed)
    noise = torch.randn(x1.shape, generator=seed)
    level = task.noise_std * math.sqrt(y[0].numel())
    conditions = {"true": cond, "null": flow.adapter.null_condition(cond)}
    rows, shown = [], {}
    for name, restore in task.baselines.items():
        estimate = restore(y)
        shown.setdefault("baseline", estimate)
        scores = score(flow, batch, task, y, estimate)
        rows.append(Row(task.name, name, "-", task.noise_std, level, **scores))
        print_row(rows[-1])
    for name, (method, options) in FLOW_METHODS.items():
        for label in args.labels:
            if label == "null" and name != SHOWN_METHOD:
                continue
            solver_options = {**options, "data_std": args.data_std}
            estimate, nfe, seconds = run_flow(
                flow, task, y, noise, method, solver_options, conditions[label], args.nfe
            )
            if name == SHOWN_METHOD and label == "true":
                shown["flow"] = estimate
            scores = score(flow, batch, task, y, estimate)
            rows.append(
                Row(
                    task.name,
                    f"flow {name}",
                    label,
                    task.noise_std,
                    level,
                    **scores,
                    seconds=seconds,
                    nfe=nfe,
                )
            )
            print_row(rows[-1])
    write_grid(flow, task, x1, y, shown, out_dir)
    return rows


def write_grid(
    flow: PretrainedFlow,
    task: Task,
    x1: Tensor,
    y: Tensor,
    shown: dict[str, Tensor],
    out_dir: Path,
) -> Path:
    """Rows: truth, measurement (``A^+ y``), baseline, flow, for the first digits."""
    columns = slice(0, GRID_COLUMNS)
    measurement = task.operator.pseudo_inverse(y[columns])
    panels = [x1[columns], measurement, shown["baseline"][columns]]
    panels += [shown["flow"][columns]] if "flow" in shown else []
    images = flow.adapter.decode(torch.cat(panels))
    return save_image_grid(images, out_dir / f"{task.name}.png", nrow=GRID_COLUMNS)


def print_row(row: Row) -> None:
    fd = row.metrics.get("fd_ours", float("nan"))
    accuracy = row.metrics.get("class_accuracy", float("nan"))
    print(
        f"{row.task:<20} {row.method:<26} {row.label:<5} {row.noise_std:>6.3f} "
        f"{row.residual:>8.3f} {row.noise_level:>8.3f} {row.psnr:>6.2f} {fd:>8.2f} "
        f"{accuracy:>6.3f} {row.seconds:>6.1f}",
        flush=True,
    )


def print_header() -> None:
    print(
        f"{'task':<20} {'method':<26} {'label':<5} {'sigma_y':>6} {'|Ax-y|':>8} "
        f"{'noise':>8} {'PSNR':>6} {'FD-ours':>8} {'acc':>6} {'sec':>6}"
    )


def print_table(rows: list[Row]) -> None:
    print()
    print_header()
    for row in rows:
        print_row(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="outputs/mnist/checkpoints/last.ckpt")
    parser.add_argument("--config", default="recipes/image/mnist.yaml")
    parser.add_argument("--num_samples", type=int, default=256)
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--noise_std", type=float, default=0.05, help="inpainting and SR")
    parser.add_argument("--denoise_std", type=float, default=0.4)
    parser.add_argument("--deblur_std", type=float, default=0.02)
    parser.add_argument("--data_std", type=float, default=1.0, help="s in r_t^2 (flow units)")
    parser.add_argument("--labels", nargs="+", default=["true", "null"], choices=["true", "null"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/inverse_problems/metrics.json")
    args = parser.parse_args()

    flow = pretrained_from_checkpoint(args.checkpoint)
    if not flow.adapter.conditioned():
        args.labels = ["true"]
    batch = load_digits(args.config, args.num_samples)
    out_path = Path(args.out)
    out_dir = out_path.parent
    rows: list[Row] = []
    start = time.perf_counter()
    print_header()
    with torch.no_grad():
        for task in build_tasks(args.noise_std, args.denoise_std, args.deblur_std):
            rows += benchmark_task(flow, batch, task, args, out_dir)
    print_table(rows)
    context = {
        "source": args.checkpoint,
        "data": f"{args.config} test split, first {args.num_samples} digits",
        "units": "residual and noise level in the flow's [-1, 1] pixel units; PSNR on [0, 1]",
        "noise_level": "sigma_y * sqrt(m), m = measurements per image",
        "metric_names": flow.adapter.metric_names(),
        "conditioning": "MMDiT class label: true digit label or null class; no CFG",
        "nfe": args.nfe,
        "data_std": args.data_std,
        "seconds": time.perf_counter() - start,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({**context, "rows": [asdict(r) for r in rows]}, indent=2))
    print(f"\n{out_path}  grids: {out_dir}/<task>.png  ({context['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
