"""Exponential integrators in log-SNR for flows: DPM-Solver++ (Lu et al., 2022) and UniPC
(Zhao et al., 2023), both in data prediction, on continuous time (never a 1000-step grid).

Notation (our convention, t = 0 noise, t = 1 data). On the linear path ``x_t = t x1 + (1 - t) x0``
the DPM-style schedule is ``alpha_t = t``, ``sigma_t = 1 - t``, the log-SNR is
``lambda_t = log(t / (1 - t))`` and the data prediction is ``m = x1_hat(x, t) = x + (1 - t) u``.
Between grid times s -> t let ``h = lambda_t - lambda_s``. The flow ``dx/dt = u`` solves exactly

    x_t = (sigma_t / sigma_s) x_s + alpha_t int_0^h e^{-(h - tau)} m(lambda_s + tau) d tau
        = (sigma_t / sigma_s) x_s + alpha_t sum_{n>=0} h^{n+1} phi_{n+1}(-h) m^{(n)}(lambda_s),

with ``phi_1(z) = (e^z - 1) / z``, ``phi_{n+1}(z) = (phi_n(z) - 1/n!) / z`` (``phi_n(0) = 1/n!``)
and ``m^{(n)}`` the n-th derivative in lambda. Every solver below replaces ``m`` by a
polynomial in lambda through data predictions it has evaluated.

First order (DPM-Solver++ 1, DDIM)::

    x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) m_s

which on the linear path is exactly Euler, ``x_s + (t - s) u_s``, because
``alpha_t (1 - e^{-h}) = (t - s) / (1 - s)``.

DPM-Solver++ multistep (``sample_dpmpp_multistep``), with ``m_0 = m_s`` and the previous data
predictions ``m_1, m_2`` at ``lambda_{-1}, lambda_{-2}``, ``r_0 = (lambda_s - lambda_{-1}) / h``,
``r_1 = (lambda_{-1} - lambda_{-2}) / h``:

- 2M (the paper's Algorithm 2): ``D1 = (m_0 - m_1) / r_0`` and
  ``x_t = first order + alpha_t (1 - e^{-h}) D1 / 2``.
- 3M: ``D1_0 = (m_0 - m_1) / r_0``, ``D1_1 = (m_1 - m_2) / r_1``,
  ``D2 = (D1_0 - D1_1) / (r_0 + r_1) ~ h^2 m'' / 2``, ``D1 = D1_0 + r_0 D2 ~ h m'`` and
  ``x_t = first order + alpha_t h phi_2(-h) D1 + 2 alpha_t h phi_3(-h) D2``.
  The factor 2 is the Taylor term ``alpha_t h^3 phi_3(-h) m''``. The dpm-solver and diffusers
  code weights ``D2`` by ``alpha_t ((e^{-h} - 1 + h) / h^2 - 1/2) = alpha_t h phi_3(-h)``, half
  of it; that leaves an ``alpha_t h^3 m'' / 12`` local error and global order 2 instead of 3
  (the tests measure both).

DPM-Solver++ singlestep (``sample_dpmpp_singlestep``), intermediate times placed in lambda:

- 2S (the paper's Algorithm 1, ``r = 1/2``): ``x_mid`` = first order from s to
  ``lambda_s + h / 2``; ``x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) m(x_mid)``.
- 3S (DPM-Solver-3, ``r_1 = 1/3``, ``r_2 = 2/3``): ``x_1`` = first order to
  ``lambda_s + r_1 h``; ``x_2`` = first order to ``lambda_s + r_2 h``
  ``+ alpha_{s_2} (r_2 h) phi_2(-r_2 h) (r_2 / r_1) (m(x_1) - m_s)``;
  ``x_t`` = first order ``+ alpha_t h phi_2(-h) (m(x_2) - m_s) / r_2``.

UniPC (``sample_unipc``), B(h) variants ``bh1``: ``B(h) = h`` and ``bh2``: ``B(h) = 1 - e^{-h}``
(the paper's ``B`` at ``-h``; its sign is folded into the update). With the earlier data
predictions ``m_k`` at ``r_k = (lambda_k - lambda_s) / h < 0`` and ``D_k = (m_k - m_0) / r_k``:

- UniP-q (predictor, ``q - 1`` earlier points):
  ``x~_t = first order + alpha_t B(h) sum_k rho^p_k D_k``.
- UniC-q (corrector): once the next step has evaluated ``m_t = m(x~_t, t)`` -- an evaluation it
  needs anyway, so no extra NFE -- the point is corrected to
  ``x^c_t = first order + alpha_t B(h) (sum_k rho^c_k D_k + rho^c_q (m_t - m_0))`` (``r_q = 1``),
  and the next step starts from ``x^c_t`` with ``m_t`` as its ``m_0``. There is no corrector
  after the last step.
- ``rho`` solves ``sum_k rho_k r_k^{n-1} = n! h phi_{n+1}(-h) / B(h)`` for ``n = 1 .. K`` (``K``
  the number of differences: ``q - 1`` for UniP, ``q`` for UniC), so that the sum reproduces
  the Taylor terms above up to ``n = K``; with one difference ``rho = 1/2`` (UniP-2 and UniC-1,
  as in the reference code). UniP-q is of order q and UniPC-q of order q + 1. UniP-2 with
  ``bh2`` is DPM-Solver++ 2M.

Endpoints, where lambda is infinite (t = 0: -inf, t = 1: +inf):

- Steps whose points include an endpoint evaluation (the step from the endpoint and the next
  ``order - 1`` steps) interpolate ``m`` in t instead of lambda, through the same points, and
  integrate the polynomial exactly (``_time_update``). From ``e^lambda d lambda = d tau /
  (1 - tau)^2``, the exact solution in t is
  ``x_t = (1 - t) / (1 - s) x_s + (1 - t) int_s^t m(tau) / (1 - tau)^2 d tau``; with ``m``
  the polynomial through points ``tau_j`` this is
  ``x_t = (1 - t) / (1 - s) x_s + sum_j w_j m_j``, ``w_j = (1 - t) int_s^t l_j(tau) / (1 - tau)^2
  d tau`` (``l_j`` the Lagrange basis). With the point at ``s`` alone it is Euler, the exact
  limit of the first-order step. UniC from ``s = 0``, with ``m`` linear between ``m_0`` and the
  ``m_t`` the next step evaluates anyway (no extra NFE), is
  ``x_t = (1 - t) x_0 + t m_0 + (m_t - m_0) (1 + (1 - t) log(1 - t) / t)``, of local error
  ``O(h^3)``. The next steps keep the endpoint's evaluation as a point in t (a polynomial in
  lambda would give it weight 0 as ``r -> -inf`` and leave 2M's and 3M's second step first
  order). The weights need no ``B(h)``: UniPC's bh1 and bh2 coincide there, as they do
  wherever ``rho`` solves its full system. Decreasing grids from t = 1 mirror this with
  ``t -> 1 - t`` and the noise prediction ``x0_hat = x - t u`` for ``m``.
- A step into an endpoint ``e``: there ``x_e = P(e)`` exactly, ``P`` the data prediction
  (``e = 1``) or the noise prediction ``x0_hat = x - t u`` (``e = 0``, decreasing grids): the
  exact solution in t above tends to ``m(1)`` as ``t -> 1``.
  ``P`` is smooth in t with ``P'(e) = 0`` (``d m / dt = (1 - t) du/dt``,
  ``d x0_hat / dt = -t du/dt``), so the step extrapolates ``P`` in ``d = |t - e|`` through its
  last ``k`` evaluations with the polynomial ``c_0 + c_2 d^2 + ... + c_k d^k`` (zero slope at
  ``e``), local error ``O(h^{k+1})``; ``k = 1`` is the first-order step, ``x_1 = m_s``.
  Polynomial extrapolation in lambda would diverge there (``r -> 0``).
- A singlestep step (2S, 3S, or a singlestep warm-up) with an endpoint has no lambda
  intermediate times; it takes the Runge-Kutta step in t with the same nodes: the explicit
  midpoint rule for 2S, Heun's third-order method (nodes 1/3, 2/3) for 3S.
- Decreasing grids (data -> noise, inversion) use the same formulas with ``h < 0``.

Known limit (the tests show it): on a grid uniform in t over [0, 1] the lambda steps next
to t = 0 and t = 1 stay near ``log 2`` however many steps there are, and the lambda-multistep
methods converge with order 2 there whatever their nominal order. Interpolating in t on the
steps whose points include the endpoint does not lift this: the lambda steps after them, from
``t = j / N``, still have ``h ~ log((j + 1) / j)``. They show their order on grids whose
lambda steps all shrink, e.g. uniform in lambda over ``[0.05, 0.95]``.

Warm-up (``warmup``) of a multistep method, whose first steps lack history:

- ``"lower_order"`` (default, as in diffusers): the first steps use the points they have
  (order 1, then 2, ...). Free, but the first step's one-off local error ``O(h^2)`` limits the
  global order to 2 (UniPC: its corrected first step is of order 2, which limits UniPC-3 to 3).
- ``"singlestep"``: the first step between two times inside (0, 1) is a DPM-Solver++
  singlestep step of order ``target - 1`` (2S for 3M, 3S for UniPC-3, 2S for UniP-3 without
  corrector), whose one-off local error ``O(h^target)`` keeps the global order. It costs
  ``order - 1`` extra evaluations once, which the registry counts (``warmup_evals``) so that
  ``sample(nfe=N)`` spends exactly N. Where the lower-order start already suffices (1, 2M,
  UniPC-1, UniPC-2) it changes nothing.

  The default is ``"lower_order"`` because on grids that reach t = 0 or 1 -- the default
  uniform grid included -- the order is 2 anyway (see above), so the extra evaluation buys
  nothing there; choose ``"singlestep"`` for grids inside (0, 1) (e.g. image-to-image from
  ``t_0 > 0``, or a lambda-uniform grid).

``lower_order_final=True`` takes the last step at first order and the one before at most at
second order (diffusers' ``lower_order_final``); its one-off ``O(h^2)`` local error caps the
global order at 2. It is off by default, but on coarse grids whose last step is long it is
the safer choice: the high-order step into t = 1 extrapolates the data prediction from points
far from the endpoint and can overshoot. On grids fitted to the sampler
(:mod:`mmflow.sampling.grid_search`) the last step is short and neither setting wins
everywhere. Diffusers turns it on below 15 steps. ``docs/sampling.md`` has the measurements.

Registered names (``mmflow.sampling.sample(..., method=name)``): ``dpmpp_1``, ``dpmpp_2m``,
``dpmpp_3m`` (1 evaluation per step), ``dpmpp_2s`` (2) and ``unipc_{bh1,bh2}_{1,2,3}`` (1; the
digit is the predictor order q, the registered order is q + 1). The name fixes ``order`` (and
``variant``); ``warmup``, ``lower_order_final`` and, for UniPC, ``corrector`` are
``solver_options``. 3S (3 evaluations per step) is ``sample_dpmpp_singlestep(order=3)``; it is
not registered because the registry-wide NFE test spends budgets (4, 8, 16, 32) that only
samplers with 1, 2 or 4 evaluations per step can meet.

Coefficients are computed in float64 on the host from the grid, which is read once before the
first step; the steps themselves are tensor code on the device. The callback sees
``{"step", "t", "t_next", "x", "velocity"}`` as for the other solvers; for UniPC ``x`` is the
predicted point ``x~_{i+1}`` (it is corrected once the next step has evaluated there).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmflow.sampling._shared import (
    Callback,
    VelocityModel,
    check_grid,
    report_step,
    velocity_at,
    with_fixed_options,
)
from mmflow.sampling.registry import register_sampler

WARMUPS = ("lower_order", "singlestep")
UNIPC_VARIANTS = ("bh1", "bh2")
DEFAULT_WARMUP = "lower_order"

_SERIES_RADIUS = 1.0
_SERIES_TERMS = 30
_MOMENT_SERIES_RADIUS = 0.5
_MOMENT_SERIES_TERMS = 64


# ----------------------------------------------------------------------------- scalar helpers


def _log_snr(t: float) -> float:
    """``lambda = log(t / (1 - t))``, -inf at t = 0 and +inf at t = 1."""
    if t <= 0.0:
        return -math.inf
    if t >= 1.0:
        return math.inf
    return math.log(t) - math.log1p(-t)


def _time_of(log_snr: float) -> float:
    """The inverse of :func:`_log_snr`, ``t = sigmoid(lambda)``, without overflow."""
    if log_snr >= 0.0:
        return 1.0 / (1.0 + math.exp(-log_snr))
    ratio = math.exp(log_snr)
    return ratio / (1.0 + ratio)


def _at_endpoint(t: float) -> bool:
    return t <= 0.0 or t >= 1.0


def _phi(n: int, z: float) -> float:
    """``phi_n(z) = sum_{j>=0} z^j / (j + n)!`` (``phi_0 = e^z``), by series near 0, else by
    the recurrence ``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z``."""
    if abs(z) < _SERIES_RADIUS:
        term = 1.0 / math.factorial(n)
        total = term
        for j in range(1, _SERIES_TERMS):
            term *= z / (j + n)
            total += term
        return total
    value = math.exp(z)
    for k in range(n):
        value = (value - 1.0 / math.factorial(k)) / z
    return value


def _first_order_weights(s: float, t: float) -> tuple[float, float]:
    """``(sigma_t / sigma_s, alpha_t (1 - e^{-h}))`` of the first-order step s -> t."""
    h = _log_snr(t) - _log_snr(s)
    return (1.0 - t) / (1.0 - s), -t * math.expm1(-h)


def _solve(matrix: Sequence[Sequence[float]], rhs: Sequence[float]) -> np.ndarray:
    return np.linalg.solve(np.asarray(matrix, dtype=np.float64), np.asarray(rhs, np.float64))


def _combine(terms: Sequence[tuple[float, Tensor]]) -> Tensor:
    """``sum_j w_j v_j`` for host weights ``w_j`` and device tensors ``v_j``."""
    (weight, value), *rest = terms
    out = value * weight
    for weight, value in rest:
        out = out.add(value, alpha=weight)
    return out


# ----------------------------------------------------------------------------- evaluations


@dataclass
class _Evaluation:
    """One model call at time ``t``: the velocity and the data prediction ``x + (1 - t) u``."""

    t: float
    log_snr: float
    velocity: Tensor
    data: Tensor

    def prediction_of(self, endpoint: float) -> Tensor:
        """What the flow reaches at ``endpoint``: ``x1_hat`` at 1, ``x0_hat = x1_hat - u`` at 0."""
        return self.data if endpoint >= 1.0 else self.data - self.velocity


def _evaluate(
    model: VelocityModel, x: Tensor, time: Tensor, t: float, model_kwargs: dict[str, Any]
) -> _Evaluation:
    velocity = velocity_at(model, x, time, model_kwargs)
    return _Evaluation(t, _log_snr(t), velocity, x + (1.0 - t) * velocity)


def _host_times(ts: Tensor) -> list[float]:
    """The grid as float64 host numbers (one read before the first step), validated."""
    check_grid(ts)
    times = ts.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(times).all()) or bool((times < 0).any() | (times > 1).any()):
        raise ValueError("time grid `ts` must lie in [0, 1] (t = 0 noise, t = 1 data)")
    steps = times[1:] - times[:-1]
    if not (bool((steps > 0).all()) or bool((steps < 0).all())):
        raise ValueError("time grid `ts` must be strictly increasing or strictly decreasing")
    return [float(v) for v in times]


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}")


# ----------------------------------------------------------------------------- update rules


def _first_order(x: Tensor, s: float, t: float, first: _Evaluation) -> Tensor:
    """DPM-Solver++ 1 between finite lambdas: ``(sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h})
    m_s`` (from an endpoint, :func:`_time_update` takes its limit, Euler)."""
    ratio, weight = _first_order_weights(s, t)
    return _combine([(ratio, x), (weight, first.data)])


def _dpmpp_multistep_update(x: Tensor, s: float, t: float, history: list[_Evaluation]) -> Tensor:
    """DPM-Solver++ 1 / 2M / 3M from s to t with ``history`` newest first (``m_0`` at s); the
    t-polynomial step (:func:`_time_update`) where the history reaches an endpoint."""
    if _touches_endpoint(history):
        return _time_update(x, s, t, history)
    order = len(history)
    ratio, first_weight = _first_order_weights(s, t)
    weights = np.zeros(order)
    weights[0] = first_weight
    h = _log_snr(t) - history[0].log_snr
    r = [(history[k].log_snr - history[k + 1].log_snr) / h for k in range(order - 1)]
    if order == 2:
        d1 = np.array([1.0, -1.0]) / r[0]
        weights += 0.5 * first_weight * d1
    elif order == 3:
        d1_0 = np.array([1.0, -1.0, 0.0]) / r[0]
        d1_1 = np.array([0.0, 1.0, -1.0]) / r[1]
        d2 = (d1_0 - d1_1) / (r[0] + r[1])
        d1 = d1_0 + r[0] * d2
        weights += t * h * _phi(2, -h) * d1 + 2.0 * t * h * _phi(3, -h) * d2
    terms = [(ratio, x)] + [(float(w), e.data) for w, e in zip(weights, history, strict=True)]
    return _combine(terms)


def _unipc_b(h: float, variant: str) -> float:
    return h if variant == "bh1" else -math.expm1(-h)


def _unipc_rho(h: float, variant: str, ratios: Sequence[float]) -> np.ndarray:
    """Solve ``sum_k rho_k r_k^{n-1} = n! h phi_{n+1}(-h) / B(h)``, n = 1..K; 1/2 when K = 1."""
    if len(ratios) == 1:
        return np.array([0.5])
    b = _unipc_b(h, variant)
    rhs = [math.factorial(n) * h * _phi(n + 1, -h) / b for n in range(1, len(ratios) + 1)]
    matrix = [[r ** (n - 1) for r in ratios] for n in range(1, len(ratios) + 1)]
    return _solve(matrix, rhs)


def _unipc_update(
    x: Tensor,
    s: float,
    t: float,
    history: list[_Evaluation],
    variant: str,
    reached: _Evaluation | None = None,
) -> Tensor:
    """UniP-q with ``q = len(history)`` (``reached`` None), or UniC-q when ``reached`` holds
    ``m_t``: first order ``+ alpha_t B(h) sum_k rho_k (m_k - m_0) / r_k``; the t-polynomial
    step through the same points (:func:`_time_update`) where the history reaches an endpoint."""
    points = history[1:] + ([reached] if reached is not None else [])
    if _touches_endpoint(history):
        return _time_update(x, s, t, [history[0], *points])
    ratio, first_weight = _first_order_weights(s, t)
    h = _log_snr(t) - history[0].log_snr
    terms = [(ratio, x), (first_weight, history[0].data)]
    if points:
        ratios = [(e.log_snr - history[0].log_snr) / h for e in points]
        scale = t * _unipc_b(h, variant)
        rho = _unipc_rho(h, variant, ratios)
        coefficients = [scale * float(rho_k) / r_k for rho_k, r_k in zip(rho, ratios, strict=True)]
        terms[1] = (first_weight - sum(coefficients), history[0].data)
        terms += [(c, e.data) for c, e in zip(coefficients, points, strict=True)]
    return _combine(terms)


def _endpoint_weights(distances: Sequence[float]) -> np.ndarray:
    """Weights ``w`` with ``sum_j w_j p(d_j) = p(0)`` for every ``p`` in
    ``span{1, d^2, ..., d^k}``: zero-slope polynomial extrapolation to the endpoint."""
    powers = [0] + list(range(2, len(distances) + 1))
    matrix = [[d**p for d in distances] for p in powers]
    rhs = [1.0] + [0.0] * (len(distances) - 1)
    return _solve(matrix, rhs)


def _into_endpoint(history: list[_Evaluation], endpoint: float) -> Tensor:
    """``x_e = P(e)`` by zero-slope extrapolation of the last evaluations' predictions of ``e``."""
    weights = _endpoint_weights([abs(endpoint - e.t) for e in history])
    return _combine([(float(w), e.prediction_of(endpoint)) for w, e in zip(weights, history)])


def _time_moments(rho: float, count: int) -> np.ndarray:
    """``M_k = (1 - rho) rho int_0^1 v^k / (1 - rho v)^2 dv`` for ``k < count``, ``0 < rho <= 1``.

    With ``rho = (t - s) / (1 - s)`` and ``tau = s + (t - s) v`` these are the weights
    ``(1 - t) int_s^t ((tau - s) / (t - s))^k / (1 - tau)^2 d tau`` of the flow's exact
    solution; ``M_0 = rho``, and ``M_k -> 1`` as ``rho -> 1`` (t = 1). The integral
    ``J_k = int_0^1 v^k / (1 - rho v)^2 dv`` is the series ``sum_n (n + 1) rho^n / (n + k + 1)``
    for ``rho < 1/2``, else the recurrence ``J_k = (J_{k-1} - K_{k-1}) / rho``,
    ``K_k = (K_{k-1} - 1/k) / rho`` from ``J_0 = 1 / (1 - rho)``, ``K_0 = -log(1 - rho) / rho``.
    """
    if rho >= 1.0:
        return np.ones(count)
    if rho < _MOMENT_SERIES_RADIUS:
        n = np.arange(_MOMENT_SERIES_TERMS, dtype=np.float64)
        terms = (n + 1.0) * rho**n
        integrals = [float(np.sum(terms / (n + k + 1.0))) for k in range(count)]
    else:
        integrals, logarithmic = [1.0 / (1.0 - rho)], -math.log1p(-rho) / rho
        for k in range(1, count):
            integrals.append((integrals[-1] - logarithmic) / rho)
            logarithmic = (logarithmic - 1.0 / k) / rho
    moments = (1.0 - rho) * rho * np.asarray(integrals)
    moments[0] = rho
    return moments


def _time_update(x: Tensor, s: float, t: float, points: Sequence[_Evaluation]) -> Tensor:
    """The exact solution with the data prediction replaced by its polynomial in t through
    ``points`` (``s`` first): ``x_t = (1 - t) / (1 - s) x_s + sum_j w_j m_j`` with
    ``w_j = (1 - t) int_s^t l_j(tau) / (1 - tau)^2 d tau``, ``l_j`` the Lagrange basis.

    Used where a point sits at an endpoint (infinite lambda). From ``s = 0`` with
    ``points = (m_0, m_t)`` it is ``x_t = (1 - t) x_0 + t m_0 + (m_t - m_0) (1 + (1 - t)
    log(1 - t) / t)``; with one point it is Euler. Decreasing grids use the mirror image,
    ``t -> 1 - t`` and the noise prediction ``x - t u`` for ``m``.
    """
    if t > s:
        start, end, times = s, t, [e.t for e in points]
        values = [e.data for e in points]
    else:
        start, end, times = 1.0 - s, 1.0 - t, [1.0 - e.t for e in points]
        values = [e.prediction_of(0.0) for e in points]
    nodes = [(time - start) / (end - start) for time in times]
    moments = _time_moments((end - start) / (1.0 - start), len(points))
    vandermonde = [[node**k for node in nodes] for k in range(len(points))]
    weights = _solve(vandermonde, moments)
    ratio = (1.0 - end) / (1.0 - start)
    return _combine([(ratio, x)] + [(float(w), v) for w, v in zip(weights, values, strict=True)])


def _touches_endpoint(points: Sequence[_Evaluation]) -> bool:
    return any(_at_endpoint(e.t) for e in points)


class _Stepper:
    """Evaluates the model at grid or intermediate times (keeps ``model_kwargs`` and the grid)."""

    def __init__(self, model: VelocityModel, ts: Tensor, model_kwargs: dict[str, Any]) -> None:
        self.model = model
        self.ts = ts
        self.model_kwargs = model_kwargs

    def at_grid(self, x: Tensor, i: int, t: float) -> _Evaluation:
        return _evaluate(self.model, x, self.ts[i], t, self.model_kwargs)

    def at(self, x: Tensor, t: float) -> _Evaluation:
        return _evaluate(self.model, x, self.ts.new_full((), t), t, self.model_kwargs)

    def singlestep(self, x: Tensor, s: float, t: float, first: _Evaluation, order: int) -> Tensor:
        """DPM-Solver++ 2S / 3S in lambda; the Runge-Kutta step in t with an endpoint."""
        if _at_endpoint(s) or _at_endpoint(t):
            return self._runge_kutta(x, s, t, first, order)
        h = _log_snr(t) - first.log_snr
        if order == 2:
            middle = _time_of(first.log_snr + 0.5 * h)
            at_middle = self.at(_first_order(x, s, middle, first), middle)
            ratio, weight = _first_order_weights(s, t)
            return _combine([(ratio, x), (weight, at_middle.data)])
        r1, r2 = 1.0 / 3.0, 2.0 / 3.0
        s1, s2 = _time_of(first.log_snr + r1 * h), _time_of(first.log_snr + r2 * h)
        at_s1 = self.at(_first_order(x, s, s1, first), s1)
        second = s2 * (r2 * h) * _phi(2, -r2 * h) * (r2 / r1)
        x_s2 = _first_order(x, s, s2, first).add(at_s1.data - first.data, alpha=second)
        at_s2 = self.at(x_s2, s2)
        last = t * h * _phi(2, -h) / r2
        return _first_order(x, s, t, first).add(at_s2.data - first.data, alpha=last)

    def _runge_kutta(self, x: Tensor, s: float, t: float, first: _Evaluation, order: int) -> Tensor:
        """Explicit midpoint (order 2) or Heun's third-order method (order 3) in t."""
        dt = t - s
        if order == 2:
            k2 = self.at(x + (0.5 * dt) * first.velocity, s + 0.5 * dt).velocity
            return x + dt * k2
        k2 = self.at(x + (dt / 3.0) * first.velocity, s + dt / 3.0).velocity
        k3 = self.at(x + (2.0 * dt / 3.0) * k2, s + 2.0 * dt / 3.0).velocity
        return x + (0.25 * dt) * (first.velocity + 3.0 * k3)


# ----------------------------------------------------------------------------- step plans


@dataclass(frozen=True)
class _Step:
    """What a multistep solver does on one grid interval, decided before the first step.

    ``kind``: "from_endpoint" (the method's step through the endpoint's point alone: Euler,
    corrected by UniC), "into_endpoint" (extrapolation through ``order`` points), "warmup"
    (singlestep of ``order``) or "multistep" (the method's step through ``order`` points, in
    t while one of them is at an endpoint).
    """

    kind: str
    order: int


def _warmup_order(warmup: str, target: int, first_step: int) -> int:
    """Order of the singlestep warm-up, 0 for none: ``target - 1`` (one-off local error
    ``O(h^target)``) when the lower-order first step, of order ``first_step``, falls short."""
    if warmup == "singlestep" and first_step < target - 1:
        return target - 1
    return 0


def _multistep_plan(
    times: list[float], order: int, warmup_order: int, lower_order_final: bool
) -> list[_Step]:
    """The step kinds and orders of a multistep method of ``order`` on the grid ``times``."""
    steps = len(times) - 1
    plan: list[_Step] = []
    warmed = warmup_order == 0
    for i in range(steps):
        s, t = times[i], times[i + 1]
        cap = min(order, steps - i) if lower_order_final else order
        if _at_endpoint(s):
            plan.append(_Step("from_endpoint", 1))
        elif _at_endpoint(t):
            plan.append(_Step("into_endpoint", min(cap, i + 1)))
        elif not warmed:
            plan.append(_Step("warmup", warmup_order))
            warmed = True
        else:
            plan.append(_Step("multistep", min(cap, i + 1)))
    if not warmed:
        raise ValueError(
            "`warmup='singlestep'` needs a step between two times strictly inside (0, 1); the "
            f"{steps}-step grid from t={times[0]} to t={times[-1]} has none: give more steps "
            "or use warmup='lower_order'"
        )
    return plan


MultistepUpdate = Callable[[Tensor, float, float, list[_Evaluation]], Tensor]


def _integrate(
    stepper: _Stepper,
    x: Tensor,
    times: list[float],
    plan: list[_Step],
    update: MultistepUpdate,
    callback: Callback | None,
    correct: Callable[[Tensor, _Evaluation], Tensor] | None = None,
) -> Tensor:
    """Run a multistep ``plan``: one evaluation per grid time, kept newest first.

    ``update(x, s, t, history)`` is the method's own step (from an endpoint too, where it is
    Euler); ``correct(x, evaluation)``, if given, revises the point just evaluated (UniC).
    """
    history: deque[_Evaluation] = deque(maxlen=max(step.order for step in plan))
    for i, step in enumerate(plan):
        s, t = times[i], times[i + 1]
        evaluation = stepper.at_grid(x, i, s)
        if correct is not None:
            x = correct(x, evaluation)
        history.appendleft(evaluation)
        if step.kind == "into_endpoint":
            x = _into_endpoint(list(history)[: step.order], t)
        elif step.kind == "warmup":
            x = stepper.singlestep(x, s, t, evaluation, step.order)
        else:
            x = update(x, s, t, list(history)[: step.order])
        report_step(callback, i, stepper.ts, x, evaluation.velocity)
    return x


# ----------------------------------------------------------------------------- solvers


def sample_dpmpp_multistep(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None = None,
    *,
    order: int = 2,
    warmup: str = DEFAULT_WARMUP,
    lower_order_final: bool = False,
    **model_kwargs: Any,
) -> Tensor:
    """DPM-Solver++ 1 / 2M / 3M in data prediction, 1 evaluation per step.

    ``x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) m_0`` plus, for 2M,
    ``alpha_t (1 - e^{-h}) D1 / 2`` and, for 3M, ``alpha_t h phi_2(-h) D1 + 2 alpha_t h phi_3(-h)
    D2`` (module docstring). Order 1 is exactly Euler on the linear path.

    Args:
        order: 1, 2 or 3.
        warmup: "lower_order" or "singlestep" (2S on the first interior step for order 3,
            one extra evaluation; see the module docstring).
        lower_order_final: take the last step at first order, the one before at most second.
    """
    _check_choice("order", order, (1, 2, 3))
    _check_choice("warmup", warmup, WARMUPS)
    times = _host_times(ts)
    warmup_order = _warmup_order(warmup, order, first_step=1)
    plan = _multistep_plan(times, order, warmup_order, lower_order_final)
    stepper = _Stepper(model, ts, model_kwargs)
    return _integrate(stepper, x, times, plan, _dpmpp_multistep_update, callback)


def sample_dpmpp_singlestep(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None = None,
    *,
    order: int = 2,
    **model_kwargs: Any,
) -> Tensor:
    """DPM-Solver++ 2S / 3S in data prediction, ``order`` evaluations per step.

    2S: ``x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) m(x_mid)`` with ``x_mid`` the
    first-order point at ``lambda_s + h / 2``; 3S as in the module docstring. A step with an endpoint
    (t = 0 or 1) is the explicit midpoint rule (2S) or Heun's third-order method (3S) in t.

    Args:
        order: 2 or 3.
    """
    _check_choice("order", order, (2, 3))
    times = _host_times(ts)
    stepper = _Stepper(model, ts, model_kwargs)
    for i in range(len(times) - 1):
        s, t = times[i], times[i + 1]
        evaluation = stepper.at_grid(x, i, s)
        x = stepper.singlestep(x, s, t, evaluation, order)
        report_step(callback, i, ts, x, evaluation.velocity)
    return x


@dataclass
class _Prediction:
    """A UniP step waiting for its corrector: where it started and the points it used."""

    start: Tensor
    s: float
    t: float
    history: list[_Evaluation]


class _UniPC:
    """UniP steps that remember themselves until the next evaluation corrects them (UniC)."""

    def __init__(self, variant: str, corrector: bool) -> None:
        self.variant = variant
        self.corrector = corrector
        self.pending: _Prediction | None = None

    def predict(self, x: Tensor, s: float, t: float, history: list[_Evaluation]) -> Tensor:
        if self.corrector:
            self.pending = _Prediction(x, s, t, history)
        return _unipc_update(x, s, t, history, self.variant)

    def correct(self, x: Tensor, evaluation: _Evaluation) -> Tensor:
        """``x^c_t`` from the pending prediction and ``m_t``; ``x`` itself if none is pending."""
        pending, self.pending = self.pending, None
        if pending is None:
            return x
        return _unipc_update(
            pending.start, pending.s, pending.t, pending.history, self.variant, evaluation
        )


def sample_unipc(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None = None,
    *,
    order: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
    warmup: str = DEFAULT_WARMUP,
    lower_order_final: bool = False,
    **model_kwargs: Any,
) -> Tensor:
    """UniPC in data prediction, 1 evaluation per step: UniP-q predictor, UniC-q corrector.

    ``x~_t = first order + alpha_t B(h) sum_k rho^p_k D_k``; after the next step evaluates
    ``m_t`` at ``x~_t``, ``x^c_t = first order + alpha_t B(h) (sum_k rho^c_k D_k + rho^c_q
    (m_t - m_0))`` replaces it (module docstring). Order q + 1 with the corrector, q without.

    Args:
        order: the predictor order q, 1, 2 or 3.
        variant: "bh1" (``B(h) = h``) or "bh2" (``B(h) = 1 - e^{-h}``).
        corrector: apply UniC (no extra evaluations); False gives UniP alone.
        warmup: "lower_order" or "singlestep" (3S on the first interior step for q = 3 with
            the corrector, two extra evaluations; 2S for q = 3 without; see the module docstring).
        lower_order_final: take the last step at first order, the one before at most second.
    """
    _check_choice("order", order, (1, 2, 3))
    _check_choice("variant", variant, UNIPC_VARIANTS)
    _check_choice("warmup", warmup, WARMUPS)
    times = _host_times(ts)
    target, first_step = (order + 1, 2) if corrector else (order, 1)
    warmup_order = _warmup_order(warmup, target, first_step)
    plan = _multistep_plan(times, order, warmup_order, lower_order_final)
    stepper = _Stepper(model, ts, model_kwargs)
    unipc = _UniPC(variant, corrector)
    return _integrate(stepper, x, times, plan, unipc.predict, callback, unipc.correct)


# ----------------------------------------------------------------------------- registry


def _singlestep_warmup_evals(target: int, first_step: int) -> int:
    order = _warmup_order("singlestep", target, first_step)
    return order - 1 if order else 0


def _dpmpp_warmup_evals(order: int) -> Callable[[Mapping[str, Any]], int]:
    def warmup_evals(options: Mapping[str, Any]) -> int:
        if options.get("warmup", DEFAULT_WARMUP) != "singlestep":
            return 0
        return _singlestep_warmup_evals(order, first_step=1)

    return warmup_evals


def _unipc_warmup_evals(order: int) -> Callable[[Mapping[str, Any]], int]:
    def warmup_evals(options: Mapping[str, Any]) -> int:
        if options.get("warmup", DEFAULT_WARMUP) != "singlestep":
            return 0
        if options.get("corrector", True):
            return _singlestep_warmup_evals(order + 1, first_step=2)
        return _singlestep_warmup_evals(order, first_step=1)

    return warmup_evals


def _multistep_rule(extra: int) -> str:
    return f"1 per step (+{extra} once with warmup='singlestep')" if extra else "1 per step"


for _order, _name in ((1, "dpmpp_1"), (2, "dpmpp_2m"), (3, "dpmpp_3m")):
    register_sampler(
        _name,
        1,
        _order,
        _dpmpp_warmup_evals(_order),
        kind="multistep",
        description=f"DPM-Solver++ multistep, order {_order}, data prediction in the log-SNR",
        nfe_rule=_multistep_rule(_singlestep_warmup_evals(_order, 1)),
    )(with_fixed_options(sample_dpmpp_multistep, order=_order))
register_sampler(
    "dpmpp_2s",
    2,
    2,
    kind="multistep",
    description="DPM-Solver++ 2S, singlestep second order in the log-SNR",
)(with_fixed_options(sample_dpmpp_singlestep, order=2))
for _variant in UNIPC_VARIANTS:
    for _order in (1, 2, 3):
        register_sampler(
            f"unipc_{_variant}_{_order}",
            1,
            _order + 1,
            _unipc_warmup_evals(_order),
            kind="multistep",
            description=f"UniPC {_variant.upper()}: UniP-{_order} predictor with the UniC "
            "corrector (order +1 at no extra NFE)",
            nfe_rule=_multistep_rule(_singlestep_warmup_evals(_order + 1, 2)),
        )(with_fixed_options(sample_unipc, order=_order, variant=_variant))

__all__ = ["sample_dpmpp_multistep", "sample_dpmpp_singlestep", "sample_unipc"]
