"""Interpolants against closed forms for Gaussian data (float64, tolerance 1e-5).

For data ``x1 ~ N(m, diag(s^2))``, ``x0, z ~ N(0, I)`` and ``x_t = alpha x1 + sigma x0 + gamma z``
the marginal is ``N(alpha m, V)`` with ``V = alpha^2 s^2 + sigma^2 + gamma^2`` and

    u*(x, t)      = alpha' m + C / V (x - alpha m),
    C             = alpha alpha' s^2 + sigma sigma' + gamma gamma',
    score(x, t)   = -(x - alpha m) / V,
    E[x1 | x_t]   = m + alpha s^2 / V (x - alpha m),
    E[n / |n| | x_t] = sqrt(sigma^2 + gamma^2) / V (x - alpha m)     (n = sigma x0 + gamma z).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch

from mmflow.interpolants import (
    PATHS,
    AffinePath,
    CosinePath,
    GeneralizedVPPath,
    LinearPath,
    StochasticInterpolant,
    VPPath,
    convert_velocity,
    expand_time_like,
)

TOL = {"atol": 1e-5, "rtol": 1e-5}
DTYPE = torch.float64


def all_paths() -> dict[str, AffinePath]:
    return {
        "linear": LinearPath(),
        "cosine": CosinePath(),
        "vp": VPPath(),
        "gvp_sine": GeneralizedVPPath("sine"),
        "gvp_linear": GeneralizedVPPath("linear"),
        "si_brownian": StochasticInterpolant(gamma_form="brownian", gamma_scale=2.0),
        "si_quadratic": StochasticInterpolant(gamma_form="quadratic", gamma_scale=1.5),
        "si_cosine": StochasticInterpolant(path=CosinePath(), gamma_scale=0.5),
    }


def gamma_terms(path: AffinePath, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``gamma^2`` and ``gamma gamma'`` (zero for paths without latent noise)."""
    if isinstance(path, StochasticInterpolant):
        return path.gamma(t) ** 2, path.gamma(t) * path.d_gamma(t)
    return torch.zeros_like(t), torch.zeros_like(t)


@dataclass
class GaussianField:
    """Closed-form quantities of the marginal path towards ``N(mean, diag(std^2))``."""

    path: AffinePath
    mean: torch.Tensor
    std: torch.Tensor

    def _moments(self, t: torch.Tensor, x: torch.Tensor):
        tb = expand_time_like(t, x)
        a, s = self.path.alpha(tb), self.path.sigma(tb)
        da, ds = self.path.d_alpha(tb), self.path.d_sigma(tb)
        g2, ggd = gamma_terms(self.path, tb)
        variance = a**2 * self.std**2 + s**2 + g2
        covariance = a * da * self.std**2 + s * ds + ggd
        return a, da, s, g2, variance, covariance

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, da, _, _, variance, covariance = self._moments(t, x)
        return da * self.mean + covariance / variance * (x - a * self.mean)

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, _, _, _, variance, _ = self._moments(t, x)
        return -(x - a * self.mean) / variance

    def data(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, _, _, _, variance, _ = self._moments(t, x)
        return self.mean + a * self.std**2 / variance * (x - a * self.mean)

    def noise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, _, s, g2, variance, _ = self._moments(t, x)
        return torch.sqrt(s**2 + g2) / variance * (x - a * self.mean)


@pytest.fixture
def gaussian() -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor([1.5, -0.7, 0.2, 3.0], dtype=DTYPE)
    std = torch.tensor([0.3, 1.2, 0.05, 2.0], dtype=DTYPE)
    return mean, std


def points(batch: int = 7, dim: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(batch, dim, generator=generator, dtype=DTYPE)
    t = torch.linspace(0.05, 0.95, batch, dtype=DTYPE)
    return x, t


@pytest.mark.parametrize("name", list(all_paths()))
def test_velocity_converts_to_closed_form_data_noise_and_score(name, gaussian):
    path = all_paths()[name]
    field = GaussianField(path, *gaussian)
    x, t = points()
    u = field.velocity(x, t)
    torch.testing.assert_close(path.velocity_to_data(u, x, t), field.data(x, t), **TOL)
    torch.testing.assert_close(path.velocity_to_noise(u, x, t), field.noise(x, t), **TOL)
    torch.testing.assert_close(path.velocity_to_score(u, x, t), field.score(x, t), **TOL)


@pytest.mark.parametrize("name", list(all_paths()))
@pytest.mark.parametrize("kind", ["data", "noise", "score"])
def test_predictions_convert_back_to_closed_form_velocity(name, kind, gaussian):
    path = all_paths()[name]
    field = GaussianField(path, *gaussian)
    x, t = points(seed=1)
    prediction = getattr(field, kind)(x, t)
    torch.testing.assert_close(
        path.convert(prediction, x, t, kind, "velocity"), field.velocity(x, t), **TOL
    )
    for other in ("data", "noise", "score"):
        expected = getattr(field, other)(x, t)
        torch.testing.assert_close(path.convert(prediction, x, t, kind, other), expected, **TOL)


def test_linear_path_matches_design_formulas():
    path = LinearPath()
    x, t = points(seed=2)
    u = torch.randn_like(x)
    tb = t[:, None]
    torch.testing.assert_close(path.velocity_to_data(u, x, t), x + (1 - tb) * u)
    torch.testing.assert_close(path.velocity_to_noise(u, x, t), x - tb * u)
    torch.testing.assert_close(path.velocity_to_score(u, x, t), (tb * u - x) / (1 - tb))


@pytest.mark.parametrize("name", list(all_paths()))
def test_sample_target_is_time_derivative_of_x_t(name):
    path = all_paths()[name]
    generator = torch.Generator().manual_seed(3)
    x0, x1, z = (torch.randn(5, 3, 2, generator=generator, dtype=DTYPE) for _ in range(3))
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=DTYPE)
    h = 1e-6
    extra = {"z": z} if isinstance(path, StochasticInterpolant) else {}
    sample = path.sample(x0, x1, t, **extra)
    forward = path.sample(x0, x1, t + h, **extra).x_t
    backward = path.sample(x0, x1, t - h, **extra).x_t
    torch.testing.assert_close(sample.target, (forward - backward) / (2 * h), **TOL)
    assert sample.t.shape == (5,)
    assert sample.x_t.shape == x0.shape
    tb = t[:, None, None]
    x_t = path.alpha(tb) * x1 + path.sigma(tb) * x0
    if extra:
        x_t = x_t + path.gamma(tb) * z
    torch.testing.assert_close(sample.x_t, x_t, atol=1e-12, rtol=0)
    assert torch.equal(sample.t, t)


@pytest.mark.parametrize("name", list(all_paths()))
def test_coefficient_derivatives_match_finite_differences(name):
    path = all_paths()[name]
    t = torch.linspace(0.05, 0.95, 19, dtype=DTYPE)
    h = 1e-6
    pairs = [
        (path.alpha, path.d_alpha),
        (path.sigma, path.d_sigma),
        (path.noise_scale, path.d_noise_scale),
        (path.snr, path.d_snr),
    ]
    for function, derivative in pairs:
        torch.testing.assert_close(
            derivative(t), (function(t + h) - function(t - h)) / (2 * h), **TOL
        )


@pytest.mark.parametrize("name", list(all_paths()))
def test_snr_inverse_inverts_snr(name):
    path = all_paths()[name]
    t = torch.linspace(0.02, 0.98, 25, dtype=DTYPE)
    torch.testing.assert_close(path.snr_inverse(path.snr(t)), t, atol=1e-9, rtol=0)


def test_snr_inverse_at_extremes():
    for path in (LinearPath(), CosinePath(), GeneralizedVPPath("linear")):
        ends = path.snr_inverse(torch.tensor([0.0, math.inf], dtype=DTYPE))
        torch.testing.assert_close(ends, torch.tensor([0.0, 1.0], dtype=DTYPE))
    vp = VPPath()
    assert vp.snr_inverse(torch.tensor([1e-9], dtype=DTYPE)).item() == 0.0
    assert vp.snr_inverse(torch.tensor([math.inf], dtype=DTYPE)).item() == 1.0


@pytest.mark.parametrize(
    "name", ["linear", "cosine", "gvp_sine", "gvp_linear", "si_brownian", "si_quadratic"]
)
def test_endpoints(name):
    path = all_paths()[name]
    ends = torch.tensor([0.0, 1.0], dtype=DTYPE)
    torch.testing.assert_close(
        path.alpha(ends), torch.tensor([0.0, 1.0], dtype=DTYPE), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(
        path.sigma(ends), torch.tensor([1.0, 0.0], dtype=DTYPE), atol=1e-12, rtol=0
    )
    if isinstance(path, StochasticInterpolant):
        torch.testing.assert_close(path.gamma(ends), torch.zeros(2, dtype=DTYPE))


def test_vp_path_matches_score_sde_schedule():
    path = VPPath(beta_min=0.1, beta_max=20.0)
    t = torch.linspace(0, 1, 11, dtype=DTYPE)
    s = 1 - t
    integral = 0.1 * s + 0.5 * (20.0 - 0.1) * s**2  # int_0^s beta(u) du, beta linear from 0.1 to 20
    torch.testing.assert_close(path.alpha(t), torch.exp(-0.5 * integral))
    torch.testing.assert_close(path.alpha(t) ** 2 + path.sigma(t) ** 2, torch.ones_like(t))
    assert path.alpha(torch.tensor(1.0, dtype=DTYPE)).item() == 1.0


def test_cosine_equals_sine_generalized_vp():
    t = torch.linspace(0, 1, 11, dtype=DTYPE)
    cosine, gvp = CosinePath(), GeneralizedVPPath("sine")
    torch.testing.assert_close(cosine.alpha(t), gvp.alpha(t))
    torch.testing.assert_close(cosine.sigma(t), gvp.sigma(t), atol=1e-7, rtol=0)


@pytest.mark.parametrize(
    "source, target",
    [
        (LinearPath(), VPPath()),
        (LinearPath(), CosinePath()),
        (CosinePath(), LinearPath()),
        (VPPath(), LinearPath()),
        (LinearPath(), GeneralizedVPPath("linear")),
        (StochasticInterpolant(gamma_scale=2.0), VPPath()),
    ],
    ids=["linear-vp", "linear-cosine", "cosine-linear", "vp-linear", "linear-gvp", "si-vp"],
)
def test_converted_velocity_equals_exact_target_velocity(source, target, gaussian):
    source_field, target_field = GaussianField(source, *gaussian), GaussianField(target, *gaussian)
    converted = convert_velocity(source_field.velocity, source, target)
    generator = torch.Generator().manual_seed(4)
    x_bar = 2 * torch.randn(6, 4, generator=generator, dtype=DTYPE)
    for r in (0.2, 0.35, 0.5, 0.65, 0.8, 0.95):
        torch.testing.assert_close(
            converted(x_bar, r), target_field.velocity(x_bar, torch.tensor(r)), **TOL
        )
    r_batch = torch.linspace(0.2, 0.9, 6, dtype=DTYPE)
    torch.testing.assert_close(
        converted(x_bar, r_batch), target_field.velocity(x_bar, r_batch), **TOL
    )


def test_retiming_derivatives_are_closed_form_and_consistent():
    converted = convert_velocity(lambda x, t: x, LinearPath(), VPPath())
    r = torch.linspace(0.1, 0.9, 9, dtype=DTYPE)
    h = 1e-6
    timing, ahead, behind = (
        converted.retiming(r),
        converted.retiming(r + h),
        converted.retiming(r - h),
    )
    torch.testing.assert_close(timing.dt_dr, (ahead.t - behind.t) / (2 * h), **TOL)
    torch.testing.assert_close(timing.dscale_dr, (ahead.scale - behind.scale) / (2 * h), **TOL)
    # matched snr: scaled source point lies on the target path
    torch.testing.assert_close(timing.scale * LinearPath().alpha(timing.t), VPPath().alpha(r))
    torch.testing.assert_close(timing.scale * LinearPath().sigma(timing.t), VPPath().sigma(r))


def test_retiming_endpoints_are_finite_and_terminal_scale_is_one():
    converted = convert_velocity(lambda x, t: x, LinearPath(), VPPath())
    timing = converted.retiming(torch.tensor([0.0, 1.0], dtype=DTYPE))
    for value in (timing.t, timing.scale, timing.dt_dr, timing.dscale_dr):
        assert torch.isfinite(value).all()
    # r is clamped to [eps, 1 - eps]; there the snr match is exact (the linear path reaches
    # every snr): the scaled source point lies on the VP path.
    clamped = torch.tensor([1e-5, 1 - 1e-5], dtype=DTYPE)
    torch.testing.assert_close(timing.scale * LinearPath().alpha(timing.t), VPPath().alpha(clamped))
    torch.testing.assert_close(timing.scale * LinearPath().sigma(timing.t), VPPath().sigma(clamped))
    # VP's sigma ~ sqrt(beta_min (1 - r)) near data, so s_r - 1 = O(sqrt(eps))
    assert abs(timing.scale[1].item() - 1.0) < 2e-3
    tighter = convert_velocity(lambda x, t: x, LinearPath(), VPPath(), eps=1e-9)
    assert abs(tighter.retiming(torch.tensor(1.0, dtype=DTYPE)).scale.item() - 1.0) < 2e-5
    x = torch.randn(3, 2, dtype=DTYPE)
    torch.testing.assert_close(converted.to_source(converted.to_target(x, 0.4), 0.4), x)
    assert torch.isfinite(converted(x, torch.zeros(3, dtype=DTYPE))).all()
    # u_bar = (s'/s) x_bar + s t' u(x_bar / s, t) with u(x, t) = x: a known multiple of x.
    start = converted.retiming(torch.zeros((), dtype=DTYPE))
    factor = start.dscale_dr / start.scale + start.dt_dr
    torch.testing.assert_close(converted(x, torch.zeros(3, dtype=DTYPE)), factor * x)


def test_converted_velocity_passes_batched_time_and_kwargs():
    seen = {}

    def model(x, t, *, scale):
        seen["t"], seen["scale"] = t, scale
        return torch.zeros_like(x)

    converted = convert_velocity(model, LinearPath(), CosinePath())
    out = converted(torch.randn(4, 3), 0.5, scale=2.0)
    assert seen["t"].shape == (4,) and seen["scale"] == 2.0
    # Cosine r = 0.5 has snr 1, as has linear t = 0.5; there s_r = sin + cos is stationary
    # (s_r' = 0), so a zero source velocity stays zero.
    torch.testing.assert_close(seen["t"], torch.full((4,), 0.5))
    torch.testing.assert_close(out, torch.zeros(4, 3), atol=1e-6, rtol=0)


def test_stochastic_interpolant_draws_latent_noise_with_generator():
    path = StochasticInterpolant()
    x0, x1 = torch.randn(4, 3), torch.randn(4, 3)
    t = torch.full((4,), 0.5)
    first = path.sample(x0, x1, t, generator=torch.Generator().manual_seed(0))
    second = path.sample(x0, x1, t, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(first.x_t, second.x_t)
    assert first.z is not None and not torch.equal(first.x_t, LinearPath().sample(x0, x1, t).x_t)
    expected = path.alpha(t[:, None]) * x1 + path.sigma(t[:, None]) * x0
    torch.testing.assert_close(first.x_t, expected + path.gamma(t[:, None]) * first.z)
    other = path.sample(x0, x1, t, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other.z, first.z)


def test_monte_carlo_conditional_target_matches_closed_form(gaussian):
    """E[target | x_t] ~ u*(x_t): regress the target on x_t per dimension (linear in x_t)."""
    mean, std = gaussian
    path = StochasticInterpolant(gamma_scale=1.0)
    generator = torch.Generator().manual_seed(5)
    n = 200_000
    x1 = mean + std * torch.randn(n, 4, generator=generator, dtype=DTYPE)
    x0 = torch.randn(n, 4, generator=generator, dtype=DTYPE)
    t = torch.full((n,), 0.4, dtype=DTYPE)
    sample = path.sample(x0, x1, t, generator=generator)
    x_centered = sample.x_t - sample.x_t.mean(0)
    slope = (x_centered * (sample.target - sample.target.mean(0))).mean(0) / x_centered.pow(2).mean(
        0
    )
    field = GaussianField(path, mean, std)
    probe = torch.stack([mean * 0.4, mean * 0.4 + 1])
    exact = field.velocity(probe, torch.tensor(0.4, dtype=DTYPE))
    torch.testing.assert_close(slope, exact[1] - exact[0], atol=2e-2, rtol=0)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="alpha_schedule"):
        GeneralizedVPPath("cubic")
    with pytest.raises(ValueError, match="beta_max"):
        VPPath(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ValueError, match="gamma_form"):
        StochasticInterpolant(gamma_form="wiggly")
    with pytest.raises(ValueError, match="`t`"):
        LinearPath().sample(torch.randn(4, 2), torch.randn(4, 2), torch.rand(3))
    with pytest.raises(ValueError, match="`x0`"):
        LinearPath().sample(torch.randn(4, 2), torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match="`target`"):
        LinearPath().convert(torch.randn(2, 2), torch.randn(2, 2), 0.5, "velocity", "epsilon")


def test_paths_construct_from_yaml_via_jsonargparse():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--path", type=AffinePath)
    config = parser.parse_string(
        "path:\n  class_path: mmflow.interpolants.VPPath\n  init_args:\n    beta_max: 10.0\n"
    )
    path = parser.instantiate(config).path
    assert isinstance(path, VPPath) and path.beta_max == 10.0
    config = parser.parse_string(
        "path:\n  class_path: mmflow.interpolants.StochasticInterpolant\n  init_args:\n"
        "    gamma_scale: 2.0\n    path:\n      class_path: mmflow.interpolants.CosinePath\n"
    )
    path = parser.instantiate(config).path
    assert isinstance(path, StochasticInterpolant) and isinstance(path.path, CosinePath)
    assert set(PATHS) >= {"linear", "cosine", "vp", "generalized_vp", "stochastic"}


def test_converted_vp_ode_reaches_the_linear_flow_terminal_sample(gaussian):
    """Integrate the VP-converted field with RK4; ``x_bar(1)`` equals the linear flow's ``x(1)``."""
    mean, std = gaussian
    source, target = LinearPath(), VPPath()
    converted = convert_velocity(GaussianField(source, mean, std).velocity, source, target)

    def linear_flow(x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return t * mean + torch.sqrt(t**2 * std**2 + (1 - t) ** 2) * x0

    x0 = torch.randn(5, 4, generator=torch.Generator().manual_seed(6), dtype=DTYPE)
    start = converted.retiming(torch.zeros((), dtype=DTYPE))
    x_bar = start.scale * linear_flow(x0, start.t)
    grid = torch.linspace(0, 1, 101, dtype=DTYPE)
    for r, r_next in itertools.pairwise(grid):
        h = r_next - r
        k1 = converted(x_bar, r)
        k2 = converted(x_bar + 0.5 * h * k1, r + 0.5 * h)
        k3 = converted(x_bar + 0.5 * h * k2, r + 0.5 * h)
        k4 = converted(x_bar + h * k3, r_next)
        x_bar = x_bar + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    torch.testing.assert_close(
        x_bar, linear_flow(x0, torch.ones((), dtype=DTYPE)), atol=1e-4, rtol=0
    )
