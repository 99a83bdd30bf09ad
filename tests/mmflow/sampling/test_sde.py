"""SDE sampling and path conversion against closed forms for a Gaussian target (float64).

For data ``x1 ~ N(m, diag(std^2))`` on an affine path ``x_t = alpha x1 + n x0`` the marginal is
``N(alpha m, V)`` per dimension with ``V = alpha^2 std^2 + n^2``, and

    u(x, t) = alpha' m + k (x - alpha m),   k = (alpha alpha' std^2 + n n') / V,
    score   = -(x - alpha m) / V.

Both are affine in ``x``, so one Euler-Maruyama step maps ``N(mu, v)`` to ``N(mu', v')`` with

    g = k - eps / V,   mu' = mu + h (alpha' m + g (mu - alpha m)),   v' = (1 + h g)^2 v + 2 eps h.

Iterating this gives the exact mean and variance of the discrete chain: its distance to the
true marginal is the discretisation error, and the samples' distance to the true marginal
must stay within that plus 4 standard errors of the sample moments.
"""

from __future__ import annotations

import math

import pytest
import torch

from mmflow.interpolants import LinearPath, VPPath, convert_velocity
from mmflow.sampling import sample
from mmflow.sampling.analytic import GaussianLinearFlow
from mmflow.sampling.sde import (
    DIFFUSIONS,
    diffusion_coefficient,
    linear_to_vp,
    noise_to_target_start,
    target_to_source,
)

DTYPE = torch.float64
MEAN = torch.tensor([1.5, -2.0, 0.5], dtype=DTYPE)
STD = torch.tensor([0.3, 0.8, 2.0], dtype=DTYPE)
SAMPLES = 10_000
STEPS = 200
STANDARD_ERRORS = 4.0
DIFFUSION_SCALES = {"square": 3.0}  # Kim et al.'s default norm; 1 for the others


@pytest.fixture
def field() -> GaussianLinearFlow:
    return GaussianLinearFlow(MEAN, STD)


def noise(n: int = SAMPLES, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def marginal(path, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``alpha m`` and variance ``alpha^2 std^2 + n^2`` of the path at time ``t``."""
    alpha = path.alpha(t)
    return alpha * MEAN, alpha**2 * STD**2 + path.noise_scale(t) ** 2


def gaussian_score(path, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    mean, variance = marginal(path, t)
    return -(x - mean) / variance


def chain_moments(path, ts, eps, mean, variance) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Exact mean and variance of the Euler-Maruyama chain after each step (module docstring).

    The last step is deterministic and infinite ``eps`` means a deterministic step, as in
    :func:`sample_euler_maruyama`.
    """
    eps = torch.where(torch.isinf(eps), torch.zeros_like(eps), eps)
    moments = []
    for i in range(len(ts) - 1):
        t, h = ts[i], ts[i + 1] - ts[i]
        alpha, d_alpha = path.alpha(t), path.d_alpha(t)
        noise_scale, d_noise_scale = path.noise_scale(t), path.d_noise_scale(t)
        marginal_variance = alpha**2 * STD**2 + noise_scale**2
        slope = (alpha * d_alpha * STD**2 + noise_scale * d_noise_scale) / marginal_variance
        step_eps = eps[i] if i < len(ts) - 2 else torch.zeros((), dtype=DTYPE)
        gain = slope - step_eps / marginal_variance
        mean = mean + h * (d_alpha * MEAN + gain * (mean - alpha * MEAN))
        variance = (1 + h * gain) ** 2 * variance + 2 * step_eps * h
        moments.append((mean, variance))
    return moments


def assert_moments_match(samples, mean, variance, mean_bias, variance_bias) -> None:
    """Sample mean and covariance within 4 standard errors plus a known deterministic bias.

    Standard errors for Gaussian samples: ``sqrt(V_i / n)`` for a mean, and
    ``sqrt((C_ii C_jj + C_ij^2) / n)`` for a covariance entry. ``mean_bias`` and
    ``variance_bias`` bound the discretisation error (per dimension).
    """
    n = samples.shape[0]
    sample_mean, sample_covariance = samples.mean(0), torch.cov(samples.T)
    mean_bound = STANDARD_ERRORS * (variance / n).sqrt() + mean_bias
    assert ((sample_mean - mean).abs() <= mean_bound).all(), (sample_mean, mean, mean_bound)
    covariance = torch.diag(variance)
    covariance_se = ((torch.outer(variance, variance) + covariance**2) / n).sqrt()
    covariance_bound = STANDARD_ERRORS * covariance_se + torch.diag(variance_bias)
    error = (sample_covariance - covariance).abs()
    assert (error <= covariance_bound).all(), (sample_covariance, covariance, covariance_bound)


def assert_chain_matches(states, path, ts, chain) -> None:
    """At each recorded step: the chain's bias is small, the samples match the marginal."""
    for step, samples in states.items():
        mean, variance = marginal(path, ts[step])
        chain_mean, chain_variance = chain[step - 1]
        mean_bias, variance_bias = (chain_mean - mean).abs(), (chain_variance - variance).abs()
        # first-order weak error at 200 steps, well below the sampling error it is added to
        assert mean_bias.max() < 0.02 and (variance_bias / variance).max() < 0.03
        assert_moments_match(samples, mean, variance, mean_bias, variance_bias)


def run_and_record(model, x, ts, checkpoints, **solver_options) -> dict[int, torch.Tensor]:
    """Euler-Maruyama over ``ts``; the states after the steps listed in ``checkpoints``."""
    states = {}

    def keep(info):
        if info["step"] + 1 in checkpoints:
            states[info["step"] + 1] = info["x"]

    result = sample(
        model,
        x,
        method="euler_maruyama",
        grid=ts,
        nfe=None,
        callback=keep,
        solver_options=solver_options,
    )
    assert result.nfe == len(ts) - 1
    return states


@pytest.mark.parametrize("t", [0.05, 0.3, 0.5, 0.8, 0.95])
def test_score_from_velocity_is_the_gaussian_score(field, t):
    x = 3 * noise(16, seed=1)
    time = torch.full((16,), t, dtype=DTYPE)
    score = LinearPath().velocity_to_score(field(x, time), x, time)
    torch.testing.assert_close(score, gaussian_score(LinearPath(), x, torch.tensor(t, dtype=DTYPE)))
    torch.testing.assert_close(score, (t * field(x, time) - x) / (1 - t))


@pytest.mark.parametrize("r", [0.05, 0.3, 0.5, 0.8, 0.95])
def test_score_of_the_converted_velocity_is_the_vp_gaussian_score(field, r):
    converted = linear_to_vp(field)
    x_bar = 3 * noise(16, seed=2)
    time = torch.full((16,), r, dtype=DTYPE)
    score = VPPath().velocity_to_score(converted(x_bar, time), x_bar, time)
    expected = gaussian_score(VPPath(), x_bar, torch.tensor(r, dtype=DTYPE))
    torch.testing.assert_close(score, expected, rtol=1e-6, atol=1e-6)


def test_named_diffusions_in_closed_form():
    t = torch.linspace(0.1, 0.9, 9, dtype=DTYPE)
    c = 3.0
    expected = {
        "constant": torch.full_like(t, c),
        "sbdm": c * (1 - t) / t,
        "sigma": c * (1 - t),
        "linear": c * (1 - t),
        "decreasing": (c * torch.cos(math.pi * t) + 1) ** 2 / 4,
        "increasing_decreasing": c * torch.sin(math.pi * t) ** 2,
        "square": (c * (1 - t) ** 2) ** 2 / 2,
    }
    assert set(expected) == set(DIFFUSIONS)
    for name, value in expected.items():
        torch.testing.assert_close(diffusion_coefficient(name, t, "linear", c), value)
    vp = VPPath(beta_min=0.1, beta_max=20.0)
    beta = 0.1 + (20.0 - 0.1) * (1 - t)
    torch.testing.assert_close(diffusion_coefficient("sbdm", t, vp), beta / 2)
    torch.testing.assert_close(diffusion_coefficient(lambda s: s**2, t, "linear", 2.0), 2 * t**2)


@pytest.mark.parametrize("diffusion", sorted(DIFFUSIONS))
def test_sde_keeps_the_gaussian_marginals(field, diffusion):
    scale = DIFFUSION_SCALES.get(diffusion, 1.0)
    ts = torch.linspace(0, 1, STEPS + 1, dtype=DTYPE)
    checkpoints = (STEPS // 4, STEPS // 2, STEPS)
    states = run_and_record(
        field,
        noise(),
        ts,
        checkpoints,
        diffusion=diffusion,
        diffusion_scale=scale,
        generator=torch.Generator().manual_seed(7),
    )
    eps = diffusion_coefficient(diffusion, ts[:-1], "linear", scale)
    start_mean, start_variance = torch.zeros(3, dtype=DTYPE), torch.ones(3, dtype=DTYPE)
    chain = chain_moments(LinearPath(), ts, eps, start_mean, start_variance)
    assert_chain_matches(states, LinearPath(), ts, chain)
    torch.testing.assert_close(marginal(LinearPath(), ts[-1]), (MEAN, STD**2))


@pytest.mark.parametrize("diffusion", ["sbdm", "square"])
def test_sde_on_the_converted_path_keeps_the_vp_marginals(field, diffusion):
    scale = DIFFUSION_SCALES.get(diffusion, 1.0)
    converted = linear_to_vp(field)
    x0 = noise(seed=3)
    start = noise_to_target_start(converted, x0, field(x0, torch.zeros(SAMPLES, dtype=DTYPE)))
    ts = torch.linspace(0, 1, STEPS + 1, dtype=DTYPE)
    checkpoints = (STEPS // 4, STEPS // 2, STEPS)
    states = run_and_record(
        converted,
        start,
        ts,
        checkpoints,
        diffusion=diffusion,
        diffusion_scale=scale,
        path=converted.target,
        generator=torch.Generator().manual_seed(8),
    )
    vp = converted.target
    zero = torch.zeros((), dtype=DTYPE)
    # the start map: sigma_bar(0) x0 + alpha_bar(0) (x0 + u(x0, 0)) = sigma_bar(0) x0 + alpha_bar(0) m
    start_mean = vp.alpha(zero) * MEAN
    start_variance = vp.sigma(zero) ** 2 * torch.ones(3, dtype=DTYPE)
    eps = diffusion_coefficient(diffusion, ts[:-1], vp, scale)
    assert_chain_matches(states, vp, ts, chain_moments(vp, ts, eps, start_mean, start_variance))


def test_zero_diffusion_is_euler_exactly(field):
    x0 = noise(64)
    stochastic = sample(
        field,
        x0,
        method="euler_maruyama",
        nfe=16,
        solver_options={"diffusion": "constant", "diffusion_scale": 0.0},
    )
    assert torch.equal(stochastic.samples, sample(field, x0, method="euler", nfe=16).samples)


def test_last_step_and_infinite_diffusion_steps_are_deterministic(field):
    x0 = noise(64)
    one_step = sample(
        field,
        x0,
        method="euler_maruyama",
        nfe=1,
        solver_options={"diffusion": "constant", "diffusion_scale": 5.0},
    )
    assert torch.equal(one_step.samples, sample(field, x0, method="euler", nfe=1).samples)
    # sbdm's eps = (1 - t) / t is infinite at t = 0: step 0 is an ODE step, step 1 is the last
    two_steps = sample(
        field, x0, method="euler_maruyama", nfe=2, solver_options={"diffusion": "sbdm"}
    )
    assert torch.equal(two_steps.samples, sample(field, x0, method="euler", nfe=2).samples)
    assert torch.isfinite(sample(field, x0, method="euler_maruyama", nfe=8).samples).all()


@pytest.mark.parametrize("nfe", [3, 8, 25])
def test_generator_reproducibility_and_exact_nfe(field, nfe):
    x0 = noise(32)

    def draw(seed):
        options = {"diffusion": "sigma", "generator": torch.Generator().manual_seed(seed)}
        return sample(field, x0, method="euler_maruyama", nfe=nfe, solver_options=options)

    first, again, other = draw(0), draw(0), draw(1)
    assert first.nfe == nfe
    assert torch.equal(first.samples, again.samples)
    assert not torch.allclose(first.samples, other.samples)


def test_converted_ode_reproduces_the_linear_endpoint_map(field):
    """Same x1 from the same x0: exact start state, RK4 along the VP path, back at r = 1."""
    converted = linear_to_vp(field)
    x0 = noise(64)
    zero = torch.zeros(1, dtype=DTYPE)
    t_start = LinearPath().snr_inverse(converted.target.snr(zero))
    assert 6e-3 < t_start.item() < 7e-3  # VP's alpha_bar(0) = 6.6e-3 > 0: r = 0 is not t = 0
    exact_start = converted.target.sigma(zero) / (1 - t_start) * field.flow(x0, t_start.item())
    end = sample(converted, exact_start, method="rk4", nfe=4 * 64).samples
    # RK4 error 4e-6 at 64 steps; floor 1e-6 from clamping r to [1e-5, 1 - 1e-5]
    torch.testing.assert_close(
        target_to_source(converted, end, 1.0), field.flow(x0, 1.0), rtol=0, atol=1e-5
    )


def test_noise_map_is_one_euler_step_of_the_source(field):
    """``x_bar(0) = sigma_bar(0) x0 + alpha_bar(0) x1_hat`` is accurate to ``O(t_0^2)``.

    Exact: ``s_0 x(t_0)`` with ``x(t) = t m + sqrt(V_t) x0``; the Euler step from t = 0 misses
    ``t_0^2 x''(0) / 2`` and ``x''(0) = std^2 x0`` (``sqrt(V_t)'' = std^2`` at t = 0), so the error
    is below ``t_0^2 std^2 |x0|`` (a factor 2 of slack for the third-order term and ``s_0``).
    """
    converted = linear_to_vp(field)
    x0 = noise(256)
    zero = torch.zeros(1, dtype=DTYPE)
    t_start = LinearPath().snr_inverse(converted.target.snr(zero))
    exact = converted.target.sigma(zero) / (1 - t_start) * field.flow(x0, t_start.item())
    mapped = noise_to_target_start(converted, x0, field(x0, torch.zeros(256, dtype=DTYPE)))
    assert ((mapped - exact).abs() <= t_start**2 * STD**2 * x0.abs() + 1e-12).all()
    end = sample(converted, mapped, method="rk4", nfe=4 * 64).samples
    assert (target_to_source(converted, end, 1.0) - field.flow(x0, 1.0)).abs().max() < 2e-3
    plain = noise_to_target_start(converted, x0)
    assert (plain - exact).abs().max() > 10 * (mapped - exact).abs().max()


def test_converted_ode_marginals_are_the_vp_marginals(field):
    """Exact start state, RK4 along r: the samples have VP's N(alpha_bar m, V_bar) at every r."""
    converted = linear_to_vp(field)
    x0 = noise(seed=4)
    zero = torch.zeros(1, dtype=DTYPE)
    t_start = LinearPath().snr_inverse(converted.target.snr(zero))
    start = converted.target.sigma(zero) / (1 - t_start) * field.flow(x0, t_start.item())
    ts = torch.linspace(0, 1, 65, dtype=DTYPE)
    states = {}

    def keep(info):
        states[info["step"] + 1] = info["x"]

    sample(converted, start, method="rk4", grid=ts, nfe=None, callback=keep)
    solver_error = torch.full((3,), 1e-5, dtype=DTYPE)  # RK4 at 64 steps (endpoint test)
    for step in (8, 16, 32, 48, 64):
        mean, variance = marginal(converted.target, ts[step])
        assert_moments_match(states[step], mean, variance, solver_error, solver_error)


def test_target_to_source_maps_back_and_is_the_identity_at_the_data_end(field):
    converted = convert_velocity(field, LinearPath(), VPPath())
    x = noise(8)
    assert torch.equal(target_to_source(converted, x, 1.0), x)
    torch.testing.assert_close(target_to_source(converted, x, 0.4), converted.to_source(x, 0.4))
    r = torch.linspace(0.0, 1.0, 8, dtype=DTYPE)
    timing_t = LinearPath().snr_inverse(VPPath().snr(r))
    on_source = target_to_source(converted, x, r)
    scale = (x / on_source)[:, 0]
    torch.testing.assert_close(scale * timing_t, VPPath().alpha(r))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"diffusion": "cosine"}, "`diffusion` must be one of"),
        ({"diffusion_scale": -1.0}, "`diffusion_scale` must be a number >= 0"),
        ({"path": "spiral"}, "`path` must be an AffinePath"),
        ({"diffusion": lambda t: -t}, "NaN or negative"),
    ],
)
def test_bad_options_are_refused(field, options, match):
    with pytest.raises(ValueError, match=match):
        sample(field, noise(4), method="euler_maruyama", nfe=4, solver_options=options)


def test_backward_grid_and_bad_start_maps_are_refused(field):
    with pytest.raises(ValueError, match="`ts` must increase"):
        sample(field, noise(4), method="euler_maruyama", grid=torch.linspace(1, 0, 5), nfe=None)
    from_vp = convert_velocity(field, VPPath(), LinearPath())
    with pytest.raises(ValueError, match="must start at pure noise"):
        noise_to_target_start(from_vp, noise(4))
    with pytest.raises(ValueError, match="`velocity`"):
        noise_to_target_start(linear_to_vp(field), noise(4), torch.zeros(4, 2, dtype=DTYPE))
