"""Inference-time scaling on MNIST: reward vs NFE budget for best-of-N, SMC and RBF.

The trained MNIST flow (recipe ``recipes/image/mnist.yaml``) generates with the **null
(unconditional) class** and no guidance, so that only the reward steers the search towards a
target digit. The reward is ``r(x1_hat) = log p(target | x1_hat)`` under the project's MNIST
classifier (``.cache/classifiers/mnist5k.safetensors``, the one behind FD-ours and class
accuracy), evaluated on the data estimate ``x1_hat = x + (1 - t) u`` (decoded to [0, 1]).

For every NFE budget (model evaluations per image) and method — best-of-N over Euler ODE
samples, SMC over Euler-Maruyama particles and rollover budget forcing (RBF), both with Kim et
al.'s diffusion ``g = 3 (1 - t)^2``, and RBF with ``eps = 1 - t`` ("rbf_sigma", whose noise
stays large near the data, where RBF's rolled-over budget accumulates) — the script reports
the mean reward (with its standard error over images) and the accuracy of the reward
classifier (``argmax = target``). Searching
against a classifier and scoring with it rewards adversarial pixels as much as digits
(reward hacking), so the same images are also scored by an **independent check classifier**: a
second ``SmallCNN`` trained with another seed (same training split, different initialisation
and augmentation). It is trained into ``outputs/inference_scaling/`` on first use (about a
minute on one thread). FD-ours is not reported: it uses the reward classifier's own features.

Every method starts from the same initial noise per image (the first candidate / particle),
so rows differ by the search only. Writes ``metrics.json``, ``scaling.png`` (reward and
check accuracy vs NFE) and ``samples.png`` (chosen images at the largest budget, two per
target class, one row per method) to ``outputs/inference_scaling/``.

    OMP_NUM_THREADS=1 python benchmarks/inference_scaling.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmflow.hub import PretrainedFlow, pretrained_from_checkpoint
from mmflow.sampling.search import (
    ClassLogProbability,
    RBFResult,
    SearchResult,
    best_of_n,
    rollover_budget_forcing,
    smc,
)
from mmflow.timesteps import make_grid
from modalities.image import MNIST5k, load_classifier, save_image_grid, train_classifier

CLASSIFIER_HELP = (
    "create it with `python -m modalities.image.classifier --dataset mnist5k "
    "--out .cache/classifiers/mnist5k.safetensors` (about 40 s)"
)


@dataclass
class Row:
    """Scores of one method at one budget, averaged over all target images."""

    method: str
    budget: int
    nfe: int
    reward: float
    reward_se: float
    accuracy: float
    check_log_probability: float
    check_accuracy: float
    seconds: float
    proposals_per_transition: list[float] | None = None


def load_reward_classifier(path: Path) -> nn.Module:
    if not path.is_file():
        raise SystemExit(f"error: reward classifier {path} not found; {CLASSIFIER_HELP}")
    return load_classifier(path)


def load_check_classifier(path: Path, seed: int) -> nn.Module:
    """The independent classifier, trained once with ``seed`` into ``path`` if missing."""
    if not path.is_file():
        print(f"training the check classifier (seed {seed}) into {path} ...", flush=True)
        start = time.perf_counter()
        _, accuracy = train_classifier(MNIST5k(batch_size=64), path, seed=seed)
        print(f"  validation accuracy {accuracy:.4f} ({time.perf_counter() - start:.0f} s)")
    return load_classifier(path)


KIM_SDE = {"diffusion": "square"}  # g = c (1 - t)^2, c = --diffusion_scale (3 in Kim et al.)
LATE_NOISE_SDE = {"diffusion": "sigma", "diffusion_scale": 1.0}  # eps = 1 - t
SEARCHES = {
    "best_of_n": best_of_n,
    "smc": smc,
    "rbf": rollover_budget_forcing,
    "rbf_sigma": rollover_budget_forcing,
}


def search_options(method: str, budget: int, args: argparse.Namespace) -> dict[str, Any]:
    """Each method's options; ``rbf_sigma`` is RBF with a diffusion that stays large late."""
    if method == "best_of_n":
        return {"solver": "euler"}
    if method == "smc":
        return {
            **KIM_SDE,
            "diffusion_scale": args.diffusion_scale,
            "reward_scale": args.reward_scale,
            "ess_threshold": args.ess_threshold,
        }
    initial = {"initial_particles": max(1, round(args.initial_fraction * budget))}
    if method == "rbf":
        return {**KIM_SDE, "diffusion_scale": args.diffusion_scale, **initial}
    return {**LATE_NOISE_SDE, **initial}


@torch.no_grad()
def score(
    flow: PretrainedFlow, checker: ClassLogProbability, samples: Tensor, targets: Tensor
) -> tuple[float, float]:
    """Mean log-probability and accuracy of the targets under ``checker``'s classifier."""
    images = flow.adapter.decode(samples)
    log_probability = checker(samples, class_labels=targets)
    predictions = checker.classifier(images).argmax(dim=1)
    return float(log_probability.mean()), float((predictions == targets).float().mean())


def run_method(
    method: str,
    budget: int,
    flow: PretrainedFlow,
    rewarder: ClassLogProbability,
    checker: ClassLogProbability,
    x0: Tensor,
    targets: Tensor,
    args: argparse.Namespace,
) -> tuple[Row, SearchResult]:
    ts = make_grid("uniform", args.steps, dtype=torch.float64)
    null = flow.adapter.null_condition({"class_labels": targets})
    start = time.perf_counter()
    result = SEARCHES[method](
        flow.network,
        x0,
        ts,
        rewarder,
        budget,
        generator=torch.Generator().manual_seed(args.seed + budget),
        reward_kwargs={"class_labels": targets},
        **search_options(method, budget, args),
        **null,
    )
    seconds = time.perf_counter() - start
    _, accuracy = score(flow, rewarder, result.samples, targets)
    check_log_probability, check_accuracy = score(flow, checker, result.samples, targets)
    row = Row(
        method=method,
        budget=budget,
        nfe=result.nfe,
        reward=float(result.rewards.mean()),
        reward_se=float(result.rewards.std() / len(targets) ** 0.5),
        accuracy=accuracy,
        check_log_probability=check_log_probability,
        check_accuracy=check_accuracy,
        seconds=seconds,
    )
    if isinstance(result, RBFResult):
        row.proposals_per_transition = result.proposals.float().mean(dim=0).tolist()
    return row, result


def print_header() -> None:
    print(
        f"{'method':<10} {'budget':>6} {'nfe':>5} {'reward':>8} {'+-se':>6} {'acc':>6} "
        f"{'check logp':>10} {'check acc':>9} {'sec':>6}"
    )


def print_row(row: Row) -> None:
    print(
        f"{row.method:<10} {row.budget:>6} {row.nfe:>5} {row.reward:>8.3f} {row.reward_se:>6.3f} "
        f"{row.accuracy:>6.3f} "
        f"{row.check_log_probability:>10.3f} {row.check_accuracy:>9.3f} {row.seconds:>6.1f}",
        flush=True,
    )


def print_allocation(rows: list[Row], budget: int) -> None:
    """RBF's mean proposals per searched transition ``t_j -> t_{j+1}`` at ``budget``."""
    print(f"\nRBF proposals per transition (mean over images), budget {budget}:")
    for row in rows:
        if row.budget == budget and row.proposals_per_transition is not None:
            counts = " ".join(f"{count:.1f}" for count in row.proposals_per_transition)
            print(f"  {row.method:<10} {counts}")


def plot(rows: list[Row], path: Path) -> Path:
    """Mean reward and check-classifier accuracy against the NFE budget, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for method in SEARCHES:
        mine = [row for row in rows if row.method == method]
        budgets = [row.budget for row in mine]
        rewards, errors = [row.reward for row in mine], [row.reward_se for row in mine]
        left.errorbar(budgets, rewards, yerr=errors, marker="o", capsize=3, label=method)
        right.plot(budgets, [row.check_accuracy for row in mine], marker="o", label=method)
    left.set_ylabel("mean reward: log p(target | x), reward classifier")
    right.set_ylabel("accuracy, independent check classifier")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("NFE budget per image")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle("MNIST flow, null class + classifier reward: inference-time scaling")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def shown_columns(classes: int, per_class: int, shown: int = 2) -> Tensor:
    """Indices of the first ``shown`` images of every target class (images are class-major)."""
    first = torch.arange(min(shown, per_class))
    return (torch.arange(classes)[:, None] * per_class + first).reshape(-1)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="outputs/mnist/checkpoints/last.ckpt")
    parser.add_argument("--classifier", default=".cache/classifiers/mnist5k.safetensors")
    parser.add_argument(
        "--check_classifier",
        default="outputs/inference_scaling/check_classifier_seed1.safetensors",
    )
    parser.add_argument("--check_seed", type=int, default=1)
    parser.add_argument("--classes", type=int, nargs="+", default=[0, 3, 5, 7, 9])
    parser.add_argument("--images_per_class", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 40, 80, 160, 320])
    parser.add_argument("--reward_scale", type=float, default=1.0, help="SMC lambda")
    parser.add_argument("--ess_threshold", type=float, default=0.5)
    parser.add_argument("--diffusion_scale", type=float, default=3.0, help="g = c (1 - t)^2")
    parser.add_argument(
        "--initial_fraction", type=float, default=0.1, help="RBF initial particles / budget"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/inference_scaling/metrics.json")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    reward_classifier = load_reward_classifier(Path(args.classifier))
    check_classifier = load_check_classifier(Path(args.check_classifier), args.check_seed)
    flow = pretrained_from_checkpoint(args.checkpoint)
    if not flow.adapter.conditioned():
        raise SystemExit(
            f"error: {args.checkpoint} is unconditional; this benchmark needs a null class"
        )
    rewarder = ClassLogProbability(reward_classifier, decode=flow.adapter.decode)
    checker = ClassLogProbability(check_classifier, decode=flow.adapter.decode)
    targets = torch.tensor(args.classes).repeat_interleave(args.images_per_class)
    shape = (len(targets), *flow.adapter.image_shape)
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    out_path = Path(args.out)
    rows: list[Row] = []
    shown: dict[str, Tensor] = {}
    start = time.perf_counter()
    print_header()
    for budget in sorted(args.budgets):
        for method in SEARCHES:
            row, result = run_method(method, budget, flow, rewarder, checker, x0, targets, args)
            rows.append(row)
            shown[method] = result.samples
            print_row(row)
    print_allocation(rows, max(args.budgets))
    plot(rows, out_path.parent / "scaling.png")
    columns = shown_columns(len(args.classes), args.images_per_class)
    grid_images = flow.adapter.decode(torch.cat([shown[m][columns] for m in SEARCHES]))
    save_image_grid(grid_images, out_path.parent / "samples.png", nrow=len(columns))
    context = {
        "source": args.checkpoint,
        "generation": "null class, no CFG; the reward alone steers towards the target digit",
        "reward": f"log p(target | decode(x1_hat)) under {args.classifier}",
        "check": f"independent SmallCNN (seed {args.check_seed}) at {args.check_classifier}",
        "targets": args.classes,
        "images_per_class": args.images_per_class,
        "steps": args.steps,
        "nfe": "model evaluations per image, counted",
        "options_at_largest_budget": {
            m: search_options(m, max(args.budgets), args) for m in SEARCHES
        },
        "seconds": time.perf_counter() - start,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({**context, "rows": [asdict(r) for r in rows]}, indent=2))
    print(f"\n{out_path}  plots: {out_path.parent}/scaling.png, samples.png")
    print(f"({context['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
