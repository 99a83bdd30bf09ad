"""The training-throughput benchmark times each stage of real training steps."""

import pytest
import torch

from benchmarks.training_throughput import STAGES, measure, resolve_owner
from mmflow.training import FlowMatching
from tests.mmflow.training.toy import ToyAdapter, ToyVelocity


def toy_batches():
    generator = torch.Generator().manual_seed(0)
    while True:
        yield {
            "point": torch.randn(64, 2, generator=generator),
            "label": torch.randint(0, 3, (64,), generator=generator),
        }


def test_every_stage_and_part_is_timed_and_the_network_trains():
    module = FlowMatching(ToyAdapter(), ToyVelocity(width=16), ema_decay=0.9)
    before = [p.detach().clone() for p in module.network.parameters()]
    result = measure(module, toy_batches(), steps=5, warmup=1, parts=["adapter.encode"])
    assert set(result["seconds"]) == set(STAGES)
    assert all(seconds > 0 for seconds in result["seconds"].values())
    assert 0 < result["parts"]["adapter.encode"] <= result["seconds"]["encode"]
    assert result["steps_per_second"] > 0
    after = list(module.network.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_a_part_that_is_not_callable_is_named():
    module = FlowMatching(ToyAdapter(), ToyVelocity(width=16))
    with pytest.raises(TypeError, match="adapter.num_classes"):
        resolve_owner(module, "adapter.num_classes")
