"""diffusers' flow-matching schedulers run on an mmflow velocity model, for side-by-side benchmarks.

diffusers (SD3, Flux) writes the noise level ``sigma = 1 - t`` and a model output
``v = noise - data = -u``. The conversion happens here, at the edge, and nowhere else::

    t = 1 - sigma,        v(x, sigma) = -u(x, 1 - sigma).

Every step feeds the model ``t = 1 - scheduler.sigmas[i]``, never ``scheduler.timesteps``
(``1000 sigma``, which the DPM-Solver and UniPC schedulers cast to int64: a time error of up to
1e-3). Each scheduler here spends one model
evaluation per step, counted by :class:`NFECounter` exactly as for mmflow's samplers, so
``nfe`` steps cost ``nfe`` evaluations.

Schedules (``grid``):

- ``None``: the scheduler's own ``set_timesteps(num_inference_steps)`` with its shift
  ``s`` (``sigma' = s sigma / (1 + (s - 1) sigma)``, SD3's shift). With ``N`` steps, in our
  time: FlowMatchEuler ``t = 1 - shift(linspace(1, 1/1000, N))`` then 1 (its last step goes
  from ``t ~ 0.999`` to 1); DPM-Solver ``t = 1 - shift(linspace(0.999, 0.999/N, N))`` then 1, so
  it starts at ``t_0 = 1 - shift(0.999) > 0`` and treats the noise as the state there; UniPC
  ``t = 1 - shift(linspace(1, 1/1000, N + 1)[:-1])`` then 1, with a first sigma of 1 moved to
  ``1 - 1e-6``.
- explicit increasing times ``t_0 < ... < t_N = 1`` (only for schedulers whose
  ``set_timesteps`` takes ``sigmas``: FlowMatchEuler and UniPC, not DPM-Solver in diffusers
  0.42): they pass as ``sigmas = 1 - t_0, ..., 1 - t_{N-1}``; the scheduler appends
  ``sigma = 0`` (``t = 1``). The shift is kept at 1 so the given sigmas are not shifted again.

diffusers computes in float32 whatever the input dtype (FlowMatchEuler and DPM-Solver cast
the sample to float32 in ``step``; the sigmas are float32), so its errors bottom out near 1e-7
relative. diffusers is an optional dependency, imported only when a scheduler is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmflow.sampling._shared import Callback, NFECounter, report_step, with_fixed_options
from mmflow.sampling.registry import SampleResult, register_method
from mmflow.timesteps import custom_grid, make_grid

_FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}


@dataclass(frozen=True)
class DiffusersSchedulerSpec:
    """A diffusers scheduler class with fixed constructor options, under a short name.

    ``shift_option`` names the constructor argument of SD3's shift in that class (``shift``
    for FlowMatchEuler, ``flow_shift`` for DPM-Solver and UniPC).
    """

    name: str
    class_name: str
    shift_option: str
    options: Mapping[str, Any] = field(default_factory=dict)


def _unipc(variant: str, order: int) -> DiffusersSchedulerSpec:
    options = {**_FLOW, "solver_type": variant, "solver_order": order}
    return DiffusersSchedulerSpec(
        f"unipc_{variant}_{order}", "UniPCMultistepScheduler", "flow_shift", options
    )


DIFFUSERS_SCHEDULERS: dict[str, DiffusersSchedulerSpec] = {
    spec.name: spec
    for spec in (
        DiffusersSchedulerSpec("flow_euler", "FlowMatchEulerDiscreteScheduler", "shift"),
        DiffusersSchedulerSpec(
            "dpmpp_2m", "DPMSolverMultistepScheduler", "flow_shift", {**_FLOW, "solver_order": 2}
        ),
        DiffusersSchedulerSpec(
            "dpmpp_2m_heun",
            "DPMSolverMultistepScheduler",
            "flow_shift",
            {**_FLOW, "solver_order": 2, "solver_type": "heun"},
        ),
        DiffusersSchedulerSpec(
            "dpmpp_3m", "DPMSolverMultistepScheduler", "flow_shift", {**_FLOW, "solver_order": 3}
        ),
        *(_unipc(variant, order) for variant in ("bh1", "bh2") for order in (1, 2, 3)),
    )
}
"""Names for the command line: ``flow_euler``; ``dpmpp_2m`` (midpoint), ``dpmpp_2m_heun``,
``dpmpp_3m``; ``unipc_{bh1,bh2}_{1,2,3}`` (the digit is diffusers' ``solver_order``, the
predictor order, as in mmflow's ``unipc_*`` names). Every other option keeps diffusers'
default (``lower_order_final=True``, ``final_sigmas_type="zero"``, the UniC corrector on).
The ``unipc_bh1_*`` ones return NaN in diffusers 0.42: on the last step, into sigma = 0, the
log-SNR step ``h`` is infinite and ``B(h) = h`` multiplies a zero correction."""


class DiffusersMissingError(ImportError):
    """diffusers is needed (a scheduler was asked for) and is not installed."""


def require_diffusers() -> ModuleType:
    """Import diffusers, or fail with the command that installs it."""
    try:
        import diffusers
    except ImportError:
        raise DiffusersMissingError(
            "the diffusers schedulers need the optional package diffusers: pip install diffusers"
        ) from None
    return diffusers


def get_diffusers_scheduler(name: str) -> DiffusersSchedulerSpec:
    """Look a scheduler up by name, with the known names in the error."""
    try:
        return DIFFUSERS_SCHEDULERS[name]
    except KeyError:
        raise ValueError(
            f"unknown diffusers scheduler `{name}`; known: {', '.join(DIFFUSERS_SCHEDULERS)}"
        ) from None


def _scheduler_class(spec: DiffusersSchedulerSpec) -> type:
    return getattr(require_diffusers(), spec.class_name)


def accepts_sigmas(name: str) -> bool:
    """Whether the scheduler's ``set_timesteps`` takes explicit ``sigmas`` (so runs on our grid).

    The same test diffusers' pipelines make before passing custom sigmas.
    """
    set_timesteps = _scheduler_class(get_diffusers_scheduler(name)).set_timesteps
    return "sigmas" in inspect.signature(set_timesteps).parameters


def time_from_sigma(sigma: Tensor) -> Tensor:
    """diffusers' noise level to our time: ``t = 1 - sigma``."""
    return 1 - sigma


def sigmas_from_grid(ts: Tensor) -> np.ndarray:
    """Our increasing grid ``t_0 < ... < t_N = 1`` as the ``sigmas`` ``set_timesteps`` takes:
    ``1 - t_0, ..., 1 - t_{N-1}`` (the scheduler appends ``sigma_N = 0``); an array, because
    UniPC shifts what it is given with array arithmetic."""
    grid = custom_grid(torch.as_tensor(ts, dtype=torch.float64))
    if float(grid[-1]) != 1.0:
        raise ValueError(f"`grid` must end at t = 1 (diffusers appends sigma = 0), got {grid[-1]}")
    return (1 - grid[:-1]).numpy()


def diffusers_output(
    model: Callable[..., Tensor], x: Tensor, sigma: Tensor, model_kwargs: dict[str, Any]
) -> Tensor:
    """Our velocity model in diffusers' convention: ``v(x, sigma) = -u(x, 1 - sigma)``."""
    t = time_from_sigma(sigma).to(device=x.device, dtype=x.dtype).expand(x.shape[0])
    return -model(x, t, **model_kwargs)


def build_scheduler(name: str, nfe: int, grid: Tensor | None = None, shift: float = 1.0) -> Any:
    """A configured diffusers scheduler for ``nfe`` steps: its own schedule with ``shift``
    (``grid=None``) or our explicit ``grid`` of ``nfe + 1`` times (module docstring)."""
    spec = get_diffusers_scheduler(name)
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"`nfe` must be a positive integer, got {nfe!r}")
    if grid is not None and shift != 1.0:
        raise ValueError("give `shift` for the scheduler's own schedule or a `grid`, not both")
    scheduler = _scheduler_class(spec)(**spec.options, **{spec.shift_option: shift})
    if grid is None:
        scheduler.set_timesteps(num_inference_steps=nfe)
    elif not accepts_sigmas(name):
        raise ValueError(
            f"diffusers {spec.class_name} takes no explicit sigmas: run `{name}` on its own "
            "schedule (grid=None)"
        )
    else:
        sigmas = sigmas_from_grid(grid)
        if len(sigmas) != nfe:
            raise ValueError(f"`grid` has {len(sigmas)} steps, `nfe` asks for {nfe}")
        scheduler.set_timesteps(sigmas=sigmas)
    scheduler.set_begin_index(0)
    return scheduler


def sample_diffusers(
    model: Callable[..., Tensor],
    x0: Tensor,
    nfe: int | None,
    grid: str | Sequence[float] | Tensor | None,
    grid_kwargs: dict[str, Any],
    callback: Callback | None,
    *,
    scheduler: str,
    shift: float = 1.0,
    **model_kwargs: Any,
) -> SampleResult:
    """Integrate ``dx/dt = model(x, t, **model_kwargs)`` from noise ``x0`` with a diffusers scheduler.

    Registered as ``diffusers_<name>`` for every name of :data:`DIFFUSERS_SCHEDULERS`. Each
    step evaluates ``v = -u(x, 1 - sigma_i)`` once and hands it to ``scheduler.step``, which
    moves ``x`` from ``sigma_i`` to ``sigma_{i+1}`` (for FlowMatchEuler
    ``x + (sigma_{i+1} - sigma_i) v``, our ``x + (t_{i+1} - t_i) u``).

    Args:
        nfe: the number of steps, one model evaluation each.
        grid: ``None`` for the scheduler's own schedule (with ``shift``), or our times
            increasing to 1: a grid name of :func:`mmflow.timesteps.make_grid` (with
            ``grid_kwargs``) or explicit times.
        scheduler: a name in ``DIFFUSERS_SCHEDULERS`` (fixed by the registered name).
        shift: SD3's shift of the scheduler's own schedule.

    Returns:
        A :class:`SampleResult` with the counted evaluations and the times actually used,
        ``1 - scheduler.sigmas`` (float64).
    """
    if nfe is None:
        raise ValueError(f"give `nfe`, the number of steps of `diffusers_{scheduler}`")
    if isinstance(grid, str):
        grid = make_grid(grid, nfe, dtype=torch.float64, **grid_kwargs)
    elif grid_kwargs:
        raise ValueError("`grid_kwargs` go with a grid name")
    steps = build_scheduler(scheduler, nfe, grid, shift)
    counted = NFECounter(model)
    times = time_from_sigma(steps.sigmas.to(torch.float64))
    x = x0
    for i, timestep in enumerate(steps.timesteps):
        output = diffusers_output(counted, x, steps.sigmas[i], model_kwargs)
        x = steps.step(output, timestep, x).prev_sample
        report_step(callback, i, times, x, -output)
    return SampleResult(samples=x, nfe=counted.count, grid=times)


for _name, _spec in DIFFUSERS_SCHEDULERS.items():
    register_method(
        f"diffusers_{_name}",
        with_fixed_options(sample_diffusers, scheduler=_name),
        kind="diffusers",
        description=f"diffusers' {_spec.class_name} ({_name}; option shift) on the mmflow velocity",
        nfe_rule="1 per step",
    )


__all__ = [
    "DIFFUSERS_SCHEDULERS",
    "DiffusersMissingError",
    "DiffusersSchedulerSpec",
    "accepts_sigmas",
    "build_scheduler",
    "diffusers_output",
    "get_diffusers_scheduler",
    "require_diffusers",
    "sample_diffusers",
    "sigmas_from_grid",
    "time_from_sigma",
]
