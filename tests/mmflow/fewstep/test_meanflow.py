"""MeanFlow against closed forms: the identity on the Gaussian flow's exact average velocity,
the paper's convention converted to ours, a small model trained to the exact one-step map, and
the objective through an MMDiT and the FlowMatching module."""

import pytest
import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmflow.fewstep.meanflow import (
    MeanFlowObjective,
    adaptive_weight,
    from_meanflow_convention,
    meanflow_target,
)
from mmflow.nn import MMDiT, SetTokens
from mmflow.sampling import sample
from mmflow.sampling.analytic import GaussianLinearFlow
from mmflow.timesteps import LogitNormal, Uniform
from mmflow.training import FlowMatching
from mmflow.training.cli import build_module

from ..training.test_module import make_trainer
from ..training.toy import SetAdapter, ToyAdapter, ToyData, Unconditional, toy_context

MEAN = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
STD = torch.tensor([0.3, 0.8, 2.0], dtype=torch.float64)


def tiny_mmdit() -> MMDiT:
    return MMDiT(
        SetTokens(2), hidden_size=16, depth=1, num_heads=2, num_classes=3, step_size_embedding=True
    )


def gaussian_points(batch: int = 256, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Times ``t``, steps ``h`` with ``t + h <= 1`` (a quarter of them 0) and states ``x``."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.rand(batch, generator=generator, dtype=torch.float64)
    fraction = 0.05 + 0.95 * torch.rand(batch, generator=generator, dtype=torch.float64)
    step = torch.where(torch.arange(batch) % 4 == 0, 0.0, fraction * (1 - t))
    x = 2 * torch.randn(batch, 3, generator=generator, dtype=torch.float64)
    return t, step, x


def test_the_meanflow_identity_holds_for_the_exact_average_velocity():
    """``u = v + h (v . d_x u + d_t u - d_h u)`` for the Gaussian flow's exact ``u``, to float64
    round-off: the target is a fixed point exactly where the network is the average velocity."""
    field = GaussianLinearFlow(MEAN, STD)
    t, step, x = gaussian_points()
    prediction, target = meanflow_target(field.average_velocity, x, t, step, field(x, t))
    torch.testing.assert_close(prediction, field.average_velocity(x, t, step))
    torch.testing.assert_close(target, prediction, rtol=1e-9, atol=1e-9)


def test_a_wrong_average_velocity_or_tangent_misses_the_target():
    """The identity test can fail: a perturbed ``u`` (still exact at ``h = 0``) is no fixed
    point, and neither is the exact ``u`` with the end point moving (``dh/dt = +1``) or the
    paper's tangent for ``t`` (``dt = -1``)."""
    field = GaussianLinearFlow(MEAN, STD)
    t, step, x = gaussian_points()
    moving = step > 0

    def perturbed(x: Tensor, t: Tensor, h: Tensor) -> Tensor:
        return field.average_velocity(x, t, h) + 0.1 * (h * (1 - t))[:, None] * x

    prediction, target = meanflow_target(perturbed, x, t, step, field(x, t))
    assert (prediction - target)[moving].abs().max() > 1e-2
    for tangent_t, tangent_h in ((1.0, 1.0), (-1.0, 1.0)):
        tangents = (field(x, t), torch.full_like(t, tangent_t), torch.full_like(t, tangent_h))
        exact, derivative = torch.func.jvp(field.average_velocity, (x, t, step), tangents)
        wrong = field(x, t) + step[:, None] * derivative
        assert (wrong - exact)[moving].abs().max() > 1e-2


class PaperGaussianFlow:
    """The same Gaussian data in the paper's convention: ``z_t = (1 - t) x + t e`` with
    ``x ~ N(m, s^2)``, so ``z_t ~ N((1 - t) m, W_t)``, ``W_t = (1 - t)^2 s^2 + t^2``."""

    def _variance(self, t: Tensor) -> Tensor:
        return (1 - t) ** 2 * STD**2 + t**2

    def velocity(self, z: Tensor, t: Tensor) -> Tensor:
        """``v(z, t) = -m + (dW_t/dt / 2) / W_t (z - (1 - t) m)``."""
        t = t[:, None]
        return -MEAN + (t - (1 - t) * STD**2) / self._variance(t) * (z - (1 - t) * MEAN)

    def average_velocity(self, z: Tensor, r: Tensor, t: Tensor) -> Tensor:
        """``u(z_t, r, t) = (z_t - z_r) / (t - r)`` with the flow map
        ``z_r = (1 - r) m + sqrt(W_r / W_t) (z_t - (1 - t) m)``."""
        r, t = r[:, None], t[:, None]
        scale = (self._variance(r) / self._variance(t)).sqrt()
        return (z - (1 - r) * MEAN - scale * (z - (1 - t) * MEAN)) / (t - r)


def test_the_paper_convention_converts_to_ours_on_the_gaussian_flow():
    """The paper's exact ``u(z, r, t)``, converted, is our exact average velocity; its own
    target (tangents ``(v, 0, 1)`` for ``(z, r, t)``) equals it too, and its one-step sample
    ``e - u(e, 0, 1)`` is our ``x0 + u(x0, 0, 1)``."""
    paper, field = PaperGaussianFlow(), GaussianLinearFlow(MEAN, STD)
    t_ours, step, z = gaussian_points()
    moving = step > 0
    t, r = (1 - t_ours)[moving], (1 - t_ours - step)[moving]
    z = z[moving]
    u_paper = paper.average_velocity(z, r, t)
    point = from_meanflow_convention(z, r, t, u_paper)
    exact = field.average_velocity(point.x, point.t, point.step_size)
    torch.testing.assert_close(point.average_velocity, exact, rtol=1e-10, atol=1e-10)

    velocity = paper.velocity(z, t)
    torch.testing.assert_close(-velocity, field(point.x, point.t))
    tangents = (velocity, torch.zeros_like(r), torch.ones_like(t))
    u, derivative = torch.func.jvp(paper.average_velocity, (z, r, t), tangents)
    paper_target = velocity - (t - r)[:, None] * derivative
    torch.testing.assert_close(paper_target, u, rtol=1e-9, atol=1e-9)

    noise = z
    ones, zeros = torch.ones_like(t), torch.zeros_like(t)
    paper_sample = noise - paper.average_velocity(noise, zeros, ones)
    ours = noise + field.average_velocity(noise, zeros, ones)
    torch.testing.assert_close(paper_sample, ours)
    torch.testing.assert_close(ours, field.flow(noise, 1.0))


def test_times_are_sorted_pairs_with_a_flow_matching_share():
    """``0 <= t <= t + h <= 1``; a share of ``h = 0`` (binomial, 20000 draws: the tolerance
    is over 5 standard deviations); for the other samples ``t`` and ``t + h`` are the min and
    max of two uniforms (means 1/3 and 2/3); a seeded generator repeats the draws."""
    objective = MeanFlowObjective(flow_matching_share=0.3, time_distribution=Uniform())
    t, step = objective.sample_times(20000, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and step.min() >= 0 and (t + step).max() <= 1
    assert abs(float((step == 0).float().mean()) - 0.3) < 0.02
    moving = step > 0
    assert abs(float(t[moving].mean()) - 1 / 3) < 0.01
    assert abs(float((t + step)[moving].mean()) - 2 / 3) < 0.01
    again = objective.sample_times(20000, torch.Generator().manual_seed(0))
    assert torch.equal(t, again[0]) and torch.equal(step, again[1])


def test_the_default_times_are_the_papers_logit_normal_in_our_time():
    """The paper's ``sigmoid(-0.4 + n)`` over its noise level is ours ``LogitNormal(0.4, 1)``."""
    distribution = MeanFlowObjective().time_distribution
    assert isinstance(distribution, LogitNormal)
    assert (distribution.loc, distribution.scale) == (0.4, 1.0)


def test_the_adaptive_weight_is_a_detached_inverse_power():
    squared = torch.tensor([0.0, 1.0, 4.0], requires_grad=True)
    weight = adaptive_weight(squared, power=0.5, offset=0.01)
    torch.testing.assert_close(weight, torch.tensor([0.01, 1.01, 4.01]) ** -0.5)
    assert not weight.requires_grad


class AffineAverageVelocity(nn.Module):
    """``u(x, t, h) = a(t, h) * x + b(t, h)``: the form of the Gaussian flow's exact average
    velocity, ``((t + h) m + sqrt(V_{t+h} / V_t) (x - t m) - x) / h``."""

    def __init__(self, dim: int, width: int = 64) -> None:
        super().__init__()
        self.coefficients = nn.Sequential(
            nn.Linear(2, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, 2 * dim),
        )

    def forward(self, x: Tensor, t: Tensor, step_size: Tensor) -> Tensor:
        times = torch.stack([t, step_size], dim=-1).to(x.dtype)
        scale, shift = self.coefficients(times).chunk(2, dim=-1)
        return scale * x + shift


def test_a_trained_model_steps_from_noise_to_data_in_one_evaluation(single_thread):
    """400 steps on ``N(m, s^2)`` with conditional velocities only: one ``step_euler`` step
    lands on the exact flow ``m + s x0`` (measured mean error 0.033-0.045 over four seeds;
    bound 0.15), where one Euler step of the exact instantaneous velocity lands on ``m``
    (error ``E|s x0|``, measured 1.86; bound: 10 times the one-step error). Plain squared
    error (``weight_power = 0``), whose minimiser is the conditional mean of the target, the
    average velocity itself; the default ``p = 1`` normalises the step and reaches 0.11-0.17
    in the same 400 steps."""
    torch.manual_seed(0)
    mean, std = MEAN[:2].float(), STD[1:].float()
    field = GaussianLinearFlow(mean, std)
    network = AffineAverageVelocity(2)
    objective = MeanFlowObjective(0.25, time_distribution=Uniform(), weight_power=0.0)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 400)
    for _ in range(400):
        x1 = mean + std * torch.randn(512, 2)
        output = objective(network, x1, {}, {}, None, toy_context(Unconditional()))
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        schedule.step()
    x0 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    exact = field.flow(x0, 1.0)
    one_step = sample(network, x0, "step_euler", nfe=1).samples
    euler = sample(field, x0, "euler", nfe=1).samples
    error = (one_step - exact).norm(dim=1).mean()
    assert error < 0.15
    assert error < 0.1 * (euler - exact).norm(dim=1).mean()


def test_the_jvp_through_an_mmdit_matches_reverse_mode():
    """Under the math attention kernel, the forward-mode JVP of a (perturbed) MMDiT with a
    step-size input along ``(v, 1, -1)`` equals the same derivative by reverse mode (the
    double-backward trick of ``torch.autograd.functional.jvp``, which the CPU flash kernel
    lacks too), to float32 round-off. Finite
    differences are no check here: the sinusoidal time embedding's highest frequencies make
    them inaccurate at any float32 step."""
    torch.manual_seed(0)
    network = tiny_mmdit()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    labels = torch.arange(6) % 3
    x, velocity = torch.randn(6, 1, 2), torch.randn(6, 1, 2)
    t = torch.linspace(0.1, 0.6, 6)
    step = 0.3 * torch.ones(6)

    def average_velocity(x: Tensor, t: Tensor, h: Tensor) -> Tensor:
        return network(x, t, step_size=h, class_labels=labels)

    tangents = (velocity, torch.ones_like(t), -torch.ones_like(step))
    with sdpa_kernel(SDPBackend.MATH):
        _, target = meanflow_target(average_velocity, x, t, step, velocity)
        _, reverse_mode = torch.autograd.functional.jvp(average_velocity, (x, t, step), tangents)
    forward_mode = (target - velocity) / step[:, None, None]
    torch.testing.assert_close(forward_mode, reverse_mode, rtol=1e-4, atol=1e-5)
    assert forward_mode.abs().max() > 0.1


def test_the_objective_trains_an_mmdit_with_guidance_in_the_target():
    """Gradients reach every parameter (the step-size embedding too, once the zero-initialised
    output layer has moved), the loss is finite, and the terms are unweighted MSEs."""
    torch.manual_seed(0)
    network = tiny_mmdit()
    objective = MeanFlowObjective(cfg_omega=1.5, cfg_kappa=0.3, weight_power=0.75)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    batch = next(iter(ToyData(batch_size=16).train_dataloader()))
    x1, cond = SetAdapter().encode(batch)
    for _ in range(3):
        output = objective(network, x1, cond, batch, None, toy_context(SetAdapter(), 0.1))
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    assert torch.isfinite(output.loss) and set(output.terms) == {"mse", "velocity_mse"}
    gradients = dict(network.named_parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gradients.values())
    step_gradients = [p.grad for name, p in gradients.items() if "step" in name]
    assert step_gradients and any(g.abs().max() > 0 for g in step_gradients)


class ConstantPerClass(nn.Module):
    """``u(x, t, h | y) = constants[y]``: no dependence on ``(x, t, h)``, so ``du/dt = 0``."""

    def __init__(self) -> None:
        super().__init__()
        self.constants = nn.Parameter(
            torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [5.0, -5.0]])
        )

    def forward(self, x: Tensor, t: Tensor, step_size: Tensor, class_labels: Tensor) -> Tensor:
        return self.constants[class_labels] + 0 * x


def test_the_guided_velocity_mixes_the_models_predictions():
    """``v_g = omega v + kappa u_c + (1 - omega - kappa) u_null`` for kept conditions inside the
    guidance interval, ``v`` for dropped conditions and outside the interval."""
    network, adapter = ConstantPerClass(), ToyAdapter()
    objective = MeanFlowObjective(cfg_omega=2.0, cfg_kappa=0.25, guidance_interval=(0.2, 0.8))
    labels = torch.tensor([0, 1, 2, 0])
    t = torch.tensor([0.5, 0.5, 0.9, 0.5])
    dropped = torch.tensor([False, False, False, True])
    velocity = torch.randn(4, 2)
    guided = objective.guided_velocity(
        network,
        torch.zeros(4, 2),
        t,
        velocity,
        {"class_labels": labels},
        dropped,
        toy_context(adapter, 0.1),
    )
    constants = network.constants.detach()
    expected = 2.0 * velocity + 0.25 * constants[labels] - 1.25 * constants[3]
    torch.testing.assert_close(guided[:2], expected[:2])
    torch.testing.assert_close(guided[2:], velocity[2:])


def test_the_target_of_a_constant_network_is_the_guided_velocity():
    """Through ``forward``: with ``du/dt = 0`` the target is ``v_g``; without guidance and
    dropout, the logged ``mse`` is ``|u - (x1 - x0)|^2`` on the drawn noise."""
    network, adapter = ConstantPerClass(), ToyAdapter()
    x1 = torch.randn(8, 2)
    cond = {"class_labels": torch.arange(8) % 3}
    output = MeanFlowObjective()(
        network, x1, cond, {}, torch.Generator().manual_seed(3), toy_context(adapter)
    )
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
    expected = (network.constants[cond["class_labels"]] - (x1 - x0)).square().mean()
    torch.testing.assert_close(output.terms["mse"], expected.detach())


def test_a_seeded_generator_fixes_every_draw():
    network, adapter = ConstantPerClass(), ToyAdapter()
    objective = MeanFlowObjective(cfg_omega=1.5)
    x1, cond = torch.randn(32, 2), {"class_labels": torch.arange(32) % 3}

    def loss(seed: int) -> Tensor:
        generator = torch.Generator().manual_seed(seed)
        return objective(network, x1, cond, {}, generator, toy_context(adapter, 0.3)).loss

    assert torch.equal(loss(0), loss(0))
    assert not torch.equal(loss(0), loss(1))


def test_the_module_trains_validates_and_samples_in_one_step(tmp_path):
    torch.manual_seed(0)
    network = tiny_mmdit()
    module = FlowMatching(
        SetAdapter(),
        network,
        objective=MeanFlowObjective(cfg_omega=1.5),
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        sampler="step_euler",
        nfe=1,
        ema_decay=None,
    )
    before = [p.detach().clone() for p in network.parameters()]
    trainer = make_trainer(tmp_path, max_steps=3, limit_val_batches=1)
    trainer.fit(module, ToyData(size=96, batch_size=32))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert (
        "train/mse" in trainer.callback_metrics and "val/velocity_mse" in trainer.callback_metrics
    )
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters(), strict=True))
    samples, nfe = module.generate({"class_labels": torch.arange(6) % 3}, torch.randn(6, 1, 2))
    assert nfe == 1 and torch.isfinite(samples).all()


def test_a_recipe_names_the_objective_and_its_time_distribution():
    module = build_module(
        {
            "adapter": {"class_path": "tests.mmflow.training.toy.ToyAdapter"},
            "network": {"class_path": "tests.mmflow.training.toy.ToyVelocity"},
            "objective": {
                "class_path": "mmflow.fewstep.meanflow.MeanFlowObjective",
                "init_args": {
                    "flow_matching_share": 0.25,
                    "time_distribution": {"class_path": "mmflow.timesteps.Uniform"},
                    "guidance_interval": [0.1, 0.9],
                },
            },
        }
    )
    objective = module.objective
    assert isinstance(objective, MeanFlowObjective) and objective.flow_matching_share == 0.25
    assert isinstance(objective.time_distribution, Uniform)
    assert objective.guidance_interval == (0.1, 0.9)


def test_guidance_needs_a_conditioned_adapter():
    with pytest.raises(ValueError, match="cfg_omega"):
        MeanFlowObjective(cfg_omega=2.0)(
            AffineAverageVelocity(2), torch.randn(4, 2), {}, {}, None, toy_context(Unconditional())
        )


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"flow_matching_share": 1.5}, "flow_matching_share"),
        ({"flow_matching_share": -0.1}, "flow_matching_share"),
        ({"weight_power": -1.0}, "weight_power"),
        ({"weight_offset": 0.0}, "weight_offset"),
        ({"cfg_omega": 0.0}, "cfg_omega"),
        ({"cfg_kappa": 1.0}, "cfg_kappa"),
        ({"cfg_kappa": -0.5}, "cfg_kappa"),
        ({"guidance_interval": (0.8, 0.2)}, "guidance_interval"),
        ({"guidance_interval": (-0.1, 0.5)}, "guidance_interval"),
    ],
)
def test_bad_arguments_name_themselves(arguments, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        MeanFlowObjective(**arguments)
