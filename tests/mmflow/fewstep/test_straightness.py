"""Straightness against closed forms: the Gaussian flow's curved trajectories and the exactly
straight flow of its own coupling (its 2-rectified flow)."""

import pytest
import torch

from mmflow.fewstep.straightness import straightness
from mmflow.sampling.analytic import GaussianLinearFlow

MEAN = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
STD = torch.tensor([0.3, 0.8, 2.0], dtype=torch.float64)


@pytest.fixture
def noise() -> torch.Tensor:
    return torch.randn(256, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def exact_straightness(noise: torch.Tensor, points: int = 20001) -> torch.Tensor:
    """Along ``x_t = t m + sqrt(V_t) x0``: ``x1 - x0 = m + (s - 1) x0`` and
    ``u = m + V_t' / (2 sqrt(V_t)) x0``, so the deviation is ``(s - 1 - V_t' / (2 sqrt V_t)) x0``
    and ``S = mean(x0^2 int_0^1 (s - 1 - V_t' / (2 sqrt V_t))^2 dt)`` (trapezoid rule)."""
    t = torch.linspace(0, 1, points, dtype=torch.float64)[:, None]
    variance = t**2 * STD**2 + (1 - t) ** 2
    derivative = 2 * t * STD**2 - 2 * (1 - t)
    squared = (STD - 1 - derivative / (2 * variance.sqrt())) ** 2
    per_dimension = torch.trapezoid(squared, t, dim=0)
    return (noise**2 * per_dimension).mean()


class StraightCouplingFlow(torch.nn.Module):
    """The flow of the straight-line interpolation of the Gaussian's own coupling
    ``x1 = m + s x0``: ``x_t = t m + (1 + t (s - 1)) x0``, so
    ``u(x, t) = m + (s - 1) (x - t m) / (1 + t (s - 1))`` — what reflow converges to."""

    def forward(self, x, t):
        t = t[:, None].to(x.dtype)
        return MEAN + (STD - 1) * (x - t * MEAN) / (1 + t * (STD - 1))


def test_the_gaussian_flow_has_its_closed_form_straightness(noise):
    measured = straightness(GaussianLinearFlow(MEAN, STD), noise, nfe=400)
    exact = exact_straightness(noise)
    assert exact > 0.05
    torch.testing.assert_close(measured, exact, rtol=0.02, atol=0.0)


def test_the_reflowed_gaussian_is_straight_and_one_euler_step_is_exact(noise):
    teacher, reflowed = GaussianLinearFlow(MEAN, STD), StraightCouplingFlow()
    assert straightness(reflowed, noise, nfe=16) < 1e-20
    assert straightness(teacher, noise, nfe=16) > 0.05
    one_step = noise + reflowed(noise, torch.zeros(len(noise), dtype=torch.float64))
    torch.testing.assert_close(one_step, teacher.flow(noise, 1.0))


def test_the_condition_reaches_the_model(noise):
    def model(x, t, shift):
        return shift * x

    assert straightness(model, noise, nfe=8, shift=0.0) == 0
    assert straightness(model, noise, nfe=8, shift=1.0) > 0
