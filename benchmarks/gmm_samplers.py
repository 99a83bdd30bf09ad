"""mmflow's samplers against diffusers' schedulers on an analytic Gaussian-mixture flow.

The field is ``GaussianMixtureFlow`` in 16 dimensions (8 seeded components with distinct
means and per-dimension stds, :func:`mmflow.benchmark.gaussian_mixture_field`); its exact
endpoints from fixed noise come from dopri5 at ``rtol = atol = 1e-10`` in float64 (checked
against RK4 on 1024 steps). Every registered ODE sampler runs on the uniform grid, SD3-shifted
grids and the BOSS grid of the field; every diffusers scheduler (FlowMatchEuler, DPM-Solver++
2M midpoint/heun and 3M, UniPC bh1/bh2 orders 1-3) on its own schedule with each shift and, where
it takes explicit sigmas, on the same grids as ours; dopri5 at a few tolerances. The score is
the endpoint RMSE at each counted NFE.

Prints the table (each sampler's best grid per NFE, each side's best row, their ratio) and
writes ``metrics.json`` and ``metrics_vs_nfe.png`` (one line per sampler through its best
grid; diffusers dashed) to ``--out``. The issue's acceptance: mmflow's best error at NFE 8 and
16 at most half of diffusers' best.

    python benchmarks/gmm_samplers.py --out outputs/benchmarks/gmm_samplers
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmflow.benchmark import (
    DEFAULT_NFES,
    best_error_ratio,
    error_table,
    field_benchmark,
    write_report,
)

ACCEPTANCE_NFES = (8, 16)
ACCEPTANCE_RATIO = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/benchmarks/gmm_samplers")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = field_benchmark("gmm16", args.num_samples, nfes=DEFAULT_NFES, seed=args.seed)
    print(error_table(result.rows))
    ratios = {nfe: best_error_ratio(result.rows, nfe) for nfe in ACCEPTANCE_NFES}
    verdict = all(ratio <= ACCEPTANCE_RATIO for ratio in ratios.values())
    result.context["acceptance"] = {
        "ratio_limit": ACCEPTANCE_RATIO,
        "ratios": {str(nfe): ratio for nfe, ratio in ratios.items()},
        "met": verdict,
    }
    for path in write_report(result.rows, Path(args.out), result.context, envelope=True):
        print(path)
    shown = ", ".join(f"NFE {nfe}: {ratio:.3f}" for nfe, ratio in ratios.items())
    print(f"mmflow best / diffusers best ({shown}); at most {ACCEPTANCE_RATIO}: {verdict}")


if __name__ == "__main__":
    main()
