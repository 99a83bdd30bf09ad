"""Adaptive-step (and torchdiffeq fixed-grid) integration of the flow ``dx/dt = u(x, t)``.

:func:`sample_adaptive` (registered as ``dopri5``, ``dopri8``, ``bosh3``, ``fehlberg2`` and
``adaptive_heun``) hands the ODE to torchdiffeq (Chen et al., 2018): with ``dopri5``
(Dormand-Prince 5(4)) the solver picks its own steps so that the estimated local error of
every step stays below ``atol + rtol * |x|`` (RMS over the state), which spends model
evaluations where the velocity changes fast. The NFE is not known in advance, so it is
counted: every call of the model, rejected steps and the initial step-size probe included.

torchdiffeq calls ``func(t, x)`` with a scalar ``t``; the model receives it broadcast to
shape ``[B]`` as everywhere in :mod:`mmflow.sampling`. Integrating from ``t0 = 1`` to
``t1 = 0`` runs data -> noise.

:func:`integrate_ode` is the shared piece, also used by the likelihood computation, which
integrates a tuple state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchdiffeq import odeint

from mmflow.sampling._shared import Callback, NFECounter, velocity_at, with_fixed_options
from mmflow.sampling.registry import SampleResult, register_method

ADAPTIVE_METHODS: tuple[str, ...] = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_GRID_METHODS: tuple[str, ...] = (
    "euler",
    "midpoint",
    "heun2",
    "heun3",
    "rk4",
    "explicit_adams",
    "implicit_adams",
)
_GRID_OPTIONS = ("step_size", "grid_constructor")

State = Tensor | tuple[Tensor, ...]
OdeFunction = Callable[[Tensor, Any], Any]


class _AcceptedSteps:
    """An ODE right-hand side that records the start time of every accepted adaptive step.

    torchdiffeq calls ``callback_accept_step(t, y, dt)`` after each accepted step of its
    adaptive Runge-Kutta solvers, with ``t`` already in the caller's time direction.
    """

    def __init__(self, func: OdeFunction) -> None:
        self.func = func
        self.step_starts: list[Tensor] = []

    def __call__(self, t: Tensor, state: Any) -> Any:
        return self.func(t, state)

    def callback_accept_step(self, t: Tensor, state: Any, dt: Tensor) -> None:
        self.step_starts.append(t.detach().clone())


def _check_times(t0: float, t1: float) -> None:
    if not (0.0 <= t0 <= 1.0 and 0.0 <= t1 <= 1.0) or t0 == t1:
        raise ValueError(
            f"`t0` and `t1` must be distinct times in [0, 1] (0 noise, 1 data), got {t0}, {t1}"
        )


def _check_method(
    method: str, steps: int | None, rtol: float, atol: float, options: dict[str, Any]
) -> None:
    if method not in ADAPTIVE_METHODS + FIXED_GRID_METHODS:
        raise ValueError(
            f"unknown `method` {method!r}; adaptive: {', '.join(ADAPTIVE_METHODS)}; "
            f"fixed-grid (need `steps`): {', '.join(FIXED_GRID_METHODS)}"
        )
    if method in ADAPTIVE_METHODS and steps is not None:
        raise ValueError(f"`steps` is for fixed-grid methods; `{method}` chooses its own steps")
    if method in FIXED_GRID_METHODS and (
        isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
    ):
        raise ValueError(f"fixed-grid method `{method}` needs `steps` >= 1, got {steps!r}")
    if not (rtol > 0 and atol >= 0):
        raise ValueError(f"`rtol` must be > 0 and `atol` >= 0, got rtol={rtol}, atol={atol}")
    clash = sorted(set(options) & set(_GRID_OPTIONS))
    if clash:
        raise ValueError(f"`solver_options` may not set {', '.join(clash)}; give `steps` instead")


def integrate_ode(
    func: OdeFunction,
    state: State,
    t0: float,
    t1: float,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int | None = None,
    solver_options: dict[str, Any] | None = None,
) -> tuple[State, Tensor]:
    """Solve ``d state / dt = func(t, state)`` from ``t0`` to ``t1`` with torchdiffeq.

    Adaptive methods (``ADAPTIVE_METHODS``) control the local error with ``rtol``/``atol``;
    fixed-grid methods (``FIXED_GRID_METHODS``) take ``steps`` equal steps. ``func`` receives
    a scalar time tensor. ``solver_options`` go to torchdiffeq (``first_step``,
    ``max_num_steps``, ...).

    Returns:
        The state at ``t1`` and the grid: the start of every accepted step, then ``t1``.
    """
    options = dict(solver_options or {})
    _check_times(t0, t1)
    _check_method(method, steps, rtol, atol, options)
    like = state[0] if isinstance(state, tuple) else state
    dtype = torch.promote_types(like.dtype, torch.float32)
    if method in FIXED_GRID_METHODS:
        grid = torch.linspace(t0, t1, steps + 1, dtype=torch.float64).to(like.device, dtype)
        options["grid_constructor"] = lambda *_: grid
        solution = odeint(func, state, grid[[0, -1]], method=method, options=options)
    else:
        recorder = _AcceptedSteps(func)
        ends = torch.tensor([t0, t1], dtype=dtype, device=like.device)
        solution = odeint(
            recorder, state, ends, rtol=rtol, atol=atol, method=method, options=options
        )
        grid = torch.stack([*recorder.step_starts, ends[1]]).to(dtype)
    final = tuple(s[-1] for s in solution) if isinstance(state, tuple) else solution[-1]
    return final, grid


def velocity_function(model: Callable[..., Tensor], **model_kwargs: Any) -> OdeFunction:
    """``func(t, x) = model(x, t * ones(B), **model_kwargs)``: torchdiffeq's call order and
    scalar time turned into the ``[B]`` time tensor mmflow models take."""

    def func(t: Tensor, x: Tensor) -> Tensor:
        return velocity_at(model, x, t, model_kwargs)

    return func


def _end_times(grid: str | Sequence[float] | Tensor | None, method: str) -> tuple[float, float]:
    """``(t0, t1)``: ``(0, 1)`` by default, else the two times of an explicit grid."""
    if grid is None:
        return 0.0, 1.0
    times = None if isinstance(grid, str) else torch.as_tensor(grid, dtype=torch.float64)
    if times is None or times.shape != (2,):
        raise ValueError(
            f"`{method}` chooses its own steps: give no `grid`, or the two times [t0, t1] "
            f"to integrate between, got {grid!r}"
        )
    return float(times[0]), float(times[1])


def sample_adaptive(
    model: Callable[..., Tensor],
    x0: Tensor,
    nfe: int | None,
    grid: str | Sequence[float] | Tensor | None,
    grid_kwargs: dict[str, Any],
    callback: Callback | None,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    first_step: float | None = None,
    max_num_steps: int | None = None,
    **model_kwargs: Any,
) -> SampleResult:
    """Integrate ``dx/dt = model(x, t, **model_kwargs)`` with a torchdiffeq adaptive solver.

    ``method`` (fixed by the registered name) adapts its steps to keep each step's estimated
    error below ``atol + rtol * |x|``; the NFE is counted, so ``nfe`` must be ``None``. The
    default grid integrates from ``t0 = 0`` to ``t1 = 1`` (noise -> data); ``grid=[1, 0]``
    inverts (data -> noise).

    Args:
        rtol, atol: the relative and absolute tolerances.
        first_step: the first step size (torchdiffeq's estimate by default).
        max_num_steps: the most steps before giving up (torchdiffeq's default: unbounded).

    Returns:
        A :class:`SampleResult` with the state at ``t1``, the counted model calls and the
        accepted step times followed by ``t1`` (``grid``).
    """
    if nfe is not None:
        raise ValueError(f"`{method}` chooses its own steps and counts its NFE: pass nfe=None")
    if callback is not None or grid_kwargs:
        raise ValueError(f"`{method}` takes no `callback` or `grid_kwargs`")
    t0, t1 = _end_times(grid, method)
    options = {
        key: value
        for key, value in (("first_step", first_step), ("max_num_steps", max_num_steps))
        if value is not None
    }
    counted = NFECounter(model)
    samples, times = integrate_ode(
        velocity_function(counted, **model_kwargs),
        x0,
        t0,
        t1,
        method=method,
        rtol=rtol,
        atol=atol,
        solver_options=options,
    )
    return SampleResult(samples=samples, nfe=counted.count, grid=times)


for _name in ADAPTIVE_METHODS:
    register_method(
        _name,
        with_fixed_options(sample_adaptive, method=_name),
        kind="adaptive",
        description=f"torchdiffeq's {_name} with error control (options rtol, atol)",
        nfe_rule="chosen by the solver and counted (pass nfe=None)",
        takes_nfe=False,
    )
