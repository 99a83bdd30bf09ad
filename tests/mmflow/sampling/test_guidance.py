"""Classifier-free guidance against closed-form velocity fields."""

import pytest
import torch

from mmflow.sampling import ClassifierFreeGuidance, concat_conditions, sample


class ShiftField(torch.nn.Module):
    """u(x, t | c) = c - x: a conditional field with an obvious answer; c = 0 is 'null'."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t, *, target, extra=None):
        self.calls += 1
        return target - x


def test_guided_velocity_is_the_closed_form():
    field = ShiftField()
    x = torch.randn(4, 3)
    t = torch.rand(4)
    cond = torch.randn(4, 3)
    guided = ClassifierFreeGuidance(field, scale=3.0, null_kwargs={"target": torch.zeros(4, 3)})
    expected = (0 - x) + 3.0 * ((cond - x) - (0 - x))
    torch.testing.assert_close(guided(x, t, target=cond), expected)
    assert field.calls == 1, "conditional and null branches must share one batched forward"


@pytest.mark.parametrize("scale, which", [(1.0, "cond"), (0.0, "null")])
def test_scale_one_is_conditional_and_zero_is_unconditional(scale, which):
    field = ShiftField()
    x, t, cond = torch.randn(2, 3), torch.rand(2), torch.randn(2, 3)
    guided = ClassifierFreeGuidance(
        field, scale=scale, null_condition=lambda kw: {**kw, "target": 0 * kw["target"]}
    )
    expected = cond - x if which == "cond" else -x
    torch.testing.assert_close(guided(x, t, target=cond), expected)


def test_guidance_interval_uses_conditional_velocity_outside():
    field = ShiftField()
    x, cond = torch.randn(2, 3), torch.randn(2, 3)
    guided = ClassifierFreeGuidance(
        field, 4.0, null_kwargs={"target": torch.zeros(2, 3)}, interval=(0.2, 0.6)
    )
    out = guided(x, torch.tensor([0.1, 0.5]), target=cond)
    torch.testing.assert_close(out[0], cond[0] - x[0])
    torch.testing.assert_close(out[1], -x[1] + 4.0 * cond[1])


def test_guided_sampling_counts_one_nfe_per_call():
    field = ShiftField()
    guided = ClassifierFreeGuidance(field, 2.0, null_kwargs={"target": torch.zeros(3, 2)})
    result = sample(guided, torch.zeros(3, 2), method="heun", nfe=8, target=torch.ones(3, 2))
    assert result.nfe == 8 and field.calls == 8
    # dx/dt = 2 - x from 0; each Heun step of size h multiplies (x - 2) by 1 - h + h^2 / 2.
    h = 0.25
    expected = 2 * (1 - (1 - h + h**2 / 2) ** 4)
    torch.testing.assert_close(result.samples, torch.full((3, 2), expected), atol=1e-6, rtol=0)


def test_concat_conditions_recurses_into_dicts_and_checks_shapes():
    cond = {"text": torch.ones(2, 5, 4), "mask": torch.ones(2, 5, dtype=torch.bool)}
    null = {"text": torch.zeros(2, 5, 4), "mask": torch.ones(2, 5, dtype=torch.bool)}
    both = concat_conditions(cond, null)
    assert both["text"].shape == (4, 5, 4) and both["mask"].shape == (4, 5)
    with pytest.raises(ValueError, match="context.text"):
        concat_conditions({"text": torch.ones(2, 5, 4)}, {"text": torch.ones(2, 6, 4)}, "context")


def test_missing_null_condition_is_an_error():
    with pytest.raises(ValueError, match="null_condition"):
        ClassifierFreeGuidance(ShiftField(), 2.0)


def test_keys_the_null_condition_leaves_out_are_kept_in_both_branches():
    seen = {}

    def model(x, t, *, target, mixture):
        seen["mixture"] = mixture
        return target - x + mixture

    guided = ClassifierFreeGuidance(
        model, 3.0, null_condition=lambda kw: {"target": 0 * kw["target"]}
    )
    x, cond, mixture = torch.zeros(2, 3), torch.ones(2, 3), torch.full((2, 3), 0.5)
    out = guided(x, torch.rand(2), target=cond, mixture=mixture)
    torch.testing.assert_close(seen["mixture"], torch.cat([mixture, mixture]))
    torch.testing.assert_close(out, mixture + 3.0 * cond)
