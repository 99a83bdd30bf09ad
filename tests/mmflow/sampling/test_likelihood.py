"""Log-likelihood by the instantaneous change of variables, against closed-form densities."""

import math

import pytest
import torch
from torch.distributions import Normal

from mmflow.sampling.analytic import GaussianLinearFlow, GaussianMixtureFlow
from mmflow.sampling.likelihood import (
    draw_probes,
    exact_divergence,
    hutchinson_divergence,
    log_likelihood,
)

DTYPE = torch.float64


@pytest.fixture
def gaussian() -> GaussianLinearFlow:
    mean = torch.tensor([1.0, -1.0, 0.5], dtype=DTYPE)
    std = torch.tensor([1.5, 0.3, 0.8], dtype=DTYPE)
    return GaussianLinearFlow(mean, std)


@pytest.fixture
def mixture() -> GaussianMixtureFlow:
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=DTYPE)
    means = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.5, -2.0]], dtype=DTYPE)
    stds = torch.tensor([[0.4, 1.0], [0.8, 0.3], [0.6, 0.6]], dtype=DTYPE)
    return GaussianMixtureFlow(weights, means, stds)


def gaussian_points(field, n=16, seed=0):
    """Draws from the target, spread to 2.5 standard deviations to include its tails."""
    z = torch.randn(
        n, *field.mean.shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE
    )
    return field.mean + field.std * z.clamp(-2.5, 2.5)


def closed_form(field, x):
    return Normal(field.mean, field.std).log_prob(x).flatten(1).sum(1)


@pytest.mark.parametrize(
    "solver", [{"method": "dopri5"}, {"method": "rk4", "steps": 16}], ids=["dopri5", "rk4"]
)
def test_gaussian_log_density_within_a_hundredth_of_a_nat_per_dimension(gaussian, solver):
    x1 = gaussian_points(gaussian)
    result = log_likelihood(gaussian, x1, divergence="exact", **solver)
    per_dimension = (result.log_likelihood - closed_form(gaussian, x1)).abs() / x1.shape[1]
    assert per_dimension.max().item() < 0.01
    assert per_dimension.max().item() < 1e-4  # measured 2.2e-5 (dopri5), 5.5e-6 (rk4)


def test_gaussian_converges_with_the_tolerance(gaussian):
    x1 = gaussian_points(gaussian)
    result = log_likelihood(gaussian, x1, divergence="exact", rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(result.log_likelihood, closed_form(gaussian, x1), rtol=0, atol=1e-7)
    torch.testing.assert_close(result.noise, (x1 - gaussian.mean) / gaussian.std, rtol=0, atol=1e-7)


def test_bits_per_dimension(gaussian):
    x1 = gaussian_points(gaussian)
    result = log_likelihood(gaussian, x1, divergence="exact")
    expected = -result.log_likelihood / (3 * math.log(2))
    torch.testing.assert_close(result.bits_per_dim, expected)


def test_mixture_log_prob_at_data_time(mixture):
    x1 = torch.cat(
        [mixture.sample_data(16, torch.Generator().manual_seed(0)), torch.zeros(1, 2, dtype=DTYPE)]
    )
    result = log_likelihood(mixture, x1, divergence="exact", rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(result.log_likelihood, mixture.log_prob(x1, 1.0), rtol=0, atol=1e-5)
    default = log_likelihood(mixture, x1, divergence="exact")
    per_dimension = (default.log_likelihood - mixture.log_prob(x1, 1.0)).abs() / 2
    assert per_dimension.max().item() < 0.01


def test_image_shaped_data():
    mean = torch.randn(2, 2, 2, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    field = GaussianLinearFlow(mean, mean.abs() + 0.5)
    x1 = gaussian_points(field, n=4)
    result = log_likelihood(field, x1, divergence="exact", method="rk4", steps=16)
    torch.testing.assert_close(result.log_likelihood, closed_form(field, x1), rtol=0, atol=1e-4)


def divergence_at(mixture, x, t, probes=None):
    x = x.clone().requires_grad_(True)
    velocity = mixture(x, t)
    if probes is None:
        return exact_divergence(velocity, x)
    return hutchinson_divergence(velocity, x, probes)


def test_exact_divergence_is_the_jacobian_trace(mixture):
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    t = torch.full((5,), 0.6, dtype=DTYPE)
    jacobians = [
        torch.autograd.functional.jacobian(lambda p, s=t[i : i + 1]: mixture(p[None], s)[0], x[i])
        for i in range(5)
    ]
    traces = torch.stack([jacobian.trace() for jacobian in jacobians])
    torch.testing.assert_close(divergence_at(mixture, x, t), traces)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(mixture, probe):
    """Many probes at one point: the mean is the exact trace within 4 standard errors."""
    x = torch.tensor([[0.3, 0.4]], dtype=DTYPE).expand(20_000, 2)
    t = torch.full((x.shape[0],), 0.7, dtype=DTYPE)
    probes = draw_probes(x, 1, probe, torch.Generator().manual_seed(0))
    estimates = divergence_at(mixture, x, t, probes)
    exact = divergence_at(mixture, x[:1], t[:1])
    standard_error = estimates.std() / math.sqrt(x.shape[0])
    assert estimates.std() > 0.05  # the Jacobian is not diagonal: the estimate really varies
    assert abs(estimates.mean() - exact) < 4 * standard_error


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_log_likelihood_is_unbiased(mixture, probe):
    """Copies of one point, one probe each, on a fixed RK4 grid: the path is the same for all
    copies, so the average of the Hutchinson log-likelihoods is the exact one on that grid."""
    x1 = torch.tensor([[-0.8, 1.2]], dtype=DTYPE)
    exact = log_likelihood(mixture, x1, divergence="exact", method="rk4", steps=8)
    copies = x1.expand(2000, 2)
    estimated = log_likelihood(
        mixture,
        copies,
        divergence="hutchinson",
        probe=probe,
        method="rk4",
        steps=8,
        generator=torch.Generator().manual_seed(1),
    )
    values = estimated.log_likelihood
    assert values.std() > 0.01
    assert abs(values.mean() - exact.log_likelihood[0]) < 4 * values.std() / math.sqrt(2000)


def test_more_probes_lower_the_variance(mixture):
    x = torch.tensor([[0.3, 0.4]], dtype=DTYPE).expand(4000, 2)
    t = torch.full((x.shape[0],), 0.7, dtype=DTYPE)
    generator = torch.Generator().manual_seed(2)
    one = divergence_at(mixture, x, t, draw_probes(x, 1, "rademacher", generator))
    eight = divergence_at(mixture, x, t, draw_probes(x, 8, "rademacher", generator))
    ratio = (one.var() / eight.var()).item()
    assert 6 < ratio < 10  # the variance falls as 1 / num_probes


def test_probes_have_identity_second_moment():
    like = torch.zeros(50_000, 3, dtype=DTYPE)
    for probe in ("rademacher", "gaussian"):
        z = draw_probes(like, 1, probe, torch.Generator().manual_seed(0))[0]
        torch.testing.assert_close(
            z.T @ z / z.shape[0], torch.eye(3, dtype=DTYPE), atol=0.03, rtol=0
        )
    assert set(draw_probes(like[:10], 2, "rademacher").unique().tolist()) <= {-1.0, 1.0}


def test_nfe_counts_forward_calls(gaussian):
    calls = []

    def model(x, t):
        calls.append(1)
        return gaussian(x, t)

    x1 = gaussian_points(gaussian)
    assert log_likelihood(model, x1, method="rk4", steps=4).nfe == len(calls) == 16


def test_velocity_independent_of_x_has_zero_divergence():
    """u = c: x0 = x1 - c and log p_1(x1) = log N(x1 - c; 0, I)."""
    shift = torch.tensor([0.5, -1.0], dtype=DTYPE)
    x1 = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=DTYPE)

    def constant(x, t):
        return shift.expand_as(x)

    for divergence in ("exact", "hutchinson"):
        result = log_likelihood(constant, x1, divergence=divergence, method="euler", steps=2)
        expected = Normal(0.0, 1.0).log_prob(x1 - shift).sum(1)
        torch.testing.assert_close(result.log_likelihood, expected)


def test_model_kwargs_reach_the_model(gaussian):
    seen = []

    def model(x, t, *, label):
        seen.append(label)
        return gaussian(x, t)

    x1 = gaussian_points(gaussian, n=3)
    result = log_likelihood(model, x1, divergence="exact", method="rk4", steps=4, label="dog")
    assert seen == ["dog"] * result.nfe


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"divergence": "jacobian"}, "`divergence` must be one of"),
        ({"probe": "uniform"}, "`probe` must be one of"),
        ({"num_probes": 0}, "`num_probes` must be a positive integer"),
        ({"method": "rk4"}, "needs `steps`"),
    ],
)
def test_bad_options_are_named(gaussian, kwargs, message):
    with pytest.raises(ValueError, match=message):
        log_likelihood(gaussian, gaussian_points(gaussian, n=2), **kwargs)
