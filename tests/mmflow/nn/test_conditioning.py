"""ChannelConcat: a condition stacked on the channels of x, velocity from the first channels."""

import pytest
import torch
from jsonargparse import ArgumentParser

from mmflow.nn import ChannelConcat, MMDiT, Patchify2D
from mmflow.sampling import ClassifierFreeGuidance


class Echo(torch.nn.Module):
    """Returns its input times (1 + t): shows exactly what the backbone received."""

    def forward(self, x, t, **kwargs):
        return x * (1 + t.view(-1, 1, 1, 1))


def test_backbone_sees_x_then_condition_and_velocity_is_the_first_channels():
    x, condition, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4), torch.tensor([0.0, 0.5])
    out = ChannelConcat(Echo(), key="mixture")(x, t, mixture=condition)
    torch.testing.assert_close(out, x * (1 + t.view(-1, 1, 1, 1)))


class AddLastChannel(torch.nn.Module):
    """Adds the last input channel to every channel: the output depends on the condition."""

    def forward(self, x, t, **kwargs):
        return x + x[:, -1:]


def test_condition_changes_the_velocity_of_a_real_backbone():
    torch.manual_seed(0)
    backbone = MMDiT(Patchify2D(4 + 4, 2), hidden_size=32, depth=1, num_heads=2)
    torch.nn.init.normal_(
        backbone.final.linear.weight
    )  # break the zero init so outputs depend on inputs
    for block in backbone.joint_blocks:
        torch.nn.init.normal_(block.layers["x"].modulation.weight, std=0.1)
    model = ChannelConcat(backbone, key="mixture")
    x, t = torch.randn(2, 4, 8, 8), torch.rand(2)
    first = model(x, t, mixture=torch.zeros(2, 4, 8, 8))
    second = model(x, t, mixture=torch.ones(2, 4, 8, 8))
    assert first.shape == x.shape and not torch.allclose(first, second)
    # The wrapper is exactly the backbone on [x, condition], first channels kept.
    direct = backbone(torch.cat([x, torch.ones(2, 4, 8, 8)], dim=1), t)
    torch.testing.assert_close(second, direct[:, :4])


def test_sequence_layout_uses_the_last_axis():
    x, condition = torch.randn(2, 7, 3), torch.randn(2, 7, 2)
    out = ChannelConcat(lambda h, t: h * 2, key="speech", channel_dim=-1)(
        x, torch.zeros(2), speech=condition
    )
    torch.testing.assert_close(out, 2 * x)


def test_missing_or_misaligned_condition_is_a_clear_error():
    model = ChannelConcat(Echo(), key="mixture")
    with pytest.raises(ValueError, match="`mixture` is missing"):
        model(torch.randn(1, 3, 4, 4), torch.zeros(1))
    with pytest.raises(ValueError, match="does not match"):
        model(torch.randn(1, 3, 4, 4), torch.zeros(1), mixture=torch.randn(1, 3, 4, 5))


def test_works_under_guidance_and_from_yaml():
    model = ChannelConcat(Echo(), key="mixture")
    guided = ClassifierFreeGuidance(model, 2.0, null_kwargs={"mixture": torch.zeros(2, 1, 2, 2)})
    assert guided(torch.ones(2, 3, 2, 2), torch.zeros(2), mixture=torch.ones(2, 1, 2, 2)).shape == (
        2,
        3,
        2,
        2,
    )
    # Echo ignores the condition, so guidance leaves its velocity x (1 + t) unchanged.
    torch.testing.assert_close(
        guided(torch.ones(2, 3, 2, 2), torch.full((2,), 0.5), mixture=torch.ones(2, 1, 2, 2)),
        torch.full((2, 3, 2, 2), 1.5),
    )
    parser = ArgumentParser()
    parser.add_argument("--model", type=ChannelConcat)
    config = {"network": {"class_path": "torch.nn.Identity"}, "key": "mixture"}
    built = parser.instantiate(parser.parse_object({"model": config})).model
    assert built.key == "mixture"
    assert isinstance(built.network, torch.nn.Identity)
    # A backbone that sees the condition: u_cond = x + 1, u_null = x + 0 on the first channels,
    # so the guided velocity is u_null + 2 (u_cond - u_null) = x + 2.
    x = torch.randn(2, 3, 2, 2)
    guided = ClassifierFreeGuidance(
        ChannelConcat(AddLastChannel(), key="mixture"),
        2.0,
        null_kwargs={"mixture": torch.zeros(2, 1, 2, 2)},
    )
    torch.testing.assert_close(guided(x, torch.zeros(2), mixture=torch.ones(2, 1, 2, 2)), x + 2)
