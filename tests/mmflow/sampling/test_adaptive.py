"""Adaptive torchdiffeq sampling against the exact Gaussian and Riccati flows."""

import itertools

import pytest
import torch

from mmflow.sampling import sample
from mmflow.sampling.adaptive import ADAPTIVE_METHODS, integrate_ode, velocity_function
from mmflow.sampling.analytic import GaussianLinearFlow, RiccatiFlow

DTYPE = torch.float64
TOLERANCES = [1e-3, 1e-5, 1e-7, 1e-9]


def tolerance(tol: float) -> dict[str, float]:
    return {"rtol": tol, "atol": tol}


@pytest.fixture
def field() -> GaussianLinearFlow:
    mean = torch.tensor([1.5, -2.0, 0.5], dtype=DTYPE)
    std = torch.tensor([0.3, 0.8, 2.0], dtype=DTYPE)
    return GaussianLinearFlow(mean, std)


@pytest.fixture
def noise() -> torch.Tensor:
    return torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=DTYPE)


def test_error_falls_and_nfe_grows_as_the_tolerance_tightens(field, noise):
    exact = field.flow(noise, 1.0)
    results = [sample(field, noise, "dopri5", solver_options=tolerance(tol)) for tol in TOLERANCES]
    errors = [(r.samples - exact).abs().max().item() for r in results]
    nfes = [r.nfe for r in results]
    assert all(later < earlier for earlier, later in itertools.pairwise(errors)), errors
    assert all(later > earlier for earlier, later in itertools.pairwise(nfes)), nfes
    assert errors[-1] < 1e-7
    for tol, error in zip(TOLERANCES, errors):
        assert error < 1e3 * tol


def test_nfe_is_counted_model_calls(field, noise):
    calls = []

    def model(x, t):
        calls.append(t.shape)
        return field(x, t)

    result = sample(model, noise, "dopri5", solver_options=tolerance(1e-6))
    assert result.nfe == len(calls)
    assert set(calls) == {torch.Size([noise.shape[0]])}


def test_data_to_noise(field, noise):
    data = field.flow(noise, 1.0)
    result = sample(field, data, "dopri5", grid=[1.0, 0.0], solver_options=tolerance(1e-8))
    torch.testing.assert_close(result.samples, noise, rtol=0, atol=1e-6)
    assert result.grid[0] == 1.0 and result.grid[-1] == 0.0
    assert bool((result.grid[1:] < result.grid[:-1]).all())


def test_partial_interval(field, noise):
    start = field.flow(noise, 0.25)
    result = sample(field, start, "dopri5", grid=[0.25, 0.75], solver_options=tolerance(1e-8))
    torch.testing.assert_close(result.samples, field.flow(noise, 0.75), rtol=0, atol=1e-6)


def test_grid_lists_the_accepted_steps(field, noise):
    result = sample(field, noise, "dopri5", solver_options=tolerance(1e-6))
    grid = result.grid
    assert grid[0] == 0.0 and grid[-1] == 1.0
    assert bool((grid[1:] > grid[:-1]).all())
    # dopri5: 2 calls to choose the first step, then 6 new stages per attempted step (FSAL).
    assert result.nfe >= 2 + 6 * (len(grid) - 1)


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_every_adaptive_method_on_a_nonlinear_field(method):
    x0 = 2 * torch.rand(32, 2, generator=torch.Generator().manual_seed(1), dtype=DTYPE) - 1
    field = RiccatiFlow()
    result = sample(field, x0, method, solver_options=tolerance(1e-7))
    torch.testing.assert_close(result.samples, field.flow(x0, 1.0), rtol=0, atol=1e-4)


def test_fixed_grid_method_takes_the_given_steps(field, noise):
    """torchdiffeq's fixed-grid methods are reached through `integrate_ode` (the likelihood's)."""
    calls = []

    def model(x, t):
        calls.append(t)
        return field(x, t)

    samples, grid = integrate_ode(velocity_function(model), noise, 0.0, 1.0, method="rk4", steps=16)
    assert len(calls) == 4 * 16
    torch.testing.assert_close(grid, torch.linspace(0, 1, 17, dtype=DTYPE))
    torch.testing.assert_close(samples, field.flow(noise, 1.0), rtol=0, atol=1e-4)


def test_model_kwargs_reach_the_model(noise):
    def model(x, t, *, scale):
        return scale * torch.ones_like(x)

    result = sample(model, torch.zeros(5, 2), "dopri5", scale=2.0)
    torch.testing.assert_close(result.samples, torch.full((5, 2), 2.0))


def test_gradients_flow_only_when_asked(field, noise):
    x0 = noise.clone().requires_grad_(True)
    assert not sample(field, x0, "dopri5").samples.requires_grad
    out = sample(field, x0, "dopri5", enable_grad=True, solver_options=tolerance(1e-8)).samples
    out.sum().backward()
    # x1 = m + s x0, so d(sum x1)/d x0 = s.
    torch.testing.assert_close(x0.grad, field.std.expand_as(x0), rtol=1e-6, atol=0)


def test_integrate_ode_handles_a_tuple_state():
    """dy/dt = (y, 1): y(1) = e y(0), the clock gains exactly the elapsed time."""
    state = (torch.ones(3, dtype=DTYPE), torch.zeros(3, dtype=DTYPE))
    (y, clock), _ = integrate_ode(
        lambda t, s: (s[0], torch.ones_like(s[1])), state, 0.0, 1.0, rtol=1e-10, atol=1e-10
    )
    torch.testing.assert_close(y, torch.full((3,), torch.e, dtype=DTYPE))
    torch.testing.assert_close(clock, torch.ones(3, dtype=DTYPE))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "dopri42"}, "unknown `method` 'dopri42'"),
        ({"method": "rk4"}, "needs `steps`"),
        ({"method": "dopri5", "steps": 8}, "chooses its own steps"),
        ({"rtol": 0.0}, "`rtol` must be > 0"),
        ({"t0": 0.5, "t1": 0.5}, "distinct times"),
        ({"t1": 1.5}, "distinct times in"),
        ({"method": "rk4", "steps": 4, "solver_options": {"step_size": 0.1}}, "step_size"),
    ],
)
def test_bad_options_are_named(field, noise, kwargs, message):
    kwargs = {"t0": 0.0, "t1": 1.0, **kwargs}
    t0, t1 = kwargs.pop("t0"), kwargs.pop("t1")
    with pytest.raises(ValueError, match=message):
        integrate_ode(velocity_function(field), noise, t0, t1, **kwargs)


@pytest.mark.parametrize(
    "method, kwargs, message",
    [
        ("dopri42", {}, "unknown sampler `dopri42`"),
        ("dopri5", {"solver_options": {"rtol": 0.0}}, "`rtol` must be > 0"),
        ("dopri5", {"grid": [0.5, 0.5]}, "distinct times"),
        ("dopri5", {"grid": [0.0, 1.5]}, "distinct times in"),
        ("dopri5", {"grid": "uniform"}, "the two times"),
        ("dopri5", {"grid": [0.0, 0.5, 1.0]}, "the two times"),
        ("dopri5", {"nfe": 8}, "pass nfe=None"),
        ("dopri5", {"callback": print}, "no `callback`"),
        ("dopri5", {"solver_options": {"steps": 8}}, "no option 'steps'"),
        ("dopri5", {"solver_options": {"method": "rk4"}}, "no option 'method'"),
    ],
)
def test_bad_sample_arguments_are_named(field, noise, method, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(field, noise, method, **kwargs)
