"""No sampling method reads a tensor's value on the host between model calls.

On CUDA such a read (``bool``, ``float``, ``.item()``, ``.tolist()``, ``.cpu()`` ...) waits for
the GPU and stalls the sampler. Here every method runs on noise of a tensor type that raises
on any of them, so a step that branches on data fails; checks on the time grid, which stays
an ordinary tensor, are allowed. Adaptive solvers decide on step sizes from the data by
design, and diffusers' schedulers are not ours: both are left out.
"""

from __future__ import annotations

import pytest
import torch

from mmflow.sampling import SAMPLERS, Denoising, GaussianLinearFlow, sample

HOST_READS = {"__bool__", "__float__", "__int__", "__index__", "item", "tolist", "numpy", "cpu"}


class HostReadError(AssertionError):
    """A value of a sampled tensor was read on the host."""


class NoHostReads(torch.Tensor):
    """A tensor (and everything computed from it) whose values cannot be read on the host."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            raise HostReadError(f"`{name}` read a sampled tensor on the host")
        return super().__torch_function__(func, types, args, kwargs or {})


FIELD = GaussianLinearFlow(
    torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([0.5, 1.5], dtype=torch.float64)
)


def trapped(x: torch.Tensor) -> NoHostReads:
    return x.as_subclass(NoHostReads)


def noise(batch: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 2, generator=generator, dtype=torch.float64)


def reward(x1_hat, **kwargs):
    return -(x1_hat - 1).square().sum(dim=1)


def damping(x, t, velocity):
    """A stand-in velocity refiner for FlowTurbo's refiner steps."""
    return -0.1 * velocity


def options_and_nfe(name: str) -> tuple[dict, int]:
    """Options that run method ``name`` on ``FIELD`` and a budget it can spend exactly."""
    spec = SAMPLERS[name]
    generator = torch.Generator().manual_seed(1)
    if name == "flowturbo":
        options = {"heun_steps": 1, "corrector_steps": 1, "refiner_steps": 2, "refiner": damping}
        return options, 3
    if spec.kind == "search":
        options = {"reward": reward, "steps": 4, "generator": generator}
        if name == "rbf":
            options["initial_particles"] = 3
        return options, 24
    options = {
        "sde": {"generator": generator},
        "guidance": {"loss_fn": lambda x: x.square().sum(dim=1), "step_size": 0.1},
        "inverse": {
            "operator": Denoising(),
            "measurement": trapped(noise() + 1),
            "noise_std": 0.1,
        },
    }.get(spec.kind, {})
    return options, 4 * spec.evals_per_step + spec.warmup_evals(options)


CHECKED = [name for name, spec in SAMPLERS.items() if spec.kind not in ("adaptive", "diffusers")]


@pytest.mark.parametrize("name", CHECKED)
def test_sampler_steps_never_read_values_on_the_host(name):
    options, nfe = options_and_nfe(name)
    spec = SAMPLERS[name]
    model = FIELD.average_velocity if spec.kind == "fewstep" and spec.on_grid else FIELD
    result = sample(model, trapped(noise()), name, nfe, solver_options=options)
    assert isinstance(result.samples, NoHostReads)
    assert result.nfe == nfe and result.samples.shape == (6, 2)


def test_every_kind_but_adaptive_and_diffusers_is_checked():
    kinds = {SAMPLERS[name].kind for name in CHECKED}
    assert kinds == {"ode", "multistep", "fewstep", "sde", "guidance", "inverse", "search"}


def test_a_model_that_branches_on_data_is_caught():
    def branching(x, t):
        return FIELD(x, t) if x.norm() > 0 else -x

    with pytest.raises(HostReadError, match="__bool__"):
        sample(branching, trapped(noise()), "euler", 4)
