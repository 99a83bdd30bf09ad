"""Adaptive-step (and torchdiffeq fixed-grid) integration of the flow ``dx/dt = u(x, t)``.

:func:`sample_adaptive` hands the ODE to torchdiffeq (Chen et al., 2018): with ``dopri5``
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

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchdiffeq import odeint

from mmflow.sampling.registry import NFECounter, SampleResult

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
        return model(x, t.to(x.dtype).expand(x.shape[0]), **model_kwargs)

    return func


def sample_adaptive(
    model: Callable[..., Tensor],
    x0: Tensor,
    t0: float = 0.0,
    t1: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    steps: int | None = None,
    solver_options: dict[str, Any] | None = None,
    enable_grad: bool = False,
    **model_kwargs: Any,
) -> SampleResult:
    """Integrate ``dx/dt = model(x, t, **model_kwargs)`` from ``t0`` to ``t1`` with torchdiffeq.

    The default ``dopri5`` adapts its steps to keep each step's estimated error below
    ``atol + rtol * |x|``; any other torchdiffeq Runge-Kutta method works too (fixed-grid ones
    with ``steps``). ``t0 = 0, t1 = 1`` generates (noise -> data); ``t0 = 1, t1 = 0`` inverts
    (data -> noise).

    Args:
        model: velocity model called as ``model(x, t, **model_kwargs)`` with ``t`` of shape ``[B]``.
        x0: the state at ``t0``.
        t0, t1: start and end times in [0, 1].
        rtol, atol: relative and absolute tolerances of adaptive methods.
        method: a name in ``ADAPTIVE_METHODS`` or ``FIXED_GRID_METHODS``.
        steps: the number of equal steps of a fixed-grid method (refused for adaptive ones).
        solver_options: further torchdiffeq options, e.g. ``{"max_num_steps": 1000}``.
        enable_grad: keep the autograd graph through the solve.

    Returns:
        A :class:`SampleResult` with the state at ``t1``, the counted model calls (``nfe``) and
        the accepted step times followed by ``t1`` (``grid``).
    """
    counted = NFECounter(model)
    with torch.set_grad_enabled(enable_grad):
        samples, grid = integrate_ode(
            velocity_function(counted, **model_kwargs),
            x0,
            t0,
            t1,
            method=method,
            rtol=rtol,
            atol=atol,
            steps=steps,
            solver_options=solver_options,
        )
    return SampleResult(samples=samples, nfe=counted.count, grid=grid)
