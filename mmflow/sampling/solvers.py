"""Fixed-grid ODE solvers for the flow ``dx/dt = u(x, t)`` from noise (t=0) to data (t=1).

Every solver is a plain, stateless function over an explicit time grid (k-diffusion style)::

    x = sample_heun(model, x, ts, callback=None, **model_kwargs)

``ts`` is a 1-D tensor ``t_0, ..., t_N``; the solver takes ``N`` steps with
``h_i = t_{i+1} - t_i``. An increasing grid generates (noise -> data); a decreasing grid
integrates backwards (data -> noise, i.e. inversion) with the same code.
``model(x, t, **model_kwargs)`` receives ``t`` as a tensor of shape ``[B]`` and returns the
velocity. Steps are tensor code only: no ``.item()`` and no loop over samples, so a sampler
runs on CUDA without host synchronisation. The solvers follow the ambient autograd mode, so
gradients can flow through a sampler when a method needs them; :func:`mmflow.sampling.sample`
runs them under ``torch.no_grad()`` by default.

``callback``, if given, is called after each step with a dict
``{"step": i, "t": t_i, "t_next": t_{i+1}, "x": x_{i+1}, "velocity": u_i}`` where ``u_i`` is
the first velocity evaluated in that step.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mmflow.sampling._shared import (
    Callback,
    VelocityModel,
    batched_time,
    check_grid,
    report_step,
    velocity_at,
)
from mmflow.sampling.registry import register_sampler


def sample_euler(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None = None,
    **model_kwargs: Any,
) -> Tensor:
    """Explicit Euler, first order, 1 evaluation per step.

    ``x_{i+1} = x_i + h_i u(x_i, t_i)``. For the linear path this is also first-order
    DPM-Solver++ / DDIM.
    """
    check_grid(ts)
    for i in range(len(ts) - 1):
        u = velocity_at(model, x, ts[i], model_kwargs)
        x = x + (ts[i + 1] - ts[i]) * u
        report_step(callback, i, ts, x, u)
    return x


def sample_heun(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None = None,
    **model_kwargs: Any,
) -> Tensor:
    """Heun's method (explicit trapezoid), second order, 2 evaluations per step.

    ``k1 = u(x_i, t_i)``, ``k2 = u(x_i + h k1, t_{i+1})``, ``x_{i+1} = x_i + h (k1 + k2) / 2``.
    Every step, the last included, uses both evaluations: a flow's velocity is finite at
    t = 1, unlike a diffusion's denoiser at sigma = 0, so there is no Euler final step.
    """
    check_grid(ts)
    for i in range(len(ts) - 1):
        h = ts[i + 1] - ts[i]
        k1 = velocity_at(model, x, ts[i], model_kwargs)
        k2 = velocity_at(model, x + h * k1, ts[i + 1], model_kwargs)
        x = x + 0.5 * h * (k1 + k2)
        report_step(callback, i, ts, x, k1)
    return x


def sample_midpoint(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None = None,
    **model_kwargs: Any,
) -> Tensor:
    """Explicit midpoint rule, second order, 2 evaluations per step.

    ``k1 = u(x_i, t_i)``, ``x_{i+1} = x_i + h u(x_i + h k1 / 2, t_i + h / 2)``. This is also
    the RF-Solver second-order Taylor step written as a Runge-Kutta method.
    """
    check_grid(ts)
    for i in range(len(ts) - 1):
        h = ts[i + 1] - ts[i]
        k1 = velocity_at(model, x, ts[i], model_kwargs)
        k2 = velocity_at(model, x + 0.5 * h * k1, ts[i] + 0.5 * h, model_kwargs)
        x = x + h * k2
        report_step(callback, i, ts, x, k1)
    return x


def sample_rk4(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None = None,
    **model_kwargs: Any,
) -> Tensor:
    """Classical Runge-Kutta, fourth order, 4 evaluations per step.

    ``k1 = u(x, t)``, ``k2 = u(x + h k1/2, t + h/2)``, ``k3 = u(x + h k2/2, t + h/2)``,
    ``k4 = u(x + h k3, t + h)``, ``x_{i+1} = x + h (k1 + 2 k2 + 2 k3 + k4) / 6``.
    """
    check_grid(ts)
    for i in range(len(ts) - 1):
        t, h = ts[i], ts[i + 1] - ts[i]
        k1 = velocity_at(model, x, t, model_kwargs)
        k2 = velocity_at(model, x + 0.5 * h * k1, t + 0.5 * h, model_kwargs)
        k3 = velocity_at(model, x + 0.5 * h * k2, t + 0.5 * h, model_kwargs)
        k4 = velocity_at(model, x + h * k3, t + h, model_kwargs)
        x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        report_step(callback, i, ts, x, k1)
    return x


def sample_step_euler(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None = None,
    **model_kwargs: Any,
) -> Tensor:
    """Euler with the step as a network input, 1 evaluation per step: the rule of few-step
    models that predict the average velocity over a whole step (shortcut models, MeanFlow).

    ``x_{i+1} = x_i + h_i u(x_i, t_i, step_size=h_i)``. A model trained so that
    ``u(x, t, h) = (x_{t+h} - x_t) / h`` along its flow makes this exact for any grid; at
    ``h -> 0`` it is Euler on the instantaneous velocity.
    """
    check_grid(ts)
    if "step_size" in model_kwargs:
        raise ValueError("`step_euler` sets `step_size` itself; do not pass it as a model input")
    for i in range(len(ts) - 1):
        h = ts[i + 1] - ts[i]
        u = velocity_at(model, x, ts[i], {**model_kwargs, "step_size": batched_time(h, x)})
        x = x + h * u
        report_step(callback, i, ts, x, u)
    return x


for _name, _fn, _evals, _order, _description in (
    ("euler", sample_euler, 1, 1, "explicit Euler (DDIM on the linear path)"),
    ("heun", sample_heun, 2, 2, "Heun's trapezoid rule, both evaluations on every step"),
    ("midpoint", sample_midpoint, 2, 2, "explicit midpoint rule (RF-Solver's second order)"),
    ("rk4", sample_rk4, 4, 4, "classical fourth-order Runge-Kutta"),
):
    register_sampler(_name, _evals, _order, description=_description)(_fn)

register_sampler(
    "step_euler",
    1,
    1,
    kind="fewstep",
    description="Euler with the step size as a network input (shortcut, MeanFlow models)",
)(sample_step_euler)
