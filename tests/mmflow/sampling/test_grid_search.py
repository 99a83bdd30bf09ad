"""Grids optimised for one sampler against fields whose flows are known in closed form."""

import math

import pytest
import torch
from torch import nn

from mmflow.sampling import sample
from mmflow.sampling.analytic import GaussianLinearFlow
from mmflow.sampling.grid_search import (
    MIN_STEP,
    OBJECTIVES,
    clear_grid_search_memory_cache,
    endpoint_mean_error,
    endpoint_mse,
    grid_from_logits,
    logits_from_grid,
    optimized_grid,
)
from mmflow.timesteps import shifted_grid, uniform_grid


class CountingField(nn.Module):
    """A closed-form field that counts its calls."""

    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.field = field
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.field(x, t)


def narrow_gaussian() -> GaussianLinearFlow:
    """Data N(0.5, 0.1^2) per dimension: trajectories bend sharply near t = 1."""
    return GaussianLinearFlow(
        torch.full((2,), 0.5, dtype=torch.float64), torch.full((2,), 0.1, dtype=torch.float64)
    )


def noise(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 2, generator=generator, dtype=torch.float64)


def endpoint_loss(field, method, times, x0, objective="mse"):
    estimate = sample(field, x0, method=method, nfe=None, grid=times).samples
    return OBJECTIVES[objective](estimate, field.flow(x0, 1.0))


def test_objectives_in_closed_form():
    """Per-sample RMS errors 1, 2 and 10 over 4 coordinates: MSE (1 + 4 + 100) / 3, mean
    error 13 / 3; a non-finite estimate costs ``inf`` under both."""
    reference = torch.zeros(3, 4, dtype=torch.float64)
    estimate = torch.tensor([1.0, 2.0, 10.0], dtype=torch.float64)[:, None].expand(3, 4)
    assert endpoint_mse(estimate, reference) == pytest.approx(35.0)
    assert endpoint_mean_error(estimate, reference) == pytest.approx(13 / 3)
    broken = estimate.clone()
    broken[0, 0] = float("nan")
    assert endpoint_mse(broken, reference) == endpoint_mean_error(broken, reference) == math.inf


def test_logits_give_strictly_increasing_grids_and_invert():
    times = shifted_grid(5, 3.0, torch.float64)
    torch.testing.assert_close(grid_from_logits(logits_from_grid(times)), times, atol=1e-5, rtol=0)
    extreme = grid_from_logits(torch.tensor([-800.0, 800.0, 0.0], dtype=torch.float64))
    assert extreme[0] == 0 and extreme[-1] == 1
    assert bool((extreme.diff() >= MIN_STEP * (1 - 1e-9)).all())


@pytest.mark.parametrize(
    ("method", "nfe", "init", "objective"),
    [
        ("heun", 8, "uniform", "mse"),
        ("unipc_bh2_2", 6, shifted_grid(6, 2.0, torch.float64), "mse"),
        ("unipc_bh2_2", 6, shifted_grid(6, 2.0, torch.float64), "mean_error"),
    ],
)
def test_optimised_grid_never_does_worse_than_its_start_on_the_fit_noise(
    method, nfe, init, objective
):
    field, fit = narrow_gaussian(), noise(32, seed=0)
    start = uniform_grid(nfe // 2 if method == "heun" else nfe, torch.float64)
    start = start if isinstance(init, str) else init
    times = optimized_grid(
        field,
        fit,
        method,
        nfe,
        reference=field.flow(fit, 1.0),
        init=init,
        objective=objective,
        max_evals=60,
        cache=False,
    )
    assert times.shape == start.shape and times[0] == 0 and times[-1] == 1
    assert bool((times.diff() > 0).all())
    fitted = endpoint_loss(field, method, times, fit, objective)
    assert fitted < endpoint_loss(field, method, start, fit, objective)


def test_optimised_grid_beats_uniform_on_held_out_noise():
    """Towards a narrow target the uniform grid wastes steps early; the fitted Euler grid,
    with the default dopri5 reference, must do much better on noise it never saw."""
    field = narrow_gaussian()
    times = optimized_grid(field, noise(64, seed=1), "euler", 6, max_evals=300, cache=False)
    held_out = noise(256, seed=2)
    optimised = endpoint_loss(field, "euler", times, held_out)
    uniform = endpoint_loss(field, "euler", uniform_grid(6, torch.float64), held_out)
    assert optimised < 0.25 * uniform
    assert times[-1] - times[-2] < 1 / 6  # the steps crowd towards the data


def test_the_cache_avoids_model_calls(tmp_path):
    clear_grid_search_memory_cache()
    field, fit = CountingField(narrow_gaussian()), noise(16, seed=3)
    reference = narrow_gaussian().flow(fit, 1.0)
    arguments = {"reference": reference, "max_evals": 20, "cache_dir": tmp_path}
    first = optimized_grid(field, fit, "midpoint", 6, **arguments)
    assert field.calls > 0 and len(list(tmp_path.glob("grid-midpoint-nfe6-*.json"))) == 1
    field.calls = 0
    torch.testing.assert_close(optimized_grid(field, fit, "midpoint", 6, **arguments), first)
    clear_grid_search_memory_cache()
    torch.testing.assert_close(optimized_grid(field, fit, "midpoint", 6, **arguments), first)
    assert field.calls == 0
    optimized_grid(field, fit, "midpoint", 6, **{**arguments, "max_evals": 21})
    assert field.calls > 0  # another budget is another grid
    field.calls = 0
    optimized_grid(field, fit, "midpoint", 6, **{**arguments, "objective": "mean_error"})
    assert field.calls > 0  # another objective is another grid
    assert len(list(tmp_path.glob("grid-midpoint-nfe6-*.json"))) == 3


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"method": "heun", "nfe": 3}, "`nfe`"),
        ({"method": "nope", "nfe": 4}, "unknown sampler `nope`"),
        ({"method": "euler", "nfe": 0}, "`nfe`"),
        ({"method": "euler", "nfe": 4, "max_evals": 0}, "`max_evals`"),
        ({"method": "euler", "nfe": 4, "init": "cosine"}, "`init`"),
        ({"method": "euler", "nfe": 4, "init": [0.0, 0.5, 1.0]}, "`init` must run"),
        ({"method": "euler", "nfe": 4, "reference": torch.zeros(3, 2)}, "`reference`"),
        ({"method": "euler", "nfe": 4, "solver_options": {"order": 2}}, "no option 'order'"),
        ({"method": "euler", "nfe": 4, "objective": "mae"}, "unknown `objective` 'mae'"),
    ],
)
def test_bad_arguments_are_named(arguments, message):
    field, fit = narrow_gaussian(), noise(4, seed=4)
    with pytest.raises(ValueError, match=message):
        optimized_grid(
            field, fit, cache=False, max_evals=arguments.pop("max_evals", 5), **arguments
        )


def test_noise_must_be_a_batch():
    with pytest.raises(ValueError, match="`noise` must be a batch"):
        optimized_grid(narrow_gaussian(), torch.zeros(2), "euler", 4, cache=False)
