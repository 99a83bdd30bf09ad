"""FlowTurbo's sampler on the Gaussian flow's exact velocity: Heun blocks are Heun, the
pseudo-corrector and refiner steps match hand-written references, and the cost is counted."""

import pytest
import torch

from mmflow.sampling import ClassifierFreeGuidance, GaussianLinearFlow, sample
from mmflow.sampling.flowturbo import flowturbo_evaluations

from .test_host_sync import NoHostReads, trapped

FIELD = GaussianLinearFlow(
    torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64),
    torch.tensor([0.3, 0.8, 2.0], dtype=torch.float64),
)


def noise(batch: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, generator=generator, dtype=torch.float64)


def exact_refiner(x, t, velocity):
    """The correction that makes ``velocity + r`` the true velocity at ``(x, t)``."""
    return FIELD(x, t) - velocity


def skewed_refiner(x, t, velocity):
    """A refiner whose output depends on all three inputs differently."""
    return 0.3 * torch.tanh(x) * t[:, None] - 0.2 * velocity


class Counting:
    """Counts calls of a velocity model or refiner, independently of the sampler."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def times(t, x):
    return t.expand(x.shape[0])


def reference(x, heun_steps, corrector_steps, refiner_steps, refiner=None):
    """The schedule written out step by step on the uniform grid (module docstring)."""
    steps = heun_steps + corrector_steps + refiner_steps
    ts = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    cache = None
    for i in range(steps):
        t, t_next, h = ts[i], ts[i + 1], ts[i + 1] - ts[i]
        if i < heun_steps + corrector_steps:
            if i < heun_steps or cache is None:
                d = FIELD(x, times(t, x))
            else:
                d = cache
            d_next = FIELD(x + h * d, times(t_next, x))
            cache = d_next
        else:
            d = cache + refiner(x, times(t, x), cache)
            d_next = d + refiner(x + h * d, times(t_next, x), cache)
            cache = d
        x = x + 0.5 * h * (d + d_next)
    return x


def flowturbo(x0, nfe=None, **options):
    return sample(FIELD, x0, "flowturbo", nfe, solver_options=options)


def flowturbo_on_grid(x0, grid, **options):
    return sample(FIELD, x0, "flowturbo", grid=grid, solver_options=options)


def test_heun_blocks_alone_are_heun_bit_for_bit():
    x0 = noise()
    heun = sample(FIELD, x0, "heun", 8)
    from_budget = flowturbo(x0, 8)
    from_steps = flowturbo(x0, heun_steps=4)
    for result in (from_budget, from_steps):
        assert torch.equal(result.samples, heun.samples)
        assert torch.equal(result.grid, heun.grid)
        assert result.nfe == 8 and result.info["refiner_calls"] == 0


def test_pseudo_corrector_steps_reuse_the_velocity_at_the_predicted_point():
    x0 = noise()
    result = flowturbo(x0, heun_steps=1, corrector_steps=4)
    torch.testing.assert_close(result.samples, reference(x0, 1, 4, 0), rtol=0, atol=1e-14)
    assert result.nfe == 6
    # The reuse changes the answer: it is not Heun on the same grid.
    assert not torch.allclose(result.samples, sample(FIELD, x0, "heun", 10).samples, atol=1e-6)


def test_a_corrector_step_without_a_heun_step_before_it_evaluates_its_start():
    x0 = noise()
    result = flowturbo(x0, heun_steps=0, corrector_steps=3)
    torch.testing.assert_close(result.samples, reference(x0, 0, 3, 0), rtol=0, atol=1e-14)
    assert result.nfe == 4 == flowturbo_evaluations(0, 3)


@pytest.mark.parametrize("refiner", [exact_refiner, skewed_refiner])
def test_refiner_steps_follow_the_reference_code(refiner):
    x0 = noise()
    result = flowturbo(x0, heun_steps=2, corrector_steps=1, refiner_steps=3, refiner=refiner)
    expected = reference(x0, 2, 1, 3, refiner)
    torch.testing.assert_close(result.samples, expected, rtol=0, atol=1e-14)


def test_the_exact_refiner_gives_the_true_velocity_and_a_corrected_heun_step():
    """With ``r = u - v`` the refined velocity ``d`` is the true ``u(x_i, t_i)``, and the
    step is Heun's plus ``h (d - c) / 2``, the second correction being added to ``d``."""
    x0, steps = noise(), []
    sample(
        FIELD,
        x0,
        "flowturbo",
        solver_options={"heun_steps": 1, "refiner_steps": 2, "refiner": exact_refiner},
        callback=steps.append,
    )
    assert [step["block"] for step in steps] == ["heun", "refiner", "refiner"]
    ts = torch.linspace(0, 1, 4, dtype=torch.float64)
    h = ts[1] - ts[0]
    x1 = steps[0]["x"]
    cache = FIELD(x0 + h * FIELD(x0, times(ts[0], x0)), times(ts[1], x0))
    true = FIELD(x1, times(ts[1], x1))
    torch.testing.assert_close(steps[1]["velocity"], true, rtol=0, atol=1e-14)
    heun_step = x1 + 0.5 * h * (true + FIELD(x1 + h * true, times(ts[2], x1)))
    torch.testing.assert_close(
        steps[1]["x"], heun_step + 0.5 * h * (true - cache), rtol=0, atol=1e-14
    )


def test_the_exact_refiner_lands_closer_to_the_flow_than_no_correction():
    x0 = noise(256)
    target = FIELD.flow(x0, 1.0)

    def error(refiner):
        options = {"heun_steps": 1, "corrector_steps": 1, "refiner_steps": 4, "refiner": refiner}
        samples = flowturbo(x0, 3, **options).samples
        return (samples - target).square().mean().sqrt()

    def no_correction(x, t, velocity):
        return torch.zeros_like(velocity)

    assert error(exact_refiner) < 0.5 * error(no_correction)


def test_flow_evaluations_and_refiner_calls_are_counted():
    x0 = noise()
    model, refiner = Counting(FIELD), Counting(skewed_refiner)
    options = {"heun_steps": 2, "corrector_steps": 3, "refiner_steps": 4, "refiner": refiner}
    result = sample(model, x0, "flowturbo", 7, solver_options=options)
    assert result.nfe == model.calls == 7 == flowturbo_evaluations(2, 3)
    assert result.info["refiner_calls"] == refiner.calls == 8
    assert len(result.grid) == 10
    assert result.info["blocks"] == ["heun"] * 2 + ["corrector"] * 3 + ["refiner"] * 4


def test_without_a_refiner_option_the_model_refines_itself_through_guidance():
    """``model(x, t, velocity=v)`` is the refiner; under CFG both passes get ``v``, and the
    guided correction of a linear refiner is the guided combination of the two."""
    labels = torch.tensor([0, 1] * 8)
    weights = torch.tensor([0.5, -0.7], dtype=torch.float64)

    def model(x, t, velocity=None, class_labels=None):
        bias = weights[class_labels.clamp(max=1)][:, None] * (class_labels < 2)[:, None]
        if velocity is None:
            return FIELD(x, t) + bias
        return skewed_refiner(x, t, velocity) + bias * t[:, None]

    guided = ClassifierFreeGuidance(
        model, 3.0, null_kwargs={"class_labels": torch.full_like(labels, 2)}
    )
    options = {"heun_steps": 2, "corrector_steps": 1, "refiner_steps": 3}
    result = sample(guided, noise(), "flowturbo", None, solver_options=options, class_labels=labels)

    def guided_refiner(x, t, velocity, class_labels):
        return skewed_refiner(x, t, velocity) + 3.0 * weights[labels][:, None] * t[:, None]

    explicit = sample(
        guided,
        noise(),
        "flowturbo",
        None,
        solver_options={**options, "refiner": guided_refiner},
        class_labels=labels,
    )
    assert result.info["refiner_calls"] == 6
    torch.testing.assert_close(result.samples, explicit.samples)
    plain = sample(
        guided,
        noise(),
        "flowturbo",
        None,
        solver_options={**options, "refiner": lambda x, t, v, **c: torch.zeros_like(v)},
        class_labels=labels,
    )
    assert not torch.allclose(result.samples, plain.samples)


def test_an_explicit_grid_sets_the_step_sizes():
    x0 = noise()
    grid = [0.0, 0.2, 0.5, 0.7, 1.0]
    result = flowturbo_on_grid(x0, grid, heun_steps=4)
    assert torch.equal(result.samples, sample(FIELD, x0, "heun", grid=grid).samples)


@pytest.mark.parametrize(
    ("nfe", "options", "named"),
    [
        (None, {"heun_steps": -1}, "heun_steps"),
        (None, {"heun_steps": 2, "corrector_steps": 1.5}, "corrector_steps"),
        (None, {"heun_steps": 2, "refiner_steps": -2}, "refiner_steps"),
        (None, {"heun_steps": 2, "refiner_steps": 2}, "refiner"),
        (None, {"heun_steps": 0, "refiner_steps": 2, "refiner": exact_refiner}, "refiner_steps"),
        (None, {"heun_steps": 0}, "heun_steps"),
        (None, {}, "heun_steps"),
        (7, {"corrector_steps": 2}, "heun_steps"),
        (5, {"heun_steps": 2}, "nfe"),
        (4, {"heun_steps": 1, "corrector_steps": 1}, "nfe"),
    ],
)
def test_bad_step_counts_are_refused_by_name(nfe, options, named):
    with pytest.raises(ValueError, match=f"`{named}`"):
        flowturbo(noise(), nfe, **options)


def test_a_grid_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="`grid`"):
        flowturbo_on_grid(noise(), [0.0, 0.5, 1.0], heun_steps=3)


def test_refiner_steps_never_read_values_on_the_host():
    options = {"heun_steps": 1, "corrector_steps": 1, "refiner_steps": 2, "refiner": skewed_refiner}
    result = flowturbo(trapped(noise(6)), 3, **options)
    assert isinstance(result.samples, NoHostReads) and result.nfe == 3
