"""Exact log-likelihood of a flow model by the instantaneous change of variables.

Along the flow ``dx_t/dt = u(x_t, t)`` the log-density obeys ``d log p_t(x_t)/dt = -div u``
(Chen et al., 2018, "Neural ODEs"; FFJORD, Grathwohl et al., 2019). With noise
``x0 ~ N(0, I)`` at ``t = 0`` and data at ``t = 1``:

    log p_1(x1) = log N(x0; 0, I) - integral_0^1 div u(x_t, t) dt,

where ``x_t`` is the flow through ``x1``. The state ``(x_t, l_t)`` with ``dl/dt = div u`` and
``l_1 = 0`` is integrated jointly from ``t = 1`` down to ``t = 0``, so that ``l_0 =
-integral_0^1 div u dt`` and ``log p_1(x1) = log N(x0; 0, I) + l_0``.

The divergence is either exact, ``sum_i d u_i / d x_i`` by one backward pass per dimension
(for small dimension), or Hutchinson's unbiased estimate ``E_z[z^T (du/dx) z]`` with
``E[z z^T] = I`` (Rademacher or Gaussian probes), one backward pass per probe. As in FFJORD,
the probes are drawn once per solve and held fixed along the path, so the solver integrates a
smooth function of ``t``; averaging ``num_probes`` probes lowers the variance by that factor.
The model must treat samples independently (no batch statistics), since the derivative of
the batch sum is taken.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmflow.sampling._shared import NFECounter
from mmflow.sampling.adaptive import integrate_ode

DIVERGENCES: tuple[str, ...] = ("exact", "hutchinson")
PROBES: tuple[str, ...] = ("rademacher", "gaussian")


@dataclass
class LikelihoodResult:
    """Log-likelihood of data points under the flow.

    Attributes:
        log_likelihood: ``[B]`` ``log p_1(x1)`` in nats.
        bits_per_dim: ``[B]`` ``-log p_1(x1) / (D log 2)`` with ``D`` the dimension of a sample
            (a continuous density; discrete data needs its dequantisation term added).
        noise: ``x0``, the data carried to ``t = 0``.
        nfe: counted model calls (forward passes; the divergence adds backward passes).
        grid: the accepted step times, from 1 down to 0.
    """

    log_likelihood: Tensor
    bits_per_dim: Tensor
    noise: Tensor
    nfe: int
    grid: Tensor


def _vector_jacobian(velocity: Tensor, x: Tensor, cotangent: Tensor, retain: bool) -> Tensor:
    """``cotangent^T (du/dx)``; zero where ``u`` does not depend on ``x``."""
    if not velocity.requires_grad:
        return torch.zeros_like(x)
    (product,) = torch.autograd.grad(
        velocity, x, grad_outputs=cotangent, retain_graph=retain, allow_unused=True
    )
    return torch.zeros_like(x) if product is None else product


def exact_divergence(velocity: Tensor, x: Tensor) -> Tensor:
    """``div u = sum_i d u_i / d x_i`` per sample, ``[B]``, by one backward pass per dimension.

    ``velocity`` must have been computed from ``x`` with autograd on. Pulling back the basis
    vector ``e_i`` (in every sample at once) gives each sample's own ``d u_i / d x``, because
    samples are independent.
    """
    flat_velocity = velocity.flatten(1)
    dimension = flat_velocity.shape[1]
    divergence = torch.zeros(x.shape[0], dtype=velocity.dtype, device=velocity.device)
    for i in range(dimension):
        basis = torch.zeros_like(flat_velocity)
        basis[:, i] = 1
        row = _vector_jacobian(velocity, x, basis.view_as(velocity), i < dimension - 1)
        divergence = divergence + row.flatten(1)[:, i]
    return divergence


def hutchinson_divergence(velocity: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """Hutchinson's estimate ``mean_k z_k^T (du/dx) z_k`` of ``div u`` per sample, ``[B]``.

    ``probes`` has shape ``[K, *x.shape]`` with ``E[z z^T] = I``; each ``z_k^T (du/dx)`` is one
    vector-Jacobian product (a backward pass), so the estimate is unbiased for any ``K``.
    """
    if probes.shape[1:] != x.shape:
        raise ValueError(
            f"`probes` must have shape [K, {', '.join(map(str, x.shape))}], "
            f"got {tuple(probes.shape)}"
        )
    count = probes.shape[0]
    estimate = torch.zeros(x.shape[0], dtype=velocity.dtype, device=velocity.device)
    for k in range(count):
        probe_jacobian = _vector_jacobian(velocity, x, probes[k], k < count - 1)
        estimate = estimate + (probe_jacobian * probes[k]).flatten(1).sum(dim=1)
    return estimate / count


def draw_probes(
    like: Tensor, num_probes: int, probe: str, generator: torch.Generator | None = None
) -> Tensor:
    """``num_probes`` probes shaped like ``like``, ``[K, *like.shape]``, with ``E[z z^T] = I``:
    Rademacher (``z = +-1``, the lower-variance choice) or standard Gaussian."""
    if probe not in PROBES:
        raise ValueError(f"`probe` must be one of {PROBES}, got {probe!r}")
    if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"`num_probes` must be a positive integer, got {num_probes!r}")
    shape = (num_probes, *like.shape)
    if probe == "gaussian":
        return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
    signs = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * signs - 1).to(like.dtype)


def standard_normal_log_prob(x: Tensor) -> Tensor:
    """``log N(x; 0, I) = -|x|^2 / 2 - D log(2 pi) / 2`` per sample, ``[B]``."""
    flat = x.flatten(1)
    return -0.5 * flat.pow(2).sum(dim=1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)


def _joint_dynamics(
    model: Callable[..., Tensor],
    divergence: str,
    probes: Tensor | None,
    model_kwargs: dict[str, Any],
) -> Callable[[Tensor, tuple[Tensor, Tensor]], tuple[Tensor, Tensor]]:
    """The right-hand side ``(dx/dt, dl/dt) = (u(x, t), div u(x, t))`` for torchdiffeq."""

    def dynamics(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x = state[0].detach().requires_grad_(True)
        with torch.enable_grad():
            velocity = model(x, t.to(x.dtype).expand(x.shape[0]), **model_kwargs)
            if divergence == "exact":
                div = exact_divergence(velocity, x)
            else:
                div = hutchinson_divergence(velocity, x, probes)
        return velocity.detach(), div.detach()

    return dynamics


def log_likelihood(
    model: Callable[..., Tensor],
    x1: Tensor,
    divergence: str = "hutchinson",
    probe: str = "rademacher",
    num_probes: int = 1,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int | None = None,
    solver_options: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    **model_kwargs: Any,
) -> LikelihoodResult:
    """``log p_1(x1) = log N(x0; 0, I) - integral_0^1 div u(x_t, t) dt``, in nats and bits/dim.

    Args:
        model: velocity model ``model(x, t, **model_kwargs)``, differentiable in ``x``.
        x1: ``[B, ...]`` data points.
        divergence: ``"exact"`` (one backward pass per dimension; small dimension) or
            ``"hutchinson"`` (one backward pass per probe; an unbiased estimate).
        probe: Hutchinson probe distribution, ``"rademacher"`` or ``"gaussian"``.
        num_probes: Hutchinson probes averaged at every evaluation (drawn once per solve).
        method: torchdiffeq method: adaptive ``"dopri5"`` (default, controlled by ``rtol`` and
            ``atol``) or a fixed-grid one such as ``"rk4"`` with ``steps`` equal steps.
        steps: the number of steps of a fixed-grid method.
        solver_options: further torchdiffeq options.
        generator: random generator of the Hutchinson probes.

    Returns:
        A :class:`LikelihoodResult`.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"`divergence` must be one of {DIVERGENCES}, got {divergence!r}")
    probes = draw_probes(x1, num_probes, probe, generator) if divergence == "hutchinson" else None
    counted = NFECounter(model)
    dynamics = _joint_dynamics(counted, divergence, probes, model_kwargs)
    start = (x1.detach(), torch.zeros(x1.shape[0], dtype=x1.dtype, device=x1.device))
    with torch.no_grad():
        (noise, log_det), grid = integrate_ode(
            dynamics,
            start,
            1.0,
            0.0,
            method=method,
            rtol=rtol,
            atol=atol,
            steps=steps,
            solver_options=solver_options,
        )
    log_prob = standard_normal_log_prob(noise) + log_det
    dimension = x1[0].numel()
    return LikelihoodResult(
        log_likelihood=log_prob,
        bits_per_dim=-log_prob / (dimension * math.log(2)),
        noise=noise,
        nfe=counted.count,
        grid=grid,
    )
