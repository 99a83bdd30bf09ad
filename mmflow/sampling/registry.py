"""The one registry of sampling methods and the one entry point, :func:`sample`.

Every method — fixed-step and multistep ODE solvers, SDEs, loss guidance, inverse problems,
adaptive solvers, diffusers' schedulers and particle search — is reached the same way::

    result = sample(model, x0, method, nfe, grid=..., solver_options={...}, **model_kwargs)
    result.samples, result.nfe, result.grid, result.info

``model(x, t, **model_kwargs)`` is the velocity (``t`` of shape ``[B]``, t = 0 noise, t = 1
data); ``solver_options`` are the method's own settings, kept apart from the model's inputs;
``nfe`` is counted, never inferred. A method is one of two shapes:

- a **grid solver** (``evals_per_step`` set): a plain function over an explicit time grid,
  ``fn(model, x, ts, callback=None, **options, **model_kwargs) -> x`` (k-diffusion style).
  :func:`sample` plans the grid: ``(nfe - warm-up) / evals_per_step`` steps of ``grid``
  ("uniform", "shifted", ... or explicit times), and counts the calls;
- a **method with its own budget rule** (adaptive, diffusers, search):
  ``fn(model, x0, nfe, grid, grid_kwargs, callback, **options, **model_kwargs) -> SampleResult``,
  where ``nfe`` means what the method's ``nfe_rule`` says (``None`` for an adaptive solver,
  the budget per prompt for a search).

``mmflow info`` lists every registered method with its description and NFE rule.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mmflow.sampling._shared import Callback, NFECounter
from mmflow.timesteps import custom_grid, make_grid

WarmupEvals = Callable[[Mapping[str, Any]], int]

#: How the kinds are named in ``mmflow info``, in the order they are listed.
KINDS: dict[str, str] = {
    "ode": "fixed-step ODE",
    "multistep": "multistep and exponential-integrator ODE (log-SNR)",
    "adaptive": "adaptive ODE (torchdiffeq)",
    "fewstep": "few-step models (the step size as a network input)",
    "sde": "SDE",
    "guidance": "guidance by a loss",
    "inverse": "inverse problems",
    "search": "inference-time search with a reward",
    "diffusers": "diffusers' schedulers (comparisons; needs diffusers)",
}
GRID_SOLVER_ARGUMENTS = ("model", "x", "ts", "callback")
METHOD_ARGUMENTS = ("model", "x0", "nfe", "grid", "grid_kwargs", "callback")


def no_warmup(options: Mapping[str, Any]) -> int:
    """The ``warmup_evals`` of a solver that spends exactly ``evals_per_step`` per step."""
    return 0


@dataclass
class SampleResult:
    """What every sampling method returns.

    Attributes:
        samples: the samples at the end of the grid (the chosen ones, for a search).
        nfe: model evaluations actually made (per prompt, for a search), counted.
        grid: the times used (an adaptive solver's accepted steps, a scheduler's sigmas as t).
        info: what the method measured on the way, by name (a search's rewards, ...).
    """

    samples: Tensor
    nfe: int
    grid: Tensor
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SamplerSpec:
    """A registered method: its function, kind, description and rule for the NFE.

    Grid solvers also have ``evals_per_step``, their ``order`` of accuracy and
    ``warmup_evals(options)``, the evaluations spent once on top of the steps (a multistep
    method started by a singlestep step), so that ``nfe`` plans
    ``(nfe - warmup_evals) / evals_per_step`` steps and spends exactly ``nfe``.
    """

    name: str
    fn: Callable[..., Any]
    kind: str
    description: str
    nfe_rule: str
    evals_per_step: int | None = None
    order: int | None = None
    warmup_evals: WarmupEvals = no_warmup
    takes_nfe: bool = True

    @property
    def on_grid(self) -> bool:
        """Whether :func:`sample` plans this method's grid (a grid solver)."""
        return self.evals_per_step is not None

    def options(self) -> tuple[set[str], set[str]]:
        """The names of the method's options and those of them without a default."""
        fixed = GRID_SOLVER_ARGUMENTS if self.on_grid else METHOD_ARGUMENTS
        parameters = [
            p
            for name, p in inspect.signature(self.fn).parameters.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name not in fixed
        ]
        return {p.name for p in parameters}, {p.name for p in parameters if p.default is p.empty}


SAMPLERS: dict[str, SamplerSpec] = {}


def _add(spec: SamplerSpec) -> None:
    if spec.name in SAMPLERS:
        raise ValueError(f"sampler `{spec.name}` is already registered")
    if spec.kind not in KINDS:
        raise ValueError(f"unknown sampler kind `{spec.kind}`; known: {', '.join(KINDS)}")
    SAMPLERS[spec.name] = spec


def register_sampler(
    name: str,
    evals_per_step: int,
    order: int,
    warmup_evals: WarmupEvals = no_warmup,
    *,
    kind: str = "ode",
    description: str = "",
    nfe_rule: str | None = None,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator that registers a grid solver ``fn(model, x, ts, callback, **options, ...)``."""

    def add(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        rule = nfe_rule or f"{evals_per_step} per step"
        _add(SamplerSpec(name, fn, kind, description, rule, evals_per_step, order, warmup_evals))
        return fn

    return add


def register_method(
    name: str,
    fn: Callable[..., SampleResult],
    *,
    kind: str,
    description: str,
    nfe_rule: str,
    takes_nfe: bool = True,
) -> None:
    """Register a method with its own budget rule, ``fn(model, x0, nfe, grid, grid_kwargs,
    callback, **options, **model_kwargs) -> SampleResult``; it counts its own evaluations."""
    _add(SamplerSpec(name, fn, kind, description, nfe_rule, takes_nfe=takes_nfe))


def get_sampler(name: str) -> SamplerSpec:
    """Look a method up by name, with the list of known names in the error."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(
            f"unknown sampler `{name}`; known: {', '.join(sorted(SAMPLERS))}"
        ) from None


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


def explicit_grid(grid: Sequence[float] | Tensor) -> Tensor:
    """Validate user times; a decreasing grid (data -> noise, inversion) is checked reversed.

    A list of Python floats becomes float64 directly, not by way of float32.
    """
    ts = grid if isinstance(grid, Tensor) else torch.tensor(grid, dtype=torch.float64)
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
        ts = explicit_grid(grid)
        if nfe is not None and nfe != (len(ts) - 1) * spec.evals_per_step + warmup:
            plus = f" plus {warmup} for its warm-up" if warmup else ""
            raise ValueError(
                f"`nfe`={nfe} disagrees with a {len(ts) - 1}-step grid for `{spec.name}` "
                f"({spec.evals_per_step} evaluations per step{plus}); pass nfe=None with a grid"
            )
    # The grid is kept in at least float32 even for half-precision samples.
    return ts.to(device=like.device, dtype=torch.promote_types(like.dtype, torch.float32))


def checked_options(
    spec: SamplerSpec, options: dict[str, Any], model_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Refuse options the method does not name, required ones left out, and model inputs that
    collide with an option (an option passed as a model input by mistake)."""
    named, required = spec.options()
    unknown = sorted(set(options) - named)
    if unknown:
        raise ValueError(
            f"sampler `{spec.name}` has no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(sorted(named)) or 'none'}"
        )
    clash = sorted(set(model_kwargs) & named)
    if clash:
        raise ValueError(
            f"{', '.join(clash)} given as model input, but it is an option of `{spec.name}`: "
            "pass it in `solver_options`"
        )
    missing = sorted(required - set(options))
    if missing:
        raise ValueError(
            f"sampler `{spec.name}` needs the option(s) {', '.join(map(repr, missing))} "
            "in `solver_options`"
        )
    return options


def plan_grid(
    method: str,
    nfe: int | None,
    grid: str | Sequence[float] | Tensor | None = None,
    grid_kwargs: dict[str, Any] | None = None,
    solver_options: dict[str, Any] | None = None,
    like: Tensor | None = None,
) -> Tensor:
    """The time grid :func:`sample` integrates a grid solver over, without a model call.

    The step count is ``(nfe - warm-up evaluations) / evals_per_step`` of the sampler; an
    explicit ``grid`` is validated against ``nfe``. ``like`` gives device and dtype
    (float64 on the CPU by default; never below float32).
    """
    spec = get_sampler(method)
    if not spec.on_grid:
        raise ValueError(f"`{method}` is not a grid solver: its rule is {spec.nfe_rule}")
    warmup = spec.warmup_evals(dict(solver_options or {}))
    like = torch.zeros((), dtype=torch.float64) if like is None else like
    return _resolve_grid(spec, nfe, grid, dict(grid_kwargs or {}), like, warmup)


def sample(
    model: Callable[..., Tensor],
    x0: Tensor,
    method: str = "heun",
    nfe: int | None = None,
    grid: str | Sequence[float] | Tensor | None = None,
    grid_kwargs: dict[str, Any] | None = None,
    callback: Callback | None = None,
    enable_grad: bool = False,
    solver_options: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> SampleResult:
    """Sample from the velocity ``model`` starting at ``x0`` with any registered method.

    Args:
        model: velocity model called as ``model(x, t, **model_kwargs)`` with ``t`` of shape ``[B]``.
        x0: the starting point, usually noise at t = 0.
        method: a registered method name (``mmflow info`` lists them; see ``SAMPLERS``).
        nfe: model evaluations to spend, as the method's ``nfe_rule`` says: for a grid
            solver the step count is derived from it; an adaptive solver takes ``None`` and
            reports what it spent; a search spends it per prompt.
        grid: ``None`` or a grid name for :func:`mmflow.timesteps.make_grid`
            ("uniform", "shifted", ...), or explicit times (then ``nfe`` may be ``None``).
        grid_kwargs: extra arguments of the grid, e.g. ``{"shift": 3.0}``.
        callback: called after every step of a grid solver or scheduler with ``step``, ``t``,
            ``t_next``, ``x`` and ``velocity`` (and what the method adds).
        enable_grad: keep the autograd graph (for methods that differentiate through sampling).
        solver_options: the method's own settings (an SDE's diffusion, a reward, an operator
            and its measurement), kept apart from ``model_kwargs``; unknown names are refused.

    Returns:
        A :class:`SampleResult` whose ``nfe`` is the number of model calls actually made.
    """
    spec = get_sampler(method)
    options = checked_options(spec, dict(solver_options or {}), model_kwargs)
    with torch.set_grad_enabled(enable_grad):
        if not spec.on_grid:
            return spec.fn(
                model, x0, nfe, grid, dict(grid_kwargs or {}), callback, **options, **model_kwargs
            )
        ts = plan_grid(method, nfe, grid, grid_kwargs, options, like=x0)
        counted = NFECounter(model)
        samples = spec.fn(counted, x0, ts, callback=callback, **options, **model_kwargs)
    return SampleResult(samples=samples, nfe=counted.count, grid=ts)
