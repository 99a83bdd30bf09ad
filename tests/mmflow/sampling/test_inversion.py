"""Inversion against the exact inverse of the Gaussian flow, and the round trip's order."""

import numpy as np
import pytest
import torch

from mmflow.sampling import SAMPLERS, sample
from mmflow.sampling.analytic import GaussianLinearFlow, RiccatiFlow
from mmflow.sampling.inversion import invert

DTYPE = torch.float64


@pytest.fixture
def field() -> GaussianLinearFlow:
    mean = torch.tensor([1.0, -1.0], dtype=DTYPE)
    std = torch.tensor([1.5, 2.0], dtype=DTYPE)
    return GaussianLinearFlow(mean, std)


@pytest.fixture
def data(field) -> torch.Tensor:
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    return field.flow(noise, 1.0)


def exact_inverse(field, x1):
    """The flow is x1 = m + s x0, so x0 = (x1 - m) / s."""
    return (x1 - field.mean) / field.std


def fitted_order(errors, steps):
    return float(np.polyfit(np.log(1.0 / np.array(steps)), np.log(errors), 1)[0])


def run(field, x1, method, steps):
    return invert(field, x1, method, nfe=steps * SAMPLERS[method].evals_per_step)


@pytest.mark.parametrize(
    "method, steps, tolerance",
    [("euler", 256, 5e-2), ("heun", 64, 1e-3), ("midpoint", 64, 1e-4), ("rk4", 32, 1e-6)],
)
def test_inverted_noise_is_the_exact_inverse(field, data, method, steps, tolerance):
    result = run(field, data, method, steps)
    torch.testing.assert_close(result.noise, exact_inverse(field, data), rtol=0, atol=tolerance)


@pytest.mark.parametrize(
    "method, order, steps",
    [("euler", 1, [16, 32, 64, 128, 256]), ("heun", 2, [8, 16, 32, 64, 128])],
)
def test_noise_error_falls_at_the_solver_order(field, data, method, order, steps):
    exact = exact_inverse(field, data)
    errors = [(run(field, data, method, n).noise - exact).abs().max().item() for n in steps]
    slope = fitted_order(errors, steps)
    assert abs(slope - order) <= 0.3, f"{method}: noise error order {slope:.2f}, expected {order}"


# The round trip x1 -> x0_hat -> x1_hat: for odd order p (Euler) the local errors of the
# backward and the forward step add, O(h^p); for even p they cancel at leading order,
# O(h^(p+1)). Measured on both fields: Euler 0.97, Heun 3.0, midpoint 3.0, RK4 5.0.
ROUND_TRIP_ORDERS = [
    ("euler", 1, [16, 32, 64, 128, 256]),
    ("heun", 3, [8, 16, 32, 64, 128]),
    ("midpoint", 3, [8, 16, 32, 64, 128]),
    ("rk4", 5, [4, 8, 16, 32]),
]


@pytest.mark.parametrize("method, order, steps", ROUND_TRIP_ORDERS)
def test_reconstruction_error_order_on_the_gaussian(field, data, method, order, steps):
    errors = [run(field, data, method, n).error.max().item() for n in steps]
    slope = fitted_order(errors, steps)
    assert abs(slope - order) <= 0.3, f"{method}: round-trip order {slope:.2f}, expected {order}"


@pytest.mark.parametrize("method, order, steps", ROUND_TRIP_ORDERS)
def test_reconstruction_error_order_on_a_nonlinear_field(method, order, steps):
    x0 = 2 * torch.rand(64, 3, generator=torch.Generator().manual_seed(0), dtype=DTYPE) - 1
    field = RiccatiFlow()
    errors = [run(field, field.flow(x0, 1.0), method, n).error.max().item() for n in steps]
    slope = fitted_order(errors, steps)
    assert abs(slope - order) <= 0.3, f"{method}: round-trip order {slope:.2f}, expected {order}"


def test_error_is_the_per_sample_rms(field, data):
    result = invert(field, data, "euler", nfe=8)
    rms = (result.reconstruction - data).pow(2).mean(dim=1).sqrt()
    assert result.error.shape == (data.shape[0],)
    torch.testing.assert_close(result.error, rms)
    assert bool((result.error > 0).all())


def test_nfe_counts_both_passes(field, data):
    result = invert(field, data, "heun", nfe=16)
    assert result.nfe == 32
    torch.testing.assert_close(result.grid, torch.linspace(0, 1, 9, dtype=DTYPE))


def test_shifted_and_explicit_grids(field, data):
    shifted = invert(field, data, "rk4", nfe=64, grid="shifted", grid_kwargs={"shift": 3.0})
    assert shifted.grid[1] < 1 / 16  # a shift > 1 spends the early steps near noise
    planned = sample(field, data, "rk4", nfe=64, grid="shifted", grid_kwargs={"shift": 3.0})
    torch.testing.assert_close(shifted.grid, planned.grid, rtol=0, atol=0)
    torch.testing.assert_close(shifted.noise, exact_inverse(field, data), rtol=0, atol=1e-4)
    explicit = invert(field, data, "euler", nfe=None, grid=[0.0, 0.5, 1.0])
    assert explicit.nfe == 4


def test_model_kwargs_and_solver_options_are_passed(field, data):
    seen = []

    def model(x, t, *, label):
        seen.append(label)
        return field(x, t)

    result = invert(model, data, "euler", nfe=4, label="cat")
    assert seen == ["cat"] * result.nfe
    with pytest.raises(ValueError, match="sampler `euler` has no option 'order'"):
        invert(field, data, "euler", nfe=4, solver_options={"order": 2})


def test_decreasing_grid_is_refused(field, data):
    with pytest.raises(ValueError, match="generation grid and must increase"):
        invert(field, data, "euler", nfe=None, grid=[1.0, 0.5, 0.0])


def test_unknown_method_is_refused(field, data):
    with pytest.raises(ValueError, match="unknown sampler"):
        invert(field, data, "dopri42", nfe=4)
