"""Time grids fitted to one sampler and one model by minimising the held-in endpoint error.

BOSS (:mod:`mmflow.sampling.boss`) picks Euler step times from local jump costs; this module
is its *solver-aware* counterpart: the grid is tuned for the sampler that will use it (a
multistep UniPC, Heun, RK4 ...), against that sampler's own *global* error. In mmflow's time
(t = 0 noise, t = 1 data), for a sampler ``Phi`` that maps noise ``x0`` over the grid
``0 = t_0 < t_1 < ... < t_K = 1`` to an estimate of the flow's endpoint, and reference
endpoints ``x1_n`` of ``dx/dt = u(x, t)`` from the noises ``x0_n``::

    L(t_1, ..., t_{K-1}) = 1 / (N D) sum_n || Phi(x0_n; t_0, ..., t_K) - x1_n ||^2

(the squared endpoint RMSE over the ``N`` samples and ``D`` coordinates, ``objective="mse"``),
or the mean per-sample (average) endpoint error, ``objective="mean_error"``::

    L(t_1, ..., t_{K-1}) = 1 / N sum_n || Phi(x0_n; t_0, ..., t_K) - x1_n || / sqrt(D).

Fit the grid to the error you will judge it by. Where a few samples end in another mode than
the exact flow (a well-separated mixture), the MSE is dominated by them and its grid trades
the typical sample's accuracy for fewer of them; the mean error counts each with its distance.
The references come from dopri5 at a tight tolerance on the same noises,
or are given.

**Parametrisation.** The ``K`` increments are a softmax of free logits ``z`` (the first one
fixed at 0, so ``K - 1`` free numbers for ``K - 1`` interior times), floored so that every
step is at least ``MIN_STEP``::

    dt_k = MIN_STEP + (1 - K MIN_STEP) softmax(z)_k,      t_k = dt_1 + ... + dt_k,

so every ``z`` gives a strictly increasing grid from 0 to 1 and the search is unconstrained.

**Search.** The solvers are not differentiable with respect to their grid in any useful way
(multistep weights depend on past step ratios, and we do not want autograd through a large
model), so the search is derivative-free: scipy's Nelder-Mead (adaptive simplex parameters)
from the initial grid's logits. The initial grid is a vertex of the first simplex and the
result is never worse than it on the fit noise.

**Cost.** One reference solve (dopri5's evaluations, unless ``reference`` is given) plus at
most ``max_evals`` objective evaluations of ``nfe`` batched model calls on the ``N`` fit
noises each, i.e. at most ``max_evals x nfe`` batched model calls. The grid is fitted on one
batch of noise: judge it on held-out noise. Where a few samples carry most of the error (a
mixture whose trajectories split between components), a small fit batch over-fits and the
grid can do worse on held-out noise than its start (``docs/sampling.md`` has the figures).
Grids are cached per model
fingerprint, sampler, NFE, solver options, noise, reference, initial grid, objective, budget
and model inputs (in memory and as JSON files), reusing BOSS's hashing helpers.

Related work: "Align Your Steps" (Sabour, Fidler and Kreis, 2024) optimises a schedule per
model, dataset and solver by minimising a KL upper bound between the true and discretised
SDEs; "Optimal Stepsize for Diffusion Sampling" (Pei, Hu and Gu, 2025) distils step sizes
from reference trajectories by dynamic programming (like BOSS, local errors); LD3 ("Learning
to Discretize Denoising Diffusion ODEs", Tong et al., ICLR 2025) learns the time steps of a
given solver by back-propagating a teacher-student endpoint loss (with a soft, ball-relaxed
target). This module minimises LD3's hard endpoint loss without gradients.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor, nn

from mmflow.files import read_json
from mmflow.sampling._shared import GridCache, check_positive_int, digest, model_fingerprint
from mmflow.sampling.registry import checked_options, get_sampler, plan_grid, sample
from mmflow.timesteps import custom_grid

CACHE_FORMAT = 1
MIN_STEP = 1e-6
REFERENCE_TOLERANCE = 1e-9
DEFAULT_MAX_EVALS = 400
SIMPLEX_STEP = 0.5
_cache = GridCache("grid_search")


def grid_from_logits(logits: Tensor) -> Tensor:
    """``t_k = sum_{j <= k} dt_j`` with ``dt = MIN_STEP + (1 - K MIN_STEP) softmax([0, z])``.

    ``logits`` holds the ``K - 1`` free numbers ``z``; the result has ``K + 1`` strictly
    increasing float64 times from exactly 0 to exactly 1.
    """
    steps = logits.numel() + 1
    full = torch.cat([torch.zeros(1, dtype=torch.float64), logits.to(torch.float64)])
    increments = MIN_STEP + (1 - steps * MIN_STEP) * torch.softmax(full, dim=0)
    times = torch.cat([torch.zeros(1, dtype=torch.float64), increments.cumsum(0)])
    times[-1] = 1.0
    return times


def logits_from_grid(times: Tensor) -> Tensor:
    """The inverse of :func:`grid_from_logits` (up to the ``MIN_STEP`` floor):
    ``z_k = log(dt_k - MIN_STEP) - log(dt_0 - MIN_STEP)``, steps below the floor clamped."""
    increments = times.to(torch.float64).diff()
    free = (increments - MIN_STEP).clamp_min(MIN_STEP * 1e-3).log()
    return free[1:] - free[0]


def endpoint_mse(estimate: Tensor, reference: Tensor) -> float:
    """``1 / (N D) sum_n ||estimate_n - reference_n||^2`` in float64 (``inf`` if not finite)."""
    error = float((estimate.to(torch.float64) - reference.to(torch.float64)).square().mean())
    return error if np.isfinite(error) else float("inf")


def per_sample_errors(estimate: Tensor, reference: Tensor) -> Tensor:
    """``[N]`` per-sample RMS errors ``||estimate_n - reference_n|| / sqrt(D)``, in float64."""
    difference = estimate.to(torch.float64) - reference.to(torch.float64)
    return difference.flatten(1).square().mean(dim=1).sqrt()


def endpoint_mean_error(estimate: Tensor, reference: Tensor) -> float:
    """The mean over samples of the per-sample RMS error (the average endpoint error,
    ``inf`` if not finite).

    Between the median and the RMSE: a sample sent to another mixture component counts with
    its distance, not with its squared distance as in the RMSE.
    """
    error = float(per_sample_errors(estimate, reference).mean())
    return error if np.isfinite(error) else float("inf")


OBJECTIVES: dict[str, Callable[[Tensor, Tensor], float]] = {
    "mse": endpoint_mse,
    "mean_error": endpoint_mean_error,
}
"""The fit objectives of :func:`optimized_grid` by name: ``loss(estimate, reference)``."""


def objective_loss(objective: str) -> Callable[[Tensor, Tensor], float]:
    """The loss of the fit objective named ``objective`` (:data:`OBJECTIVES`)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown `objective` {objective!r}; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[objective]


def _initial_grid(
    init: str | Sequence[float] | Tensor, method: str, nfe: int, options: dict[str, Any]
) -> Tensor:
    planned = plan_grid(method, nfe, solver_options=options)
    if isinstance(init, str):
        if init != "uniform":
            raise ValueError(f"`init` must be 'uniform' or a grid of times, got {init!r}")
        return planned
    times = custom_grid(torch.as_tensor(init, dtype=torch.float64))
    if times.numel() != planned.numel() or times[0] != 0 or times[-1] != 1:
        raise ValueError(
            f"`init` must run from 0 to 1 in {planned.numel() - 1} steps for `{method}` at "
            f"nfe={nfe}, got {times.numel() - 1} steps from {float(times[0])} to "
            f"{float(times[-1])}"
        )
    return times


def _reference_endpoints(
    model: Callable[..., Tensor],
    noise: Tensor,
    reference: Tensor | None,
    tolerance: float,
    model_kwargs: dict[str, Any],
) -> Tensor:
    if reference is None:
        options = {"rtol": tolerance, "atol": tolerance}
        return sample(model, noise, "dopri5", solver_options=options, **model_kwargs).samples
    return reference


def _search(
    model: Callable[..., Tensor],
    noise: Tensor,
    reference: Tensor,
    method: str,
    start: Tensor,
    options: dict[str, Any],
    max_evals: int,
    loss: Callable[[Tensor, Tensor], float],
    model_kwargs: dict[str, Any],
) -> Tensor:
    """Nelder-Mead over the logits from ``start``; the best grid seen, ``start`` included."""

    def loss_of_grid(times: Tensor) -> float:
        result = sample(
            model,
            noise,
            method=method,
            nfe=None,
            grid=times,
            solver_options=options,
            **model_kwargs,
        )
        return loss(result.samples, reference)

    start_loss = loss_of_grid(start)
    if start.numel() <= 2:
        return start
    logits = logits_from_grid(start).numpy()
    simplex = np.vstack([logits, logits + SIMPLEX_STEP * np.eye(logits.size)])
    found = minimize(
        lambda z: loss_of_grid(grid_from_logits(torch.from_numpy(z))),
        logits,
        method="Nelder-Mead",
        options={
            "maxfev": max_evals - 1,
            "adaptive": True,
            "initial_simplex": simplex,
            "xatol": 1e-4,
            "fatol": 0.0,
        },
    )
    if found.fun < start_loss:
        return grid_from_logits(torch.from_numpy(found.x))
    return start


def _cache_key(fields: dict[str, Any]) -> str:
    return digest(json.dumps(fields, sort_keys=True))


def _read_cached_times(path: Path, steps: int) -> list[float]:
    entry = read_json(path, written_by="mmflow.sampling.grid_search")
    times = entry.get("times") if isinstance(entry, dict) else None
    if (
        not isinstance(times, list)
        or len(times) != steps + 1
        or times[0] != 0.0
        or times[-1] != 1.0
        or any(later <= earlier for earlier, later in itertools.pairwise(times))
    ):
        raise ValueError(f"{path}: not an optimised grid of {steps} steps; delete the file")
    return [float(t) for t in times]


def clear_grid_search_memory_cache() -> None:
    """Forget the optimised grids kept in memory (files in the cache folder stay)."""
    _cache.clear()


def optimized_grid(
    model: Callable[..., Tensor],
    noise: Tensor,
    method: str,
    nfe: int,
    *,
    reference: Tensor | None = None,
    solver_options: dict[str, Any] | None = None,
    init: str | Sequence[float] | Tensor = "uniform",
    objective: str = "mse",
    max_evals: int = DEFAULT_MAX_EVALS,
    reference_tolerance: float = REFERENCE_TOLERANCE,
    fingerprint: str | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    **model_kwargs: Any,
) -> Tensor:
    """The time grid of ``method`` at ``nfe`` that minimises its endpoint error on ``noise``.

    Minimises the endpoint error ``L`` of ``objective`` on ``noise`` over the interior times
    (module docstring) with a derivative-free search.

    Args:
        model: velocity model ``model(x, t, **model_kwargs)``.
        noise: the ``[N, ...]`` fit noises; hold other noise out to judge the grid.
        method: any registered sampler.
        nfe: its budget; the grid has the steps ``sample(method=method, nfe=nfe)`` would take.
        reference: the exact endpoints from ``noise`` (shape of ``noise``); by default dopri5
            at ``rtol = atol = reference_tolerance``.
        solver_options: the sampler's own options, as for :func:`sample`.
        init: the starting grid, "uniform" or explicit times from 0 to 1 with the right step
            count (e.g. a BOSS or shifted grid); the result never does worse on ``noise``.
        objective: ``"mse"`` (the squared endpoint RMSE) or ``"mean_error"`` (the mean
            per-sample endpoint error), see :data:`OBJECTIVES`.
        max_evals: most objective evaluations, each ``nfe`` batched model calls.
        reference_tolerance: dopri5's tolerance when ``reference`` is not given.
        fingerprint: identifies the model in the cache key; defaults to
            :func:`mmflow.sampling.boss.model_fingerprint` for an ``nn.Module``. A plain
            function without one is never cached.
        cache: look the grid up in, and store it to, memory and ``cache_dir``.
        cache_dir: folder of the JSON files, default ``$MMFLOW_CACHE/grid_search``.

    Returns:
        Strictly increasing float64 times from 0 to 1, ready for
        ``sample(model, x0, method, nfe=None, grid=times, solver_options=...)``.
    """
    check_positive_int("nfe", nfe)
    check_positive_int("max_evals", max_evals)
    if noise.ndim < 2 or noise.shape[0] < 1:
        raise ValueError(f"`noise` must be a batch [N, ...], got shape {tuple(noise.shape)}")
    if reference is not None and reference.shape != noise.shape:
        raise ValueError(
            f"`reference` {tuple(reference.shape)} and `noise` {tuple(noise.shape)} differ in shape"
        )
    loss = objective_loss(objective)
    spec = get_sampler(method)
    if not spec.on_grid:
        raise ValueError(f"`{method}` is not a grid solver; grids are fitted to grid solvers")
    options = checked_options(spec, dict(solver_options or {}), model_kwargs)
    start = _initial_grid(init, method, nfe, options)
    if fingerprint is None and isinstance(model, nn.Module):
        fingerprint = model_fingerprint(model)

    def fit() -> Tensor:
        return _fit(
            model, noise, method, start, options, max_evals, loss, reference,
            reference_tolerance, model_kwargs,
        )  # fmt: skip

    if not cache or fingerprint is None:
        return fit()
    fields = {
        "format": CACHE_FORMAT,
        "model": fingerprint,
        "method": method,
        "nfe": nfe,
        "solver_options": digest(options),
        "num_samples": noise.shape[0],
        "noise": digest(noise),
        "reference": digest(reference) if reference is not None else reference_tolerance,
        "init": start.tolist(),
        "objective": objective,
        "max_evals": max_evals,
        "model_kwargs": digest(model_kwargs),
    }
    key = _cache_key(fields)
    path = _cache.directory(cache_dir) / f"grid-{method}-nfe{nfe}-{key[:24]}.json"
    cached = _cache.lookup(key, path, lambda file: _read_cached_times(file, start.numel() - 1))
    if cached is None:
        cached = fit().tolist()
        _cache.store(key, path, cached, {**fields, "times": cached})
    return torch.tensor(cached, dtype=torch.float64)


def _fit(
    model: Callable[..., Tensor],
    noise: Tensor,
    method: str,
    start: Tensor,
    options: dict[str, Any],
    max_evals: int,
    loss: Callable[[Tensor, Tensor], float],
    reference: Tensor | None,
    tolerance: float,
    model_kwargs: dict[str, Any],
) -> Tensor:
    """The reference endpoints (dopri5 unless given), then the search from ``start``."""
    with torch.no_grad():
        target = _reference_endpoints(model, noise, reference, tolerance, model_kwargs)
        return _search(model, noise, target, method, start, options, max_evals, loss, model_kwargs)
