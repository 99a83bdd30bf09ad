"""Generation defaults: classifier-free guidance over a chosen interval of times."""

import pytest
import torch
from torch import Tensor, nn

from mmflow.generation import GenerationDefaults, generate
from mmflow.training import FlowMatching

from .training.toy import ToyAdapter, ToyVelocity


class PlusOneOrMinusOne(nn.Module):
    """Velocity +1 under a real class, -1 under the null class (label 3)."""

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor) -> Tensor:
        sign = torch.where(class_labels == 3, -1.0, 1.0)
        return sign[:, None].expand_as(x)


@pytest.mark.parametrize(("interval", "shift"), [(None, 5.0), ((0.5, 1.0), 3.0), ((0.0, 0.0), 3.0)])
def test_guidance_applies_only_inside_its_interval(interval, shift):
    # Two Euler steps, at t = 0 and t = 0.5. Guided, u = -1 + 3 (1 + 1) = 5; unguided, u = 1.
    x0 = torch.randn(4, 2)
    cond = {"class_labels": torch.zeros(4, dtype=torch.long)}
    result = generate(
        PlusOneOrMinusOne(),
        ToyAdapter(),
        cond,
        x0,
        "euler",
        2,
        cfg_scale=3.0,
        cfg_interval=interval,
    )
    torch.testing.assert_close(result.samples, x0 + shift)


def test_the_module_keeps_its_interval_as_a_generation_default():
    module = FlowMatching(ToyAdapter(), ToyVelocity(), cfg_scale=2.0, cfg_interval=[0.2, 0.8])
    assert GenerationDefaults.from_hparams(module.hparams).cfg_interval == (0.2, 0.8)
    with pytest.raises(ValueError, match="cfg_interval"):
        FlowMatching(ToyAdapter(), ToyVelocity(), cfg_interval=(0.9, 0.1))
