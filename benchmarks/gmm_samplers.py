"""mmflow's samplers against diffusers' schedulers on an analytic Gaussian-mixture flow.

The field is ``GaussianMixtureFlow`` in 16 dimensions (8 seeded components with distinct
means and per-dimension stds, :func:`mmflow.sampling.analytic.random_gaussian_mixture`); its exact
endpoints from fixed noise come from dopri5 at ``rtol = atol = 1e-10`` in float64 (checked
against RK4 on 1024 steps). Every registered ODE sampler runs on the uniform grid, SD3-shifted
grids and the BOSS grid of the field; every diffusers scheduler (FlowMatchEuler, DPM-Solver++
2M midpoint/heun and 3M, UniPC bh1/bh2 orders 1-3) on its own schedule with each shift and, where
it takes explicit sigmas, on the same grids as ours; dopri5 at a few tolerances. A few strong
samplers (``OPTIMISED``) also run at NFE 8 and 16 on grids optimised for them
(:mod:`mmflow.sampling.grid_search`), fitted on ``OPTIMISED_SAMPLES`` noises from another seed
than the evaluation noise, so their errors are held out. Three endpoint errors are reported
at each counted NFE: the mean per-sample error ``1/N sum_n ||x_n - x1_n|| / sqrt(D)`` (the
average endpoint error, "EPE"), the RMSE and the median per-sample error. ``--metric`` picks
the one judged and the optimised grids are fitted to (``mean``, the default, or
``rmse``); diffusers' best row is chosen under that same metric.

Each side's best row is rerun on ``--recheck`` further noises (dopri5 references) and those
errors, switch counts (:func:`benchmarks.samplers.component_switches`) and ratios are printed
and saved as well. diffusers competes with its own documented options (default schedules,
``flow_shift`` values, solver orders, explicit uniform or shifted sigmas) but not on mmflow's
BOSS grids; one extra line, labelled as such, gives the ratio with diffusers on BOSS grids too.
Prints the table (each sampler's best grid per NFE, each side's best row, their ratio) and
writes ``metrics.json`` and ``metrics_vs_nfe.png`` (one line per sampler through its best
grid; diffusers dashed; a panel per error and one for the switch fraction) to ``--out``.
``docs/benchmarks.md`` has the figures and why the run is set up this way.

    python -m benchmarks.gmm_samplers --out outputs/benchmarks/gmm_samplers
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.samplers import (
    DEFAULT_NFES,
    ENDPOINT_MEAN_METRIC,
    ENDPOINT_MEDIAN_METRIC,
    ENDPOINT_METRIC,
    OPTIMISED_EVALS,
    REFERENCE_TOLERANCE,
    SWITCH_METRIC,
    Method,
    SweepRow,
    TimeGrids,
    best_error_ratio,
    best_row,
    component_switches,
    endpoint_mean_error,
    endpoint_rmse,
    error_table,
    field_benchmark,
    field_methods,
    get_field,
    run_method,
    write_report,
)
from mmflow.sampling import sample

ACCEPTANCE_NFES = (8, 16)
ACCEPTANCE_RATIO = 0.5
SHIFTS = (0.5, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0)
OPTIMISED = ("unipc_bh2_2", "unipc_bh1_3", "dpmpp_3m", "rk4")
DIFFUSERS_ON_BOSS = Method("diffusers", "flow_euler", "boss").grid_label
RECHECK_SAMPLES = 32768
RECHECK_SEED_OFFSET = 2_000_003


def diffusers_options_only(rows: Sequence[SweepRow]) -> list[SweepRow]:
    """The rows the acceptance compares: every mmflow row and the diffusers rows on diffusers'
    own options, i.e. all but diffusers on mmflow's BOSS grids."""
    return [r for r in rows if not (r.source == "diffusers" and r.grid == DIFFUSERS_ON_BOSS)]


ACCEPTANCE_METRICS = {
    "mean": (ENDPOINT_MEAN_METRIC, "mean_error"),
    "rmse": (ENDPOINT_METRIC, "mse"),
}
"""``--metric``: the endpoint error judged, and the objective the optimised grids are fitted to."""
METRIC_LABELS = {
    ENDPOINT_MEAN_METRIC: "mean per-sample endpoint error",
    ENDPOINT_METRIC: "endpoint RMSE",
    ENDPOINT_MEDIAN_METRIC: "median per-sample endpoint error",
}


def acceptance_ratios(rows: Sequence[SweepRow], metric: str) -> dict[int, float]:
    """mmflow's best ``metric`` over diffusers' best at each acceptance NFE."""
    return {nfe: best_error_ratio(rows, nfe, metric) for nfe in ACCEPTANCE_NFES}


def shown(ratios: dict[int, float]) -> str:
    return ", ".join(f"NFE {nfe}: {ratio:.3f}" for nfe, ratio in ratios.items())


def switch_lines(rows: Sequence[SweepRow], metric: str, samples: int) -> list[str]:
    """For each side's best row under ``metric`` at each acceptance NFE: how many of the
    ``samples`` endpoints ended in another component, and the RMSE they leave behind."""
    lines = []
    for nfe in ACCEPTANCE_NFES:
        for source in ("mmflow", "diffusers"):
            row = best_row(rows, source, nfe, metric)
            switched = round(row.metrics[SWITCH_METRIC] * samples)
            lines.append(
                f"  NFE {nfe} {source} best ({row.label}): {switched} of {samples} endpoints in "
                f"another component, RMSE {row.metrics[ENDPOINT_METRIC]:.3e}"
            )
    return lines


class RowTimes(TimeGrids):
    """Hands a row its recorded times whatever grid it asks for, so that it reruns on new
    noise exactly as it was measured (optimised and BOSS grids included)."""

    def __init__(self, times: Sequence[float]) -> None:
        super().__init__()
        self.times = torch.tensor(times, dtype=torch.float64)

    def __call__(self, grid: str, shift: float, steps: int) -> torch.Tensor:
        return self.times

    def optimised(self, sampler: str, nfe: int) -> torch.Tensor:
        return self.times


def method_of(row: SweepRow, optimised: Sequence[str]) -> Method:
    """The benchmark's method behind ``row`` (its sampler and grid label)."""
    methods = field_methods(["all"], ["all"], SHIFTS, ())
    methods += [Method("mmflow", name, "optimised") for name in optimised]
    return next(m for m in methods if m.sampler == row.sampler and m.grid_label == row.grid)


def recheck(
    rows: Sequence[SweepRow], metric: str, samples: int, seed: int, optimised: Sequence[str]
) -> dict[str, dict[str, float | str]]:
    """Each side's best row under ``metric`` at each acceptance NFE, rerun on ``samples``
    further noises (seed ``seed + RECHECK_SEED_OFFSET``) against dopri5 references: its label,
    RMSE, mean error and fraction of component switches, keyed ``"{nfe} {source}"``."""
    field = get_field("gmm16")
    generator = torch.Generator().manual_seed(seed + RECHECK_SEED_OFFSET)
    noise = torch.randn(samples, *field.event_shape, generator=generator, dtype=torch.float64)
    tolerances = {"rtol": REFERENCE_TOLERANCE, "atol": REFERENCE_TOLERANCE}
    reference = sample(field, noise, "dopri5", solver_options=tolerances).samples
    found: dict[str, dict[str, float | str]] = {}
    for nfe in ACCEPTANCE_NFES:
        for source in ("mmflow", "diffusers"):
            row = best_row(rows, source, nfe, metric)
            method = method_of(row, optimised)
            estimate = run_method(method, field, noise, nfe, RowTimes(row.times)).samples
            found[f"{nfe} {source}"] = {
                "row": row.label,
                ENDPOINT_METRIC: endpoint_rmse(estimate, reference),
                ENDPOINT_MEAN_METRIC: endpoint_mean_error(estimate, reference),
                SWITCH_METRIC: component_switches(field, estimate, reference),
            }
    return found


def recheck_lines(found: dict[str, dict[str, float | str]], samples: int) -> list[str]:
    """:func:`recheck`'s rows, switch counts and the mmflow / diffusers ratios, as lines."""
    lines = [f"best rows rerun on {samples} further noises:"]
    for nfe in ACCEPTANCE_NFES:
        ours, theirs = found[f"{nfe} mmflow"], found[f"{nfe} diffusers"]
        for source, values in (("mmflow", ours), ("diffusers", theirs)):
            lines.append(
                f"  NFE {nfe} {source} {values['row']}: RMSE {values[ENDPOINT_METRIC]:.3e}, "
                f"mean {values[ENDPOINT_MEAN_METRIC]:.3e}, "
                f"{round(values[SWITCH_METRIC] * samples)} switched"
            )
        ratios = ", ".join(
            f"{name} {ours[key] / theirs[key]:.3f}"
            for name, key in (("RMSE", ENDPOINT_METRIC), ("mean", ENDPOINT_MEAN_METRIC))
        )
        lines.append(f"  NFE {nfe} mmflow / diffusers: {ratios}")
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/benchmarks/gmm_samplers")
    parser.add_argument("--num_samples", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metric", choices=sorted(ACCEPTANCE_METRICS), default="mean")
    parser.add_argument("--optimised", nargs="*", default=list(OPTIMISED))
    parser.add_argument("--optimised_evals", type=int, default=OPTIMISED_EVALS)
    parser.add_argument(
        "--recheck",
        type=int,
        default=RECHECK_SAMPLES,
        help="rerun each side's best rows on this many further noises (0: skip)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    metric, objective = ACCEPTANCE_METRICS[args.metric]
    result = field_benchmark(
        "gmm16",
        args.num_samples,
        nfes=DEFAULT_NFES,
        shifts=SHIFTS,
        seed=args.seed,
        optimised_samplers=args.optimised,
        optimised_nfes=ACCEPTANCE_NFES,
        optimised_evals=args.optimised_evals,
        optimised_objective=objective,
    )
    fair_rows = diffusers_options_only(result.rows)
    for shown_metric, label in METRIC_LABELS.items():
        print(f"{label}:")
        print(error_table(fair_rows, shown_metric))
        print()
    ratios = {m: acceptance_ratios(fair_rows, m) for m in METRIC_LABELS}
    with_boss = acceptance_ratios(result.rows, metric)
    verdict = all(ratio <= ACCEPTANCE_RATIO for ratio in ratios[metric].values())
    result.context["acceptance"] = {
        "rule": "diffusers on its own options (schedules, shifts, orders, uniform/shifted "
        "sigmas), not on mmflow's BOSS grids",
        "metric": metric,
        "ratio_limit": ACCEPTANCE_RATIO,
        "ratios": {m: {str(n): r for n, r in by_nfe.items()} for m, by_nfe in ratios.items()},
        "ratios_with_diffusers_on_boss": {str(nfe): ratio for nfe, ratio in with_boss.items()},
        "met": verdict,
    }
    found = {}
    if args.recheck:
        found = recheck(fair_rows, metric, args.recheck, args.seed, args.optimised)
        result.context["acceptance"]["recheck"] = {"samples": args.recheck, "rows": found}
    for path in write_report(result.rows, Path(args.out), result.context, envelope=True):
        print(path)
    fitted = result.context["optimised"]
    if fitted:
        seconds = fitted["fit_seconds"]
        print(f"optimised grids ({objective}): {len(seconds)} fits, {sum(seconds.values()):.1f} s")
        print(", ".join(f"{cell} {value:.1f} s" for cell, value in seconds.items()))
    print(
        f"{METRIC_LABELS[metric]}, mmflow best / diffusers best ({shown(ratios[metric])}); "
        f"at most {ACCEPTANCE_RATIO}: {verdict}"
    )
    for other, label in METRIC_LABELS.items():
        if other != metric:
            print(f"  {label} of the same rows: {shown(ratios[other])}")
    print(f"  diffusers also on mmflow's BOSS grids (not a diffusers option): {shown(with_boss)}")
    print("\n".join(switch_lines(fair_rows, metric, args.num_samples)))
    if found:
        print("\n".join(recheck_lines(found, args.recheck)))


if __name__ == "__main__":
    main()
