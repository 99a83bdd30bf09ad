"""The shortcut objective against closed forms: the exact shortcut of a Gaussian flow is a fixed
point of its self-consistency target, the sampled (t, d) lie on the paper's grid, a small model
trained with it samples the exact flow in one step, and it trains inside FlowMatching."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mmflow.fewstep.shortcut import ShortcutObjective
from mmflow.nn import MMDiT, SetTokens
from mmflow.sampling import sample
from mmflow.sampling.analytic import GaussianLinearFlow
from mmflow.training import FlowMatching

from ..training.test_module import make_trainer
from ..training.toy import SetAdapter, ToyAdapter, ToyData, one_thread, toy_context

MEAN = torch.tensor([1.0, -0.5])
STD = torch.tensor([0.3, 1.5])


def exact_shortcut(field: GaussianLinearFlow):
    """The exact shortcut model ``s(x, t, d)`` of ``field`` as a network."""
    return lambda x, t, step_size, **cond: field.average_velocity(x, t, step_size)


def gaussian_data(n: int, seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (MEAN + STD * torch.randn(n, 2, generator=generator)).to(dtype)


class RecordingNetwork(nn.Module):
    """Returns zeros and records the times and step sizes it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Tensor, Tensor]] = []

    def forward(self, x: Tensor, t: Tensor, step_size: Tensor, **cond) -> Tensor:
        self.calls.append((t.clone(), step_size.clone()))
        return torch.zeros_like(x)


@pytest.mark.parametrize("flow_matching_step", ["zero", "finest"])
def test_the_exact_shortcut_is_a_fixed_point_of_the_bootstrap_target(flow_matching_step):
    field = GaussianLinearFlow(MEAN.double(), STD.double())
    objective = ShortcutObjective(
        bootstrap_fraction=0.5,
        max_steps=16,
        flow_matching_step=flow_matching_step,
        target_clip=None,
        state_clip=None,
    )
    x1 = gaussian_data(512, seed=0, dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    batch = objective.regression_batch(exact_shortcut(field), x1, {}, generator, toy_context())
    rows = batch.bootstrap_rows
    x_t, t, step = batch.x_t[:rows], batch.t[:rows], batch.step_size[:rows]
    exact = field.average_velocity(x_t, t, step)
    above_finest = step / 2 >= objective.finest_step
    torch.testing.assert_close(
        batch.target[:rows][above_finest], exact[above_finest], rtol=1e-10, atol=1e-10
    )
    # At the finest level with flow matching at d = 0, the half-steps are two Euler steps of
    # the instantaneous velocity (the official code instead stops at flow matching at 1/M).
    finest = ~above_finest
    assert (flow_matching_step == "zero") == bool(finest.any())
    half = step[finest] / 2
    velocity = field(x_t[finest], t[finest])
    midpoint = x_t[finest] + half[:, None] * velocity
    two_euler_steps = (velocity + field(midpoint, t[finest] + half)) / 2
    torch.testing.assert_close(batch.target[:rows][finest], two_euler_steps, rtol=1e-10, atol=0)

    x1_flow, x0_flow, t_flow = x1[rows:], batch.x0[rows:], batch.t[rows:]
    torch.testing.assert_close(batch.target[rows:], x1_flow - x0_flow, rtol=0, atol=0)
    torch.testing.assert_close(
        batch.x_t[rows:], t_flow[:, None] * x1_flow + (1 - t_flow[:, None]) * x0_flow
    )
    assert torch.all(batch.step_size[rows:] == objective.flow_matching_step_size)

    # The tolerance above separates the right formula from near misses.
    half = step / 2
    first = field.average_velocity(x_t, t, half)
    midpoint = x_t + half[:, None] * first
    without_half = first + field.average_velocity(midpoint, t + half, half)
    second_at_t = (first + field.average_velocity(midpoint, t, half)) / 2
    for wrong in (without_half, second_at_t):
        assert (wrong[above_finest] - exact[above_finest]).abs().max() > 1e-3


def test_sampled_step_sizes_and_times_lie_on_the_dyadic_grid():
    objective = ShortcutObjective(max_steps=128)
    network = RecordingNetwork()
    x1 = gaussian_data(1024, seed=2)
    generator = torch.Generator().manual_seed(3)
    batch = objective.regression_batch(network, x1, {}, generator, toy_context())
    rows = batch.bootstrap_rows
    assert rows == 1024 // 8
    t, step = batch.t[:rows].double(), batch.step_size[:rows].double()
    levels = torch.log2(step)
    assert torch.equal(levels, levels.round()) and step.min() == 1 / 128 and step.max() == 1
    counts = torch.bincount((-levels).long())
    assert len(counts) == 8 and counts.max() - counts.min() <= 1
    assert torch.equal(t / step, (t / step).round()) and t.min() >= 0 and (t + step).max() <= 1
    assert torch.all(batch.step_size[rows:] == 0)
    # The target network's half-steps: 0 (the finest level) or a power of two in [1/M, 1/2],
    # at t and t + h with t + 2h <= 1.
    (t_first, first_step), (t_second, second_step) = network.calls
    inputs = first_step[first_step > 0].double()
    assert torch.equal(torch.log2(inputs), torch.log2(inputs).round())
    assert inputs.min() == 1 / 128 and inputs.max() == 1 / 2
    assert torch.equal(first_step, second_step) and torch.equal(t_first, batch.t[:rows])
    torch.testing.assert_close(t_second, batch.t[:rows] + step.float() / 2)
    # Seeded draws repeat exactly.
    again = objective.regression_batch(
        network, x1, {}, torch.Generator().manual_seed(3), toy_context()
    )
    assert torch.equal(again.t, batch.t) and torch.equal(again.x0, batch.x0)


def test_the_official_variant_trains_flow_matching_at_the_finest_step_on_a_time_grid():
    objective = ShortcutObjective(max_steps=16, flow_matching_step="finest", flow_times="grid")
    batch = objective.regression_batch(
        RecordingNetwork(),
        gaussian_data(256, seed=4),
        {},
        torch.Generator().manual_seed(5),
        toy_context(),
    )
    rows = batch.bootstrap_rows
    assert objective.shortcut_step_sizes == [1, 1 / 2, 1 / 4, 1 / 8]
    assert batch.step_size[:rows].min() == 1 / 8
    assert torch.all(batch.step_size[rows:] == 1 / 16)
    grid_index = batch.t[rows:] * 16
    assert torch.equal(grid_index, grid_index.round()) and batch.t[rows:].max() <= 15 / 16


def test_the_bootstrap_share_is_rounded_stochastically_to_the_configured_fraction():
    objective = ShortcutObjective(bootstrap_fraction=0.125)
    generator = torch.Generator().manual_seed(6)
    counts = torch.tensor([objective.bootstrap_count(12, generator, "cpu") for _ in range(2000)])
    assert set(counts.tolist()) == {1, 2}
    assert abs(counts.double().mean() - 1.5) < 0.05
    assert ShortcutObjective(bootstrap_fraction=0.0).bootstrap_count(64, generator, "cpu") == 0
    assert ShortcutObjective(bootstrap_fraction=1.0).bootstrap_count(64, generator, "cpu") == 64


def test_targets_and_intermediate_points_are_clipped():
    objective = ShortcutObjective(target_clip=4.0, state_clip=4.0)
    seen = []

    def huge(x, t, step_size, **cond):
        seen.append(x.clone())
        return torch.full_like(x, 100.0)

    x = torch.zeros(8, 2)
    target = objective.bootstrap_target(huge, x, torch.zeros(8), torch.full((8,), 0.5), {})
    assert torch.all(target == 4.0) and torch.all(seen[1] == 4.0)


class ClassConstant(nn.Module):
    """``s(x, t, d, y) = value[y]`` everywhere: guided velocities are closed-form."""

    def __init__(self, values: Tensor) -> None:
        super().__init__()
        self.register_buffer("values", values)

    def forward(self, x: Tensor, t: Tensor, step_size: Tensor, class_labels: Tensor) -> Tensor:
        return self.values[class_labels][:, None].expand_as(x)


def test_guidance_enters_the_targets_at_the_finest_level_and_spares_bootstrap_rows_dropout():
    network = ClassConstant(torch.tensor([1.0, 1.0, 1.0, 0.0]))  # label 3 is the null class
    labels = torch.zeros(512, dtype=torch.long)
    x1 = gaussian_data(512, seed=7)
    context = toy_context(ToyAdapter(), cond_dropout=1.0)
    guided = ShortcutObjective(bootstrap_fraction=0.5, max_steps=4, guidance_scale=1.5)
    batch = guided.regression_batch(
        network, x1, {"class_labels": labels}, torch.Generator().manual_seed(8), context
    )
    rows = batch.bootstrap_rows
    assert torch.all(batch.cond["class_labels"][:rows] == 0)
    assert torch.all(batch.cond["class_labels"][rows:] == 3)
    finest = batch.step_size[:rows] == 1 / 4
    assert finest.any() and (~finest).any()
    assert torch.all(batch.target[:rows][finest] == 1.5)  # 0 + 1.5 (1 - 0)
    assert torch.all(batch.target[:rows][~finest] == 1.0)

    plain = ShortcutObjective(bootstrap_fraction=0.5, max_steps=4)
    batch = plain.regression_batch(
        network, x1, {"class_labels": labels}, torch.Generator().manual_seed(8), context
    )
    assert torch.all(batch.cond["class_labels"] == 3)
    assert torch.all(batch.target[: batch.bootstrap_rows] == 0.0)


class ShortcutMLP(nn.Module):
    """``s(x, t, d)``: an MLP on x and Fourier features of t and d."""

    def __init__(self, width: int = 128, frequencies: int = 4) -> None:
        super().__init__()
        self.register_buffer("frequencies", torch.pi * torch.arange(1, frequencies + 1.0))
        self.body = nn.Sequential(
            nn.Linear(2 + 4 * frequencies, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, 2),
        )

    def _features(self, value: Tensor) -> Tensor:
        angles = value.float()[:, None] * self.frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    def forward(self, x: Tensor, t: Tensor, step_size: Tensor) -> Tensor:
        return self.body(torch.cat([x, self._features(t), self._features(step_size)], dim=1))


def test_a_trained_shortcut_model_lands_on_the_exact_flow_in_one_step():
    torch.manual_seed(0)
    field = GaussianLinearFlow(MEAN, STD)
    objective = ShortcutObjective(bootstrap_fraction=0.25, max_steps=16)
    model = ShortcutMLP()
    steps = 400
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    context = toy_context()
    with one_thread():
        for step in range(steps):
            output = objective(model, gaussian_data(512, seed=100 + step), {}, {}, None, context)
            optimizer.zero_grad()
            output.loss.backward()
            optimizer.step()
            schedule.step()
    assert set(output.terms) == {"bootstrap_loss", "flow_matching_loss"}
    x0 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    exact = field.flow(x0, 1.0)

    def error(samples: Tensor) -> float:
        return float((samples - exact).norm(dim=1).mean())

    with torch.no_grad():
        shortcut = {k: error(sample(model, x0, "step_euler", nfe=k).samples) for k in (1, 2, 4)}
        euler = error(sample(field, x0, "euler", nfe=1).samples)
    # One Euler step of the exact velocity maps all noise to the mean (error ~1.3 here).
    assert euler > 1.0
    assert shortcut[1] < 0.35 and shortcut[2] < 0.25 and shortcut[4] < 0.25, shortcut
    assert shortcut[1] < 0.3 * euler


def test_the_objective_trains_an_mmdit_with_its_ema_inside_flow_matching(tmp_path):
    torch.manual_seed(0)
    network = MMDiT(
        SetTokens(2), hidden_size=16, depth=1, num_heads=2, num_classes=3, step_size_embedding=True
    )
    module = FlowMatching(
        SetAdapter(),
        network,
        objective=ShortcutObjective(bootstrap_fraction=0.25, max_steps=8),
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        ema_decay=0.9,
        sampler="step_euler",
        nfe=2,
    )
    ema_calls = []
    module.ema.module.register_forward_hook(lambda *args: ema_calls.append(1))
    trainer = make_trainer(tmp_path, max_steps=5, limit_val_batches=0)
    trainer.fit(module, ToyData(batch_size=64))
    assert ema_calls  # the bootstrap targets come from the EMA network
    validation = make_trainer(tmp_path, limit_val_batches=1)
    metrics = {
        **trainer.callback_metrics,
        **validation.validate(module, ToyData(batch_size=64), verbose=False)[0],
    }
    for name in ("bootstrap_loss", "flow_matching_loss"):
        for stage in ("train", "val"):
            assert torch.isfinite(torch.as_tensor(metrics[f"{stage}/{name}"]))
    assert "val/mean_error" in metrics  # validation sampled with step_euler

    x = torch.randn(16, 1, 2)
    t = torch.full((16,), 0.25)
    labels = torch.zeros(16, dtype=torch.long)
    with torch.no_grad():
        small = network(x, t, step_size=torch.zeros(16), class_labels=labels)
        large = network(x, t, step_size=torch.ones(16), class_labels=labels)
    assert (small - large).abs().max() > 1e-4

    network.zero_grad()
    batch = next(iter(ToyData(batch_size=32).train_dataloader()))
    x1, cond = module.adapter.encode(batch)
    module.objective_output(x1, cond, batch).loss.backward()
    step_grads = [p.grad for name, p in network.named_parameters() if "step_embed" in name]
    assert step_grads and all(g is not None and g.abs().sum() > 0 for g in step_grads)

    online_targets = ShortcutObjective(bootstrap_fraction=0.5, max_steps=8, ema_targets=False)
    shortcut = online_targets.regression_batch(network, x1, cond, None, module.context())
    assert shortcut.bootstrap_rows == 16 and not shortcut.target.requires_grad


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"bootstrap_fraction": 1.5}, "bootstrap_fraction"),
        ({"bootstrap_fraction": -0.1}, "bootstrap_fraction"),
        ({"max_steps": 1}, "max_steps"),
        ({"max_steps": 96}, "max_steps"),
        ({"max_steps": 128.0}, "max_steps"),
        ({"flow_matching_step": "min"}, "flow_matching_step"),
        ({"flow_times": "uniform"}, "flow_times"),
        ({"target_clip": 0.0}, "target_clip"),
        ({"state_clip": -1.0}, "state_clip"),
        ({"guidance_scale": 0.0}, "guidance_scale"),
    ],
)
def test_bad_arguments_name_themselves(arguments, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        ShortcutObjective(**arguments)
