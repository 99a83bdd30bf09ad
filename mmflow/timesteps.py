"""Training time distributions and inference time grids, in mmflow's time.

Convention (fixed): ``t`` in [0, 1], ``t = 0`` is noise and ``t = 1`` is data. SD3, Flux and
diffusers write their formulas for the noise level ``sigma = 1 - t``; each formula taken from
them is converted here, and the docstring says how.

Training distributions expose ``sample(n, generator=None, device=None, dtype=float32)``,
``pdf(t)`` and ``cdf(t)``. Inference grids are increasing tensors from 0 to 1 of length
``steps + 1``; :func:`make_grid` is the single entry point samplers call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mmflow.numerics import invert_increasing

Device = torch.device | str | None

_MODE_SCALE_MAX = 2 / (math.pi - 2)


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"`n` must be a non-negative integer, got {n!r}")


def _uniform(n: int, generator: torch.Generator | None, device: Device) -> Tensor:
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def _inside(t: Tensor) -> Tensor:
    return (t >= 0) & (t <= 1)


def _as_float_tensor(t: Tensor | float) -> Tensor:
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


class TimeDistribution:
    """Base class: a density over ``t`` in [0, 1] (t = 1 is data)."""

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: Device = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``n`` independent times, shape ``[n]``, drawn in float64 and cast to ``dtype``."""
        _check_count(n)
        return self._sample(n, generator, device).clamp(0, 1).to(dtype)

    def _sample(self, n: int, generator: torch.Generator | None, device: Device) -> Tensor:
        """``n`` float64 draws; the one method a distribution implements for sampling."""
        raise NotImplementedError

    def pdf(self, t: Tensor) -> Tensor:
        """Density at ``t`` (0 outside [0, 1])."""
        raise NotImplementedError

    def cdf(self, t: Tensor) -> Tensor:
        """``P(T <= t)``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({arguments})"


class Uniform(TimeDistribution):
    """``t ~ U(0, 1)``: ``pdf = 1``, ``cdf = t``."""

    def _sample(self, n: int, generator: torch.Generator | None, device: Device) -> Tensor:
        return _uniform(n, generator, device)

    def pdf(self, t: Tensor) -> Tensor:
        t = _as_float_tensor(t)
        return _inside(t).to(t.dtype)

    def cdf(self, t: Tensor) -> Tensor:
        return _as_float_tensor(t).clamp(0, 1)


class LogitNormal(TimeDistribution):
    """Logit-normal (SD3 "rf/lognorm"): ``t = sigmoid(loc + scale * n)``, ``n ~ N(0, 1)``.

        pdf(t) = exp(-(logit t - loc)^2 / (2 scale^2)) / (scale sqrt(2 pi) t (1 - t)),
        cdf(t) = Phi((logit t - loc) / scale).

    SD3's ``m`` lives in noise-level space (``sigma = sigmoid(m + s n)``, positive ``m`` favours
    noise). Since ``logit(1 - sigma) = -logit(sigma)``, SD3's ``(m, s)`` is ours with
    ``loc = -m``, ``scale = s``; a positive ``loc`` here favours the data end.
    """

    def __init__(self, loc: float = 0.0, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError(f"`scale` must be > 0, got {scale}")
        self.loc = float(loc)
        self.scale = float(scale)

    @classmethod
    def from_sd3(cls, m: float = 0.0, s: float = 1.0) -> LogitNormal:
        """The distribution SD3 writes as ``sigma = sigmoid(m + s n)``, in our time."""
        return cls(loc=-m, scale=s)

    def _sample(self, n: int, generator: torch.Generator | None, device: Device) -> Tensor:
        normal = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
        return torch.sigmoid(self.loc + self.scale * normal)

    def pdf(self, t: Tensor) -> Tensor:
        t = _as_float_tensor(t)
        inner = (t > 0) & (t < 1)
        safe = torch.where(inner, t, torch.full_like(t, 0.5))
        z = (torch.logit(safe) - self.loc) / self.scale
        density = torch.exp(-0.5 * z**2) / (self.scale * math.sqrt(2 * math.pi) * safe * (1 - safe))
        return torch.where(inner, density, torch.zeros_like(t))

    def cdf(self, t: Tensor) -> Tensor:
        t = _as_float_tensor(t).clamp(0, 1)
        z = (torch.logit(t) - self.loc) / self.scale
        return 0.5 * torch.erfc(-z / math.sqrt(2))


class ModeSampling(TimeDistribution):
    """SD3 "mode sampling with heavy tails", converted to our time.

    SD3 draws ``u ~ U(0, 1)`` and sets the noise level
    ``sigma = f(u) = 1 - u - s (cos^2(pi u / 2) - 1 + u)``. In our time ``t = 1 - sigma``:

        t = g(u) = u + s (cos^2(pi u / 2) - 1 + u),     g'(u) = 1 + s (1 - pi/2 sin(pi u)).

    ``g`` is increasing on [0, 1] (a valid map) only for ``-1 <= s <= 2 / (pi - 2) ~ 1.752``.
    By change of variables ``pdf(t) = 1 / g'(g^-1(t))`` and ``cdf(t) = g^-1(t)``, with ``g^-1``
    by bisection. ``g(1 - u) = 1 - g(u)``, so the density is symmetric about 1/2 and the
    convention flip does not change it. ``s > 0`` favours the middle, ``s < 0`` the ends.
    """

    def __init__(self, scale: float = 1.29) -> None:
        if not -1.0 <= scale <= _MODE_SCALE_MAX:
            raise ValueError(
                f"`scale` must be in [-1, 2/(pi-2) = {_MODE_SCALE_MAX:.4f}] for a monotone map, "
                f"got {scale}"
            )
        self.scale = float(scale)

    def transform(self, u: Tensor) -> Tensor:
        """``g(u) = u + s (cos^2(pi u / 2) - 1 + u)``."""
        return u + self.scale * (torch.cos(0.5 * math.pi * u) ** 2 - 1 + u)

    def transform_derivative(self, u: Tensor) -> Tensor:
        """``g'(u) = 1 + s (1 - pi/2 sin(pi u))``."""
        return 1 + self.scale * (1 - 0.5 * math.pi * torch.sin(math.pi * u))

    def inverse_transform(self, t: Tensor) -> Tensor:
        """``g^-1(t)`` by bisection on [0, 1]."""
        return invert_increasing(self.transform, _as_float_tensor(t).clamp(0, 1))

    def _sample(self, n: int, generator: torch.Generator | None, device: Device) -> Tensor:
        return self.transform(_uniform(n, generator, device))

    def pdf(self, t: Tensor) -> Tensor:
        t = _as_float_tensor(t)
        density = 1 / self.transform_derivative(self.inverse_transform(t))
        return torch.where(_inside(t), density, torch.zeros_like(t))

    def cdf(self, t: Tensor) -> Tensor:
        return self.inverse_transform(t)


class CosMap(TimeDistribution):
    """SD3 "CosMap": ``sigma = 1 - 1 / (tan(pi u / 2) + 1)``, ``u ~ U(0, 1)``, in our time.

    In our time ``t = 1 - sigma = 1 / (1 + tan(pi u / 2))``, computed as
    ``cos(pi u/2) / (cos(pi u/2) + sin(pi u/2))``.
    Inverting, ``u = 2/pi atan((1 - t) / t)``; the density (SD3's, symmetric about 1/2, so the
    same in both conventions) and distribution function are

        pdf(t) = 2 / (pi (1 - 2 t + 2 t^2)),      cdf(t) = 2/pi atan(t / (1 - t)).
    """

    def _sample(self, n: int, generator: torch.Generator | None, device: Device) -> Tensor:
        angle = 0.5 * math.pi * _uniform(n, generator, device)
        return torch.cos(angle) / (torch.cos(angle) + torch.sin(angle))

    def pdf(self, t: Tensor) -> Tensor:
        t = _as_float_tensor(t)
        density = 2 / (math.pi * (1 - 2 * t + 2 * t**2))
        return torch.where(_inside(t), density, torch.zeros_like(t))

    def cdf(self, t: Tensor) -> Tensor:
        t = _as_float_tensor(t).clamp(0, 1)
        return torch.atan2(t, 1 - t) * (2 / math.pi)


class UShaped(TimeDistribution):
    """RF++ U-shaped density (Lee et al. 2024, "Improving the Training of Rectified Flows").

    An equal mixture of the truncated exponential ``a e^{a t} / (e^a - 1)`` on [0, 1] and its
    mirror ``t -> 1 - t``, as in the RF++ code (``exponential_pdf`` sampled, then mirrored). The
    paper writes ``p(t) ∝ e^{a t} + e^{-a t}``; the mirrored mixture is
    ``∝ e^{a t} + e^{a (1 - t)} ∝ cosh(a (t - 1/2))``, i.e. that formula centred at 1/2:

        pdf(t) = a cosh(a (t - 1/2)) / (2 sinh(a / 2)),
        cdf(t) = (sinh(a (t - 1/2)) + sinh(a / 2)) / (2 sinh(a / 2)),

    sampled by inverting the cdf. Symmetric about 1/2, so the time convention does not matter.
    RF++ uses ``a = 4`` (its code default is 2).
    """

    def __init__(self, a: float = 4.0) -> None:
        if a <= 0:
            raise ValueError(f"`a` must be > 0, got {a}")
        self.a = float(a)

    def _sample(self, n: int, generator: torch.Generator | None, device: Device) -> Tensor:
        u = _uniform(n, generator, device)
        half = math.sinh(0.5 * self.a)
        return 0.5 + torch.asinh((2 * u - 1) * half) / self.a

    def pdf(self, t: Tensor) -> Tensor:
        t = _as_float_tensor(t)
        density = self.a * torch.cosh(self.a * (t - 0.5)) / (2 * math.sinh(0.5 * self.a))
        return torch.where(_inside(t), density, torch.zeros_like(t))

    def cdf(self, t: Tensor) -> Tensor:
        t = _as_float_tensor(t).clamp(0, 1)
        half = math.sinh(0.5 * self.a)
        return (torch.sinh(self.a * (t - 0.5)) + half) / (2 * half)


def _sample_gamma(
    concentration: float, n: int, generator: torch.Generator | None, device: Device
) -> Tensor:
    """Gamma(concentration, 1) samples by Marsaglia & Tsang (2000), vectorised rejection.

    For ``k >= 1``: ``d = k - 1/3``, ``c = 1 / sqrt(9 d)``, ``x ~ N(0,1)``, ``v = (1 + c x)^3``;
    accept ``d v`` when ``v > 0`` and ``log U < x^2/2 + d - d v + d log v``. For ``k < 1`` use
    ``Gamma(k + 1) * U^(1/k)``. Loops over rejection rounds (usually one), never over samples.
    """
    boosted = concentration < 1
    k = concentration + 1 if boosted else concentration
    d = k - 1 / 3
    c = 1 / math.sqrt(9 * d)
    accepted: list[Tensor] = []
    remaining = n
    while remaining > 0:
        draws = int(1.2 * remaining) + 16
        x = torch.randn(draws, generator=generator, device=device, dtype=torch.float64)
        u = torch.rand(draws, generator=generator, device=device, dtype=torch.float64)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        kept = (d * v)[ok][:remaining]
        accepted.append(kept)
        remaining -= kept.numel()
    gamma = torch.cat(accepted) if accepted else torch.empty(0, device=device, dtype=torch.float64)
    if boosted:
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        gamma = gamma * u ** (1 / concentration)
    return gamma


class BetaTime(TimeDistribution):
    """``t ~ Beta(a, b)`` in our time (GestureLSM uses ``Beta(2, 1.2)``, biased towards data).

        pdf(t) = t^(a-1) (1 - t)^(b-1) / B(a, b),     cdf(t) = I_t(a, b) (regularized).

    Sampled as ``G_a / (G_a + G_b)`` with Gamma draws that honour ``generator``.
    ``cdf`` calls ``scipy.special.betainc`` on the CPU (for analysis, not for hot paths).
    """

    def __init__(self, a: float = 2.0, b: float = 1.2) -> None:
        if a <= 0:
            raise ValueError(f"`a` must be > 0, got {a}")
        if b <= 0:
            raise ValueError(f"`b` must be > 0, got {b}")
        self.a = float(a)
        self.b = float(b)

    def _sample(self, n: int, generator: torch.Generator | None, device: Device) -> Tensor:
        first = _sample_gamma(self.a, n, generator, device)
        second = _sample_gamma(self.b, n, generator, device)
        return first / (first + second)

    def pdf(self, t: Tensor) -> Tensor:
        t = _as_float_tensor(t)
        inner = (t > 0) & (t < 1)
        safe = torch.where(inner, t, torch.full_like(t, 0.5))
        log_norm = math.lgamma(self.a) + math.lgamma(self.b) - math.lgamma(self.a + self.b)
        log_density = (self.a - 1) * torch.log(safe) + (self.b - 1) * torch.log1p(-safe) - log_norm
        return torch.where(inner, torch.exp(log_density), torch.zeros_like(t))

    def cdf(self, t: Tensor) -> Tensor:
        from scipy.special import betainc

        t = _as_float_tensor(t)
        values = betainc(self.a, self.b, t.detach().clamp(0, 1).cpu().double().numpy())
        return torch.as_tensor(values, dtype=t.dtype, device=t.device)


TIME_DISTRIBUTIONS: dict[str, type[TimeDistribution]] = {
    "uniform": Uniform,
    "logit_normal": LogitNormal,
    "mode": ModeSampling,
    "cosmap": CosMap,
    "u_shaped": UShaped,
    "beta": BetaTime,
}


def make_time_distribution(name: str, **kwargs: float) -> TimeDistribution:
    """Build a training time distribution by registry name (see ``TIME_DISTRIBUTIONS``)."""
    if name not in TIME_DISTRIBUTIONS:
        raise ValueError(f"`name` must be one of {sorted(TIME_DISTRIBUTIONS)}, got {name!r}")
    return TIME_DISTRIBUTIONS[name](**kwargs)


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer, got {steps!r}")


def _check_shift(shift: float) -> None:
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"`shift` must be a finite number > 0, got {shift!r}")


def uniform_grid(steps: int, dtype: torch.dtype = torch.float32, device: Device = None) -> Tensor:
    """``[0, 1/steps, ..., 1]``, length ``steps + 1``."""
    _check_steps(steps)
    return torch.linspace(0, 1, steps + 1, dtype=torch.float64, device=device).to(dtype)


def shift_time(t: Tensor | float, shift: float) -> Tensor:
    """SD3 timestep shift in our time: ``t' = t / (shift - (shift - 1) t)``.

    SD3 shifts the noise level as ``sigma' = shift sigma / (1 + (shift - 1) sigma)``; with
    ``t = 1 - sigma`` this is the formula above. It fixes 0 and 1; ``shift > 1`` lowers every
    interior ``t`` (more steps near noise), ``shift < 1`` raises it, ``shift = 1`` is identity.
    """
    _check_shift(shift)
    t = _as_float_tensor(t)
    return t / (shift - (shift - 1) * t)


def shifted_grid(
    steps: int,
    shift: float,
    dtype: torch.dtype = torch.float32,
    device: Device = None,
) -> Tensor:
    """:func:`uniform_grid` passed through :func:`shift_time` (computed in float64)."""
    return shift_time(uniform_grid(steps, torch.float64, device), shift).to(dtype)


def length_shift(
    seq_len: int,
    base_len: int = 256,
    max_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Flux / SD3.5 dynamic shifting: ``shift = exp(mu)`` with ``mu`` linear in ``seq_len``.

        mu = base_shift + (max_shift - base_shift) (seq_len - base_len) / (max_len - base_len).

    Outside ``[base_len, max_len]`` the line is extrapolated, as Flux does. Flux's
    ``time_shift(mu, 1, sigma) = e^mu / (e^mu + 1/sigma - 1)`` equals SD3's shift with
    ``shift = e^mu``, which is what :func:`shift_time` applies.
    """
    if seq_len <= 0:
        raise ValueError(f"`seq_len` must be > 0, got {seq_len}")
    if max_len == base_len:
        raise ValueError(f"`max_len` must differ from `base_len` ({base_len})")
    slope = (max_shift - base_shift) / (max_len - base_len)
    return math.exp(base_shift + slope * (seq_len - base_len))


def length_shifted_grid(
    steps: int,
    seq_len: int,
    base_len: int = 256,
    max_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    dtype: torch.dtype = torch.float32,
    device: Device = None,
) -> Tensor:
    """:func:`shifted_grid` with the shift from :func:`length_shift`."""
    shift = length_shift(seq_len, base_len, max_len, base_shift, max_shift)
    return shifted_grid(steps, shift, dtype, device)


def custom_grid(
    values: Sequence[float] | Tensor,
    dtype: torch.dtype | None = None,
    device: Device = None,
) -> Tensor:
    """Validate a user grid: 1-D, at least two finite times, strictly increasing, in [0, 1].

    The grid need not reach 0 or 1 (e.g. stopping short of the data end). ``dtype`` defaults
    to the tensor's own floating dtype, else float32.
    """
    if isinstance(values, Tensor):
        grid = values.to(device=device, dtype=dtype)
    else:  # Python floats go straight to ``dtype``, not by way of float32
        grid = torch.as_tensor(values, dtype=dtype, device=device)
    if not grid.is_floating_point():
        grid = grid.to(torch.float32)
    if grid.ndim != 1:
        raise ValueError(f"`values` must be 1-D, got shape {tuple(grid.shape)}")
    if grid.numel() < 2:
        raise ValueError(f"`values` needs at least 2 times, got {grid.numel()}")
    if not bool(torch.isfinite(grid).all()):
        raise ValueError("`values` must be finite")
    if bool((grid < 0).any()) or bool((grid > 1).any()):
        raise ValueError(
            f"`values` must lie in [0, 1] (t = 0 noise, t = 1 data), got min {grid.min().item()}, "
            f"max {grid.max().item()}"
        )
    if not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError("`values` must be strictly increasing (from noise at 0 towards data at 1)")
    return grid


GRID_NAMES: tuple[str, ...] = ("uniform", "shifted", "length_shifted")


def make_grid(
    spec: str | Sequence[float] | Tensor,
    steps: int | None = None,
    *,
    shift: float | None = None,
    seq_len: int | None = None,
    base_len: int = 256,
    max_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    dtype: torch.dtype = torch.float32,
    device: Device = None,
) -> Tensor:
    """The inference time grid samplers use.

    ``spec``: ``"uniform"``; ``"shifted"`` (needs ``shift``); ``"length_shifted"`` (needs
    ``seq_len``; the ``base_*``/``max_*`` arguments go to :func:`length_shift`); or a sequence /
    tensor of times validated by :func:`custom_grid` (``steps``, if given, must equal its
    length minus one).
    """
    if not isinstance(spec, str):
        grid = custom_grid(spec, dtype=dtype, device=device)
        if steps is not None and steps != grid.numel() - 1:
            raise ValueError(
                f"`steps` ({steps}) disagrees with the custom grid's {grid.numel() - 1} steps"
            )
        return grid
    if spec not in GRID_NAMES:
        raise ValueError(f"`spec` must be one of {GRID_NAMES} or a sequence of times, got {spec!r}")
    if steps is None:
        raise ValueError(f"`steps` is required for the {spec!r} grid")
    if spec == "uniform":
        return uniform_grid(steps, dtype, device)
    if spec == "shifted":
        if shift is None:
            raise ValueError("`shift` is required for the 'shifted' grid")
        return shifted_grid(steps, shift, dtype, device)
    if seq_len is None:
        raise ValueError("`seq_len` is required for the 'length_shifted' grid")
    return length_shifted_grid(
        steps, seq_len, base_len, max_len, base_shift, max_shift, dtype, device
    )


__all__ = [
    "GRID_NAMES",
    "TIME_DISTRIBUTIONS",
    "BetaTime",
    "CosMap",
    "LogitNormal",
    "ModeSampling",
    "TimeDistribution",
    "UShaped",
    "Uniform",
    "custom_grid",
    "length_shift",
    "length_shifted_grid",
    "make_grid",
    "make_time_distribution",
    "shift_time",
    "shifted_grid",
    "uniform_grid",
]
