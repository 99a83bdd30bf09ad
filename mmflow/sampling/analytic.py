"""Velocity fields with closed-form flows, for testing and benchmarking samplers.

For data ``x1 ~ N(m, diag(s^2))`` and noise ``x0 ~ N(0, I)`` on the linear path
``x_t = t x1 + (1 - t) x0``, the marginal is ``N(t m, V_t)`` per dimension with
``V_t = t^2 s^2 + (1 - t)^2``, and the exact marginal velocity is

    u*(x, t) = m + C_t / V_t * (x - t m),    C_t = t s^2 - (1 - t) = dV_t/dt / 2.

Its flow is affine in the starting noise: ``x_t = t m + sqrt(V_t) x0``, which is what a
perfect sampler must return.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GaussianLinearFlow(nn.Module):
    """Exact marginal velocity of the linear path towards a diagonal Gaussian target."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        if mean.shape != std.shape:
            raise ValueError(
                f"`mean` {tuple(mean.shape)} and `std` {tuple(std.shape)} differ in shape"
            )
        if bool((std <= 0).any()):
            raise ValueError("`std` must be positive")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def _time(self, t: Tensor, x: Tensor) -> Tensor:
        return t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

    def variance(self, t: Tensor) -> Tensor:
        """``V_t = t^2 s^2 + (1 - t)^2``."""
        return t**2 * self.std**2 + (1 - t) ** 2

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``u*(x, t)`` for ``t`` of shape ``[B]``."""
        t = self._time(t, x)
        covariance = t * self.std**2 - (1 - t)
        return self.mean + covariance / self.variance(t) * (x - t * self.mean)

    def flow(self, x0: Tensor, t: Tensor | float) -> Tensor:
        """The exact ODE solution ``x_t = t m + sqrt(V_t) x0`` started from noise ``x0``."""
        t = self._time(torch.as_tensor(t, dtype=x0.dtype).expand(x0.shape[0]), x0)
        return t * self.mean + self.variance(t).sqrt() * x0


class RiccatiFlow(nn.Module):
    """A nonlinear, time-dependent field with a closed-form flow.

    ``u(x, t) = c(t) (1 + x^2)`` with ``c(t) = rate * (1 + t)``; separating variables,
    ``arctan x_t = arctan x_0 + C(t)`` with ``C(t) = rate * (t + t^2 / 2)``, so
    ``x_t = tan(arctan x_0 + C(t))``. The flow stays finite while
    ``|arctan x_0| + C(1) < pi / 2``; with the default ``rate = 0.25``, ``C(1) = 0.375`` and any
    ``|x_0| <= 1`` is safe. Unlike the Gaussian field it is nonlinear in ``x``, so no solver
    gains an order by cancellation (the midpoint rule is third order on the Gaussian field).
    """

    def __init__(self, rate: float = 0.25) -> None:
        super().__init__()
        self.rate = rate

    def _integral(self, t: Tensor) -> Tensor:
        return self.rate * (t + 0.5 * t**2)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return self.rate * (1 + t) * (1 + x**2)

    def flow(self, x0: Tensor, t: Tensor | float) -> Tensor:
        """``x_t = tan(arctan x_0 + C(t))``."""
        t = torch.as_tensor(t, dtype=x0.dtype, device=x0.device)
        return torch.tan(torch.atan(x0) + self._integral(t))
