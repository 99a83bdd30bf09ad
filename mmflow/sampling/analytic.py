"""Velocity fields with closed-form flows, for testing and benchmarking samplers.

For data ``x1 ~ N(m, diag(s^2))`` and noise ``x0 ~ N(0, I)`` on the linear path
``x_t = t x1 + (1 - t) x0``, the marginal is ``N(t m, V_t)`` per dimension with
``V_t = t^2 s^2 + (1 - t)^2``, and the exact marginal velocity is

    u*(x, t) = m + C_t / V_t * (x - t m),    C_t = t s^2 - (1 - t) = dV_t/dt / 2.

Its flow is affine in the starting noise: ``x_t = t m + sqrt(V_t) x0``, which is what a
perfect sampler must return.

:class:`GaussianMixtureFlow` is the same construction for a mixture of diagonal Gaussians: the
velocity mixes the per-component velocities above with the posterior responsibilities, and
the marginal density ``p_t`` stays in closed form (a reference for likelihoods).
"""

from __future__ import annotations

import math

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

    def transport(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """The flow map from time ``t`` to time ``s`` (both ``[B]``):
        ``x_s = s m + sqrt(V_s / V_t) (x - t m)``."""
        t, s = self._time(t, x), self._time(s, x)
        return s * self.mean + (self.variance(s) / self.variance(t)).sqrt() * (x - t * self.mean)

    def average_velocity(self, x: Tensor, t: Tensor, step_size: Tensor) -> Tensor:
        """The exact average velocity over ``[t, t + h]`` along the flow through ``x`` at ``t``,
        ``(x_{t+h} - x_t) / h`` (``[B]`` times and steps; ``h = 0`` gives ``u*(x, t)``).

        It is what a shortcut model ``s(x, t, d)`` and a MeanFlow model learn: one step of
        size ``h`` with it lands exactly on the flow.
        """
        h = self._time(step_size, x)
        exact = (self.transport(x, t, t + step_size) - x) / h.where(h != 0, torch.ones_like(h))
        return torch.where(h != 0, exact, self(x, t))


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


class GaussianMixtureFlow(nn.Module):
    """Exact marginal velocity of the linear path towards a mixture of diagonal Gaussians.

    Data ``x1 ~ sum_k w_k N(mu_k, diag(s_k^2))`` and noise ``x0 ~ N(0, I)`` on the path
    ``x_t = t x1 + (1 - t) x0`` give the marginal, per dimension,

        p_t(x) = sum_k w_k N(x; t mu_k, V_k(t)),      V_k(t) = t^2 s_k^2 + (1 - t)^2,

    and the velocity ``u(x, t) = E[x1 - x0 | x_t = x]`` mixes the per-component Gaussian
    velocities (those of :class:`GaussianLinearFlow`) with the posterior responsibilities:

        u(x, t) = sum_k pi_k(x, t) u_k(x, t),
        pi_k(x, t) = w_k N(x; t mu_k, V_k) / p_t(x),
        u_k(x, t) = mu_k + C_k(t) / V_k(t) (x - t mu_k),     C_k(t) = t s_k^2 - (1 - t).

    Responsibilities are computed in log space (log-sum-exp) so that far-away points and
    narrow components do not underflow. The field is nonlinear in ``x`` and has no
    closed-form flow, but ``log_prob`` is exact at every ``t``, which makes it a reference
    for likelihood computations and for the continuity equation
    ``d p_t / dt = -div(p_t u)``.

    Args:
        weights: ``[K]`` non-negative mixture weights; they are normalised to sum to 1.
        means: ``[K, *event_shape]`` component means ``mu_k``.
        stds: ``[K, *event_shape]`` positive per-dimension standard deviations ``s_k``.
    """

    def __init__(self, weights: Tensor, means: Tensor, stds: Tensor) -> None:
        super().__init__()
        if weights.ndim != 1 or weights.numel() == 0:
            raise ValueError(f"`weights` must be 1-D and non-empty, got {tuple(weights.shape)}")
        if means.shape != stds.shape:
            raise ValueError(
                f"`means` {tuple(means.shape)} and `stds` {tuple(stds.shape)} differ in shape"
            )
        if means.ndim < 2 or means.shape[0] != weights.shape[0]:
            raise ValueError(
                f"`means` must have shape [K, *event_shape] with K = {weights.shape[0]} "
                f"(the length of `weights`), got {tuple(means.shape)}"
            )
        if bool((weights < 0).any()) or not bool(weights.sum() > 0):
            raise ValueError("`weights` must be non-negative with a positive sum")
        if bool((stds <= 0).any()):
            raise ValueError("`stds` must be positive")
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("means", means)
        self.register_buffer("stds", stds)

    @property
    def event_shape(self) -> torch.Size:
        """The shape of one data point."""
        return self.means.shape[1:]

    def _time(self, t: Tensor | float, x: Tensor) -> Tensor:
        """``t`` (scalar or ``[B]``) as ``[B or 1, 1, *ones]``, broadcastable to ``[B, K, ...]``."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return t.reshape(-1, *([1] * x.ndim))

    def _check_event(self, x: Tensor) -> None:
        if x.shape[1:] != self.event_shape:
            raise ValueError(
                f"`x` must have shape [B, {', '.join(map(str, self.event_shape))}], "
                f"got {tuple(x.shape)}"
            )

    def _components(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``V_k(t)``, the residual ``x - t mu_k`` (both ``[B, K, ...]``) and
        ``log w_k + log N(x; t mu_k, V_k)`` (``[B, K]``)."""
        variance = t**2 * self.stds**2 + (1 - t) ** 2
        residual = x.unsqueeze(1) - t * self.means
        log_normal = -0.5 * (residual**2 / variance + torch.log(2 * math.pi * variance))
        log_joint = torch.log(self.weights) + log_normal.flatten(2).sum(-1)
        return variance, residual, log_joint

    def log_prob(self, x: Tensor, t: Tensor | float) -> Tensor:
        """``log p_t(x) = logsumexp_k [log w_k + log N(x; t mu_k, V_k(t))]``, shape ``[B]``."""
        self._check_event(x)
        _, _, log_joint = self._components(x, self._time(t, x))
        return torch.logsumexp(log_joint, dim=1)

    def responsibilities(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Posterior component probabilities ``pi_k(x, t)``, shape ``[B, K]`` (a softmax)."""
        self._check_event(x)
        _, _, log_joint = self._components(x, self._time(t, x))
        return torch.softmax(log_joint, dim=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``u(x, t) = sum_k pi_k(x, t) u_k(x, t)`` for ``t`` of shape ``[B]``."""
        self._check_event(x)
        t = self._time(t, x)
        variance, residual, log_joint = self._components(x, t)
        covariance = t * self.stds**2 - (1 - t)
        component_velocity = self.means + covariance / variance * residual
        posterior = torch.softmax(log_joint, dim=1)
        posterior = posterior.reshape(*posterior.shape, *([1] * len(self.event_shape)))
        return (posterior * component_velocity).sum(dim=1)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws ``x1 = mu_k + s_k * e`` with ``k ~ w`` and ``e ~ N(0, I)``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"`n` must be a non-negative integer, got {n!r}")
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(
            n,
            *self.event_shape,
            generator=generator,
            dtype=self.means.dtype,
            device=self.means.device,
        )
        return self.means[component] + self.stds[component] * noise


def random_gaussian_mixture(
    dim: int = 16, components: int = 8, seed: int = 0, dtype: torch.dtype = torch.float64
) -> GaussianMixtureFlow:
    """A fixed, seeded mixture of diagonal Gaussians, ``x1 ~ sum_k w_k N(mu_k, diag(s_k^2))``.

    ``mu_k ~ N(0, 2^2 I)`` (well separated: the responsibilities switch mid-flight and the
    trajectories bend), per-dimension ``s_k ~ U[0.1, 0.6]`` (narrow components bend them again
    near the data) and ``w_k ~ U[0.5, 1.5]``, normalised.
    """
    generator = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(components, dim, generator=generator, dtype=dtype)
    stds = 0.1 + 0.5 * torch.rand(components, dim, generator=generator, dtype=dtype)
    weights = 0.5 + torch.rand(components, generator=generator, dtype=dtype)
    return GaussianMixtureFlow(weights, means, stds)
