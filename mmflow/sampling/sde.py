"""Stochastic sampling from a velocity model, and sampling along a re-timed (converted) path.

**SDE with the flow's marginals.** For an affine path ``x_t = alpha x1 + sigma x0`` (t = 0
noise, t = 1 data) with marginal velocity ``u`` and score ``s = grad log p_t``, every
diffusion coefficient ``eps(t) >= 0`` gives an SDE with the same marginals ``p_t`` as the
ODE ``dx = u dt`` (Albergo, Boffi & Vanden-Eijnden, "Stochastic Interpolants", generative SDE;
SiT's ``transport`` sampler):

    dX = [u(X, t) + eps(t) s(X, t)] dt + sqrt(2 eps(t)) dW.

Kim et al. ("Inference-Time Scaling for Flow Models via Stochastic Generation and Rollover
Budget Forcing") write the same SDE with ``g = sqrt(2 eps)``: ``dX = [u + g^2 s / 2] dt + g dW``.
The score comes from the velocity through the path (:meth:`AffinePath.velocity_to_score`);
for the linear path ``s = (t u - x) / (1 - t)``.

:func:`sample_euler_maruyama` (registered as ``"euler_maruyama"``, 1 evaluation per step)
discretises it on a time grid ``t_0 < ... < t_N``:

    x_{i+1} = x_i + h_i [u_i + eps(t_i) s_i] + sqrt(2 eps(t_i) h_i) xi_i,    xi_i ~ N(0, I).

Singularities:
  - The score is singular at the data end (``sigma(1) = 0``). The **last step is always
    deterministic**: the Euler step of the ODE, ``x_N = x_{N-1} + h u_{N-1}``, which needs no
    score. For the linear path ending at ``t_N = 1`` it is exactly the data estimate
    ``x1_hat = x + (1 - t) u`` (SiT's final "Euler"/"Tweedie" step, Kim et al.'s Tweedie).
  - Some diffusions are infinite at the noise end (``"sbdm"``: ``eps = (1 - t) / t`` for the
    linear path). A step whose ``eps(t_i)`` is infinite is taken deterministically (eps = 0),
    so a grid starting at ``t = 0`` begins with an ODE step (SiT instead starts at ``t_0 > 0``).

Any non-negative ``eps`` keeps the marginals in continuous time; Euler-Maruyama is weakly
first order, and is stable while ``eps(t) h / Var[x_t | ...]`` stays below about 1, so for
data on a low-dimensional set pick a diffusion that vanishes at t = 1 ("sbdm", "sigma",
"linear", "square", "decreasing").

**Interpolant conversion (Kim et al.).** :class:`mmflow.interpolants.ConvertedVelocity`
re-times a velocity model of one path into another path with the same data and noise:
``x_bar(r) = s_r x(t_r)``, with ``t_r`` matching the signal-to-noise ratio and

    u_bar(x_bar, r) = (s_r' / s_r) x_bar + s_r t_r' u(x_bar / s_r, t_r).

It is a model like any other, so every ODE solver and :func:`sample_euler_maruyama` (with
``path=converted.target``, so the score is the target path's) sample along the new path.
:func:`linear_to_vp` builds the linear -> VP conversion; :func:`noise_to_target_start` and
:func:`target_to_source` map the initial noise and the final samples between the paths::

    converted = linear_to_vp(model)
    x_bar = noise_to_target_start(converted, x0, velocity=model(x0, t0))  # t0 = zeros
    result = sample(converted, x_bar, method="euler_maruyama", nfe=32,
                    solver_options={"path": converted.target, "diffusion": "square",
                                    "diffusion_scale": 3.0, "generator": generator})
    x1 = target_to_source(converted, result.samples, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mmflow.interpolants import (
    PATHS,
    AffinePath,
    ConvertedVelocity,
    LinearPath,
    VPPath,
    convert_velocity,
    expand_time_like,
)
from mmflow.sampling._shared import (
    Callback,
    VelocityModel,
    check_grid,
    report_step,
    velocity_at,
)
from mmflow.sampling.registry import register_sampler

DiffusionFn = Callable[[Tensor, AffinePath, float], Tensor]


def _constant(t: Tensor, path: AffinePath, scale: float) -> Tensor:
    return torch.full_like(t, scale)


def _sbdm(t: Tensor, path: AffinePath, scale: float) -> Tensor:
    noise, d_noise = path.noise_scale(t), path.d_noise_scale(t)
    return scale * (path.d_alpha(t) / path.alpha(t) * noise**2 - noise * d_noise)


def _sigma(t: Tensor, path: AffinePath, scale: float) -> Tensor:
    return scale * path.noise_scale(t)


def _linear(t: Tensor, path: AffinePath, scale: float) -> Tensor:
    return scale * (1 - t)


def _decreasing(t: Tensor, path: AffinePath, scale: float) -> Tensor:
    return 0.25 * (scale * torch.cos(math.pi * t) + 1) ** 2


def _increasing_decreasing(t: Tensor, path: AffinePath, scale: float) -> Tensor:
    return scale * torch.sin(math.pi * t) ** 2


def _square(t: Tensor, path: AffinePath, scale: float) -> Tensor:
    return 0.5 * (scale * (1 - t) ** 2) ** 2


DIFFUSIONS: dict[str, DiffusionFn] = {
    "constant": _constant,
    "sbdm": _sbdm,
    "sigma": _sigma,
    "linear": _linear,
    "decreasing": _decreasing,
    "increasing_decreasing": _increasing_decreasing,
    "square": _square,
}
"""Named diffusion coefficients ``eps(t)`` (``c`` = ``diffusion_scale``, ``n`` = noise scale).

- ``"constant"``: ``eps = c``.
- ``"sbdm"``: ``eps = c [(alpha'/alpha) n^2 - n n']``, the diffusion of the path's own forward
  SDE (SiT's default "SBDM"): ``c (1 - t) / t`` for the linear path, ``c beta(t) / 2`` for VP.
- ``"sigma"``: ``eps = c n(t)`` (``c (1 - t)`` for the linear path).
- ``"linear"``: ``eps = c (1 - t)``.
- ``"decreasing"``: ``eps = (c cos(pi t) + 1)^2 / 4`` (SiT's formula; 1 -> 0 for c = 1).
- ``"increasing_decreasing"``: ``eps = c sin(pi t)^2``.
- ``"square"``: Kim et al.'s ``g = c (1 - t)^2``, i.e. ``eps = g^2 / 2 = c^2 (1 - t)^4 / 2``
  (their default ``c = 3``).
"""


def resolve_path(path: AffinePath | str) -> AffinePath:
    """An :class:`AffinePath` given as an object or by its name in ``mmflow.interpolants.PATHS``."""
    if isinstance(path, AffinePath):
        return path
    if isinstance(path, str) and path in PATHS:
        return PATHS[path]()
    raise ValueError(
        f"`path` must be an AffinePath or one of {', '.join(sorted(PATHS))}, got {path!r}"
    )


def diffusion_coefficient(
    diffusion: str | Callable[[Tensor], Tensor],
    t: Tensor,
    path: AffinePath | str = "linear",
    diffusion_scale: float = 1.0,
) -> Tensor:
    """``eps(t)`` of the SDE ``dX = [u + eps s] dt + sqrt(2 eps) dW`` at times ``t``.

    ``diffusion`` is a name in :data:`DIFFUSIONS` (see there for each formula, in our time) or a
    function ``t -> eps(t)``, which is then multiplied by ``diffusion_scale``.
    """
    scale = diffusion_scale
    if isinstance(scale, bool) or not isinstance(scale, int | float) or scale < 0:
        raise ValueError(f"`diffusion_scale` must be a number >= 0, got {scale!r}")
    if callable(diffusion):
        return scale * torch.as_tensor(diffusion(t), dtype=t.dtype, device=t.device)
    if diffusion not in DIFFUSIONS:
        raise ValueError(
            f"`diffusion` must be one of {', '.join(DIFFUSIONS)} or a function of t, "
            f"got {diffusion!r}"
        )
    return DIFFUSIONS[diffusion](t, resolve_path(path), float(scale))


def step_diffusions(
    diffusion: str | Callable[[Tensor], Tensor], ts: Tensor, path: AffinePath, scale: float
) -> Tensor:
    """``eps(t_i)`` for every step, checked once; infinite values become 0 (an ODE step)."""
    eps = diffusion_coefficient(diffusion, ts[:-1], path, scale).expand(len(ts) - 1)
    if bool(torch.isnan(eps).any()) or bool((eps < 0).any()):
        raise ValueError(f"`diffusion` {diffusion!r} gave NaN or negative values on the grid")
    return torch.where(torch.isinf(eps), torch.zeros_like(eps), eps)


def _check_forward(ts: Tensor) -> None:
    if bool(ts[-1] <= ts[0]):
        raise ValueError(
            "`ts` must increase (noise -> data): the SDE keeps the marginals only forward in time"
        )


def _noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def euler_maruyama_step(
    x: Tensor,
    velocity: Tensor,
    t: Tensor,
    h: Tensor,
    eps: Tensor,
    path: AffinePath,
    generator: torch.Generator | None,
) -> Tensor:
    """``x + h [u + eps s] + sqrt(2 eps h) xi`` with ``s`` the score from the velocity."""
    score = path.velocity_to_score(velocity, x, t)
    drift = velocity + eps * score
    return x + h * drift + torch.sqrt(2 * eps * h) * _noise_like(x, generator)


def sample_euler_maruyama(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None = None,
    *,
    diffusion: str | Callable[[Tensor], Tensor] = "sbdm",
    diffusion_scale: float = 1.0,
    path: AffinePath | str = "linear",
    generator: torch.Generator | None = None,
    **model_kwargs: Any,
) -> Tensor:
    """Euler-Maruyama for ``dX = [u + eps s] dt + sqrt(2 eps) dW``; 1 evaluation per step.

    ``x_{i+1} = x_i + h_i [u_i + eps(t_i) s_i] + sqrt(2 eps(t_i) h_i) xi_i`` with the score
    ``s_i = path.velocity_to_score(u_i, x_i, t_i)`` (``(t u - x) / (1 - t)`` for the linear
    path). The last step is the deterministic ODE step ``x_N = x_{N-1} + h u_{N-1}`` (the score
    is singular at the data end); steps where ``eps`` is infinite are deterministic too. With
    ``eps = 0`` every step equals :func:`mmflow.sampling.solvers.sample_euler` exactly.

    Args:
        diffusion: a name in :data:`DIFFUSIONS` or a function ``t -> eps(t)``.
        diffusion_scale: the ``c`` of the named diffusions (multiplies a function's output).
        path: the path the model's velocity belongs to (for the score and the path-dependent
            diffusions); ``converted.target`` when sampling a :class:`ConvertedVelocity`.
        generator: the ``torch.Generator`` for the Brownian increments, on ``x``'s device;
            the same seed gives the same samples.
    """
    check_grid(ts)
    _check_forward(ts)
    path = resolve_path(path)
    eps = step_diffusions(diffusion, ts, path, diffusion_scale)
    last = len(ts) - 2
    for i in range(len(ts) - 1):
        h = ts[i + 1] - ts[i]
        u = velocity_at(model, x, ts[i], model_kwargs)
        if i == last:
            x = x + h * u
        else:
            x = euler_maruyama_step(x, u, ts[i], h, eps[i], path, generator)
        report_step(callback, i, ts, x, u)
    return x


register_sampler(
    "euler_maruyama",
    evals_per_step=1,
    order=1,
    kind="sde",
    description="Euler-Maruyama for dX = [u + eps s] dt + sqrt(2 eps) dW (same marginals as "
    "the ODE), deterministic last step",
)(sample_euler_maruyama)


def linear_to_vp(
    model: Callable[..., Tensor],
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    eps: float = 1e-5,
) -> ConvertedVelocity:
    """Re-time a linear-path (rectified flow) velocity model onto the VP path (Kim et al.).

    Target: :class:`VPPath`, ``alpha_bar(r) = exp(-(beta_max - beta_min)(1 - r)^2 / 4
    - beta_min (1 - r) / 2)``, ``sigma_bar = sqrt(1 - alpha_bar^2)`` — Kim et al.'s
    ``exp(-T/2)`` schedule with their Flux time ``1 - r``. ``t_r = snr_bar / (1 + snr_bar)``
    (the linear path's ``snr = t / (1 - t)`` inverted), ``s_r = sigma_bar(r) / (1 - t_r)`` and
    ``u_bar(x_bar, r) = (s_r'/s_r) x_bar + s_r t_r' u(x_bar / s_r, t_r)``.
    """
    return convert_velocity(model, LinearPath(), VPPath(beta_min, beta_max), eps=eps)


def _check_source_starts_at_noise(converted: ConvertedVelocity, like: Tensor) -> None:
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    if bool(converted.source.alpha(zero) != 0):
        raise ValueError(
            "`converted.source` must start at pure noise (alpha(0) = 0) to map noise onto the "
            f"target path; got {converted.source!r}"
        )


def noise_to_target_start(
    converted: ConvertedVelocity, noise: Tensor, velocity: Tensor | None = None
) -> Tensor:
    """Map the source's initial noise ``x0`` (at t = 0) to the target path's state at r = 0.

    ``r = 0`` corresponds to source time ``t_0 = snr^-1(snr_bar(0))``, which is positive when
    the target does not start at pure noise (VP: ``alpha_bar(0) = 6.6e-3``, ``t_0 = 6.5e-3``).
    The state there is re-mixed from the estimates at ``t = 0`` (one DDIM/Euler step of size
    ``t_0``, error ``O(t_0^2)``):

        x_bar(0) = sigma_bar(0) x0 + alpha_bar(0) x1_hat,
        x1_hat   = source.velocity_to_data(velocity, x0, 0)   (= x0 + u for the linear path),

    with ``velocity = model(x0, 0)`` (one model evaluation the caller makes). Without it,
    ``x1_hat = 0`` and the map is ``sigma_bar(0) x0``, close to Kim et al.'s start from plain
    noise; its error is ``alpha_bar(0) |E[x1 | x0]|``.
    """
    _check_source_starts_at_noise(converted, noise)
    start = torch.zeros((), dtype=noise.dtype, device=noise.device)
    state = converted.target.noise_scale(start) * noise
    if velocity is None:
        return state
    if velocity.shape != noise.shape:
        raise ValueError(
            f"`velocity` {tuple(velocity.shape)} and `noise` {tuple(noise.shape)} differ in shape"
        )
    data = converted.source.velocity_to_data(velocity, noise, start)
    return state + converted.target.alpha(start) * data


def _target_scale(converted: ConvertedVelocity, r: Tensor) -> Tensor:
    """``s_r`` without clamping ``r``: exact at both ends (``s_1 = 1`` when both reach data)."""
    source, target = converted.source, converted.target
    t = source.snr_inverse(target.snr(r)).clamp(0, 1)
    noise_bar, alpha_bar = target.noise_scale(r), target.alpha(r)
    by_noise = noise_bar >= alpha_bar
    return torch.where(by_noise, noise_bar / source.noise_scale(t), alpha_bar / source.alpha(t))


def target_to_source(converted: ConvertedVelocity, x_bar: Tensor, r: Tensor | float) -> Tensor:
    """Map a target-path state at time ``r`` to the source path at ``t_r``: ``x = x_bar / s_r``.

    At ``r = 1`` both paths are at the data and ``s_1 = 1``: the final samples are the same.
    Unlike :meth:`ConvertedVelocity.to_source`, ``r`` is not clamped to ``[eps, 1 - eps]``, which
    matters at the data end of a VP target, where ``s_r - 1 ~ sqrt(beta_min (1 - r))``.
    """
    r = expand_time_like(r, x_bar)
    return x_bar / _target_scale(converted, r)


__all__ = [
    "DIFFUSIONS",
    "diffusion_coefficient",
    "euler_maruyama_step",
    "linear_to_vp",
    "noise_to_target_start",
    "resolve_path",
    "sample_euler_maruyama",
    "step_diffusions",
    "target_to_source",
]
