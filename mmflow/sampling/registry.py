"""Names used in YAML and on the command line for the samplers, and the ``sample`` entry point."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmflow.sampling.solvers import Callback, sample_euler, sample_heun, sample_midpoint, sample_rk4
from mmflow.timesteps import custom_grid, make_grid

SolverFn = Callable[..., Tensor]
WarmupEvals = Callable[[Mapping[str, Any]], int]


def no_warmup(options: Mapping[str, Any]) -> int:
    """The ``warmup_evals`` of a solver that spends exactly ``evals_per_step`` per step."""
    return 0


@dataclass(frozen=True)
class SamplerSpec:
    """A registered solver: its function, model evaluations per step and order of accuracy.

    ``warmup_evals(solver_options)`` counts evaluations the solver spends once on top of its
    steps (a multistep method started by a singlestep step), so that ``sample(nfe=N)`` plans
    ``(N - warmup_evals) / evals_per_step`` steps and still spends exactly ``N``.
    """

    name: str
    fn: SolverFn
    evals_per_step: int
    order: int
    warmup_evals: WarmupEvals = no_warmup


SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(
    name: str, evals_per_step: int, order: int, warmup_evals: WarmupEvals = no_warmup
) -> Callable[[SolverFn], SolverFn]:
    """Decorator that makes a solver available to :func:`sample` under ``name``."""

    def add(fn: SolverFn) -> SolverFn:
        if name in SAMPLERS:
            raise ValueError(f"sampler `{name}` is already registered")
        SAMPLERS[name] = SamplerSpec(name, fn, evals_per_step, order, warmup_evals)
        return fn

    return add


for _name, _fn, _evals, _order in (
    ("euler", sample_euler, 1, 1),
    ("heun", sample_heun, 2, 2),
    ("midpoint", sample_midpoint, 2, 2),
    ("rk4", sample_rk4, 4, 4),
):
    register_sampler(_name, _evals, _order)(_fn)


def get_sampler(name: str) -> SamplerSpec:
    """Look a sampler up by name, with the list of known names in the error."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(
            f"unknown sampler `{name}`; known: {', '.join(sorted(SAMPLERS))}"
        ) from None


class NFECounter:
    """Wraps a velocity model and counts how often it is evaluated."""

    def __init__(self, model: Callable[..., Tensor]) -> None:
        self.model = model
        self.count = 0

    def __call__(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        self.count += 1
        return self.model(x, t, **kwargs)


@dataclass
class SampleResult:
    """Samples at the end of the grid, the counted model evaluations and the grid used."""

    samples: Tensor
    nfe: int
    grid: Tensor


def _steps_for(spec: SamplerSpec, nfe: int, warmup: int) -> int:
    budget = nfe - warmup
    if budget < spec.evals_per_step or budget % spec.evals_per_step:
        plus = f" plus {warmup} once for its warm-up" if warmup else ""
        minus = f" minus {warmup}" if warmup else ""
        raise ValueError(
            f"sampler `{spec.name}` uses {spec.evals_per_step} evaluations per step{plus}; "
            f"`nfe`{minus} must be a positive multiple of {spec.evals_per_step}, got nfe={nfe}"
        )
    return budget // spec.evals_per_step


def _explicit_grid(grid: Sequence[float] | Tensor) -> Tensor:
    """Validate user times; a decreasing grid (data -> noise, inversion) is checked reversed."""
    ts = torch.as_tensor(grid)
    if ts.ndim == 1 and ts.numel() >= 2 and bool(ts[0] > ts[-1]):
        return custom_grid(ts.flip(0)).flip(0)
    return custom_grid(ts)


def _resolve_grid(
    spec: SamplerSpec,
    nfe: int | None,
    grid: str | Sequence[float] | Tensor | None,
    grid_kwargs: dict[str, Any],
    like: Tensor,
    warmup: int,
) -> Tensor:
    if grid is None or isinstance(grid, str):
        if nfe is None:
            raise ValueError("give `nfe` (or an explicit `grid` of times)")
        steps = _steps_for(spec, nfe, warmup)
        ts = make_grid(grid or "uniform", steps, dtype=torch.float64, **grid_kwargs)
    else:
        ts = _explicit_grid(grid)
        if nfe is not None and nfe != (len(ts) - 1) * spec.evals_per_step + warmup:
            plus = f" plus {warmup} for its warm-up" if warmup else ""
            raise ValueError(
                f"`nfe`={nfe} disagrees with a {len(ts) - 1}-step grid for `{spec.name}` "
                f"({spec.evals_per_step} evaluations per step{plus}); pass nfe=None with a grid"
            )
    # The grid is kept in at least float32 even for half-precision samples.
    return ts.to(device=like.device, dtype=torch.promote_types(like.dtype, torch.float32))


def _checked_options(
    spec: SamplerSpec, options: dict[str, Any], model_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Refuse solver options the solver does not name, or that collide with model inputs."""
    parameters = inspect.signature(spec.fn).parameters
    named = {
        name
        for name, p in parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and name not in ("model", "x", "ts", "callback")
    }
    unknown = sorted(set(options) - named)
    if unknown:
        raise ValueError(
            f"sampler `{spec.name}` has no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(sorted(named)) or 'none'}"
        )
    clash = sorted(set(options) & set(model_kwargs))
    if clash:
        raise ValueError(f"{', '.join(clash)} given both as solver option and model input")
    return options


def plan_grid(
    method: str,
    nfe: int | None,
    grid: str | Sequence[float] | Tensor | None = None,
    grid_kwargs: dict[str, Any] | None = None,
    solver_options: dict[str, Any] | None = None,
    like: Tensor | None = None,
) -> Tensor:
    """The time grid :func:`sample` integrates over for these arguments, without a model call.

    The step count is ``(nfe - warm-up evaluations) / evals_per_step`` of the sampler; an
    explicit ``grid`` is validated against ``nfe``. ``like`` gives device and dtype
    (float64 on the CPU by default; never below float32).
    """
    spec = get_sampler(method)
    warmup = spec.warmup_evals(dict(solver_options or {}))
    like = torch.zeros((), dtype=torch.float64) if like is None else like
    return _resolve_grid(spec, nfe, grid, dict(grid_kwargs or {}), like, warmup)


def sample(
    model: Callable[..., Tensor],
    x0: Tensor,
    method: str = "heun",
    nfe: int | None = 16,
    grid: str | Sequence[float] | Tensor | None = None,
    grid_kwargs: dict[str, Any] | None = None,
    callback: Callback | None = None,
    enable_grad: bool = False,
    solver_options: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> SampleResult:
    """Integrate ``dx/dt = model(x, t, **model_kwargs)`` from ``x0`` over a time grid.

    Args:
        model: velocity model called as ``model(x, t, **model_kwargs)`` with ``t`` of shape ``[B]``.
        x0: the starting point, usually noise at t = 0.
        method: a registered sampler name (see ``SAMPLERS``).
        nfe: the number of model evaluations to spend; the step count is derived from it
            (after the sampler's ``warmup_evals`` for these ``solver_options``).
        grid: ``None`` or a grid name for :func:`mmflow.timesteps.make_grid`
            ("uniform", "shifted", ...), or explicit times (then ``nfe`` may be ``None``).
        grid_kwargs: extra arguments of the grid, e.g. ``{"shift": 3.0}``.
        callback: called after every step (see :mod:`mmflow.sampling.solvers`).
        enable_grad: keep the autograd graph (for methods that differentiate through sampling).
        solver_options: keyword arguments of the solver itself (an SDE's diffusion, a
            generator), kept apart from the model's ``model_kwargs``; unknown names are refused.

    Returns:
        A :class:`SampleResult` whose ``nfe`` is the number of model calls actually made.
    """
    spec = get_sampler(method)
    options = _checked_options(spec, dict(solver_options or {}), model_kwargs)
    ts = plan_grid(method, nfe, grid, grid_kwargs, options, like=x0)
    counted = NFECounter(model)
    with torch.set_grad_enabled(enable_grad):
        samples = spec.fn(counted, x0, ts, callback=callback, **options, **model_kwargs)
    return SampleResult(samples=samples, nfe=counted.count, grid=ts)
