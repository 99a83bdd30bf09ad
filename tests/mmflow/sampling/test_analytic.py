"""GaussianMixtureFlow against closed forms: the continuity equation, a Monte-Carlo estimate
of E[x1 - x0 | x_t], its endpoint densities and its one-component reduction."""

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from mmflow.sampling.analytic import GaussianLinearFlow, GaussianMixtureFlow

DTYPE = torch.float64


@pytest.fixture
def mixture() -> GaussianMixtureFlow:
    """Three anisotropic components in 2-D: a nonlinear field with a non-diagonal Jacobian."""
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=DTYPE)
    means = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.5, -2.0]], dtype=DTYPE)
    stds = torch.tensor([[0.4, 1.0], [0.8, 0.3], [0.6, 0.6]], dtype=DTYPE)
    return GaussianMixtureFlow(weights, means, stds)


def points(n: int = 6, seed: int = 0) -> torch.Tensor:
    return 1.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def divergence_and_score(mixture, x, t):
    """``div u`` and ``grad log p_t`` at each point, by autograd."""
    x = x.clone().requires_grad_(True)
    velocity = mixture(x, t)
    divergence = sum(
        torch.autograd.grad(velocity[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(2)
    )
    (score,) = torch.autograd.grad(mixture.log_prob(x, t).sum(), x)
    return divergence, score, velocity.detach()


@pytest.mark.parametrize("time", [0.1, 0.5, 0.9])
def test_continuity_equation(mixture, time):
    """d log p_t / dt = -div u - u . grad log p_t, i.e. d p_t/dt = -div(p_t u), pointwise."""
    x = points()
    t = torch.full((x.shape[0],), time, dtype=DTYPE)
    eps = 1e-5
    d_log_p = (mixture.log_prob(x, t + eps) - mixture.log_prob(x, t - eps)) / (2 * eps)
    divergence, score, velocity = divergence_and_score(mixture, x, t)
    transport = -divergence - (velocity * score).sum(dim=1)
    torch.testing.assert_close(d_log_p, transport, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("time", [0.3, 0.6])
def test_velocity_is_the_conditional_expectation(mixture, time):
    """Self-normalised Monte Carlo of E[x1 - x0 | x_t = x].

    Given x1, x_t = x forces x0 = (x - t x1) / (1 - t), with likelihood N(x; t x1, (1 - t)^2 I);
    weighting data draws by it estimates the posterior mean of x1 - x0.
    """
    data = mixture.sample_data(200_000, torch.Generator().manual_seed(1))
    x = points(4, seed=2)
    spread = 1 - time
    residual = x[:, None, :] - time * data[None]
    log_weight = -0.5 * (residual**2).sum(-1) / spread**2
    weight = torch.softmax(log_weight, dim=1)
    noise = residual / spread
    estimate = (weight[..., None] * (data[None] - noise)).sum(dim=1)
    exact = mixture(x, torch.full((x.shape[0],), time, dtype=DTYPE))
    torch.testing.assert_close(estimate, exact, rtol=0, atol=0.03)


def test_density_at_the_ends(mixture):
    x = points(32)
    standard = Normal(torch.zeros(2, dtype=DTYPE), torch.ones(2, dtype=DTYPE))
    torch.testing.assert_close(mixture.log_prob(x, 0.0), standard.log_prob(x).sum(-1))
    data = MixtureSameFamily(
        Categorical(probs=mixture.weights),
        Independent(Normal(mixture.means, mixture.stds), 1),
    )
    torch.testing.assert_close(mixture.log_prob(x, 1.0), data.log_prob(x))


def test_density_is_normalised(mixture):
    """The closed-form p_t integrates to 1 (trapezoid rule on a wide grid)."""
    axis = torch.linspace(-8, 8, 401, dtype=DTYPE)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    cell = (axis[1] - axis[0]) ** 2
    for time in (0.0, 0.5, 1.0):
        mass = mixture.log_prob(grid, time).exp().sum() * cell
        assert abs(mass.item() - 1) < 1e-6


def test_one_component_is_the_gaussian_flow():
    mean = torch.tensor([1.5, -2.0, 0.5], dtype=DTYPE)
    std = torch.tensor([0.3, 0.8, 2.0], dtype=DTYPE)
    gaussian = GaussianLinearFlow(mean, std)
    single = GaussianMixtureFlow(torch.tensor([2.0], dtype=DTYPE), mean[None], std[None])
    generator = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(50, 3, generator=generator, dtype=DTYPE)
    t = torch.rand(50, generator=generator, dtype=DTYPE)
    assert torch.equal(single(x, t), gaussian(x, t))
    variance = gaussian.variance(t[:, None])
    closed_form = Normal(t[:, None] * mean, variance.sqrt()).log_prob(x).sum(-1)
    torch.testing.assert_close(single.log_prob(x, t), closed_form)


def test_far_points_stay_finite(mixture):
    """Responsibilities are a log-space softmax: no 0/0 where every density underflows."""
    x = torch.tensor([[400.0, -300.0], [-1e3, 1e3]], dtype=DTYPE)
    t = torch.tensor([0.999, 0.9], dtype=DTYPE)
    assert torch.isfinite(mixture(x, t)).all()
    assert torch.isfinite(mixture.log_prob(x, t)).all()
    torch.testing.assert_close(mixture.responsibilities(x, t).sum(1), torch.ones(2, dtype=DTYPE))


def test_sample_data_moments(mixture):
    data = mixture.sample_data(100_000, torch.Generator().manual_seed(3))
    mean = (mixture.weights[:, None] * mixture.means).sum(0)
    second = (mixture.weights[:, None] * (mixture.means**2 + mixture.stds**2)).sum(0)
    standard_error = ((second - mean**2) / data.shape[0]).sqrt()
    assert ((data.mean(0) - mean).abs() < 4 * standard_error).all()
    torch.testing.assert_close(data.var(0), second - mean**2, rtol=0.03, atol=0)


def test_image_shaped_events():
    means = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    mixture = GaussianMixtureFlow(torch.tensor([0.5, 0.5], dtype=DTYPE), means, means.abs() + 0.5)
    x = torch.randn(4, 3, 2, 2, dtype=DTYPE)
    t = torch.full((4,), 0.4, dtype=DTYPE)
    flat = GaussianMixtureFlow(mixture.weights, means.flatten(1), mixture.stds.flatten(1))
    torch.testing.assert_close(mixture(x, t).flatten(1), flat(x.flatten(1), t))
    torch.testing.assert_close(mixture.log_prob(x, t), flat.log_prob(x.flatten(1), t))
    assert mixture.sample_data(5).shape == (5, 3, 2, 2)


def test_log_prob_constant_matches_dimension():
    """At t = 0 and x = 0 the density is N(0; 0, I) = (2 pi)^(-D/2) whatever the mixture."""
    mixture = GaussianMixtureFlow(
        torch.ones(2, dtype=DTYPE), torch.randn(2, 5, dtype=DTYPE), torch.ones(2, 5, dtype=DTYPE)
    )
    value = mixture.log_prob(torch.zeros(1, 5, dtype=DTYPE), 0.0)
    assert math.isclose(value.item(), -2.5 * math.log(2 * math.pi), rel_tol=1e-12)


@pytest.mark.parametrize(
    "weights, means, stds, message",
    [
        (torch.ones(2, 1), torch.zeros(2, 2), torch.ones(2, 2), "weights"),
        (torch.ones(2), torch.zeros(2, 2), torch.ones(2, 3), "differ in shape"),
        (torch.ones(3), torch.zeros(2, 2), torch.ones(2, 2), "K = 3"),
        (torch.tensor([1.0, -1.0]), torch.zeros(2, 2), torch.ones(2, 2), "non-negative"),
        (torch.ones(2), torch.zeros(2, 2), torch.zeros(2, 2), "stds"),
    ],
)
def test_bad_arguments_are_named(weights, means, stds, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixtureFlow(weights, means, stds)


def test_wrong_event_shape_is_refused(mixture):
    with pytest.raises(ValueError, match="`x` must have shape"):
        mixture(torch.zeros(3, 3, dtype=DTYPE), torch.zeros(3, dtype=DTYPE))


def test_transport_composes_and_matches_the_flow():
    field = GaussianLinearFlow(
        torch.tensor([1.0, -2.0], dtype=torch.float64),
        torch.tensor([0.4, 1.7], dtype=torch.float64),
    )
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t, s, u = (torch.full((32,), v, dtype=torch.float64) for v in (0.2, 0.55, 0.9))
    x_t = field.flow(x0, 0.2)
    torch.testing.assert_close(field.transport(x_t, t, u), field.flow(x0, 0.9))
    torch.testing.assert_close(
        field.transport(field.transport(x_t, t, s), s, u), field.flow(x0, 0.9)
    )


def test_average_velocity_is_the_mean_of_the_velocity_along_the_flow():
    """``(1/h) int_t^{t+h} u*(x_s, s) ds`` by Simpson's rule on 201 points equals the closed form,
    and the closed form tends to ``u*`` as ``h -> 0``."""
    field = GaussianLinearFlow(
        torch.tensor([1.0, -2.0], dtype=torch.float64),
        torch.tensor([0.4, 1.7], dtype=torch.float64),
    )
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t0, h = 0.1, 0.7
    times = torch.linspace(t0, t0 + h, 201, dtype=torch.float64)
    velocities = torch.stack([field(field.flow(x0, s.item()), s.expand(16)) for s in times])
    weights = torch.ones(201, dtype=torch.float64)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    integral = (weights[:, None, None] * velocities).sum(0) * (h / 200) / 3
    t = torch.full((16,), t0, dtype=torch.float64)
    average = field.average_velocity(field.flow(x0, t0), t, torch.full_like(t, h))
    torch.testing.assert_close(average, integral / h, rtol=1e-9, atol=1e-9)
    zero_step = field.average_velocity(field.flow(x0, t0), t, torch.zeros_like(t))
    torch.testing.assert_close(zero_step, field(field.flow(x0, t0), t))
