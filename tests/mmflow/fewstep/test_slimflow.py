"""SlimFlow's annealing reflow and flow-guided distillation on exact Gaussian couplings.

The teacher's couplings of data ``N(m, s^2)`` are ``(x0, m + s x0)``; reflow on them gives the
straight 2-rectified flow ``v2(x, t) = m + (s - 1) x0(x, t)``, ``x0(x, t) = (x - t m) / D_t``,
``D_t = 1 - t + t s`` (:func:`straight_velocity`), whose one Euler step is the exact map.
"""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mmflow.fewstep.slimflow import (
    AnnealingReflowObjective,
    FlowGuidedDistillationObjective,
    annealed_noise,
    annealing_randomness,
)
from mmflow.hub import save_pretrained
from mmflow.sampling import sample
from mmflow.training import FlowMatching
from mmflow.training.cli import build_module

from ..training.test_module import make_trainer
from ..training.toy import ToyAdapter, ToyData, ToyVelocity
from .test_distillation import (
    GAUSSIAN,
    MEAN,
    STD,
    Recorder,
    exact_couplings,
    flow_module,
    objective_loss,
    straight_velocity,
)


class StraightTeacher(nn.Module):
    """The exact 2-rectified flow of the Gaussian (a module, so that it can be frozen)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.times: list[Tensor] = []
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.times.append(t.detach())
        self.inputs.append(x)
        return self.weight * straight_velocity(x, t)


class AffineStudent(nn.Module):
    """``u(x, t) = a x + b``, blind to ``t``: it can hold the one-step map ``m + (s - 1) x``."""

    def __init__(self, scale: Tensor | None = None, shift: Tensor | None = None) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(2) if scale is None else scale.clone())
        self.shift = nn.Parameter(torch.zeros(2) if shift is None else shift.clone())

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.scale * x + self.shift


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("linear", [1.0, 0.5, 0.0, 0.0]),
        ("cosine", [1.0, 0.5, 0.0, 0.0]),
        ("exp", [1.0, math.exp(-0.5), math.exp(-1.0), math.exp(-2.0)]),
    ],
)
def test_randomness_schedules_at_the_start_middle_and_end_of_the_warm_up(schedule, expected):
    values = [annealing_randomness(step, 1000, schedule) for step in (0, 500, 1000, 2000)]
    assert values == pytest.approx(expected, abs=1e-12)
    assert annealing_randomness(250, 1000, "cosine") == pytest.approx((1 + math.sqrt(0.5)) / 2)
    assert annealing_randomness(7, 0, schedule) == 0.0


def test_annealed_noise_keeps_unit_variance_and_is_the_pair_noise_at_zero():
    generator = torch.Generator().manual_seed(0)
    pair, fresh = torch.randn(2, 400_000, generator=generator)
    for beta in (1.0, 0.8, 0.5, 0.2):
        mixed = annealed_noise(pair, fresh, beta)
        assert float(mixed.var()) == pytest.approx(1.0, abs=0.01)
        correlation = float((mixed * pair).mean())
        assert correlation == pytest.approx(math.sqrt(1 - beta**2), abs=0.01)
    assert torch.equal(annealed_noise(pair, fresh, 0.0), pair)


def recovered_noise(recorder: Recorder, x1: Tensor) -> Tensor:
    """The noise of the last call on the linear path: ``(x_t - t x1) / (1 - t)``."""
    x_t, t, _ = recorder.calls[-1]
    return (x_t - t[:, None] * x1) / (1 - t[:, None])


def test_annealing_reflow_moves_from_fresh_noise_to_the_pairs_noise():
    x0, x1 = exact_couplings(20_000, seed=1)
    recorder = Recorder(straight_velocity)
    objective = AnnealingReflowObjective(warmup_steps=10, schedule="linear")
    module = flow_module(recorder, objective)
    correlations = []
    for _ in range(11):
        output = objective_loss(module, x0, x1)
        noise = recovered_noise(recorder, x1)
        correlations.append(float((noise * x0).mean()))
    assert correlations[0] == pytest.approx(0.0, abs=0.03)
    assert correlations[4] == pytest.approx(math.sqrt(1 - 0.6**2), abs=0.03)
    assert torch.allclose(noise, x0, atol=1e-3)
    assert float(output.terms["randomness"]) == 0.0
    # after the warm-up it is reflow: the exact 2-rectified flow has zero loss
    assert float(output.loss) < 1e-8


def test_the_step_counter_advances_in_training_only_and_is_checkpointed():
    x0, x1 = exact_couplings(8, seed=2)
    objective = AnnealingReflowObjective(warmup_steps=4, schedule="cosine")
    module = flow_module(Recorder(straight_velocity), objective)
    for _ in range(3):
        objective_loss(module, x0, x1)
    module.eval()
    validation = objective_loss(module, x0, x1, torch.Generator().manual_seed(0))
    assert int(objective.training_calls) == 3
    assert float(validation.terms["randomness"]) == pytest.approx(
        annealing_randomness(3, 4, "cosine")
    )
    state = module.state_dict()
    assert int(state["objective.training_calls"]) == 3
    restored = flow_module(Recorder(straight_velocity), AnnealingReflowObjective(4, "cosine"))
    restored.load_state_dict(state)
    assert int(restored.objective.training_calls) == 3
    assert restored.objective.randomness() == objective.randomness()


def test_annealing_reflow_trains_inside_flow_matching_and_validation_leaves_the_counter(tmp_path):
    pl.seed_everything(0)
    noise = torch.randn(64, 2)
    rows = [
        {"point": 1.5 * z + 1.0, "label": label, "x0": z}
        for z, label in zip(noise, torch.arange(64) % 3, strict=True)
    ]
    objective = AnnealingReflowObjective(warmup_steps=4)
    module = FlowMatching(
        ToyAdapter(), ToyVelocity(width=16), objective=objective, val_sample_batches=0
    )
    trainer = make_trainer(tmp_path, max_steps=5, limit_val_batches=0)
    trainer.fit(module, DataLoader(rows, batch_size=16))
    assert int(objective.training_calls) == 5
    assert float(trainer.callback_metrics["train/randomness"]) == pytest.approx(0.0)
    make_trainer(tmp_path).validate(module, DataLoader(rows, batch_size=16), verbose=False)
    assert int(objective.training_calls) == 5


def test_flow_guided_target_with_the_exact_teacher_is_the_closed_form():
    """``target = t' u + (1 - t') v2(z + t' u, t')`` with ``u = a z + b``, expanded in ``z``:
    ``t' u + (1 - t') [m + (s - 1) ((1 + t' a) z + t' (b - m)) / D]``."""
    objective = FlowGuidedDistillationObjective(StraightTeacher())
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(3))
    a, b = torch.tensor([0.4, -1.3]), torch.tensor([0.2, 0.7])
    t = torch.linspace(0.2, 0.8, 1000)
    target = objective.guide_target(z, a * z + b, t, {})
    tc = t[:, None]
    denominator = 1 - tc + tc * STD
    closed = tc * (a * z + b) + (1 - tc) * (
        MEAN + (STD - 1) * ((1 + tc * a) * z + tc * (b - MEAN)) / denominator
    )
    assert torch.allclose(target, closed, atol=1e-5)
    exact_one_step = MEAN + (STD - 1) * z
    assert torch.allclose(
        objective.guide_target(z, exact_one_step, t, {}), exact_one_step, atol=1e-5
    )
    assert not torch.allclose(target, exact_one_step, atol=0.1)


def test_flow_guided_distillation_draws_guide_times_in_range_and_keeps_the_teacher_frozen():
    teacher = StraightTeacher()
    objective = FlowGuidedDistillationObjective(teacher)
    student = AffineStudent(torch.tensor([0.5, 0.5]), torch.zeros(2))
    x0, x1 = exact_couplings(4000, seed=4)
    output = objective_loss(flow_module(student, objective), x0, x1)
    output.loss.backward()
    times = teacher.times[-1]
    assert 0.2 <= float(times.min()) < 0.21 and 0.79 < float(times.max()) <= 0.8
    assert not teacher.inputs[-1].requires_grad
    assert teacher.weight.grad is None and not teacher.weight.requires_grad
    assert student.scale.grad is not None
    assert set(output.terms) == {"distillation", "guidance"}
    assert torch.allclose(
        output.loss, output.terms["distillation"] + output.terms["guidance"], atol=1e-6
    )
    assert "objective.teacher.weight" not in flow_module(student, objective).state_dict()


@pytest.mark.parametrize("distillation_weight", [0.0, 1.0])
def test_a_student_trained_with_flow_guidance_reaches_the_one_step_map(distillation_weight):
    """From ``u = 0``, 200 Adam steps (lr 0.05) bring one Euler step within 0.01 of the
    teacher's sample, guidance alone included (measured: 5e-5 either way); untrained, one step
    misses by 1.5."""
    torch.manual_seed(0)
    student = AffineStudent()
    objective = FlowGuidedDistillationObjective(
        StraightTeacher(), distillation_weight=distillation_weight
    )
    module = flow_module(student, objective)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.05)
    x0_all, x1_all = exact_couplings(2048, seed=5)
    for _ in range(200):
        rows = torch.randint(0, 2048, (256,))
        loss = objective_loss(module, x0_all[rows], x1_all[rows]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x0, x1 = exact_couplings(1000, seed=9)
    one_step = sample(student, x0, "euler", nfe=1).samples
    assert float((one_step - x1).norm(dim=1).mean()) < 0.01
    assert float((x0 - x1).norm(dim=1).mean()) > 1.0


def test_the_one_rectified_flow_teacher_gives_its_own_two_step_target():
    """With the curved 1-rectified flow (the Gaussian's instantaneous velocity) as teacher the
    target is its Euler step from ``x_{t'}``: not the exact map."""
    objective = FlowGuidedDistillationObjective(GAUSSIAN)
    z = torch.randn(500, 2, generator=torch.Generator().manual_seed(7))
    u = MEAN + (STD - 1) * z
    t = torch.full((500,), 0.5)
    x_half = z + 0.5 * u
    expected = x_half + 0.5 * GAUSSIAN(x_half, t) - z
    assert torch.allclose(objective.guide_target(z, u, t, {}), expected, atol=1e-6)
    assert not torch.allclose(expected, u, atol=0.05)


def test_flow_guided_distillation_trains_inside_flow_matching(tmp_path):
    pl.seed_everything(0)
    noise = torch.randn(64, 2)
    rows = [
        {"point": 1.5 * z + 1.0, "label": label, "x0": z}
        for z, label in zip(noise, torch.arange(64) % 3, strict=True)
    ]
    teacher = ToyVelocity(width=16)
    objective = FlowGuidedDistillationObjective(teacher, loss="pseudo_huber")
    module = FlowMatching(ToyAdapter(), ToyVelocity(width=16), objective=objective)
    trainer = make_trainer(tmp_path, max_steps=3, limit_val_batches=0)
    trainer.fit(module, DataLoader(rows, batch_size=16))
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["train/guidance"])
    assert all(p.grad is None for p in teacher.parameters())


def test_the_teacher_is_read_from_an_exported_folder_or_a_checkpoint(tmp_path):
    pl.seed_everything(0)
    config = {
        "adapter": {"class_path": "tests.mmflow.training.toy.ToyAdapter"},
        "network": {
            "class_path": "tests.mmflow.training.toy.ToyVelocity",
            "init_args": {"width": 8},
        },
        "ema_decay": 0.5,
    }
    module = build_module(config)
    trainer = make_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, ToyData(size=64, batch_size=32))
    trainer.save_checkpoint(tmp_path / "flow.ckpt")
    folder = save_pretrained(module, tmp_path / "exported")
    expected = module.sampling_network.state_dict()
    for source in (str(folder), str(tmp_path / "flow.ckpt")):
        objective = FlowGuidedDistillationObjective(source)
        teacher = objective.teacher.part
        assert isinstance(teacher, ToyVelocity) and not teacher.training
        for name, value in teacher.state_dict().items():
            assert torch.equal(value, expected[name])


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"warmup_steps": 2.5}, "warmup_steps"),
        ({"warmup_steps": 10, "schedule": "step"}, "schedule"),
        ({"warmup_steps": 10, "noise_key": ""}, "noise_key"),
    ],
)
def test_bad_annealing_arguments_are_refused_by_name(arguments, named):
    with pytest.raises(ValueError, match=f"`{named}`"):
        AnnealingReflowObjective(**arguments)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"teacher": 3}, "teacher"),
        ({"teacher": "/no/such/flow.ckpt"}, "teacher"),
        ({"guide_time_range": (0.8, 0.2)}, "guide_time_range"),
        ({"guide_time_range": (0.2, 1.0)}, "guide_time_range"),
        ({"guidance_weight": -1.0}, "guidance_weight"),
        ({"loss": "lpips"}, "loss"),
        ({"loss": "feature"}, "feature_network"),
    ],
)
def test_bad_flow_guided_arguments_are_refused_by_name(arguments, named):
    with pytest.raises(ValueError, match=f"`{named}`"):
        FlowGuidedDistillationObjective(**{"teacher": StraightTeacher(), **arguments})


@pytest.mark.parametrize(
    "objective",
    [
        lambda: AnnealingReflowObjective(10),
        lambda: FlowGuidedDistillationObjective(StraightTeacher()),
    ],
)
def test_a_batch_without_the_teachers_noise_names_the_key(objective):
    _, x1 = exact_couplings(4, seed=0)
    module = flow_module(AffineStudent(), objective())
    with pytest.raises(KeyError, match="`x0`"):
        module.objective_output(x1, {}, {"x1": x1})
