"""Source distributions: a flow can start at its condition instead of at noise."""

import pytest
import torch
from torch import Tensor, nn

from mmflow.generation import generate
from mmflow.modality import ModalityAdapter
from mmflow.sources import ConditionSource, GaussianSource
from mmflow.training import FlowMatchingObjective

from .training.toy import toy_context


class StartAdapter(ModalityAdapter):
    """Points whose condition ``start`` is where a conditioned flow begins."""

    def __init__(self, source=None) -> None:
        super().__init__()
        if source is not None:
            self.source = source

    def null_condition(self, cond):
        return cond


class RecordingVelocity(nn.Module):
    """Returns zeros and keeps the inputs it was called with."""

    def forward(self, x: Tensor, t: Tensor, start: Tensor) -> Tensor:
        self.x, self.t = x.clone(), t.clone()
        return torch.zeros_like(x)


class TowardsTarget(nn.Module):
    """The velocity ``target - start``: constant along the straight path from each start."""

    def __init__(self, target: Tensor) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: Tensor, t: Tensor, start: Tensor) -> Tensor:
        return self.target - start


def test_the_gaussian_source_is_the_noise_and_a_condition_source_shifts_and_scales_it():
    eps = torch.randn(5, 3)
    start = torch.randn(5, 3)
    assert torch.equal(GaussianSource().from_noise(eps, {"start": start}), eps)
    x0 = ConditionSource("start", noise_scale=0.25).from_noise(eps, {"start": start})
    torch.testing.assert_close(x0, start + 0.25 * eps)
    assert GaussianSource().standard_gaussian
    assert not ConditionSource("start").standard_gaussian


def test_a_condition_source_names_a_missing_or_misshapen_key():
    eps = torch.randn(4, 2)
    with pytest.raises(KeyError, match="no `start`.*'other'"):
        ConditionSource("start").from_noise(eps, {"other": eps})
    with pytest.raises(ValueError, match=r"`start` is \(4, 3\).*\(4, 2\)"):
        ConditionSource("start").from_noise(eps, {"start": torch.zeros(4, 3)})
    with pytest.raises(ValueError, match="noise_scale"):
        ConditionSource("start", noise_scale=-1.0)


def test_flow_matching_trains_on_the_path_from_the_adapter_source():
    adapter = StartAdapter(ConditionSource("start", noise_scale=0.0))
    x1, start = torch.randn(6, 2), torch.randn(6, 2)
    network = RecordingVelocity()
    output = FlowMatchingObjective()(
        network, x1, {"start": start}, {}, torch.Generator().manual_seed(0), toy_context(adapter)
    )
    t = network.t[:, None]
    torch.testing.assert_close(network.x, t * x1 + (1 - t) * start)
    # The network outputs 0, so the loss is the mean squared velocity x1 - x0.
    torch.testing.assert_close(output.loss, (x1 - start).square().mean())


def test_one_euler_step_from_the_condition_reaches_the_target_of_a_straight_field():
    adapter = StartAdapter(ConditionSource("start", noise_scale=0.0))
    start, target = torch.randn(8, 3), torch.randn(8, 3)
    cond = {"start": start}
    x0 = adapter.source_like(target, cond, torch.Generator().manual_seed(0))
    result = generate(TowardsTarget(target), adapter, cond, x0, sampler="euler", nfe=1)
    torch.testing.assert_close(result.samples, target)


def test_score_based_samplers_refuse_a_source_that_is_not_standard_gaussian():
    adapter = StartAdapter(ConditionSource("start"))
    start = torch.randn(2, 3)
    with pytest.raises(ValueError, match="euler_maruyama.*N\\(0, I\\).*ConditionSource"):
        generate(TowardsTarget(start), adapter, {"start": start}, start, "euler_maruyama", 4)
