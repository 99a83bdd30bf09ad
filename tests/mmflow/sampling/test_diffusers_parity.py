"""mmflow's Euler sampler equals diffusers' FlowMatchEulerDiscreteScheduler on the same grid.

diffusers (SD3, Flux) writes the noise level ``sigma = 1 - t`` and a model output
``v = noise - data = -u``; it steps ``x <- x + (sigma_next - sigma) v``, which is our
``x <- x + (t_next - t) u``. The model is fed ``t = 1 - sigma`` with sigma read from
``scheduler.sigmas``, never from ``scheduler.timesteps`` (``1000 sigma``, rounded to integers
by some schedulers).
"""

import diffusers  # a dev dependency: `make test` installs it with `pip install -e ".[dev]"`
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from mmflow.sampling import sample
from mmflow.sampling.analytic import GaussianLinearFlow, GaussianMixtureFlow
from mmflow.timesteps import shifted_grid, uniform_grid

DTYPE = torch.float32


def time_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """diffusers' noise level to our time: ``t = 1 - sigma``."""
    return 1 - sigma


def sigmas_from_grid(ts: torch.Tensor) -> list[float]:
    """Our increasing grid to the sigmas ``set_timesteps`` takes (it appends the final 0)."""
    return (1 - ts[:-1]).tolist()


def as_diffusers_model(model):
    """Our velocity model in diffusers' convention: input sigma, output ``v = -u``."""

    def predict(sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = time_from_sigma(sigma).to(sample.dtype).expand(sample.shape[0])
        return -model(sample, t)

    return predict


def diffusers_euler(scheduler, model, noise: torch.Tensor) -> torch.Tensor:
    predict = as_diffusers_model(model)
    x = noise
    for i, timestep in enumerate(scheduler.timesteps):
        v = predict(x, scheduler.sigmas[i])
        x = scheduler.step(v, timestep, x).prev_sample
    return x


class TimeRecorder:
    def __init__(self, model) -> None:
        self.model = model
        self.times: list[torch.Tensor] = []

    def __call__(self, x, t):
        self.times.append(t[0].clone())
        return self.model(x, t)


def image_gaussian() -> GaussianLinearFlow:
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 8, 8, generator=generator)
    std = 0.2 + torch.rand(4, 8, 8, generator=generator)
    return GaussianLinearFlow(mean, std)


def mixture() -> GaussianMixtureFlow:
    weights = torch.tensor([0.3, 0.7])
    means = torch.tensor([[2.0, 0.0, 1.0], [-1.0, 1.5, -0.5]])
    stds = torch.tensor([[0.4, 1.0, 0.6], [0.8, 0.3, 0.5]])
    return GaussianMixtureFlow(weights, means, stds)


MODELS = {"gaussian-image": image_gaussian, "mixture": mixture}


def noise_like(model) -> torch.Tensor:
    shape = model.mean.shape if isinstance(model, GaussianLinearFlow) else model.event_shape
    return torch.randn(3, *shape, generator=torch.Generator().manual_seed(1), dtype=DTYPE)


def assert_same_run(model, scheduler, ours_kwargs) -> None:
    noise = noise_like(model)
    ours_model, theirs_model = TimeRecorder(model), TimeRecorder(model)
    ours = sample(ours_model, noise, method="euler", **ours_kwargs)
    theirs = diffusers_euler(scheduler, theirs_model, noise)
    torch.testing.assert_close(torch.stack(ours_model.times), torch.stack(theirs_model.times))
    assert ours.nfe == len(theirs_model.times)
    torch.testing.assert_close(ours.samples, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("steps", [4, 28])
def test_euler_matches_on_a_uniform_grid(name, steps):
    grid = uniform_grid(steps, dtype=DTYPE)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(sigmas=sigmas_from_grid(grid))
    torch.testing.assert_close(time_from_sigma(scheduler.sigmas), grid)
    assert_same_run(MODELS[name](), scheduler, {"nfe": steps})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_euler_matches_on_a_shifted_grid(name):
    """diffusers shifts the sigmas it is given with ``shift``; ours shifts the times."""
    steps = 12
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=sigmas_from_grid(uniform_grid(steps, dtype=DTYPE)))
    torch.testing.assert_close(
        time_from_sigma(scheduler.sigmas), shifted_grid(steps, 3.0, dtype=DTYPE)
    )
    assert_same_run(
        MODELS[name](), scheduler, {"nfe": steps, "grid": "shifted", "grid_kwargs": {"shift": 3.0}}
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_euler_matches_on_the_schedulers_default_grid(name):
    """diffusers' own default schedule, run by us on ``t = 1 - scheduler.sigmas``.

    It is not our shifted grid: its last sigma before the appended 0 is the shifted
    ``sigma_min`` shifted once more (0.0089 here, versus 0.25 on ``shifted_grid(10, 3)``).
    """
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(num_inference_steps=10)
    grid = time_from_sigma(scheduler.sigmas)
    assert grid[0] == 0 and grid[-1] == 1 and grid[-2] > 0.99
    assert_same_run(MODELS[name](), scheduler, {"nfe": None, "grid": grid})


def test_diffusers_version_is_the_one_checked():
    assert diffusers.__version__.startswith("0.42")
