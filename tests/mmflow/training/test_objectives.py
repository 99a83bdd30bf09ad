"""Training objectives are a part of FlowMatching: a second objective defined in this file
trains, stored (noise, data) pairs train a straight flow, and the network takes extra inputs."""

from dataclasses import replace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from mmflow.fewstep.distillation import StepDistillationObjective
from mmflow.fewstep.flowturbo import RefinerObjective
from mmflow.fewstep.meanflow import MeanFlowObjective
from mmflow.fewstep.slimflow import AnnealingReflowObjective, FlowGuidedDistillationObjective
from mmflow.nn import MMDiT, SetTokens
from mmflow.numerics import keyed_seed
from mmflow.timesteps import Uniform
from mmflow.training import (
    FlowMatching,
    FlowMatchingObjective,
    ObjectiveOutput,
    TrainingObjective,
)
from mmflow.training.cli import build_module

from .test_module import make_trainer
from .toy import (
    CLASS_MEANS,
    CLASS_STD,
    SetAdapter,
    ToyAdapter,
    ToyData,
    ToyVelocity,
    toy_context,
)


class DataPredictionObjective(TrainingObjective):
    """x-prediction: the network still outputs a velocity ``v`` (so every sampler works), but
    the loss is on its data estimate, ``|x_t + (1 - t) v - x1|^2``, with its own uniform
    times; the velocity error is logged as a term."""

    def forward(self, network, x1, cond, batch, generator, context):
        x0 = context.noise_like(x1, generator)
        t = torch.rand(x1.shape[0], generator=generator, device=x1.device)
        cond = context.drop_conditions(cond, x1, generator)
        draw = context.path.sample(x0, x1, t)
        velocity = network(draw.x_t, draw.t, **cond)
        data = context.path.velocity_to_data(velocity, draw.x_t, draw.t)
        velocity_error = (velocity - draw.target).square().mean().detach()
        return ObjectiveOutput((data - x1).square().mean(), {"velocity_mse": velocity_error})


def test_a_second_objective_trains_the_toy_flow_to_its_class_means(tmp_path):
    pl.seed_everything(0)
    module = FlowMatching(
        ToyAdapter(),
        ToyVelocity(),
        objective=DataPredictionObjective(),
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
        ema_decay=0.99,
        val_sample_batches=16,
    )
    trainer = make_trainer(tmp_path, max_epochs=25, limit_val_batches=0)
    trainer.fit(module, ToyData())
    assert "train/velocity_mse" in trainer.callback_metrics
    labels = torch.arange(3).repeat_interleave(200)
    x0 = torch.randn(600, 2, generator=torch.Generator().manual_seed(1))
    samples, _ = module.generate({"class_labels": labels}, x0)
    for label, mean in enumerate(CLASS_MEANS):
        assert (samples[labels == label].mean(0) - mean).norm() < 0.25
    validation = make_trainer(tmp_path, limit_val_batches=16)
    metrics = validation.validate(module, ToyData(), verbose=False)[0]
    assert metrics["val/mean_error"] < 0.25 and "val/velocity_mse" in metrics


class PairedData(ToyData):
    """Stored (noise, data) pairs: ``x1 = mean_y + std * x0`` exactly, the straight coupling."""

    def __init__(self, size: int = 2048, batch_size: int = 128, seed: int = 0) -> None:
        super().__init__(size, batch_size, seed)
        self.noise = torch.randn(size, 2, generator=torch.Generator().manual_seed(seed + 1))
        self.points = CLASS_MEANS[self.labels] + CLASS_STD * self.noise

    def _loader(self, shuffle: bool) -> DataLoader:
        rows = list(zip(self.points, self.labels, self.noise, strict=True))
        return DataLoader(rows, batch_size=self.batch_size, shuffle=shuffle, collate_fn=_paired)


def _paired(rows):
    points, labels, noise = zip(*rows, strict=True)
    return {"point": torch.stack(points), "label": torch.stack(labels), "noise": torch.stack(noise)}


def one_step_pair_error(objective: TrainingObjective, tmp_path) -> float:
    """Train on the pairs, then the mean distance of one Euler step from held-out noise to the
    pair map ``mean_y + std * x0``."""
    pl.seed_everything(0)
    module = FlowMatching(
        ToyAdapter(),
        ToyVelocity(),
        time_distribution=Uniform(),
        objective=objective,
        optimizer=lambda p: torch.optim.Adam(p, lr=2e-2),
        ema_decay=0.99,
        cond_dropout=0.0,
    )
    trainer = make_trainer(tmp_path, max_steps=400, limit_val_batches=0)
    trainer.fit(module, PairedData(batch_size=256))
    labels = torch.arange(3).repeat_interleave(100)
    x0 = torch.randn(300, 2, generator=torch.Generator().manual_seed(5))
    samples, nfe = module.generate({"class_labels": labels}, x0, sampler="euler", nfe=1)
    assert nfe == 1
    exact = CLASS_MEANS[labels] + CLASS_STD * x0
    return float((samples - exact).norm(dim=1).mean())


def test_stored_pairs_train_a_flow_whose_one_step_follows_the_pairs(tmp_path):
    """Reflow's premise: on a deterministic coupling the flow is straight, so one Euler step
    lands on each noise's own partner; trained on independent noise, one step lands near the
    class mean instead, about ``std * E|x0| = 0.38`` from the partner."""
    paired = one_step_pair_error(FlowMatchingObjective(noise_key="noise"), tmp_path / "pairs")
    independent = one_step_pair_error(FlowMatchingObjective(), tmp_path / "independent")
    assert paired < 0.1
    assert independent > 0.3


def test_stored_noise_must_exist_and_fit_the_data():
    module = FlowMatching(ToyAdapter(), ToyVelocity(), objective=FlowMatchingObjective("noise"))
    batch = {"point": torch.zeros(4, 2), "label": torch.zeros(4, dtype=torch.long)}
    with pytest.raises(KeyError, match="`noise`.*'label', 'point'"):
        module.training_step(batch, 0)
    with pytest.raises(ValueError, match=r"`noise` has shape \(4, 3\).*\(4, 2\)"):
        module.training_step({**batch, "noise": torch.zeros(4, 3)}, 0)


def test_real_validation_data_without_stored_noise_scores_samples_without_a_loss(tmp_path):
    module = FlowMatching(ToyAdapter(), ToyVelocity(), objective=FlowMatchingObjective("noise"))
    assert module.objective.batch_keys() == ("noise",)
    assert FlowMatchingObjective().batch_keys() == ()
    metrics = make_trainer(tmp_path, limit_val_batches=2).validate(
        module, ToyData(), verbose=False
    )[0]
    assert "val/mean_error" in metrics and "val/loss" not in metrics
    batch = {"point": torch.zeros(4, 2), "label": torch.zeros(4, dtype=torch.long)}
    with_noise = module.evaluate_batch(
        {**batch, "noise": torch.zeros(4, 2)}, torch.Generator().manual_seed(0), False
    )
    assert with_noise.loss is not None and torch.isfinite(with_noise.loss)


class RecordingObjective(FlowMatchingObjective):
    """Flow matching that records what the module handed it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def forward(self, network, x1, cond, batch, generator, context):
        self.calls.append((network, generator, context))
        return super().forward(network, x1, cond, batch, generator, context)


def test_the_module_lends_its_parts_and_fixes_validation_noise(tmp_path):
    objective = RecordingObjective()
    module = FlowMatching(ToyAdapter(), ToyVelocity(), objective=objective, cond_dropout=0.3)
    trainer = make_trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(module, ToyData())
    training = [call for call in objective.calls if call[2].cond_dropout > 0]
    assert len(training) == 2  # one call per training step
    # each step draws from a generator keyed on the run's draw seed and the step
    seeds = [generator.initial_seed() for _, generator, _ in training]
    assert seeds == [keyed_seed(module.draw_seed, step, 0) for step in (0, 1)]
    network, _, context = training[0]
    assert network is module.network
    assert context.path is module.path and context.loss is module.loss
    assert context.time_distribution is module.time_distribution
    assert context.ema_network is module.ema.module and context.cond_dropout == 0.3
    validation = [call for call in objective.calls if call[2].cond_dropout == 0.0]
    assert validation  # the sanity check's batch 0, seeded with sample_seed + 0
    assert all(call[1].initial_seed() == module.hparams.sample_seed for call in validation)
    first = trainer.validate(module, ToyData(), verbose=False)[0]["val/loss"]
    again = trainer.validate(module, ToyData(), verbose=False)[0]["val/loss"]
    assert first == again  # the same seeded noise and times every time


class StepSizeObjective(TrainingObjective):
    """Flow matching on a network that also takes the step size ``1 - t`` (as shortcut and
    MeanFlow objectives pass a step size or a second time)."""

    def forward(self, network, x1, cond, batch, generator, context):
        x0 = context.noise_like(x1, generator)
        t = context.time_distribution.sample(x1.shape[0], generator=generator)
        draw = context.path.sample(x0, x1, t)
        prediction = network(draw.x_t, draw.t, step_size=1 - draw.t, **cond)
        return ObjectiveOutput(context.loss(prediction, draw.target, draw.t))


def test_extra_network_inputs_reach_the_network_and_are_trained(tmp_path):
    network = MMDiT(
        SetTokens(2), hidden_size=16, depth=1, num_heads=2, num_classes=3, step_size_embedding=True
    )
    module = FlowMatching(SetAdapter(), network, objective=StepSizeObjective(), ema_decay=None)
    batch = next(iter(ToyData(batch_size=8).train_dataloader()))
    module.training_step(batch, 0).backward()
    step_grads = [p.grad for name, p in network.named_parameters() if "step" in name]
    assert step_grads and all(g is not None for g in step_grads)


def test_a_recipe_names_the_objective_by_class_path():
    module = build_module(
        {
            "adapter": {"class_path": "tests.mmflow.training.toy.ToyAdapter"},
            "network": {"class_path": "tests.mmflow.training.toy.ToyVelocity"},
            "objective": {
                "class_path": "mmflow.training.FlowMatchingObjective",
                "init_args": {"noise_key": "noise"},
            },
        }
    )
    assert isinstance(module.objective, FlowMatchingObjective)
    assert module.objective.noise_key == "noise"
    assert module.hparams["objective"]["init_args"]["noise_key"] == "noise"


class StepVelocity(ToyVelocity):
    """:class:`ToyVelocity` that also takes a step size (shortcut, MeanFlow) or a velocity
    (a FlowTurbo refiner)."""

    def __init__(self) -> None:
        super().__init__(width=16)
        self.step = nn.Linear(1, 16)
        self.velocity = nn.Linear(2, 16)

    def forward(self, x, t, class_labels, step_size=None, velocity=None):
        h = self.inp(torch.cat([x, t[:, None].to(x.dtype)], dim=1)) + self.embed(class_labels)
        if step_size is not None:
            h = h + self.step(step_size[:, None].to(x.dtype))
        if velocity is not None:
            h = h + self.velocity(velocity)
        return self.body(h)


DATA_PARALLEL_OBJECTIVES = {
    "flow_matching": FlowMatchingObjective,
    "distillation": lambda: StepDistillationObjective(steps=4),
    "annealing_reflow": lambda: AnnealingReflowObjective(warmup_steps=10),
    "flow_guided_distillation": lambda: FlowGuidedDistillationObjective(teacher=StepVelocity()),
    "meanflow": MeanFlowObjective,
    "refiner": lambda: RefinerObjective(max_delta=0.2),
}


@pytest.mark.parametrize("name", DATA_PARALLEL_OBJECTIVES)
def test_processes_that_split_a_batch_draw_as_one_process_does(name):
    """Rows ``r, r + W, ...`` of a batch in process ``r`` of ``W`` get the noise, times and
    dropout the whole batch gets in one process, so the mean of the processes' losses (what
    DDP's averaged gradients descend) is the one process's loss."""
    torch.manual_seed(0)
    objective, network = DATA_PARALLEL_OBJECTIVES[name]().eval(), StepVelocity()
    x1, x0, labels = torch.randn(8, 2), torch.randn(8, 2), torch.randint(0, 3, (8,))

    def loss(rows: slice, rank: int, world_size: int) -> torch.Tensor:
        context = replace(
            toy_context(ToyAdapter(), cond_dropout=0.5), rank=rank, world_size=world_size
        )
        cond, batch = {"class_labels": labels[rows]}, {"x0": x0[rows]}
        generator = torch.Generator().manual_seed(3)
        return objective(network, x1[rows], cond, batch, generator, context).loss

    one = loss(slice(None), 0, 1)
    two = (loss(slice(0, None, 2), 0, 2) + loss(slice(1, None, 2), 1, 2)) / 2
    assert torch.allclose(one, two, rtol=1e-5, atol=1e-8), (one, two)
    crossed = (loss(slice(0, None, 2), 1, 2) + loss(slice(1, None, 2), 0, 2)) / 2
    assert not torch.allclose(one, crossed, rtol=1e-3)  # another process's rows would not do
