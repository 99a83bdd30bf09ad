"""Inference-time scaling on MNIST: reward vs NFE budget for best-of-N, SMC and RBF.

The trained MNIST flow (recipe ``recipes/image/mnist.yaml``) generates with the **null
(unconditional) class** and no guidance, so that only the reward steers the search towards a
target digit. The reward is ``r(x1_hat) = log p(target | x1_hat)`` under the project's MNIST
classifier (``.cache/classifiers/mnist5k``, the one behind FD-ours and class accuracy),
evaluated on the path's data estimate ``x1_hat`` (``x + (1 - t) u`` on the linear path),
decoded to [0, 1].

For every NFE budget (model evaluations per image, counted) and method the script reports the
mean reward (with its standard error over images), the accuracy of the reward classifier
(``argmax = target``), the log-probability and accuracy under an **independent check
classifier** (a second ``SmallCNN`` trained with another seed; searching against a classifier
and scoring with it rewards adversarial pixels as much as digits, so the check is the number
to trust; it is trained into ``outputs/inference_scaling/`` on first use, about a minute), and
``crisp``, the fraction of pixels below 0.1 or above 0.9. ``crisp`` shows blur: a search that
returns a data estimate from ``t < 1`` returns a smooth average image, which a classifier
can score highly. FD-ours is not reported: it uses the reward classifier's own features.

Methods (each through :func:`mmflow.sampling.sample`), in the settings that scored best on
validation images of another noise seed (``docs/benchmarks.md`` has the validation runs):

- ``best_of_n``: Euler ODE, 10 uniform steps (the benchmark's reference sampler);
- ``best_of_n_short``: Euler ODE on 2-3 uniform steps (best-of-N's best grid);
- ``smc``: Euler-Maruyama particles on the linear path, ``g = 3 (1 - t)^2``, lambda = 1,
  5 or 10 uniform steps;
- ``rbf``: rollover budget forcing on the linear-path SDE; Kim et al.'s time grid
  (:func:`mmflow.sampling.search.rbf_time_grid`) from 40 NFE, with steps and the diffusion
  scale following the budget (:func:`scaled_diffusion`); below 40 NFE a 3-step uniform grid
  whose initial particles are scored after one step (``initial_step``), returning the
  best-scored estimate (``return_best``);
- ``rbf_kim_vp``: Kim et al.'s headline setting as published: the linear -> VP converted
  model (:func:`mmflow.sampling.sde.linear_to_vp`), their 10-step grid, ``g = 3 (1 - t)^2``,
  5% initial particles.

Every method starts from the same initial noise per image (the first candidate / particle),
so rows differ by the search only, and each row's reward gain over ``best_of_n_short`` is a
paired difference on the same images (printed with its standard error, saved as ``gain``).
Writes ``metrics.json``, ``scaling.png`` (reward and check accuracy vs NFE) and
``samples.png`` (chosen images at the largest budget, two per target class, one row per
method) to ``outputs/inference_scaling/``.

    OMP_NUM_THREADS=1 python -m benchmarks.inference_scaling
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmflow.hub import PretrainedFlow, pretrained_from_checkpoint
from mmflow.sampling import SampleResult, sample
from mmflow.sampling.sde import linear_to_vp, noise_to_target_start
from mmflow.sampling.search import (
    KIM_DIFFUSION,
    KIM_DIFFUSION_SCALE,
    KIM_INITIAL_PARTICLES,
    ClassLogProbability,
    rbf_time_grid,
)
from mmflow.timesteps import make_grid
from modalities.image import MNIST5k, SmallCNN, save_image_grid, train_classifier

CLASSIFIER_HELP = (
    "create it with `python -m modalities.image.classifier --dataset mnist5k "
    "--out .cache/classifiers/mnist5k` (about 40 s)"
)


@dataclass
class Row:
    """Scores of one method at one budget, averaged over all target images."""

    method: str
    budget: int
    steps: int
    nfe: int
    reward: float
    reward_se: float
    accuracy: float
    check_log_probability: float
    check_accuracy: float
    crisp_pixels: float
    seconds: float
    proposals_per_transition: list[float] | None = None
    gain: float | None = None
    gain_se: float | None = None


def load_reward_classifier(path: Path) -> nn.Module:
    if not path.is_dir():
        raise SystemExit(f"error: reward classifier {path} not found; {CLASSIFIER_HELP}")
    return SmallCNN.from_pretrained(path)


def load_check_classifier(path: Path, seed: int) -> nn.Module:
    """The independent classifier, trained once with ``seed`` into ``path`` if missing."""
    if not path.is_dir():
        print(f"training the check classifier (seed {seed}) into {path} ...", flush=True)
        start = time.perf_counter()
        _, accuracy = train_classifier(MNIST5k(batch_size=64), path, seed=seed)
        print(f"  validation accuracy {accuracy:.4f} ({time.perf_counter() - start:.0f} s)")
    return SmallCNN.from_pretrained(path)


KIM_BUDGET = 500  # Kim et al.'s NFE budget, of which KIM_INITIAL_PARTICLES start the chain
KIM_INITIAL_FRACTION = KIM_INITIAL_PARTICLES / KIM_BUDGET
KIM_STEPS = 10  # Kim et al.'s FLUX.1-schnell grid
RBF_STEPS = 20  # most grid steps, reached from 80 NFE on (module docstring)
RBF_MIN_STEPS = 6  # fewest grid steps, used up to 24 NFE
RBF_BUDGET_PER_STEP = 4  # steps = clamp(budget // 4, 6, 20), chosen on validation images
RBF_DIFFUSION_SCALE = 6.0  # c at RBF_STEPS, chosen on validation images (module docstring)
RBF_STEPPED_BUDGET = 40  # below it RBF scores its initial particles at t_1 (initial_step)
RBF_STEPPED_STEPS = 3  # its uniform grid: initial particles to t = 1/3, one searched transition
RBF_STEPPED_FRACTION = 0.35  # its initial particles / budget (4 at 10, 7 at 20 NFE)
SHORT_STEPS = 3  # best-of-N's best grid on validation from 40 NFE; ends like RBF's at t ~ 0.7
SHORT_STEPS_SMALL_BUDGET = 2  # its best grid below SMALL_BUDGET NFE (more candidates)
SMALL_BUDGET = 40
PAIRED_BASELINE = "best_of_n_short"  # the strongest best-of-N: every row's paired gain over it
SMC_STEPS_SMALL_BUDGET = 5  # SMC's grid below SMC_SMALL_BUDGET NFE (more particles)
SMC_SMALL_BUDGET = 80

StepRule = Callable[[int], int]


def fixed_steps(steps: int) -> StepRule:
    """The rule ``steps(budget) = steps`` for a method whose grid does not depend on its budget."""
    return lambda budget: steps


def rbf_steps(budget: int, args: argparse.Namespace) -> int:
    """RBF's grid steps at ``budget``: ``clamp(budget // k, min_steps, max_steps)``.

    With one proposal per transition RBF is a single SDE chain with no choice to make; ``k = 4``
    evaluations per step leaves several proposals per transition at 20-40 NFE and keeps the
    validated 20-step grid from 80 NFE on.
    """
    return min(max(budget // args.rbf_budget_per_step, args.rbf_min_steps), args.rbf_steps)


def fewer_steps_below(budget_limit: int, small: int, large: int) -> StepRule:
    """The rule ``steps(budget) = small if budget < budget_limit else large``.

    A coarser grid at small budgets leaves more candidates (best-of-N: 5 two-step samples
    against 3 at 10 NFE) or particles (SMC: five steps double them below 80 NFE), which outweighs
    their coarser steps on validation images (module docstring).
    """
    return lambda budget: small if budget < budget_limit else large


def scaled_diffusion(scale: float, steps: int, reference_steps: int) -> float:
    """``c' = c sqrt(steps / reference_steps)`` for ``g = c' (1 - t)^2`` on a coarser grid.

    Euler-Maruyama moves ``x`` by ``h eps s`` per step with ``eps = c^2 (1 - t)^4 / 2`` and
    ``h ~ 1 / steps``; keeping ``c^2 / steps`` fixed keeps the largest ``h eps / Var[x_t]`` of
    Kim et al.'s grid at the validated 20-step value (0.46). With ``c = 6`` kept on 4-6 steps the
    steps overshoot and the reward collapses (module docstring).
    """
    return scale * (steps / reference_steps) ** 0.5


@dataclass(frozen=True)
class Setting:
    """How one method searches: on which path and grid, with which options.

    ``search`` is the registered search method (``best_of_n``, ``smc`` or ``rbf``) run by
    :func:`mmflow.sampling.sample`; ``vp`` runs the search on ``linear_to_vp(model)`` (Kim et al.'s VP-SDE, initial noise mapped
    by ``noise_to_target_start``); ``grid`` is ``"uniform"`` or ``"rbf"`` (Kim et al.'s
    ``time_schedule: exp``, :func:`rbf_time_grid`, in the path's own time) with
    ``steps(budget)`` steps. RBF's initial particles are ``initial_fraction`` of the budget
    (Kim et al.: 25 of 500). With ``diffusion_reference_steps`` set, the option
    ``diffusion_scale`` holds at that many steps and is scaled to the grid by
    :func:`scaled_diffusion`. With ``small_budget = (limit, other)`` the method runs as
    ``other`` at budgets below ``limit`` (:func:`setting_at`).
    """

    search: str
    vp: bool
    grid: str
    steps: StepRule
    options: dict[str, Any] = field(default_factory=dict)
    initial_fraction: float | None = None
    diffusion_reference_steps: int | None = None
    small_budget: tuple[int, Setting] | None = None


def setting_at(setting: Setting, budget: int) -> Setting:
    """The setting a method runs in at ``budget``: its ``small_budget`` one below the limit."""
    if setting.small_budget is not None and budget < setting.small_budget[0]:
        return setting.small_budget[1]
    return setting


def rbf_setting(args: argparse.Namespace) -> Setting:
    """RBF's two regimes (module docstring), each chosen on validation images.

    From ``RBF_STEPPED_BUDGET`` NFE: Kim et al.'s grid with ``clamp(budget // 4, 6, 20)``
    steps. Below it: initial particles scored at ``t = 1/3`` of a 3-step uniform grid
    (``initial_step``), one searched transition, and the best-scored estimate returned
    (``return_best``).
    """
    rbf_sde = {"diffusion": KIM_DIFFUSION, "diffusion_scale": args.rbf_diffusion_scale}
    large = Setting(
        "rbf",
        vp=False,
        grid="rbf",
        steps=lambda budget: rbf_steps(budget, args),
        options=rbf_sde,
        initial_fraction=args.initial_fraction,
        diffusion_reference_steps=args.rbf_steps,
    )
    stepped = replace(
        large,
        grid="uniform",
        steps=fixed_steps(RBF_STEPPED_STEPS),
        options={**rbf_sde, "initial_step": True, "return_best": True},
        initial_fraction=RBF_STEPPED_FRACTION,
    )
    return replace(large, small_budget=(RBF_STEPPED_BUDGET, stepped))


def settings(args: argparse.Namespace) -> dict[str, Setting]:
    """The compared methods, each in its best validated setting (module docstring)."""
    kim_sde = {"diffusion": KIM_DIFFUSION, "diffusion_scale": KIM_DIFFUSION_SCALE}
    euler = {"solver": "euler"}
    return {
        "best_of_n": Setting(
            "best_of_n", vp=False, grid="uniform", steps=fixed_steps(args.steps), options=euler
        ),
        "best_of_n_short": Setting(
            "best_of_n",
            vp=False,
            grid="uniform",
            steps=fewer_steps_below(SMALL_BUDGET, args.short_steps_small, args.short_steps),
            options=euler,
        ),
        "smc": Setting(
            "smc",
            vp=False,
            grid="uniform",
            steps=fewer_steps_below(SMC_SMALL_BUDGET, args.smc_steps_small, args.steps),
            options={
                **kim_sde,
                "reward_scale": args.reward_scale,
                "ess_threshold": args.ess_threshold,
            },
        ),
        "rbf": rbf_setting(args),
        "rbf_kim_vp": Setting(
            "rbf",
            vp=True,
            grid="rbf",
            steps=fixed_steps(KIM_STEPS),
            options=kim_sde,
            initial_fraction=KIM_INITIAL_FRACTION,
        ),
    }


def initial_particles(setting: Setting, budget: int) -> int | None:
    """RBF's initial particle count at ``budget`` (``initial_fraction`` of it), else ``None``."""
    if setting.initial_fraction is None:
        return None
    return max(1, round(setting.initial_fraction * budget))


def grid_steps(setting: Setting, budget: int) -> int:
    """The setting's steps at ``budget``, fewer where the budget cannot pay for one pass.

    One sample (best-of-N), one particle (SMC) or the initial particles' evaluations plus one
    proposal per transition (RBF) must fit in ``budget``.
    """
    stepped = int(setting.options.get("initial_step", False))
    initial = (initial_particles(setting, budget) or 1) * (1 + stepped)
    return min(setting.steps(budget), budget - initial + 1 + stepped)


def search_options(setting: Setting, budget: int) -> dict[str, Any]:
    """The setting's options at ``budget``: RBF's initial particles and diffusion scale."""
    options = dict(setting.options)
    initial = initial_particles(setting, budget)
    if initial is not None:
        options["initial_particles"] = initial
    if setting.diffusion_reference_steps is not None:
        options["diffusion_scale"] = scaled_diffusion(
            options["diffusion_scale"],
            grid_steps(setting, budget),
            setting.diffusion_reference_steps,
        )
    return options


def time_grid(setting: Setting, budget: int) -> Tensor:
    """The setting's grid of :func:`grid_steps` steps at ``budget``."""
    steps = grid_steps(setting, budget)
    if setting.grid == "rbf":
        return rbf_time_grid(steps, dtype=torch.float64)
    return make_grid("uniform", steps, dtype=torch.float64)


@torch.no_grad()
def score(
    flow: PretrainedFlow, checker: ClassLogProbability, samples: Tensor, targets: Tensor
) -> tuple[float, float]:
    """Mean log-probability and accuracy of the targets under ``checker``'s classifier."""
    images = flow.adapter.decode(samples)
    log_probability = checker(samples, class_labels=targets)
    predictions = checker.classifier(images).argmax(dim=1)
    return float(log_probability.mean()), float((predictions == targets).float().mean())


@torch.no_grad()
def crisp_pixels(flow: PretrainedFlow, samples: Tensor) -> float:
    """Fraction of pixels below 0.1 or above 0.9 in [0, 1]: low for blurred, averaged digits.

    A data estimate ``x1_hat`` taken early (RBF ends its search at ``t < 1``, a short Euler
    grid) is a smooth average that a classifier may score highly; this is the cheap tell.
    """
    images = flow.adapter.decode(samples)
    return float(((images < 0.1) | (images > 0.9)).float().mean())


def run_method(
    method: str,
    setting: Setting,
    budget: int,
    flow: PretrainedFlow,
    rewarder: ClassLogProbability,
    checker: ClassLogProbability,
    x0: Tensor,
    targets: Tensor,
    args: argparse.Namespace,
) -> tuple[Row, SampleResult]:
    null = flow.adapter.null_condition({"class_labels": targets})
    model = linear_to_vp(flow.network) if setting.vp else flow.network
    start_noise = noise_to_target_start(model, x0) if setting.vp else x0
    start = time.perf_counter()
    result = sample(
        model,
        start_noise,
        setting.search,
        nfe=budget,
        grid=time_grid(setting, budget),
        solver_options={
            "reward": rewarder,
            "generator": torch.Generator().manual_seed(args.seed + budget),
            "reward_kwargs": {"class_labels": targets},
            **search_options(setting, budget),
        },
        **null,
    )
    seconds = time.perf_counter() - start
    rewards = result.info["rewards"]
    _, accuracy = score(flow, rewarder, result.samples, targets)
    check_log_probability, check_accuracy = score(flow, checker, result.samples, targets)
    row = Row(
        method=method,
        budget=budget,
        steps=grid_steps(setting, budget),
        nfe=result.nfe,
        reward=float(rewards.mean()),
        reward_se=float(rewards.std() / len(targets) ** 0.5),
        accuracy=accuracy,
        check_log_probability=check_log_probability,
        check_accuracy=check_accuracy,
        crisp_pixels=crisp_pixels(flow, result.samples),
        seconds=seconds,
    )
    if "proposals" in result.info:
        row.proposals_per_transition = result.info["proposals"].float().mean(dim=0).tolist()
    return row, result


def print_header() -> None:
    print(
        f"{'method':<15} {'budget':>6} {'steps':>5} {'nfe':>5} {'reward':>8} {'+-se':>6} "
        f"{'acc':>6} {'check logp':>10} {'check acc':>9} {'crisp':>6} {'sec':>6}"
    )


def print_row(row: Row) -> None:
    print(
        f"{row.method:<15} {row.budget:>6} {row.steps:>5} {row.nfe:>5} {row.reward:>8.3f} "
        f"{row.reward_se:>6.3f} {row.accuracy:>6.3f} "
        f"{row.check_log_probability:>10.3f} {row.check_accuracy:>9.3f} "
        f"{row.crisp_pixels:>6.3f} {row.seconds:>6.1f}",
        flush=True,
    )


def add_paired_gains(rows: list[Row], rewards: dict[str, Tensor]) -> None:
    """Each row's mean reward gain over ``PAIRED_BASELINE`` on the same images, with its error.

    Every method starts image ``i`` from the same noise and target, so ``r_i - r_i^base`` is a
    paired difference: its standard error is far below that of either mean when the two
    searches agree on which images are hard.
    """
    baseline = rewards[PAIRED_BASELINE]
    for row in rows:
        difference = rewards[row.method] - baseline
        row.gain = float(difference.mean())
        row.gain_se = float(difference.std() / len(difference) ** 0.5)


def print_gains(rows: list[Row], methods: list[str]) -> None:
    """The paired gains over ``PAIRED_BASELINE`` (mean +- standard error), one line per method."""
    budgets = sorted({row.budget for row in rows})
    print(f"\nmean reward gain over {PAIRED_BASELINE} on the same images (+- se):")
    print(f"{'method':<15} " + " ".join(f"{budget:>14}" for budget in budgets))
    for method in methods:
        cells = {
            row.budget: f"{row.gain:+.3f} +- {row.gain_se:.3f}"
            for row in rows
            if row.method == method
        }
        print(f"{method:<15} " + " ".join(f"{cells.get(budget, ''):>14}" for budget in budgets))


def print_allocation(rows: list[Row], budget: int) -> None:
    """RBF's mean proposals per searched transition ``t_j -> t_{j+1}`` at ``budget``."""
    print(f"\nRBF proposals per transition (mean over images), budget {budget}:")
    for row in rows:
        if row.budget == budget and row.proposals_per_transition is not None:
            counts = " ".join(f"{count:.1f}" for count in row.proposals_per_transition)
            print(f"  {row.method:<15} {counts}")


def plot(rows: list[Row], methods: list[str], path: Path) -> Path:
    """Mean reward and check-classifier accuracy against the NFE budget, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for method in methods:
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
    parser.add_argument("--classifier", default=".cache/classifiers/mnist5k")
    parser.add_argument(
        "--check_classifier", default="outputs/inference_scaling/check_classifier_seed1"
    )
    parser.add_argument("--check_seed", type=int, default=1)
    parser.add_argument("--classes", type=int, nargs="+", default=[0, 3, 5, 7, 9])
    parser.add_argument("--images_per_class", type=int, default=10)
    parser.add_argument(
        "--steps",
        type=int,
        default=10,
        help=f"best-of-N and SMC (from {SMC_SMALL_BUDGET} NFE) grid steps",
    )
    parser.add_argument(
        "--smc_steps_small",
        type=int,
        default=SMC_STEPS_SMALL_BUDGET,
        help=f"SMC grid steps below {SMC_SMALL_BUDGET} NFE",
    )
    parser.add_argument(
        "--short_steps",
        type=int,
        default=SHORT_STEPS,
        help=f"`best_of_n_short` Euler steps from {SMALL_BUDGET} NFE",
    )
    parser.add_argument(
        "--short_steps_small",
        type=int,
        default=SHORT_STEPS_SMALL_BUDGET,
        help=f"`best_of_n_short` Euler steps below {SMALL_BUDGET} NFE",
    )
    parser.add_argument(
        "--rbf_steps", type=int, default=RBF_STEPS, help="`rbf` grid steps at large budgets"
    )
    parser.add_argument(
        "--rbf_min_steps", type=int, default=RBF_MIN_STEPS, help="`rbf` grid steps at least"
    )
    parser.add_argument(
        "--rbf_budget_per_step",
        type=int,
        default=RBF_BUDGET_PER_STEP,
        help="k of `rbf` steps = clamp(budget // k, rbf_min_steps, rbf_steps)",
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 40, 80, 160, 320])
    parser.add_argument("--reward_scale", type=float, default=1.0, help="SMC lambda")
    parser.add_argument("--ess_threshold", type=float, default=0.5)
    parser.add_argument(
        "--rbf_diffusion_scale",
        type=float,
        default=RBF_DIFFUSION_SCALE,
        help="c of g = c (1 - t)^2 for the `rbf` row at rbf_steps steps, scaled by "
        "sqrt(steps / rbf_steps) on coarser grids (`rbf_kim_vp` keeps Kim et al.'s 3)",
    )
    parser.add_argument(
        "--initial_fraction",
        type=float,
        default=KIM_INITIAL_FRACTION,
        help="initial particles / budget for the `rbf` row",
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
    methods = settings(args)
    budgets = sorted(args.budgets)
    rows: list[Row] = []
    shown: dict[str, Tensor] = {}
    start = time.perf_counter()
    print_header()
    for budget in budgets:
        budget_rows, rewards = [], {}
        for method, setting in methods.items():
            row, result = run_method(
                method,
                setting_at(setting, budget),
                budget,
                flow,
                rewarder,
                checker,
                x0,
                targets,
                args,
            )
            budget_rows.append(row)
            rewards[method] = result.info["rewards"]
            shown[method] = result.samples
            print_row(row)
        add_paired_gains(budget_rows, rewards)
        rows.extend(budget_rows)
    print_gains(rows, list(methods))
    print_allocation(rows, max(args.budgets))
    plot(rows, list(methods), out_path.parent / "scaling.png")
    columns = shown_columns(len(args.classes), args.images_per_class)
    grid_images = flow.adapter.decode(torch.cat([shown[m][columns] for m in methods]))
    save_image_grid(grid_images, out_path.parent / "samples.png", nrow=len(columns))
    context = {
        "source": args.checkpoint,
        "generation": "null class, no CFG; the reward alone steers towards the target digit",
        "reward": f"log p(target | decode(x1_hat)) under {args.classifier}",
        "check": f"independent SmallCNN (seed {args.check_seed}) at {args.check_classifier}",
        "targets": args.classes,
        "images_per_class": args.images_per_class,
        "nfe": "model evaluations per image, counted",
        "settings": {
            name: {
                "path": "vp (linear_to_vp)" if setting.vp else "linear",
                "grid_at_budget": {b: setting_at(setting, b).grid for b in budgets},
                "steps_at_budget": {b: grid_steps(setting_at(setting, b), b) for b in budgets},
                "options_at_budget": {
                    b: search_options(setting_at(setting, b), b) for b in budgets
                },
            }
            for name, setting in methods.items()
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
