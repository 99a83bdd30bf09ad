"""FlowTurbo's refiner against the Gaussian flow's exact velocity: the objective's target
vanishes for the exact refiner, a small refiner trained on it improves the sampler's refiner
steps, and the objective trains inside the FlowMatching module."""

import pytest
import torch
from torch import Tensor, nn

from mmflow.fewstep.flowturbo import RefinerObjective, TurboFlow, VelocityRefiner
from mmflow.nn import MMDiT, Patchify2D, SetTokens
from mmflow.sampling import sample
from mmflow.sampling.analytic import GaussianLinearFlow
from mmflow.training import FlowMatching

from ..training.test_module import make_trainer
from ..training.toy import SetAdapter, ToyData, Unconditional, toy_context

MEAN = torch.tensor([1.0, -2.0, 0.5])
STD = torch.tensor([0.3, 0.8, 2.0])


def gaussian(dtype: torch.dtype = torch.float64) -> GaussianLinearFlow:
    return GaussianLinearFlow(MEAN.to(dtype), STD.to(dtype))


def gaussian_data(field: GaussianLinearFlow, batch: int, seed: int = 0) -> Tensor:
    """``x1 ~ N(m, s^2)`` as ``[B, 1, 3]`` sets of one token."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 1, 3, generator=generator, dtype=field.mean.dtype)
    return field.mean + field.std * z


def turbo(field, refiner):
    """The two modes of a TurboFlow network from plain functions."""

    def network(x, t, velocity=None):
        return field(x, t) if velocity is None else refiner(x, t, velocity)

    return network


def refiner_loss(objective, network, x1, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return objective(network, x1, {}, {}, generator, toy_context(Unconditional())).loss


def test_the_exact_refiner_meets_the_target_and_no_refiner_does_not():
    field = gaussian()
    objective = RefinerObjective()
    x1 = gaussian_data(field, 512)

    def exact(x, t, velocity):
        return field(x, t) - velocity

    def zero(x, t, velocity):
        return torch.zeros_like(velocity)

    assert refiner_loss(objective, turbo(field, exact), x1) < 1e-28
    assert refiner_loss(objective, turbo(field, zero), x1) > 1e-3


def test_steps_stay_inside_the_unit_interval_and_below_max_delta():
    field, seen = gaussian(), []

    def spy(x, t, velocity):
        seen.append(t)
        return torch.zeros_like(velocity)

    objective = RefinerObjective(max_delta=0.5)
    for seed in range(4):
        refiner_loss(objective, turbo(field, spy), gaussian_data(field, 256), seed)
    t_next = torch.cat(seen)
    assert 0 <= t_next.min() and t_next.max() <= 1


def test_a_seeded_generator_fixes_every_draw():
    field = gaussian()
    objective, x1 = RefinerObjective(), gaussian_data(field, 64)
    half = turbo(field, lambda x, t, velocity: 0.5 * (field(x, t) - velocity))
    assert torch.equal(refiner_loss(objective, half, x1, 0), refiner_loss(objective, half, x1, 0))
    assert not torch.equal(
        refiner_loss(objective, half, x1, 0), refiner_loss(objective, half, x1, 1)
    )


def small_refiner(seed: int = 0) -> VelocityRefiner:
    torch.manual_seed(seed)
    return VelocityRefiner(SetTokens(3), hidden_size=32, depth=1, num_heads=2)


def flowturbo_error(field, network, x0) -> Tensor:
    options = {"heun_steps": 1, "corrector_steps": 1, "refiner_steps": 4}
    result = sample(network, x0, "flowturbo", 3, solver_options=options)
    assert result.nfe == 3 and result.info["refiner_calls"] == 8
    return (result.samples - field.flow(x0, 1.0)).square().mean().sqrt()


def test_a_trained_refiner_brings_refiner_steps_closer_to_the_flow(single_thread):
    field = gaussian(torch.float32)
    objective, network = RefinerObjective(), TurboFlow(field, small_refiner())
    x0 = torch.randn(512, 1, 3, generator=torch.Generator().manual_seed(7))
    untrained = flowturbo_error(field, network, x0)
    optimizer = torch.optim.Adam(network.parameters(), lr=2e-3)
    for step in range(300):
        loss = refiner_loss(objective, network, gaussian_data(field, 128, seed=step), seed=step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        trained = flowturbo_error(field, network, x0)
    assert trained < 0.5 * untrained, (trained, untrained)


def test_the_refiner_starts_at_zero_and_takes_images_and_classes():
    refiner = VelocityRefiner(Patchify2D(4, 2), hidden_size=32, num_heads=4, num_classes=10)
    x, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    labels = torch.tensor([3, 10])
    assert torch.equal(refiner(x, torch.rand(2), v, class_labels=labels), torch.zeros_like(x))
    nn.init.normal_(refiner.final.linear.weight)
    out = refiner(x, torch.rand(2), v, class_labels=labels)
    assert out.shape == x.shape and out.abs().sum() > 0


def test_the_refiner_is_a_small_fraction_of_a_base_flow_of_its_width():
    base = MMDiT(SetTokens(3), hidden_size=64, depth=24, num_heads=4)
    refiner = VelocityRefiner(SetTokens(3), hidden_size=64, depth=1, num_heads=4)
    share = sum(p.numel() for p in refiner.parameters()) / sum(p.numel() for p in base.parameters())
    assert share < 0.08


def tiny_base() -> MMDiT:
    """A base flow whose output is not zero at construction (there is something to refine)."""
    base = MMDiT(SetTokens(2), hidden_size=16, depth=1, num_heads=2, num_classes=3)
    nn.init.normal_(base.final.linear.weight)
    return base


def test_the_objective_trains_a_refiner_inside_flow_matching(tmp_path, single_thread):
    torch.manual_seed(0)
    base = tiny_base()
    refiner = VelocityRefiner(SetTokens(2), hidden_size=16, num_heads=2, num_classes=3)
    module = FlowMatching(
        SetAdapter(),
        TurboFlow(base, refiner),
        objective=RefinerObjective(),
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        ema_decay=None,
    )
    before = [p.detach().clone() for p in refiner.parameters()]
    trainer = make_trainer(tmp_path, max_steps=3, limit_val_batches=0)
    trainer.fit(module, ToyData(size=96, batch_size=32, seed=0))
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "train/target_rms" in trainer.callback_metrics
    assert any(not torch.equal(a, b) for a, b in zip(before, refiner.parameters(), strict=True))
    assert all(p.grad is None for p in base.parameters())
    assert all(
        name.startswith(("network.refiner.", "ema."))
        for name in module.state_dict()
        if name.startswith(("network.", "ema.module."))
    )
    assert not any(".flow." in name for name in module.state_dict())


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"flow": 3}, "flow"),
        ({"flow": "/nonexistent/flow.ckpt"}, "flow"),
    ],
)
def test_bad_arguments_are_refused_by_name(arguments, named):
    with pytest.raises(ValueError, match=f"`{named}`"):
        TurboFlow(refiner=nn.Identity(), **arguments)
    with pytest.raises(ValueError, match="`max_delta`"):
        RefinerObjective(max_delta=0.0)
