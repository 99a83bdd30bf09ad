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

from collections.abc import Callable
from typing import Any, Protocol

from torch import Tensor

Callback = Callable[[dict[str, Any]], None]


class VelocityModel(Protocol):
    """Anything called as ``model(x, t, **kwargs)`` with ``t`` of shape ``[B]``."""

    def __call__(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor: ...


def _batched_time(t: Tensor, x: Tensor) -> Tensor:
    """Broadcast a scalar grid time to the ``[B]`` time tensor the model expects."""
    return t.to(dtype=x.dtype).expand(x.shape[0])


def _check_grid(ts: Tensor) -> None:
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(
            f"time grid `ts` must be 1-D with at least 2 points, got shape {tuple(ts.shape)}"
        )


def _report(callback: Callback | None, i: int, ts: Tensor, x: Tensor, u: Tensor) -> None:
    if callback is not None:
        callback({"step": i, "t": ts[i], "t_next": ts[i + 1], "x": x, "velocity": u})


def _velocity(model: VelocityModel, x: Tensor, t: Tensor, model_kwargs: dict[str, Any]) -> Tensor:
    return model(x, _batched_time(t, x), **model_kwargs)


def sample_euler(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None = None,
    **model_kwargs: Any,
) -> Tensor:
    """Explicit Euler, first order, 1 evaluation per step.

    ``x_{i+1} = x_i + h_i u(x_i, t_i)``. For the linear path this is also first-order
    DPM-Solver++ / DDIM (notes/samplers.md, section 0).
    """
    _check_grid(ts)
    for i in range(len(ts) - 1):
        u = _velocity(model, x, ts[i], model_kwargs)
        x = x + (ts[i + 1] - ts[i]) * u
        _report(callback, i, ts, x, u)
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
    _check_grid(ts)
    for i in range(len(ts) - 1):
        h = ts[i + 1] - ts[i]
        k1 = _velocity(model, x, ts[i], model_kwargs)
        k2 = _velocity(model, x + h * k1, ts[i + 1], model_kwargs)
        x = x + 0.5 * h * (k1 + k2)
        _report(callback, i, ts, x, k1)
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
    _check_grid(ts)
    for i in range(len(ts) - 1):
        h = ts[i + 1] - ts[i]
        k1 = _velocity(model, x, ts[i], model_kwargs)
        k2 = _velocity(model, x + 0.5 * h * k1, ts[i] + 0.5 * h, model_kwargs)
        x = x + h * k2
        _report(callback, i, ts, x, k1)
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
    _check_grid(ts)
    for i in range(len(ts) - 1):
        t, h = ts[i], ts[i + 1] - ts[i]
        k1 = _velocity(model, x, t, model_kwargs)
        k2 = _velocity(model, x + 0.5 * h * k1, t + 0.5 * h, model_kwargs)
        k3 = _velocity(model, x + 0.5 * h * k2, t + 0.5 * h, model_kwargs)
        k4 = _velocity(model, x + h * k3, t + h, model_kwargs)
        x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        _report(callback, i, ts, x, k1)
    return x
