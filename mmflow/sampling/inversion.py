"""Inversion (data -> noise) with any registered ODE sampler, and its round-trip error.

Inverting runs the same solver on the reversed generation grid ``t_N = 1 > ... > t_0 = 0``,
integrating ``dx/dt = u(x, t)`` backwards from the data ``x1``; a step of size
``h_i = t_{i-1} - t_i < 0`` is the solver's ordinary step with a negative ``h`` (RF-Solver's
inversion). The recovered noise is accurate to the solver's
order ``p``: ``|x0_hat - x0| = O(h^p)``.

The explicit solvers are not their own inverses, so regenerating from the recovered noise
does not return ``x1`` exactly. A step of size ``h`` has the local error ``C(x) h^(p+1)``; the
backward step (size ``-h``) has ``C(x) (-h)^(p+1)``. For odd ``p`` (Euler) the two add and the
round trip ``x1 -> x0_hat -> x1_hat`` is ``O(h^p)``; for even ``p`` (Heun, midpoint, RK4) they
cancel at leading order and the round trip is ``O(h^(p+1))``. The round-trip error is reported per sample as

    error = sqrt(mean_d (x1_hat - x1)^2)        (root mean square over the dimensions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmflow.sampling.registry import get_sampler, plan_grid, sample

ODE_KINDS = ("ode", "multistep")


@dataclass
class InversionResult:
    """The recovered noise, the sample regenerated from it and the round-trip error.

    Attributes:
        noise: ``x0_hat``, the data integrated back to ``t = 0`` on the reversed grid.
        reconstruction: ``x1_hat``, ``x0_hat`` integrated forward again on the grid.
        error: ``[B]`` root-mean-square difference between ``x1_hat`` and the data.
        nfe: model calls counted over both passes (half of them for the inversion alone).
        grid: the generation grid, increasing from noise to data; inversion ran it reversed.
    """

    noise: Tensor
    reconstruction: Tensor
    error: Tensor
    nfe: int
    grid: Tensor


def _generation_grid(
    x1: Tensor,
    method: str,
    nfe: int | None,
    grid: str | Sequence[float] | Tensor | None,
    grid_kwargs: dict[str, Any],
    solver_options: dict[str, Any],
) -> Tensor:
    """The grid :func:`sample` plans for these arguments (see :func:`plan_grid`), so that
    inversion follows every grid and NFE rule of the registry; it must increase."""
    if grid is not None and not isinstance(grid, str):
        ts = torch.as_tensor(grid)
        if ts.ndim == 1 and ts.numel() >= 2 and bool(ts[0] > ts[-1]):
            raise ValueError(
                "`grid` is the generation grid and must increase from noise to data; "
                "inversion runs it reversed"
            )
    if get_sampler(method).kind not in ODE_KINDS:
        raise ValueError(f"only ODE samplers invert; `{method}` is a {get_sampler(method).kind}")
    return plan_grid(method, nfe, grid, grid_kwargs, solver_options, like=x1)


def invert(
    model: Callable[..., Tensor],
    x1: Tensor,
    method: str = "heun",
    nfe: int | None = 16,
    grid: str | Sequence[float] | Tensor | None = None,
    grid_kwargs: dict[str, Any] | None = None,
    solver_options: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> InversionResult:
    """Map data ``x1`` to noise with a registered ODE sampler, then regenerate and compare.

    ``x0_hat = solve(u, x1, reversed(grid))`` and ``x1_hat = solve(u, x0_hat, grid)``; a perfect
    solver gives ``x1_hat = x1``. The arguments are those of :func:`mmflow.sampling.sample`:
    ``nfe`` is spent by each pass, ``grid`` names or lists the generation (noise -> data) times.
    Only deterministic (ODE) samplers invert; an SDE sampler would not retrace its path.

    Returns:
        An :class:`InversionResult`; ``nfe`` counts the model calls of both passes.
    """
    options = dict(solver_options or {})
    ts = _generation_grid(x1, method, nfe, grid, dict(grid_kwargs or {}), options)
    inverted = sample(
        model, x1, method, nfe=None, grid=ts.flip(0), solver_options=options, **model_kwargs
    )
    regenerated = sample(
        model, inverted.samples, method, nfe=None, grid=ts, solver_options=options, **model_kwargs
    )
    difference = (regenerated.samples - x1).flatten(1)
    return InversionResult(
        noise=inverted.samples,
        reconstruction=regenerated.samples,
        error=difference.pow(2).mean(dim=1).sqrt(),
        nfe=inverted.nfe + regenerated.nfe,
        grid=ts,
    )
