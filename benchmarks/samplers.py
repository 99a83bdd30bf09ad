"""Quality against NFE for mmflow's samplers and diffusers' schedulers.

Run from the repository root::

    python -m benchmarks.samplers --config recipes/image/mnist.yaml \
        --checkpoint outputs/mnist/checkpoints/last.ckpt --nfe '[1,2,4,8,16]' --out bench/
    python -m benchmarks.samplers --field gmm16 --out bench/gmm16

Every row integrates ``dx/dt = u(x, t)`` from the same noise with one *method* at one budget:

- an mmflow sampler (``euler``, ``heun``, ``dpmpp_2m``, ``unipc_bh2_2`` ...) on a time grid:
  ``uniform``, ``shifted`` (SD3's shift, ``t' = t / (s - (s - 1) t)``), ``boss`` (BOSS, the
  Euler-optimal grid for the model, :mod:`mmflow.sampling.boss`) or, in field mode,
  ``optimised`` (the grid fitted to that sampler and NFE on separate noise,
  :mod:`mmflow.sampling.grid_search`);
- a diffusers scheduler (FlowMatchEuler, DPM-Solver++ 2M/3M, UniPC; flow sigmas, flow
  prediction) on the same velocity model through :mod:`mmflow.sampling.diffusers_schedulers`
  (``sigma = 1 - t``, ``v = -u``), on our grid where its ``set_timesteps`` takes sigmas, and on
  its own default schedule;
- an adaptive solver (``dopri5``) at a tolerance ``rtol = atol = tol``: it chooses its steps, and
  its NFE is counted and reported instead of requested.

NFE is always counted (model calls), never inferred. A budget a sampler cannot spend exactly
(Heun at NFE 1) is a row marked not applicable rather than rounded.

Two sources of the velocity:

- a trained flow (:func:`sampler_sweep`): real batches are encoded, generated from fixed
  noise under their condition (guided by CFG when the scale is not 1: every row, ours and
  diffusers', integrates the same guided model), decoded and scored with the modality
  adapter's evaluators;
- an analytic field (:func:`field_sweep`, ``--field gmm16``): :class:`GaussianMixtureFlow`,
  whose endpoint ``x_1`` from noise ``x_0`` is computed to ``rtol = atol = 1e-10`` (dopri5,
  float64, checked against RK4); the metric is the endpoint RMSE
  ``sqrt(mean_{n,d} (x_hat_1 - x_1)^2)``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser
from torch import Tensor

from mmflow.cli import run_command
from mmflow.data import load_datamodule, take_batches
from mmflow.hub import PretrainedFlow, load_flow
from mmflow.metrics import metric_entries
from mmflow.modality import Batch, to_device
from mmflow.sampling import (
    SAMPLERS,
    ClassifierFreeGuidance,
    GaussianMixtureFlow,
    SampleResult,
    get_sampler,
    sample,
)
from mmflow.sampling.analytic import random_gaussian_mixture
from mmflow.sampling.boss import bellman_path, boss_cost_matrix
from mmflow.sampling.diffusers_schedulers import (
    DIFFUSERS_SCHEDULERS,
    DiffusersMissingError,
    accepts_sigmas,
    get_diffusers_scheduler,
    require_diffusers,
)
from mmflow.sampling.grid_search import (
    OBJECTIVES,
    endpoint_mean_error,
    objective_loss,
    optimized_grid,
    per_sample_errors,
)
from mmflow.timesteps import shifted_grid, uniform_grid

DEFAULT_NFES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
DEFAULT_TOLERANCES: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
DEFAULT_ADAPTIVE = "dopri5"
FIELD_SHIFTS: tuple[float, ...] = (0.5, 2.0, 3.0)
ENDPOINT_METRIC = "endpoint_rmse"
ENDPOINT_MEDIAN_METRIC = "endpoint_median"
ENDPOINT_MEAN_METRIC = "endpoint_mean"
SWITCH_METRIC = "component_switches"
REFERENCE_TOLERANCE = 1e-10
REFERENCE_RK4_STEPS = 1024
BOSS_MAX_STEPS = 128
BOSS_SAMPLES = 128
OPTIMISED_SAMPLES = 2048
OPTIMISED_EVALS = 800
OPTIMISED_NFES: tuple[int, ...] = (8, 16)
OPTIMISED_SEED_OFFSET = 1_000_003
NON_FINITE = "non-finite samples"
SAME_ALGORITHM = {"flow_euler": "euler"}

KINDS = ("mmflow", "diffusers", "adaptive")
GRIDS = ("uniform", "shifted", "boss", "optimised", "default")


# ----------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """One way to integrate the flow: a family of rows, one per NFE (or one per tolerance).

    Args:
        kind: "mmflow" (a registered sampler), "diffusers" (a scheduler in
            ``DIFFUSERS_SCHEDULERS``) or "adaptive" (a torchdiffeq adaptive method).
        name: the sampler, scheduler or adaptive method.
        grid: "uniform", "shifted" (with ``shift``), "boss", for mmflow "optimised" (fitted to
            the sampler and NFE, :class:`FittedGrids`), or for diffusers "default" (the
            scheduler's own schedule, shifted by ``shift``).
        shift: SD3's shift ``s`` of a "shifted" or "default" grid.
        tolerance: ``rtol = atol`` of an adaptive method.
    """

    kind: str
    name: str
    grid: str = "uniform"
    shift: float = 1.0
    tolerance: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}, got {self.kind!r}")
        if self.grid not in GRIDS:
            raise ValueError(f"`grid` must be one of {GRIDS}, got {self.grid!r}")
        if self.grid == "default" and self.kind != "diffusers":
            raise ValueError("grid 'default' (a scheduler's own schedule) is for diffusers rows")
        if self.grid == "optimised" and self.kind != "mmflow":
            raise ValueError("grid 'optimised' (fitted to an mmflow sampler) is for mmflow rows")
        if (self.kind == "adaptive") != (self.tolerance is not None):
            raise ValueError("an adaptive method needs a `tolerance`, and only it takes one")

    @property
    def sampler(self) -> str:
        """The row's sampler column: diffusers schedulers are prefixed ``diffusers:``."""
        return f"diffusers:{self.name}" if self.kind == "diffusers" else self.name

    @property
    def grid_label(self) -> str:
        """Which time grid, in words: ``uniform``, ``shifted(3)``, ``boss``, ``ours: uniform``,
        ``diffusers default(shift=1)`` or ``adaptive(tol=0.001)``."""
        if self.kind == "adaptive":
            return f"adaptive(tol={self.tolerance:g})"
        if self.grid == "default":
            return f"diffusers default(shift={self.shift:g})"
        label = f"shifted({self.shift:g})" if self.grid == "shifted" else self.grid
        return f"ours: {label}" if self.kind == "diffusers" else label

    @property
    def schedule(self) -> str:
        """Whose times the row uses: "mmflow", "diffusers" (its own) or "adaptive"."""
        if self.kind == "adaptive":
            return "adaptive"
        return "diffusers" if self.grid == "default" else "mmflow"

    @property
    def slug(self) -> str:
        """A file-name-safe identifier: the sampler name alone for mmflow's uniform rows."""
        if self.kind == "mmflow" and self.grid == "uniform":
            return self.name
        text = f"{self.sampler}_{self.grid_label}"
        return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def ode_sampler_names() -> list[str]:
    """Registered fixed-step and multistep ODE solvers.

    Stochastic, guided, inverse and search methods are left out: their error against the
    ODE's endpoint is not a discretisation error.
    """
    return [name for name, spec in SAMPLERS.items() if spec.kind in ("ode", "multistep")]


def _is_adaptive(name: str) -> bool:
    return name in SAMPLERS and SAMPLERS[name].kind == "adaptive"


def expand_samplers(names: Sequence[str]) -> list[str]:
    """``["all"]`` -> every ODE sampler plus ``dopri5``; otherwise the names, checked.

    A name is a registered ODE solver, adaptive method or few-step rule (``step_euler``, for
    models that take the step size).
    """
    if list(names) == ["all"]:
        return [*ode_sampler_names(), DEFAULT_ADAPTIVE]
    for name in names:
        if get_sampler(name).kind not in ("ode", "multistep", "fewstep", "adaptive"):
            raise ValueError(f"`{name}` is not an ODE solver (kind {get_sampler(name).kind})")
    return list(names)


def expand_schedulers(names: Sequence[str]) -> list[str]:
    """``["all"]`` -> every name in ``DIFFUSERS_SCHEDULERS``; otherwise the names, checked.

    Asking for any needs diffusers installed (``pip install diffusers``).
    """
    names = list(DIFFUSERS_SCHEDULERS) if list(names) == ["all"] else list(names)
    for name in names:
        get_diffusers_scheduler(name)
    if names:
        require_diffusers()
    return names


def _sampler_methods(
    samplers: Sequence[str], tolerances: Sequence[float], grids: Sequence[tuple[str, float]]
) -> list[Method]:
    methods = []
    for name in samplers:
        if _is_adaptive(name):
            methods += [Method("adaptive", name, tolerance=tol) for tol in tolerances]
        else:
            methods += [Method("mmflow", name, grid, shift) for grid, shift in grids]
    return methods


def _scheduler_methods(
    schedulers: Sequence[str],
    grids: Sequence[tuple[str, float]],
    default_shifts: Sequence[float],
) -> list[Method]:
    methods = []
    for name in schedulers:
        if accepts_sigmas(name):
            methods += [Method("diffusers", name, grid, shift) for grid, shift in grids]
        methods += [Method("diffusers", name, "default", shift) for shift in default_shifts]
    return methods


def checkpoint_methods(
    samplers: Sequence[str],
    schedulers: Sequence[str] = (),
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
) -> list[Method]:
    """The rows of a trained-flow sweep: mmflow samplers on the uniform grid, adaptive
    solvers at ``tolerances``, and each diffusers scheduler on our uniform grid (where it takes
    sigmas) and on its own default schedule (shift 1, diffusers' constructor default)."""
    uniform = [("uniform", 1.0)]
    return _sampler_methods(expand_samplers(samplers), tolerances, uniform) + _scheduler_methods(
        expand_schedulers(schedulers), uniform, [1.0]
    )


def field_methods(
    samplers: Sequence[str],
    schedulers: Sequence[str],
    shifts: Sequence[float] = FIELD_SHIFTS,
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
) -> list[Method]:
    """The rows of an analytic-field sweep: every sampler and every scheduler that takes sigmas
    on the uniform grid, the ``shifts`` grids and the BOSS grid; every scheduler also on its own
    schedule with shift 1 and each of ``shifts``; adaptive solvers at ``tolerances``."""
    grids = [("uniform", 1.0), *(("shifted", s) for s in shifts), ("boss", 1.0)]
    default_shifts = [1.0, *(s for s in shifts if s != 1.0)]
    return _sampler_methods(expand_samplers(samplers), tolerances, grids) + _scheduler_methods(
        expand_schedulers(schedulers), grids, default_shifts
    )


# ----------------------------------------------------------------------------- grids and runs


class TimeGrids:
    """The explicit time grids rows are run on, by name and step count (float64, 0 -> 1).

    BOSS grids need ``boss_costs``, the ``[K_max + 1, K_max + 1]`` Euler jump costs of
    :func:`mmflow.sampling.boss.boss_cost_matrix` for the model; each step count is then one
    Bellman path through the same matrix. Optimised grids need ``fitted``
    (:class:`FittedGrids`), asked through :meth:`optimised`.
    """

    def __init__(self, boss_costs: Tensor | None = None, fitted: FittedGrids | None = None) -> None:
        self.boss_costs = boss_costs
        self.fitted = fitted

    def optimised(self, sampler: str, nfe: int) -> Tensor:
        """The grid fitted to ``sampler`` at ``nfe``."""
        if self.fitted is None:
            raise ValueError("no `optimised` grid here (it needs FittedGrids for the model)")
        return self.fitted(sampler, nfe)

    def __call__(self, grid: str, shift: float, steps: int) -> Tensor:
        if grid == "uniform":
            return uniform_grid(steps, torch.float64)
        if grid == "shifted":
            return shifted_grid(steps, shift, torch.float64)
        if grid == "boss" and self.boss_costs is not None:
            nodes, _ = bellman_path(self.boss_costs, steps)
            return nodes.to(torch.float64) / (self.boss_costs.shape[0] - 1)
        raise ValueError(f"no `{grid}` grid here (BOSS grids need the model's jump costs)")


def steps_or_reason(method: Method, nfe: int) -> tuple[int | None, str | None]:
    """The step count that spends exactly ``nfe`` evaluations, or why none does.

    mmflow: ``(nfe - warm-up) / evals_per_step``; diffusers: ``nfe`` (one evaluation a step).
    """
    if method.kind == "diffusers":
        return nfe, None
    spec = get_sampler(method.name)
    warmup = spec.warmup_evals({})
    budget = nfe - warmup
    if budget < spec.evals_per_step or budget % spec.evals_per_step:
        reason = f"{method.name} uses {spec.evals_per_step} evaluations per step"
        return None, reason + (f" plus {warmup} once" if warmup else "")
    steps = budget // spec.evals_per_step
    if method.grid == "boss" and steps > BOSS_MAX_STEPS:
        return None, f"BOSS grids have at most {BOSS_MAX_STEPS} steps"
    return steps, None


def run_method(
    method: Method,
    model: Callable[..., Tensor],
    noise: Tensor,
    nfe: int | None,
    grids: TimeGrids,
    solver_options: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> SampleResult:
    """Integrate ``model`` from ``noise`` with ``method`` at ``nfe`` (``None`` for adaptive).

    ``solver_options`` (a model's stored sampler settings, e.g. FlowTurbo's step counts) run
    the sampler on its own grid, which those settings lay out."""
    if solver_options:
        return sample(model, noise, method.name, nfe, solver_options=solver_options, **model_kwargs)
    if method.kind == "adaptive":
        tolerances = {"rtol": method.tolerance, "atol": method.tolerance}
        return sample(model, noise, method.name, solver_options=tolerances, **model_kwargs)
    steps, reason = steps_or_reason(method, nfe)
    if steps is None:
        raise ValueError(f"NFE {nfe}: {reason}")
    name = f"diffusers_{method.name}" if method.kind == "diffusers" else method.name
    if method.grid == "default":
        shift = {"shift": method.shift}
        return sample(model, noise, name, nfe, solver_options=shift, **model_kwargs)
    if method.grid == "optimised":
        times = grids.optimised(method.name, nfe)
    else:
        times = grids(method.grid, method.shift, steps)
    return sample(model, noise, name, nfe=nfe, grid=times, **model_kwargs)


@dataclass
class SweepRow:
    """One (method, NFE) cell: the metrics, or why it was not run.

    ``sampler`` names the integrator (``diffusers:`` prefixed for diffusers' schedulers),
    ``source`` who integrates ("mmflow" or "diffusers"), ``grid`` which time grid in words,
    ``schedule`` whose times those are ("mmflow", "diffusers" for a scheduler's own default,
    "adaptive"). ``nfe`` is the requested budget (``None`` for adaptive rows, whose
    ``tolerance`` is set); ``counted_nfe`` the model calls per batch, counted (the mean over
    batches for adaptive rows); ``times`` the grid of the first batch.
    """

    sampler: str
    grid: str
    nfe: int | None
    cfg_scale: float | None
    source: str = "mmflow"
    schedule: str = "mmflow"
    tolerance: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    counted_nfe: float | None = None
    seconds: float | None = None
    not_applicable: str | None = None
    times: list[float] | None = None

    @property
    def label(self) -> str:
        """``sampler [grid]``, one line of a plot."""
        return f"{self.sampler} [{self.grid}]"


def _row(method: Method, nfe: int | None, cfg_scale: float | None, **values: Any) -> SweepRow:
    source = "diffusers" if method.kind == "diffusers" else "mmflow"
    return SweepRow(
        method.sampler,
        method.grid_label,
        nfe,
        cfg_scale,
        source=source,
        schedule=method.schedule,
        tolerance=method.tolerance,
        **values,
    )


def _checked_count(method: Method, nfe: int | None, counts: Sequence[int]) -> float:
    """The counted NFE of a row: equal to the request for fixed budgets (else an error), the
    mean over batches for adaptive rows."""
    if method.kind != "adaptive" and any(count != nfe for count in counts):
        raise RuntimeError(f"{method.sampler}: asked for NFE {nfe}, counted {list(counts)}")
    mean = sum(counts) / len(counts)
    return int(mean) if method.kind != "adaptive" else mean


def _cells(methods: Sequence[Method], nfes: Sequence[int]) -> Iterable[tuple[Method, int | None]]:
    for method in methods:
        for nfe in (None,) if method.kind == "adaptive" else nfes:
            yield method, nfe


def _print_row(row: SweepRow) -> None:
    nfe = f"{row.counted_nfe:.4g}" if row.counted_nfe is not None else str(row.nfe)
    values = row.not_applicable or ", ".join(f"{k} {v:.4g}" for k, v in row.metrics.items())
    print(f"{row.label:>52} NFE {nfe:>6}: {values}")


# ----------------------------------------------------------------------------- trained flows


def guided_model(flow: PretrainedFlow, cfg_scale: float) -> Callable[..., Tensor]:
    """The velocity every row integrates: ``flow.network``, guided as
    :func:`mmflow.generation.generate` guides it, ``u_null + w (u_cond - u_null)``, when
    ``w != 1`` and the adapter is conditional (one call = one NFE)."""
    if cfg_scale != 1.0 and flow.adapter.conditioned():
        return ClassifierFreeGuidance(
            flow.network, cfg_scale, null_condition=flow.adapter.null_condition
        )
    return flow.network


def _run_cell(
    flow: PretrainedFlow,
    model: Callable[..., Tensor],
    batches: list[Batch],
    method: Method,
    nfe: int | None,
    seed: int,
    solver_options: dict[str, Any] | None = None,
) -> tuple[dict[str, float] | None, list[int], list[float], tuple[Any, Batch | None]]:
    """Metrics of one cell over every batch (``None`` once a batch's samples are not finite),
    the counted NFE per batch, the first batch's grid, media and batch."""
    device = next(flow.network.parameters()).device
    metrics = flow.adapter.evaluators()
    first_media, first_batch, counts, times = None, None, [], []
    for index, batch in enumerate(batches):
        batch = to_device(batch, device)
        x1, cond = flow.adapter.encode(batch)
        generator = torch.Generator().manual_seed(seed + index)
        eps = flow.adapter.noise_like(x1.cpu(), generator=generator).to(device)
        noise = flow.adapter.source.from_noise(eps, cond)
        result = run_method(method, model, noise, nfe, TimeGrids(), solver_options, **cond)
        counts.append(result.nfe)
        if not bool(torch.isfinite(result.samples).all()):
            return None, counts, [], (None, None)
        media = flow.adapter.decode(result.samples, cond, batch)
        for metric in metrics.values():
            metric.update(media, batch)
        if first_media is None:
            first_media, first_batch, times = media, batch, result.grid.tolist()
    values = {
        key: float(entry)
        for name, metric in metrics.items()
        for key, entry in metric_entries(name, metric.compute()).items()
    }
    for metric in metrics.values():
        metric.reset()
    return values, counts, times, (first_media, first_batch)


def sampler_sweep(
    flow: PretrainedFlow,
    batches: Iterable[Batch],
    samplers: Sequence[str],
    nfes: Sequence[int],
    cfg_scale: float | None = None,
    seed: int = 0,
    media_dir: Path | None = None,
    schedulers: Sequence[str] = (),
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
) -> list[SweepRow]:
    """Evaluate every method of :func:`checkpoint_methods` on the same batches and noise.

    ``samplers`` are registered samplers and adaptive methods (``["all"]`` for every ODE
    sampler and dopri5), ``schedulers`` diffusers' (``["all"]`` for every one). Writes the
    first batch's media of each cell to ``media_dir`` (if given) as ``{slug}_nfe{nfe}`` (for
    adaptive rows ``{slug}``).
    """
    batches = list(batches)
    scale = flow.defaults.cfg_scale if cfg_scale is None else cfg_scale
    model = guided_model(flow, scale)
    rows = []
    for method, nfe in _cells(checkpoint_methods(samplers, schedulers, tolerances), nfes):
        options = flow.defaults.options_for(method.name) if method.kind == "mmflow" else None
        reason = None if nfe is None or options else steps_or_reason(method, nfe)[1]
        if reason is not None:
            rows.append(_row(method, nfe, scale, not_applicable=reason))
            continue
        start = time.perf_counter()
        values, counts, times, (media, batch) = _run_cell(
            flow, model, batches, method, nfe, seed, options
        )
        seconds = time.perf_counter() - start
        counted = _checked_count(method, nfe, counts)
        if values is None:
            rows.append(_row(method, nfe, scale, counted_nfe=counted, not_applicable=NON_FINITE))
            _print_row(rows[-1])
            continue
        row = _row(
            method, nfe, scale, metrics=values, counted_nfe=counted, seconds=seconds, times=times
        )
        if media_dir is not None:
            name = method.slug if nfe is None else f"{method.slug}_nfe{nfe}"
            flow.adapter.save_media(media, media_dir, name, batch)
        rows.append(row)
        _print_row(row)
    return rows


# ----------------------------------------------------------------------------- analytic fields


FIELDS: dict[str, Callable[[], GaussianMixtureFlow]] = {"gmm16": random_gaussian_mixture}


def get_field(name: str) -> GaussianMixtureFlow:
    """An analytic field by name (``FIELDS``)."""
    if name not in FIELDS:
        raise ValueError(f"unknown `field` {name!r}; known: {', '.join(FIELDS)}")
    return FIELDS[name]()


def endpoint_rmse(estimate: Tensor, reference: Tensor) -> float:
    """``sqrt(mean_{n,d} (estimate - reference)^2)``, in float64."""
    return float((estimate.to(torch.float64) - reference.to(torch.float64)).square().mean().sqrt())


def endpoint_median_error(estimate: Tensor, reference: Tensor) -> float:
    """The median over samples of the per-sample RMS error ``sqrt(mean_d (estimate - reference)^2)``.

    The typical sample's error. On a well-separated mixture the RMSE of a coarse solver is
    carried by the few samples it sends to another component (on ``gmm16`` at NFE 8, under 2%
    of them carry most of the squared error); the median is not moved by them.
    """
    return float(per_sample_errors(estimate, reference).median())


def component_switches(field: GaussianMixtureFlow, estimate: Tensor, reference: Tensor) -> float:
    """The fraction of samples whose endpoint belongs to another mixture component than their
    reference endpoint's: ``mean_n [argmax_k pi_k(estimate_n, 1) != argmax_k pi_k(x1_n, 1)]``.

    It separates the two kinds of large per-sample error on a well-separated mixture: a sample
    that ends in another component (its trajectory crossed a basin boundary; every solver at
    a given NFE makes some of these) and one that stays in its component but lands far from
    the exact endpoint (an overshooting step).
    """
    estimated = field.responsibilities(estimate.to(field.means.dtype), 1.0).argmax(dim=1)
    exact = field.responsibilities(reference.to(field.means.dtype), 1.0).argmax(dim=1)
    return float((estimated != exact).to(torch.float64).mean())


def reference_endpoints(
    field: Callable[..., Tensor], noise: Tensor
) -> tuple[Tensor, dict[str, float | int]]:
    """The exact endpoints ``x_1`` of the flow from ``noise``, and how they were checked.

    dopri5 at ``rtol = atol = 1e-10`` in float64, compared with RK4 on ``REFERENCE_RK4_STEPS``
    uniform steps; both are returned in the check (``rk4_gap_rmse``, ``reference_nfe``).
    """
    noise = noise.to(torch.float64)
    tolerances = {"rtol": REFERENCE_TOLERANCE, "atol": REFERENCE_TOLERANCE}
    adaptive = sample(field, noise, "dopri5", solver_options=tolerances)
    rk4 = sample(field, noise, method="rk4", nfe=4 * REFERENCE_RK4_STEPS)
    check = {
        "reference_tolerance": REFERENCE_TOLERANCE,
        "reference_nfe": adaptive.nfe,
        "rk4_steps": REFERENCE_RK4_STEPS,
        "rk4_gap_rmse": endpoint_rmse(adaptive.samples, rk4.samples),
    }
    return adaptive.samples, check


def field_sweep(
    field: GaussianMixtureFlow,
    noise: Tensor,
    reference: Tensor,
    methods: Sequence[Method],
    nfes: Sequence[int],
    grids: TimeGrids,
) -> list[SweepRow]:
    """Endpoint errors against ``reference`` (RMSE, mean and median per-sample error) and the
    fraction of :func:`component_switches`, for every (method, NFE) on one noise batch."""
    rows = []
    for method, nfe in _cells(methods, nfes):
        reason = None if nfe is None else steps_or_reason(method, nfe)[1]
        if reason is not None:
            rows.append(_row(method, nfe, None, not_applicable=reason))
            continue
        start = time.perf_counter()
        result = run_method(method, field, noise, nfe, grids)
        seconds = time.perf_counter() - start
        error = endpoint_rmse(result.samples, reference)
        values: dict[str, Any] = {"seconds": seconds, "times": result.grid.tolist()}
        if math.isfinite(error):
            values["metrics"] = {
                ENDPOINT_METRIC: error,
                ENDPOINT_MEAN_METRIC: endpoint_mean_error(result.samples, reference),
                ENDPOINT_MEDIAN_METRIC: endpoint_median_error(result.samples, reference),
                SWITCH_METRIC: component_switches(field, result.samples, reference),
            }
            values["counted_nfe"] = _checked_count(method, nfe, [result.nfe])
        else:
            values["not_applicable"] = NON_FINITE
        rows.append(_row(method, nfe, None, **values))
    return rows


class FittedGrids:
    """Time grids fitted per (sampler, NFE) to a field on a fit batch of noise kept apart from
    the evaluation noise, so that rows on them are scored on held-out samples.

    Each grid minimises the fit batch's endpoint error ``L`` of ``objective`` (the squared
    RMSE ``1 / (N D) sum_n ||Phi(x0_n; t) - x1_n||^2`` for ``"mse"``, the mean per-sample
    error for ``"mean_error"``; :func:`optimized_grid`, Nelder-Mead, at most ``max_evals`` x
    NFE model calls), started from the candidate grid of lowest ``L``: uniform, SD3-shifted by
    each of ``shifts``, and BOSS where ``candidates`` has its costs. ``seconds`` records each
    fit's wall time (the start's selection included).
    """

    def __init__(
        self,
        model: Callable[..., Tensor],
        noise: Tensor,
        reference: Tensor,
        candidates: TimeGrids,
        shifts: Sequence[float] = FIELD_SHIFTS,
        max_evals: int = OPTIMISED_EVALS,
        objective: str = "mse",
    ) -> None:
        self.loss = objective_loss(objective)
        self.model, self.noise, self.reference = model, noise, reference
        self.candidates, self.shifts, self.max_evals = candidates, list(shifts), max_evals
        self.objective = objective
        self.grids: dict[tuple[str, int], Tensor] = {}
        self.seconds: dict[str, float] = {}

    def _fit_loss(self, sampler: str, times: Tensor) -> float:
        result = sample(self.model, self.noise, method=sampler, nfe=None, grid=times)
        return self.loss(result.samples, self.reference)

    def _start(self, sampler: str, steps: int) -> Tensor:
        names = [("uniform", 1.0), *(("shifted", s) for s in self.shifts)]
        if self.candidates.boss_costs is not None and steps <= BOSS_MAX_STEPS:
            names.append(("boss", 1.0))
        grids = [self.candidates(grid, shift, steps) for grid, shift in names]
        return min(grids, key=lambda times: self._fit_loss(sampler, times))

    def __call__(self, sampler: str, nfe: int) -> Tensor:
        if (sampler, nfe) not in self.grids:
            start_time = time.perf_counter()
            steps, reason = steps_or_reason(Method("mmflow", sampler), nfe)
            if steps is None:
                raise ValueError(f"NFE {nfe}: {reason}")
            self.grids[sampler, nfe] = optimized_grid(
                self.model,
                self.noise,
                sampler,
                nfe,
                reference=self.reference,
                init=self._start(sampler, steps),
                objective=self.objective,
                max_evals=self.max_evals,
                cache=False,
            )
            self.seconds[f"{sampler}@{nfe}"] = time.perf_counter() - start_time
        return self.grids[sampler, nfe]


@dataclass
class FieldBenchmark:
    """Rows of an analytic-field benchmark and what they were measured against."""

    rows: list[SweepRow]
    context: dict[str, Any]


def field_benchmark(
    name: str = "gmm16",
    num_samples: int = 500,
    samplers: Sequence[str] = ("all",),
    schedulers: Sequence[str] = ("all",),
    nfes: Sequence[int] = DEFAULT_NFES,
    shifts: Sequence[float] = FIELD_SHIFTS,
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
    seed: int = 0,
    optimised_samplers: Sequence[str] = (),
    optimised_nfes: Sequence[int] = OPTIMISED_NFES,
    optimised_evals: int = OPTIMISED_EVALS,
    optimised_objective: str = "mse",
) -> FieldBenchmark:
    """The whole analytic-field comparison: the field, seeded noise, the reference endpoints,
    BOSS grids fitted on a separate noise batch (RK4 reference trajectories, ``K_max = 128``),
    and :func:`field_sweep` over :func:`field_methods`.

    ``optimised_samplers`` add rows on grids fitted to each of them at each of
    ``optimised_nfes`` (:class:`FittedGrids`, at most ``optimised_evals`` evaluations of
    ``optimised_objective``) on ``OPTIMISED_SAMPLES`` noises drawn from the seed
    ``seed + OPTIMISED_SEED_OFFSET``: the evaluation noise stays held out."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive integer, got {num_samples!r}")
    objective_loss(optimised_objective)  # a bad objective or sampler fails before the sweep
    for sampler in optimised_samplers:
        get_sampler(sampler)
    field_model = get_field(name)
    dtype, shape = field_model.means.dtype, field_model.event_shape
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(num_samples, *shape, generator=generator, dtype=dtype)
    boss_noise = torch.randn(BOSS_SAMPLES, *shape, generator=generator, dtype=dtype)
    methods = field_methods(samplers, schedulers, shifts, tolerances)
    reference, check = reference_endpoints(field_model, noise)
    _, costs = boss_cost_matrix(field_model, boss_noise, BOSS_MAX_STEPS, reference="rk4")
    grids = TimeGrids(costs)
    rows = field_sweep(field_model, noise, reference, methods, nfes, grids)
    optimised_context = None
    if optimised_samplers:
        fit_generator = torch.Generator().manual_seed(seed + OPTIMISED_SEED_OFFSET)
        fit_noise = torch.randn(OPTIMISED_SAMPLES, *shape, generator=fit_generator, dtype=dtype)
        fit_reference, _ = reference_endpoints(field_model, fit_noise)
        grids.fitted = FittedGrids(
            field_model,
            fit_noise,
            fit_reference,
            TimeGrids(costs),
            shifts,
            optimised_evals,
            optimised_objective,
        )
        optimised = [Method("mmflow", name, "optimised") for name in optimised_samplers]
        rows += field_sweep(field_model, noise, reference, optimised, optimised_nfes, grids)
        optimised_context = {
            "samples": OPTIMISED_SAMPLES,
            "seed": seed + OPTIMISED_SEED_OFFSET,
            "max_evals": optimised_evals,
            "objective": optimised_objective,
            "start": "best of uniform, shifted and BOSS grids on the fit noise",
            "fit_seconds": grids.fitted.seconds,
        }
    context = {
        "field": name,
        "data": f"{num_samples} noise samples, seed {seed}, {tuple(shape)} float64",
        "metric_names": {
            ENDPOINT_METRIC: "endpoint RMSE vs reference",
            ENDPOINT_MEAN_METRIC: "mean per-sample endpoint error",
            ENDPOINT_MEDIAN_METRIC: "median per-sample endpoint error",
            SWITCH_METRIC: "fraction of samples ending in another component",
        },
        "reference": check,
        "boss": {"max_steps": BOSS_MAX_STEPS, "samples": BOSS_SAMPLES, "reference": "rk4"},
        "optimised": optimised_context,
        "note": "diffusers' schedulers step in float32 whatever the input dtype",
    }
    return FieldBenchmark(rows, context)


# ----------------------------------------------------------------------------- reports


def _measured(rows: Iterable[SweepRow], metric: str) -> list[SweepRow]:
    return [r for r in rows if metric in r.metrics and r.nfe is not None]


def best_row(rows: Sequence[SweepRow], source: str, nfe: int, metric: str) -> SweepRow | None:
    """The row of ``source`` ("mmflow" or "diffusers") with the lowest ``metric`` at ``nfe``."""
    candidates = [r for r in _measured(rows, metric) if r.source == source and r.nfe == nfe]
    return min(candidates, key=lambda r: r.metrics[metric], default=None)


def best_error_ratio(rows: Sequence[SweepRow], nfe: int, metric: str = ENDPOINT_METRIC) -> float:
    """mmflow's best error at ``nfe`` over diffusers' best (any sampler, grid, schedule)."""
    ours, theirs = best_row(rows, "mmflow", nfe, metric), best_row(rows, "diffusers", nfe, metric)
    if ours is None or theirs is None:
        raise ValueError(f"no mmflow and diffusers rows with `{metric}` at NFE {nfe}")
    return ours.metrics[metric] / theirs.metrics[metric]


def error_table(rows: Sequence[SweepRow], metric: str = ENDPOINT_METRIC) -> str:
    """One line per sampler: its best ``metric`` over grids at each NFE ("-" where none), then
    the best row of each side at each NFE with its grid, and the ratio of the two."""
    nfes = sorted({r.nfe for r in _measured(rows, metric)})
    samplers = list(dict.fromkeys(r.sampler for r in rows if r.nfe is not None))
    width = max(len(s) for s in samplers) + 2
    lines = [f"{'best ' + metric + ' over grids':<{width}}" + "".join(f"{n:>10}" for n in nfes)]
    for sampler in samplers:
        cells = []
        for nfe in nfes:
            values = [
                r.metrics[metric]
                for r in _measured(rows, metric)
                if r.sampler == sampler and r.nfe == nfe
            ]
            cells.append(f"{min(values):>10.2e}" if values else f"{'-':>10}")
        lines.append(f"{sampler:<{width}}" + "".join(cells))
    lines.append("")
    for nfe in nfes:
        best = {s: best_row(rows, s, nfe, metric) for s in ("mmflow", "diffusers")}
        parts = [f"{s} {b.metrics[metric]:.3e} {b.label}" for s, b in best.items() if b]
        ratio = ""
        if all(best.values()):
            ratio = f" | ratio {best_error_ratio(rows, nfe, metric):.3f}"
        lines.append(f"NFE {nfe:>3}: " + "; ".join(parts) + ratio)
    for row in rows:
        if row.schedule == "adaptive" and metric in row.metrics:
            lines.append(f"{row.label}: NFE {row.counted_nfe:.0f}, {row.metrics[metric]:.3e}")
    return "\n".join(lines)


def _plot_lines(
    rows: Sequence[SweepRow], metric: str, envelope: bool
) -> dict[str, tuple[SweepRow, list[tuple[float, float]]]]:
    """Label -> (a representative row, points ``(counted NFE, value)``).

    One line per sampler and grid, or with ``envelope`` one per sampler through its best value
    over grids at each NFE; an adaptive solver's line runs through its tolerances.
    """
    lines: dict[str, tuple[SweepRow, dict[float, float]]] = {}
    for row in rows:
        if metric not in row.metrics:
            continue
        label = row.label
        if envelope or row.schedule == "adaptive":
            label = row.sampler
        x = float(row.counted_nfe if row.counted_nfe is not None else row.nfe)
        _, points = lines.setdefault(label, (row, {}))
        points[x] = min(points.get(x, math.inf), row.metrics[metric])
    return {label: (row, sorted(points.items())) for label, (row, points) in lines.items()}


def _line_style(row: SweepRow, envelope: bool) -> dict[str, Any]:
    """mmflow solid; diffusers dashed (dotted on its own schedule unless ``envelope``);
    adaptive dash-dotted."""
    if row.schedule == "adaptive":
        return {"linestyle": "-.", "marker": "s"}
    if row.source == "diffusers":
        own = row.schedule == "diffusers" and not envelope
        return {"linestyle": ":" if own else "--", "marker": "x"}
    return {"linestyle": "-", "marker": "o"}


def _algorithm(sampler: str) -> str:
    """The algorithm a row's sampler runs, so that mmflow's and diffusers' share a colour."""
    name = sampler.removeprefix("diffusers:")
    return SAME_ALGORITHM.get(name, name)


def _plot(rows: Sequence[SweepRow], titles: dict[str, str], envelope: bool, path: Path) -> None:
    """One panel a metric, one line per :func:`_plot_lines` entry, the legend on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k for r in rows for k in r.metrics})
    panels = max(len(names), 1)
    figure, axes = plt.subplots(1, panels, squeeze=False, layout="constrained")
    colors = plt.get_cmap("tab20").colors
    algorithms = list(dict.fromkeys(_algorithm(r.sampler) for r in rows))
    for axis, metric in zip(axes[0], names, strict=False):
        for label, (row, points) in _plot_lines(rows, metric, envelope).items():
            color = colors[algorithms.index(_algorithm(row.sampler)) % len(colors)]
            style = _line_style(row, envelope)
            axis.plot(*zip(*points, strict=True), color=color, label=label, **style)
        axis.set_xscale("log", base=2)
        values = [r.metrics[metric] for r in rows if metric in r.metrics]
        positive = [value for value in values if value > 0]
        if positive and max(positive) > 20 * min(positive):
            if min(values) > 0:
                axis.set_yscale("log")
            else:  # a metric that reaches 0 (no switched sample): linear below its least value
                axis.set_yscale("symlog", linthresh=min(positive))
                axis.set_ylim(bottom=0)
        axis.set_xlabel("NFE (counted model evaluations)")
        axis.set_title(titles.get(metric, metric))
        axis.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    columns = 1 + len(labels) // 36
    figure.set_size_inches(6 * panels + 2.6 * columns, 5)
    if handles:
        figure.legend(handles, labels, loc="outside right upper", fontsize=7, ncols=columns)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(
    rows: Sequence[SweepRow], out_dir: Path, context: dict[str, Any], envelope: bool = False
) -> tuple[Path, Path]:
    """``metrics.json`` (every row plus ``context``) and ``metrics_vs_nfe.png`` (one panel a metric).

    One line per sampler and grid, or with ``envelope`` one per sampler through its best grid,
    against the counted NFE; one colour per algorithm, mmflow solid, diffusers dashed (dotted
    on its own schedule), adaptive solvers dash-dotted through their tolerances. Panels are titled by
    ``context["metric_names"]`` where given (e.g. "FD-ours").
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "metrics.json"
    json_path.write_text(json.dumps({**context, "rows": [asdict(r) for r in rows]}, indent=1))
    plot_path = out_dir / "metrics_vs_nfe.png"
    _plot(rows, context.get("metric_names", {}), envelope, plot_path)
    return json_path, plot_path


# ----------------------------------------------------------------------------- command line


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m benchmarks.samplers",
        description="Quality against counted NFE for mmflow's samplers and diffusers' schedulers, "
        "on a trained flow (--config with --checkpoint or --pretrained) or an analytic field "
        "(--field gmm16, endpoint error against a tight reference solution).",
    )
    parser.add_argument("--checkpoint", type=str | None, default=None, help="Lightning checkpoint")
    parser.add_argument(
        "--pretrained", type=str | None, default=None, help="folder from `mmflow export`"
    )
    parser.add_argument(
        "--config", type=str | None, default=None, help="recipe whose `data` gives the real batches"
    )
    parser.add_argument(
        "--field", type=str | None, default=None, help="analytic field instead of a model: gmm16"
    )
    parser.add_argument("--split", type=str, default="test", help="test or val")
    parser.add_argument(
        "--samplers",
        type=list[str] | str,
        default=["all"],
        help="registered samplers and adaptive methods (dopri5); all: every ODE sampler + dopri5",
    )
    parser.add_argument(
        "--diffusers",
        type=list[str] | str,
        default=["all"],
        help="diffusers schedulers run on the same model (all, or [] for none; needs `pip "
        "install diffusers`): flow_euler, dpmpp_2m, dpmpp_2m_heun, dpmpp_3m, "
        "unipc_{bh1,bh2}_{1,2,3}",
    )
    parser.add_argument("--nfe", type=list[int], default=list(DEFAULT_NFES))
    parser.add_argument(
        "--tolerances",
        type=list[float],
        default=list(DEFAULT_TOLERANCES),
        help="adaptive rtol=atol",
    )
    parser.add_argument(
        "--shifts", type=list[float], default=list(FIELD_SHIFTS), help="--field: shifted grids"
    )
    parser.add_argument(
        "--optimised",
        type=list[str],
        default=[],
        help=f"--field: samplers that also run on time grids fitted to them, on "
        f"{OPTIMISED_SAMPLES} other noises (e.g. [unipc_bh1_3,unipc_bh2_2])",
    )
    parser.add_argument(
        "--optimised_nfe", type=list[int], default=list(OPTIMISED_NFES), help="--field: their NFE"
    )
    parser.add_argument(
        "--optimised_evals",
        type=int,
        default=OPTIMISED_EVALS,
        help="--field: most evaluations of the fit's objective per grid",
    )
    parser.add_argument(
        "--optimised_objective",
        type=str,
        default="mse",
        help=f"--field: the error the grids are fitted to, one of {', '.join(OBJECTIVES)}",
    )
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--cfg_scale", type=float | None, default=None, help="default: the model's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", type=str, default="cpu")
    parser.add_argument("--out", type=str, required=True)
    return parser


def _benchmark(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    args.samplers, args.diffusers = _names(args.samplers), _names(args.diffusers)
    try:
        return _benchmark_field(args) if args.field is not None else _benchmark_flow(args)
    except DiffusersMissingError as error:
        raise ValueError(f"{error} (or pass --diffusers [] to leave diffusers out)") from None


def _names(value: str | list[str]) -> list[str]:
    """``--samplers all`` or ``--samplers euler`` as a one-name list; a list as given."""
    return [value] if isinstance(value, str) else list(value)


def _benchmark_field(args: Any) -> int:
    if args.checkpoint or args.pretrained or args.config:
        raise ValueError("--field runs on an analytic field: leave out --checkpoint/--config")
    result = field_benchmark(
        args.field,
        args.num_samples,
        args.samplers,
        args.diffusers,
        args.nfe,
        args.shifts,
        args.tolerances,
        args.seed,
        optimised_samplers=args.optimised,
        optimised_nfes=args.optimised_nfe,
        optimised_evals=args.optimised_evals,
        optimised_objective=args.optimised_objective,
    )
    print(error_table(result.rows))
    for path in write_report(result.rows, Path(args.out), result.context, envelope=True):
        print(path)
    return 0


def _benchmark_flow(args: Any) -> int:
    if args.optimised:
        raise ValueError("--optimised fits grids to an analytic field: use it with --field")
    if args.config is None:
        raise ValueError("--config (the recipe whose data gives real batches) is required")
    flow = load_flow(args.checkpoint, args.pretrained, args.device)
    datamodule = load_datamodule(args.config)
    batches = take_batches(datamodule, args.split, args.num_samples)
    out = Path(args.out)
    rows = sampler_sweep(
        flow,
        batches,
        args.samplers,
        args.nfe,
        args.cfg_scale,
        args.seed,
        out / "samples",
        schedulers=args.diffusers,
        tolerances=args.tolerances,
    )
    context = {
        "source": args.checkpoint or args.pretrained,
        "data": f"{type(datamodule).__name__} {args.split} split, {args.num_samples} samples",
        "metric_names": flow.adapter.metric_names(),
    }
    for path in write_report(rows, out, context):
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.samplers ...``; returns the exit status (2 for a user's error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_command("python -m benchmarks.samplers", lambda: _benchmark(argv))


if __name__ == "__main__":
    sys.exit(main())
