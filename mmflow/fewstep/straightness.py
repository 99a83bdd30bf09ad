"""Straightness: how far a model's trajectories are from straight lines.

Liu et al. ("Flow Straight and Fast", 2022) measure a flow ``dx/dt = u(x_t, t)`` by

    S(u) = int_0^1 E || (x_1 - x_0) - u(x_t, t) ||^2 dt,

taken along the model's own trajectories: zero exactly when every trajectory is a straight
line travelled at constant speed, which is when one Euler step is exact. Reflow lowers it;
a k-rectified flow has ``S`` falling with ``k``.

:func:`straightness` integrates the model with Euler on a uniform grid of ``nfe`` steps and
averages the squared deviation over the steps (the rectangle rule for the time integral),
per element, so models of different data sizes compare.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mmflow.sampling import sample

__all__ = ["straightness"]


@torch.no_grad()
def straightness(model: Any, x0: Tensor, nfe: int = 64, **model_kwargs: Any) -> Tensor:
    """``S(u)`` of ``model`` from the noises ``x0``, per element: a scalar tensor.

    Args:
        model: a velocity model ``model(x, t, **model_kwargs)`` (guided, if it samples guided).
        x0: noises ``[B, ...]`` at t = 0.
        nfe: Euler steps along each trajectory (the time integral's resolution).
        model_kwargs: the condition.
    """
    velocities: list[Tensor] = []
    result = sample(
        model,
        x0,
        method="euler",
        nfe=nfe,
        callback=lambda step: velocities.append(step["velocity"]),
        **model_kwargs,
    )
    displacement = result.samples - x0
    deviations = [(displacement - u).square().mean() for u in velocities]
    return torch.stack(deviations).mean()
