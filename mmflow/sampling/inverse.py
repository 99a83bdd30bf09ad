"""Linear inverse problems with a flow prior: the operator interface and posterior samplers.

A measurement of unknown data ``x1`` is ``y = A x1 + sigma_y n`` with a known linear
operator ``A`` (a mask, average pooling, a blur, the identity) and ``n ~ N(0, I)``. A trained
velocity model ``u(x, t)`` (t = 0 noise, t = 1 data, ``x_t = (1 - t) eps + t x1``) is the prior.
Every step of the samplers here reads the model's two estimates at the current point,

    x1_hat  = x + (1 - t) u(x, t)        (data,  E[x1 | x_t = x])
    eps_hat = x - t u(x, t)              (noise, E[eps | x_t = x]),

moves ``x1_hat`` towards the measurement (the data-consistency step, below, giving ``x1``),
and puts the corrected estimate back on the path at the next grid time ``t'``:

    x_{t'} = (1 - t') eps' + t' x1,    eps' = sqrt(1 - eta^2) eps_est + eta z,

with fresh noise ``z ~ N(0, I)`` weighted by ``eta`` (0 = deterministic) and ``eps_est``

- ``"model"``: ``eps_hat``, the model's own noise estimate. This is DDNM's re-interpolation
  (Wang et al., ICLR 2023, "Zero-Shot Image Restoration Using Denoising Diffusion Null-Space
  Model") in our convention; Flower (Pourya et al., ICLR 2026) uses the same three parts with
  ``eta = 1``. The correction is not reflected in the noise, so successive corrections add
  up: harmless for the idempotent projection, but with the noise-aware shrinkage below the
  result over-fits the noise as steps are added (beyond ``y`` on a Gaussian prior).
- ``"corrected"``: ``(x - t x1) / (1 - t)``, the noise consistent with ``x`` and ``x1``. The
  step is then the Euler step of the corrected velocity ``u + (x1 - x1_hat) / (1 - t)``, the
  velocity-correction view of ΠGDM for flows (Pokle et al., ICLR 2024, "Training-free Linear
  Image Inverses via Flows"). It integrates the exact posterior flow when data are
  ``N(m, s^2 I)`` and ``data_std = s``.

Without a correction both are exactly the Euler step ``x + (t' - t) u`` (DDIM for flows) when
``eta = 0``.

Data consistency (``r_t^2`` is the variance of ``x1`` given ``x_t`` for data
``N(m, data_std^2 I)``, the ΠGDM choice that Pokle et al. carry over to flows):

    r_t^2 = (1 - t)^2 s^2 / (t^2 s^2 + (1 - t)^2),    s = data_std

- ``"inverse_projection"`` (range-null-space, DDNM): ``x1 <- x1_hat + A^+ (y - A x1_hat)``, so that
  ``A x1 = y`` while the null-space part ``(I - A^+ A) x1_hat`` is the prior's. With noise
  (``sigma_y > 0``) the noise-aware variant is the posterior mean under the Gaussian
  approximation ``x1 | x_t ~ N(x1_hat, r_t^2 I)``:

      x1 <- x1_hat + A^T (A A^T + (sigma_y^2 / r_t^2) I)^{-1} (y - A x1_hat),

  which is the projection for ``sigma_y = 0`` and shrinks the correction where the
  measurement noise dominates the prior's uncertainty.
- ``"inverse_gradient"`` (FlowChef and PnP-Flow, Martin et al., ICLR 2025, take such steps; no
  inverse of ``A`` is needed): ``K`` steps of
  gradient descent on the same posterior energy
  ``E(x) = r_t^2 ||A x - y||^2 / 2 + sigma_y^2 ||x - x1_hat||^2 / 2`` from ``x = x1_hat``,

      x <- x - zeta_t (A^T (A x - y) + (sigma_y^2 / r_t^2) (x - x1_hat)),
      zeta_t = step_size * r_t^2 / (r_t^2 L + sigma_y^2),    L >= ||A||^2,

  which for ``sigma_y = 0`` is ``x1_hat <- x1_hat - zeta A^T (A x1_hat - y)`` with
  ``zeta = step_size / L``. For a tight frame (``A A^T = I / L``: inpainting, average-pooling
  super-resolution, denoising) one step with ``step_size = 1`` equals the projection.

After the last step an optional final projection onto the discrepancy ball
``||A x - y|| <= sigma_y sqrt(m)`` (``m`` measurements per sample, Morozov's principle) moves
``x`` by ``A^+ (1 - sigma_y sqrt(m) / ||r||)_+ r`` with ``r = y - A x``: the residual ends
equal to the noise level when it was larger and is left alone otherwise (0 for
``sigma_y = 0``).

Operators act on batches ``[B, ...]`` and expose ``forward`` (``A x``), ``adjoint``
(``A^T y``), ``pseudo_inverse`` (``A^+ y``), ``regularized_inverse``
(``A^T (A A^T + c I)^{-1} y``) and ``norm_bound`` (``L >= ||A||^2``). The core has the
interface and :class:`Denoising` (the identity); a modality brings its own operators (the
image modality's inpainting masks, average-pooling super-resolution and Gaussian blur).
Both samplers are grid solvers of :func:`mmflow.sampling.sample`::

    sample(model, x0, "inverse_projection", nfe=20,
           solver_options={"operator": A, "measurement": y, "noise_std": 0.05})
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mmflow.sampling._shared import Callback, VelocityModel, check_increasing, velocity_at
from mmflow.sampling.registry import register_sampler

Damping = float | Tensor
Correction = Callable[[Tensor, Tensor], Tensor]

_TINY = 1e-30
NOISE_ESTIMATES = ("model", "corrected")


def _batch_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product ``<a_i, b_i>`` as ``[B, 1, ..., 1]``."""
    return (a * b).flatten(1).sum(1).view(-1, *([1] * (a.ndim - 1)))


def _batch_norm(a: Tensor) -> Tensor:
    """Per-sample Euclidean norm as ``[B, 1, ..., 1]``."""
    return _batch_dot(a, a).sqrt()


class LinearOperator(ABC):
    """A linear degradation ``y = A x`` of batches ``[B, ...]``.

    Subclasses give ``A x``, ``A^T y``, the regularized inverse
    ``A^T (A A^T + c I)^{-1} y = (A^T A + c I)^{-1} A^T y`` and a bound ``L >= ||A||^2``;
    the Moore-Penrose pseudo-inverse is the regularized inverse at ``c = 0``
    (``A^+ = A^T (A A^T)^{-1}`` for the full-row-rank operators here).
    """

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """``A x``."""

    @abstractmethod
    def adjoint(self, y: Tensor) -> Tensor:
        """``A^T y``, defined by ``<A x, y> = <x, A^T y>``."""

    @abstractmethod
    def regularized_inverse(self, y: Tensor, damping: Damping) -> Tensor:
        """``A^T (A A^T + damping I)^{-1} y``, the Tikhonov-regularized inverse."""

    @abstractmethod
    def norm_bound(self, like: Tensor) -> float:
        """An upper bound ``L`` of ``||A||^2`` on images shaped like ``like`` (exact if cheap)."""

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """``A^+ y``: the minimum-norm ``x`` with ``A x`` closest to ``y``."""
        return self.regularized_inverse(y, 0.0)

    def measure(
        self, x: Tensor, noise_std: float, generator: torch.Generator | None = None
    ) -> Tensor:
        """A noisy measurement ``y = A x + noise_std * n`` with ``n ~ N(0, I)``."""
        if noise_std < 0:
            raise ValueError(f"`noise_std` must be >= 0, got {noise_std}")
        clean = self.forward(x)
        noise = torch.randn(
            clean.shape, generator=generator, dtype=clean.dtype, device=clean.device
        )
        return clean + noise_std * noise

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)


class Denoising(LinearOperator):
    """The identity: the measurement is the image plus noise, ``y = x + sigma_y n``."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        return y

    def regularized_inverse(self, y: Tensor, damping: Damping) -> Tensor:
        return y / (1 + damping)

    def norm_bound(self, like: Tensor) -> float:
        return 1.0


def posterior_variance(t: Tensor, data_std: float) -> Tensor:
    """``r_t^2 = (1 - t)^2 s^2 / (t^2 s^2 + (1 - t)^2)``: the variance of ``x1`` given ``x_t``.

    Exact for data ``N(m, s^2 I)`` on the linear path ``x_t = (1 - t) eps + t x1``.
    """
    return (1 - t) ** 2 * data_std**2 / (t**2 * data_std**2 + (1 - t) ** 2)


def _check_common(
    operator: LinearOperator,
    measurement: Tensor,
    x: Tensor,
    noise_std: float,
    data_std: float,
    noise_estimate: str,
    eta: float,
) -> None:
    expected = operator.forward(x).shape
    if measurement.shape != expected:
        raise ValueError(
            f"`measurement` has shape {tuple(measurement.shape)}, but the operator maps `x` "
            f"{tuple(x.shape)} to {tuple(expected)}"
        )
    if noise_std < 0:
        raise ValueError(f"`noise_std` must be >= 0, got {noise_std}")
    if data_std <= 0:
        raise ValueError(f"`data_std` must be positive, got {data_std}")
    if noise_estimate not in NOISE_ESTIMATES:
        raise ValueError(
            f"`noise_estimate` must be one of {NOISE_ESTIMATES}, got {noise_estimate!r}"
        )
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"`eta` must be in [0, 1], got {eta}")


def project_to_noise_level(
    operator: LinearOperator, x: Tensor, measurement: Tensor, noise_std: float
) -> Tensor:
    """Move ``x`` onto the ball ``||A x - y|| <= noise_std sqrt(m)`` along ``A^+``.

    ``x <- x + A^+ ((1 - delta / ||r||)_+ r)`` with ``r = y - A x`` per sample and
    ``delta = noise_std sqrt(m)`` (``m`` entries per measurement). Where ``A A^+ = I`` the new
    residual norm is ``min(||r||, delta)``.
    """
    residual = measurement - operator.forward(x)
    radius = noise_std * math.sqrt(residual[0].numel())
    shrink = (1 - radius / _batch_norm(residual).clamp_min(_TINY)).clamp_min(0)
    return x + operator.pseudo_inverse(shrink * residual)


def _run_posterior_steps(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None,
    correct: Correction,
    noise_estimate: str,
    eta: float,
    generator: torch.Generator | None,
    model_kwargs: dict[str, Any],
) -> Tensor:
    """The shared loop: estimate, correct the data estimate, re-interpolate at the next time."""
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        u = velocity_at(model, x, t, model_kwargs)
        data = correct(x + (1 - t) * u, t)
        noise = x - t * u if noise_estimate == "model" else (x - t * data) / (1 - t)
        if eta > 0:
            fresh = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            noise = math.sqrt(1 - eta**2) * noise + eta * fresh
        x = (1 - t_next) * noise + t_next * data
        if callback is not None:
            callback(
                {"step": i, "t": t, "t_next": t_next, "x": x, "velocity": u, "data_estimate": data}
            )
    return x


def sample_range_null_space(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None = None,
    *,
    operator: LinearOperator,
    measurement: Tensor,
    noise_std: float = 0.0,
    data_std: float = 1.0,
    noise_estimate: str = "corrected",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    final_projection: bool = True,
    **model_kwargs: Any,
) -> Tensor:
    """Posterior sampling by range-null-space projection of the data estimate (DDNM for flows).

    Each step (1 model evaluation): ``x1_hat = x + (1 - t) u``, ``eps_hat = x - t u``,

        x1 = x1_hat + A^T (A A^T + (sigma_y^2 / r_t^2) I)^{-1} (y - A x1_hat)

    (``= x1_hat + A^+ (y - A x1_hat)`` for ``sigma_y = 0``), then
    ``x_{t'} = (1 - t') eps' + t' x1`` with ``eps' = sqrt(1 - eta^2) eps_est + eta z`` and
    ``eps_est = eps_hat`` ("model", DDNM) or ``(x - t x1) / (1 - t)`` ("corrected").
    ``r_t^2`` is :func:`posterior_variance` with ``data_std``. Returns the estimate at the last
    grid time, moved by :func:`project_to_noise_level` when ``final_projection``.

    Args:
        model: velocity model ``model(x, t, **model_kwargs)``.
        x: the start, noise at ``ts[0]`` (usually 0).
        ts: increasing time grid.
        operator: the degradation ``A``.
        measurement: ``y = A x1 + sigma_y n``.
        noise_std: ``sigma_y``, the measurement noise level (0 = noiseless).
        data_std: ``s`` of the Gaussian approximation behind ``r_t^2``.
        noise_estimate: "corrected" (default: the exact posterior flow for Gaussian data) or
            "model" (DDNM's re-interpolation, which over-fits noisy measurements); the two
            agree when ``sigma_y = 0`` (see the module docstring).
        eta: weight of fresh noise in the re-interpolation (0 = deterministic).
        generator: random source of the fresh noise.
        final_projection: end on ``||A x - y|| <= sigma_y sqrt(m)``.
    """
    check_increasing(ts)
    _check_common(operator, measurement, x, noise_std, data_std, noise_estimate, eta)

    def correct(data: Tensor, t: Tensor) -> Tensor:
        damping = noise_std**2 / posterior_variance(t, data_std)
        return data + operator.regularized_inverse(measurement - operator.forward(data), damping)

    x = _run_posterior_steps(
        model, x, ts, callback, correct, noise_estimate, eta, generator, model_kwargs
    )
    if final_projection:
        x = project_to_noise_level(operator, x, measurement, noise_std)
    return x


def sample_gradient_consistency(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None = None,
    *,
    operator: LinearOperator,
    measurement: Tensor,
    noise_std: float = 0.0,
    data_std: float = 1.0,
    step_size: float = 1.0,
    gradient_steps: int = 1,
    noise_estimate: str = "corrected",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    final_projection: bool = True,
    **model_kwargs: Any,
) -> Tensor:
    """Posterior sampling with gradient data-consistency steps on the data estimate.

    Each step (1 model evaluation) takes ``gradient_steps`` steps from ``x1 = x1_hat``:

        x1 <- x1 - zeta_t (A^T (A x1 - y) + (sigma_y^2 / r_t^2) (x1 - x1_hat)),
        zeta_t = step_size * r_t^2 / (r_t^2 L + sigma_y^2),

    with ``L`` the operator's :meth:`~LinearOperator.norm_bound`; for ``sigma_y = 0`` this is
    ``x1 <- x1 - (step_size / L) A^T (A x1 - y)``. Then, as in
    :func:`sample_range_null_space` (same remaining arguments),
    ``x_{t'} = (1 - t') eps' + t' x1`` and an optional final projection. ``step_size`` in (0, 2) keeps the descent stable; only ``A`` and ``A^T`` are
    used, so it also suits operators whose inverse is expensive.
    """
    check_increasing(ts)
    _check_common(operator, measurement, x, noise_std, data_std, noise_estimate, eta)
    if not 0.0 < step_size < 2.0:
        raise ValueError(f"`step_size` must be in (0, 2), got {step_size}")
    if gradient_steps < 1:
        raise ValueError(f"`gradient_steps` must be >= 1, got {gradient_steps}")
    lipschitz = operator.norm_bound(x)

    def correct(data: Tensor, t: Tensor) -> Tensor:
        variance = posterior_variance(t, data_std)
        zeta = step_size * variance / (variance * lipschitz + noise_std**2)
        weight = noise_std**2 / variance
        estimate = data
        for _ in range(gradient_steps):
            misfit = operator.adjoint(operator.forward(estimate) - measurement)
            estimate = estimate - zeta * (misfit + weight * (estimate - data))
        return estimate

    x = _run_posterior_steps(
        model, x, ts, callback, correct, noise_estimate, eta, generator, model_kwargs
    )
    if final_projection:
        x = project_to_noise_level(operator, x, measurement, noise_std)
    return x


register_sampler(
    "inverse_projection",
    evals_per_step=1,
    order=1,
    kind="inverse",
    description="posterior sampling for y = A x1 + noise by range-null-space projection of "
    "the data estimate (DDNM for flows; options operator, measurement, noise_std)",
)(sample_range_null_space)
register_sampler(
    "inverse_gradient",
    evals_per_step=1,
    order=1,
    kind="inverse",
    description="posterior sampling for y = A x1 + noise with gradient data-consistency steps "
    "(options operator, measurement, noise_std, step_size)",
)(sample_gradient_consistency)
