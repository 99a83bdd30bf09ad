"""Interpolation paths between noise and data, and conversions between predictions.

Convention (fixed, see ``docs/design.md``): time ``t`` runs over [0, 1], ``t = 0`` is noise and
``t = 1`` is data. An affine path is

    x_t = alpha(t) x1 + sigma(t) x0,        x0 ~ N(0, I),

and its training target is the path velocity ``d x_t / dt = alpha'(t) x1 + sigma'(t) x0``.
A network trained by regression on that target predicts ``u(x, t) = E[d x_t / dt | x_t = x]``.

Predictions convert into each other through the 2x2 linear system

    x = alpha x1_hat + sigma x0_hat,        u = alpha' x1_hat + sigma' x0_hat,

whose determinant is ``D = alpha sigma' - sigma alpha'``:

    x1_hat = (sigma' x - sigma u) / D,      x0_hat = (alpha u - alpha' x) / D,
    score  = -x0_hat / sigma                (Tweedie, valid because x0 is standard Gaussian).

For the linear path (``D = -1``) this is ``x1_hat = x + (1 - t) u``, ``x0_hat = x - t u`` and
``score = (t u - x) / (1 - t)``.

Every coefficient method (``alpha``, ``sigma``, ``d_alpha``, ``d_sigma``, ``snr`` ...) acts
elementwise on a tensor of times of any shape. Methods that take data (``sample`` and the
conversions) accept ``t`` as a scalar, a 0-d tensor or a ``[B]`` tensor and reshape it to
``[B, 1, ..., 1]`` with :func:`expand_time_like`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mmflow.numerics import invert_increasing

PredictionKind = Literal["velocity", "data", "noise", "score"]
PREDICTION_KINDS: tuple[str, ...] = ("velocity", "data", "noise", "score")


def expand_time_like(t: Tensor | float, x: Tensor) -> Tensor:
    """Reshape times ``t`` (scalar, ``[]`` or ``[B]``) to ``[B, 1, ..., 1]`` in ``x``'s dtype."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t.reshape([1] * x.ndim)
    if t.ndim != 1 or t.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"`t` must be a scalar or have shape [B] with B = {x.shape[0]}, got {tuple(t.shape)}"
        )
    return t.reshape(-1, *([1] * (x.ndim - 1)))


@dataclass
class PathSample:
    """One draw from a path: the point ``x_t``, its regression target and the ingredients.

    ``target`` is the conditional velocity ``d x_t / dt`` given ``(x0, x1, z)``; ``t`` has
    shape ``[B]``; ``z`` is the latent noise of a stochastic interpolant (``None`` otherwise).
    """

    x_t: Tensor
    target: Tensor
    t: Tensor
    x0: Tensor
    x1: Tensor
    z: Tensor | None = None


class AffinePath:
    """Base class of affine paths ``x_t = alpha(t) x1 + sigma(t) x0`` (t = 0 noise, 1 data).

    Subclasses implement ``alpha``, ``sigma``, ``d_alpha`` and ``d_sigma``. Conversions and the
    signal-to-noise ratio use the *effective noise scale* ``noise_scale(t)``, which equals
    ``sigma(t)`` here and ``sqrt(sigma^2 + gamma^2)`` for a stochastic interpolant.
    """

    def alpha(self, t: Tensor) -> Tensor:
        """Data coefficient ``alpha(t)``."""
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        """Noise coefficient ``sigma(t)``."""
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        """``d alpha / dt``."""
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        """``d sigma / dt``."""
        raise NotImplementedError

    def noise_scale(self, t: Tensor) -> Tensor:
        """Standard deviation of the Gaussian noise part of ``x_t`` given ``x1``."""
        return self.sigma(t)

    def d_noise_scale(self, t: Tensor) -> Tensor:
        """``d noise_scale / dt``."""
        return self.d_sigma(t)

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ``alpha(t) / noise_scale(t)`` (an amplitude ratio, not squared)."""
        return self.alpha(t) / self.noise_scale(t)

    def d_snr(self, t: Tensor) -> Tensor:
        """``d snr / dt = (alpha' n - alpha n') / n^2`` with ``n = noise_scale``."""
        n = self.noise_scale(t)
        return (self.d_alpha(t) * n - self.alpha(t) * self.d_noise_scale(t)) / n**2

    def snr_inverse(self, snr: Tensor) -> Tensor:
        """Time ``t`` with ``snr(t) = snr``, by bisection on [0, 1] (snr assumed increasing).

        Values below ``snr(0)`` or above ``snr(1)`` map to 0 or 1. Subclasses override this with
        closed forms where they exist.
        """
        return invert_increasing(self.snr, torch.as_tensor(snr))

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        """``x_t = alpha x1 + sigma x0`` and target ``alpha' x1 + sigma' x0``."""
        _check_pair(x0, x1)
        tb = expand_time_like(t, x1)
        x_t = self.alpha(tb) * x1 + self.sigma(tb) * x0
        target = self.d_alpha(tb) * x1 + self.d_sigma(tb) * x0
        return PathSample(x_t=x_t, target=target, t=_flat_time(t, x1), x0=x0, x1=x1)

    def _coefficients(self, t: Tensor | float, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        tb = expand_time_like(t, x)
        return self.alpha(tb), self.noise_scale(tb), self.d_alpha(tb), self.d_noise_scale(tb)

    def velocity_to_data(self, velocity: Tensor, x: Tensor, t: Tensor | float) -> Tensor:
        """``x1_hat = (sigma' x - sigma u) / (alpha sigma' - sigma alpha')``."""
        a, s, da, ds = self._coefficients(t, x)
        return (ds * x - s * velocity) / (a * ds - s * da)

    def velocity_to_noise(self, velocity: Tensor, x: Tensor, t: Tensor | float) -> Tensor:
        """``x0_hat = (alpha u - alpha' x) / (alpha sigma' - sigma alpha')``."""
        a, s, da, ds = self._coefficients(t, x)
        return (a * velocity - da * x) / (a * ds - s * da)

    def velocity_to_score(self, velocity: Tensor, x: Tensor, t: Tensor | float) -> Tensor:
        """``score = -x0_hat / sigma = (alpha' x - alpha u) / (sigma D)``.

        ``D = alpha sigma' - sigma alpha'``.
        """
        a, s, da, ds = self._coefficients(t, x)
        return (da * x - a * velocity) / (s * (a * ds - s * da))

    def data_to_velocity(self, data: Tensor, x: Tensor, t: Tensor | float) -> Tensor:
        """``u = alpha' x1_hat + sigma' (x - alpha x1_hat) / sigma`` (singular where sigma = 0)."""
        a, s, da, ds = self._coefficients(t, x)
        return da * data + ds * (x - a * data) / s

    def noise_to_velocity(self, noise: Tensor, x: Tensor, t: Tensor | float) -> Tensor:
        """``u = alpha' (x - sigma x0_hat) / alpha + sigma' x0_hat`` (singular where alpha = 0)."""
        a, s, da, ds = self._coefficients(t, x)
        return da * (x - s * noise) / a + ds * noise

    def score_to_velocity(self, score: Tensor, x: Tensor, t: Tensor | float) -> Tensor:
        """``x0_hat = -sigma score``, then :meth:`noise_to_velocity`."""
        s = self.noise_scale(expand_time_like(t, x))
        return self.noise_to_velocity(-s * score, x, t)

    def convert(
        self,
        prediction: Tensor,
        x: Tensor,
        t: Tensor | float,
        source: PredictionKind,
        target: PredictionKind,
    ) -> Tensor:
        """Convert a ``source`` prediction at ``(x, t)`` into a ``target`` one (via velocity)."""
        for name, kind in (("source", source), ("target", target)):
            if kind not in PREDICTION_KINDS:
                raise ValueError(f"`{name}` must be one of {PREDICTION_KINDS}, got {kind!r}")
        if source == target:
            return prediction
        to_velocity = {
            "velocity": lambda p: p,
            "data": lambda p: self.data_to_velocity(p, x, t),
            "noise": lambda p: self.noise_to_velocity(p, x, t),
            "score": lambda p: self.score_to_velocity(p, x, t),
        }
        from_velocity = {
            "velocity": lambda u: u,
            "data": lambda u: self.velocity_to_data(u, x, t),
            "noise": lambda u: self.velocity_to_noise(u, x, t),
            "score": lambda u: self.velocity_to_score(u, x, t),
        }
        return from_velocity[target](to_velocity[source](prediction))

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({arguments})"


class LinearPath(AffinePath):
    """Rectified flow: ``alpha = t``, ``sigma = 1 - t``, target ``x1 - x0``, snr ``t / (1 - t)``."""

    def alpha(self, t: Tensor) -> Tensor:
        return t

    def sigma(self, t: Tensor) -> Tensor:
        return 1 - t

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def snr_inverse(self, snr: Tensor) -> Tensor:
        """``t = snr / (1 + snr)``, written ``1 / (1 + 1/snr)`` so that ``snr = inf`` gives 1."""
        return 1 / (1 + 1 / torch.as_tensor(snr))


class GeneralizedVPPath(AffinePath):
    """Generalized variance-preserving path: ``alpha(t)^2 + sigma(t)^2 = 1``.

    Following Albergo, Boffi & Vanden-Eijnden (stochastic interpolants) and SiT's
    ``GVPCPlan``, a generalized VP path is any increasing ``alpha`` from 0 to 1 with
    ``sigma = sqrt(1 - alpha^2)``, so ``Var[x_t] = 1`` for unit-variance data. Then

        sigma' = -alpha alpha' / sigma,     snr = alpha / sqrt(1 - alpha^2),
        alpha = snr / sqrt(1 + snr^2)       (used by ``snr_inverse``).

    ``alpha_schedule``:
        - ``"sine"``: ``alpha = sin(pi t / 2)`` — SiT's GVP and the trigonometric interpolant of
          Albergo et al. (identical to :class:`CosinePath`).
        - ``"linear"``: ``alpha = t``, ``sigma = sqrt(1 - t^2)``.
    ``d_sigma`` divides by ``sigma``; near ``t = 1`` it is evaluated with ``sigma`` clamped to the
    dtype's smallest normal number, where it is genuinely unbounded for the linear schedule.
    """

    def __init__(self, alpha_schedule: Literal["sine", "linear"] = "sine") -> None:
        if alpha_schedule not in ("sine", "linear"):
            raise ValueError(f"`alpha_schedule` must be 'sine' or 'linear', got {alpha_schedule!r}")
        self.alpha_schedule = alpha_schedule

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t) if self.alpha_schedule == "sine" else t

    def d_alpha(self, t: Tensor) -> Tensor:
        if self.alpha_schedule == "sine":
            return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)
        return torch.ones_like(t)

    def alpha_inverse(self, alpha: Tensor) -> Tensor:
        """Time ``t`` with ``alpha(t) = alpha``."""
        if self.alpha_schedule == "sine":
            return torch.asin(alpha.clamp(0, 1)) * (2 / math.pi)
        return alpha

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt((1 - self.alpha(t) ** 2).clamp_min(0))

    def d_sigma(self, t: Tensor) -> Tensor:
        sigma = self.sigma(t).clamp_min(torch.finfo(t.dtype).tiny)
        return -self.alpha(t) * self.d_alpha(t) / sigma

    def snr_inverse(self, snr: Tensor) -> Tensor:
        """``alpha = 1 / sqrt(1 + snr^-2)`` (finite at snr = 0 and inf), then ``alpha_inverse``."""
        snr = torch.as_tensor(snr)
        return self.alpha_inverse(torch.rsqrt(1 + snr ** (-2)))


class CosinePath(GeneralizedVPPath):
    """Trigonometric path: ``alpha = sin(pi t / 2)``, ``sigma = cos(pi t / 2)``.

    ``alpha' = pi/2 cos(pi t / 2)``, ``sigma' = -pi/2 sin(pi t / 2)``, ``snr = tan(pi t / 2)``,
    ``snr_inverse = 2/pi atan(snr)``. Same as ``GeneralizedVPPath("sine")`` (SiT's GVP).
    """

    def __init__(self) -> None:
        super().__init__("sine")

    def sigma(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def snr_inverse(self, snr: Tensor) -> Tensor:
        return torch.atan(torch.as_tensor(snr)) * (2 / math.pi)


class VPPath(GeneralizedVPPath):
    """Score-SDE variance-preserving path (Song et al. 2021; SiT's ``VPCPlan``) in our time.

    With ``s = 1 - t`` (diffusion time) and ``B = beta_max - beta_min``:

        log alpha(t) = -B s^2 / 4 - beta_min s / 2,     sigma = sqrt(1 - alpha^2),
        alpha'(t) = alpha (B s / 2 + beta_min / 2),     sigma' = -alpha alpha' / sigma.

    ``alpha(0) = exp(-B/4 - beta_min/2)`` is small but not 0 (6.6e-3 for the defaults), so
    ``snr(0) > 0``. ``snr_inverse`` solves the quadratic
    ``B s^2 / 4 + beta_min s / 2 + log alpha = 0`` for ``s >= 0``; snr values below ``snr(0)``
    map to ``t = 0``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if beta_min < 0:
            raise ValueError(f"`beta_min` must be >= 0, got {beta_min}")
        if beta_max <= beta_min:
            raise ValueError(f"`beta_max` must be > beta_min ({beta_min}), got {beta_max}")
        self.alpha_schedule = "vp"
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def log_alpha(self, t: Tensor) -> Tensor:
        """``log alpha = -(beta_max - beta_min) s^2 / 4 - beta_min s / 2`` with ``s = 1 - t``."""
        s = 1 - t
        return -0.25 * (self.beta_max - self.beta_min) * s**2 - 0.5 * self.beta_min * s

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def d_alpha(self, t: Tensor) -> Tensor:
        s = 1 - t
        return self.alpha(t) * (0.5 * (self.beta_max - self.beta_min) * s + 0.5 * self.beta_min)

    def sigma(self, t: Tensor) -> Tensor:
        """``sqrt(-expm1(2 log alpha))``, accurate where alpha is close to 1."""
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def alpha_inverse(self, alpha: Tensor) -> Tensor:
        """``t = 1 - s`` with ``s = (-beta_min/2 + sqrt(beta_min^2/4 - B log alpha)) / (B/2)``."""
        spread = self.beta_max - self.beta_min
        log_alpha = torch.log(alpha)
        s = (-0.5 * self.beta_min + torch.sqrt(0.25 * self.beta_min**2 - spread * log_alpha)) / (
            0.5 * spread
        )
        return (1 - s).clamp(0, 1)


def _brownian_gamma(t: Tensor, scale: float) -> Tensor:
    return torch.sqrt((scale * t * (1 - t)).clamp_min(0))


class StochasticInterpolant(AffinePath):
    """Stochastic interpolant ``x_t = alpha x1 + sigma x0 + gamma z`` (Albergo et al. 2023).

    ``alpha`` and ``sigma`` come from ``path`` (default :class:`LinearPath`); ``z ~ N(0, I)`` is
    independent of ``x0`` and ``x1``. The latent-noise coefficient (``a = gamma_scale``) is

        - ``"brownian"``:  ``gamma = sqrt(a t (1 - t))``, ``gamma gamma' = a (1 - 2t) / 2``,
        - ``"quadratic"``: ``gamma = a t (1 - t)``,       ``gamma' = a (1 - 2t)``,

    both zero at ``t = 0`` and ``t = 1``. The target is ``alpha' x1 + sigma' x0 + gamma' z``.
    The brownian ``gamma'`` is infinite at the endpoints; it is evaluated with ``t`` clamped to
    ``[eps, 1 - eps]``.

    Assumption for conversions: ``x0`` is standard Gaussian. Then given ``x_t`` only the sum
    ``n = sigma x0 + gamma z ~ N(0, (sigma^2 + gamma^2) I)`` is identifiable, and

        E[d x_t/dt | x_t] = alpha' E[x1 | x_t] + n' E[n | x_t] / n,  n(t) = sqrt(sigma^2 + gamma^2),

    i.e. the interpolant behaves as the affine path ``(alpha, n)``. ``noise_scale`` returns ``n``
    and every conversion uses it; the "noise" prediction is the standardized total noise
    ``E[(sigma x0 + gamma z) / n | x_t]``, not ``E[x0 | x_t]``.
    """

    def __init__(
        self,
        path: AffinePath | None = None,
        gamma_form: Literal["brownian", "quadratic"] = "brownian",
        gamma_scale: float = 1.0,
        eps: float = 1e-6,
    ) -> None:
        if gamma_form not in ("brownian", "quadratic"):
            raise ValueError(f"`gamma_form` must be 'brownian' or 'quadratic', got {gamma_form!r}")
        if gamma_scale < 0:
            raise ValueError(f"`gamma_scale` must be >= 0, got {gamma_scale}")
        if not 0 < eps < 0.5:
            raise ValueError(f"`eps` must be in (0, 0.5), got {eps}")
        self.path = path if path is not None else LinearPath()
        self.gamma_form = gamma_form
        self.gamma_scale = float(gamma_scale)
        self.eps = float(eps)

    def alpha(self, t: Tensor) -> Tensor:
        return self.path.alpha(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.path.sigma(t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return self.path.d_alpha(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return self.path.d_sigma(t)

    def gamma(self, t: Tensor) -> Tensor:
        """Latent-noise coefficient ``gamma(t)``."""
        if self.gamma_form == "brownian":
            return _brownian_gamma(t, self.gamma_scale)
        return self.gamma_scale * t * (1 - t)

    def d_gamma(self, t: Tensor) -> Tensor:
        """``d gamma / dt``; brownian form evaluated at ``t`` clamped to ``[eps, 1 - eps]``."""
        if self.gamma_form == "brownian":
            t = t.clamp(self.eps, 1 - self.eps)
            return 0.5 * self.gamma_scale * (1 - 2 * t) / _brownian_gamma(t, self.gamma_scale)
        return self.gamma_scale * (1 - 2 * t)

    def gamma_times_d_gamma(self, t: Tensor) -> Tensor:
        """``gamma gamma'`` (finite everywhere, also for the brownian form)."""
        if self.gamma_form == "brownian":
            return 0.5 * self.gamma_scale * (1 - 2 * t)
        return self.gamma(t) * self.d_gamma(t)

    def noise_scale(self, t: Tensor) -> Tensor:
        """``n = sqrt(sigma^2 + gamma^2)``."""
        return torch.sqrt(self.sigma(t) ** 2 + self.gamma(t) ** 2)

    def d_noise_scale(self, t: Tensor) -> Tensor:
        """``n' = (sigma sigma' + gamma gamma') / n``."""
        numerator = self.sigma(t) * self.d_sigma(t) + self.gamma_times_d_gamma(t)
        return numerator / self.noise_scale(t).clamp_min(torch.finfo(t.dtype).tiny)

    def sample(
        self,
        x0: Tensor,
        x1: Tensor,
        t: Tensor,
        z: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PathSample:
        """``x_t = alpha x1 + sigma x0 + gamma z``, target ``alpha' x1 + sigma' x0 + gamma' z``.

        ``z`` is drawn from ``N(0, I)`` (with ``generator``) when not given.
        """
        _check_pair(x0, x1)
        if z is None:
            z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        elif z.shape != x0.shape:
            raise ValueError(f"`z` must have shape {tuple(x0.shape)}, got {tuple(z.shape)}")
        tb = expand_time_like(t, x1)
        x_t = self.alpha(tb) * x1 + self.sigma(tb) * x0 + self.gamma(tb) * z
        target = self.d_alpha(tb) * x1 + self.d_sigma(tb) * x0 + self.d_gamma(tb) * z
        return PathSample(x_t=x_t, target=target, t=_flat_time(t, x1), x0=x0, x1=x1, z=z)


def _check_pair(x0: Tensor, x1: Tensor) -> None:
    if x0.shape != x1.shape:
        raise ValueError(
            f"`x0` {tuple(x0.shape)} and `x1` {tuple(x1.shape)} must have equal shapes"
        )


def _flat_time(t: Tensor | float, x: Tensor) -> Tensor:
    return expand_time_like(t, x).reshape(-1).expand(x.shape[0])


@dataclass
class Retiming:
    """How a target-path time ``r`` maps onto a source path: ``x_bar(r) = scale * x(t)``."""

    t: Tensor
    scale: Tensor
    dt_dr: Tensor
    dscale_dr: Tensor


class ConvertedVelocity(nn.Module):
    """A velocity model of one path re-timed into another path at inference.

    Kim et al. 2025 ("Inference-Time Scaling for Flow Models via Stochastic Generation and
    Rollover Budget Forcing"): two affine paths with the same data and Gaussian noise have
    the same marginals up to time change and scaling. For a target time ``r``,

        t_r = source.snr_inverse(target.snr(r)),        s_r = target.sigma(r) / source.sigma(t_r)
                                                            (= target.alpha(r) / source.alpha(t_r)),
        dt_r/dr = target.d_snr(r) / source.d_snr(t_r),
        ds_r/dr = (sigma_bar' sigma(t_r) - sigma_bar sigma'(t_r) dt_r/dr) / sigma(t_r)^2,
        x_bar = s_r x,
        u_bar(x_bar, r) = (ds_r/dr / s_r) x_bar + s_r dt_r/dr u(x_bar / s_r, t_r).

    ``sigma`` above is each path's ``noise_scale``. The scale is computed from the sigma ratio
    where ``sigma_bar(r) >= alpha_bar(r)`` and from the alpha ratio otherwise (with the matching
    derivative), which keeps it finite at both ends. All derivatives are closed form.

    Endpoints: at ``r = 0`` or ``1`` the snr is 0 or infinite and ``dt_r/dr`` is 0/0, so ``r`` is
    clamped to ``[eps, 1 - eps]``. Where the source cannot reach the target snr (e.g. the VP
    path has ``snr(0) > 0``) ``t_r`` saturates at the source endpoint and the conversion is no
    longer exact. When both paths end at ``alpha(1) = 1, sigma(1) = 0``, ``s_r -> 1`` as
    ``r -> 1`` and the terminal samples live in the same space (with a VP target ``s_r - 1`` is
    of order ``sqrt(beta_min (1 - r))``, about 1e-3 at the default ``eps``).

    ``model(x, t, **kwargs)`` receives ``t`` of shape ``[B]``; the wrapper is called the same way.
    """

    def __init__(
        self,
        model: Callable[..., Tensor],
        source: AffinePath,
        target: AffinePath,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if not 0 < eps < 0.5:
            raise ValueError(f"`eps` must be in (0, 0.5), got {eps}")
        self.model = model
        self.source = source
        self.target = target
        self.eps = float(eps)

    def retiming(self, r: Tensor) -> Retiming:
        """``t_r``, ``s_r`` and their derivatives for target times ``r`` (any shape)."""
        r = torch.as_tensor(r).clamp(self.eps, 1 - self.eps)
        source, target = self.source, self.target
        t = source.snr_inverse(target.snr(r)).clamp(0, 1)
        dt_dr = target.d_snr(r) / source.d_snr(t)
        sigma_bar, alpha_bar = target.noise_scale(r), target.alpha(r)
        by_sigma = sigma_bar >= alpha_bar
        numerator = torch.where(by_sigma, sigma_bar, alpha_bar)
        d_numerator = torch.where(by_sigma, target.d_noise_scale(r), target.d_alpha(r))
        denominator = torch.where(by_sigma, source.noise_scale(t), source.alpha(t))
        d_denominator = torch.where(by_sigma, source.d_noise_scale(t), source.d_alpha(t))
        scale = numerator / denominator
        dscale_dr = (d_numerator * denominator - numerator * d_denominator * dt_dr) / denominator**2
        return Retiming(t=t, scale=scale, dt_dr=dt_dr, dscale_dr=dscale_dr)

    def to_target(self, x: Tensor, r: Tensor | float) -> Tensor:
        """Map a source-path state at time ``t_r`` to the target path: ``x_bar = s_r x``."""
        return expand_time_like(self.retiming(_batch_time(r, x)).scale, x) * x

    def to_source(self, x_bar: Tensor, r: Tensor | float) -> Tensor:
        """Map a target-path state at time ``r`` to the source path: ``x = x_bar / s_r``."""
        return x_bar / expand_time_like(self.retiming(_batch_time(r, x_bar)).scale, x_bar)

    def forward(self, x_bar: Tensor, r: Tensor | float, **kwargs: Any) -> Tensor:
        """``u_bar(x_bar, r) = (s_r'/s_r) x_bar + s_r t_r' u(x_bar / s_r, t_r)``."""
        r = _batch_time(r, x_bar)
        timing = self.retiming(r)
        scale = expand_time_like(timing.scale, x_bar)
        velocity = self.model(x_bar / scale, timing.t, **kwargs)
        growth = expand_time_like(timing.dscale_dr / timing.scale, x_bar)
        speed = expand_time_like(timing.scale * timing.dt_dr, x_bar)
        return growth * x_bar + speed * velocity


def _batch_time(r: Tensor | float, x: Tensor) -> Tensor:
    return expand_time_like(r, x).reshape(-1).expand(x.shape[0])


def convert_velocity(
    model: Callable[..., Tensor],
    source: AffinePath,
    target: AffinePath,
    eps: float = 1e-5,
) -> ConvertedVelocity:
    """Re-time a velocity ``model`` of ``source`` into ``target`` (:class:`ConvertedVelocity`)."""
    return ConvertedVelocity(model, source, target, eps=eps)


PATHS: dict[str, type[AffinePath]] = {
    "linear": LinearPath,
    "cosine": CosinePath,
    "vp": VPPath,
    "generalized_vp": GeneralizedVPPath,
    "stochastic": StochasticInterpolant,
}

__all__ = [
    "PATHS",
    "PREDICTION_KINDS",
    "AffinePath",
    "ConvertedVelocity",
    "CosinePath",
    "GeneralizedVPPath",
    "LinearPath",
    "PathSample",
    "PredictionKind",
    "Retiming",
    "StochasticInterpolant",
    "VPPath",
    "convert_velocity",
    "expand_time_like",
]
