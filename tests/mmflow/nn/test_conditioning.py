"""ChannelConcat (a condition stacked on the channels of x, velocity from the first channels)
and EncodedContext (a condition encoded into a context stream by a trained encoder)."""

import pytest
import torch
from jsonargparse import ArgumentParser

from mmflow.nn import (
    ChannelConcat,
    ContextConfig,
    EncodedContext,
    MMDiT,
    Patchify2D,
    PositionConfig,
    SetTokens,
    TimmEncoder,
)
from mmflow.sampling import ClassifierFreeGuidance

from .helpers import randomize_


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


def image_conditioned_mmdit(seed: int = 0) -> EncodedContext:
    """A set MMDiT whose image stream comes from a tiny ViT, all weights random."""
    torch.manual_seed(seed)
    encoder = TimmEncoder(
        "vit_tiny_patch16_224",
        in_chans=1,
        model_args={"img_size": 16, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2},
    )
    backbone = MMDiT(
        SetTokens(3), hidden_size=32, depth=2, num_heads=2, context={"image": ContextConfig(24)}
    )
    return EncodedContext(randomize_(backbone), encoder)


def test_encoded_image_is_the_backbones_context_stream():
    model = image_conditioned_mmdit()
    x, t, images = torch.randn(2, 5, 3), torch.rand(2), torch.randn(2, 1, 16, 16)
    direct = model.network(x, t, context={"image": model.encoder(images)})
    torch.testing.assert_close(model(x, t, image=images), direct)
    assert not torch.allclose(model(x, t, image=images), model(x, t, image=images.flip(0)))


def test_a_masked_image_is_exactly_the_unconditional_velocity():
    model = image_conditioned_mmdit()
    x, t = torch.randn(2, 5, 3), torch.rand(2)
    absent = torch.zeros(2, dtype=torch.bool)
    first = model(x, t, image=torch.randn(2, 1, 16, 16), image_mask=absent)
    second = model(x, t, image=torch.randn(2, 1, 16, 16), image_mask=absent)
    torch.testing.assert_close(first, second)
    # Per sample: only the sample whose mask is True sees its image.
    images = torch.randn(2, 1, 16, 16)
    mixed = model(x, t, image=images, image_mask=torch.tensor([True, False]))
    torch.testing.assert_close(mixed[0], model(x, t, image=images)[0])
    torch.testing.assert_close(mixed[1], first[1])


def test_the_encoder_trains_with_the_backbone():
    model = image_conditioned_mmdit()
    model(
        torch.randn(2, 5, 3), torch.rand(2), image=torch.randn(2, 1, 16, 16)
    ).square().sum().backward()
    grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_missing_or_wrong_image_inputs_are_clear_errors():
    model = image_conditioned_mmdit()
    x, t = torch.randn(2, 5, 3), torch.rand(2)
    with pytest.raises(ValueError, match="`image` is missing"):
        model(x, t)
    with pytest.raises(ValueError, match="`image_mask` must be \\[B=2\\]"):
        model(x, t, image=torch.randn(2, 1, 16, 16), image_mask=torch.ones(3, dtype=torch.bool))


def grid_conditioned_mmdit(context_positions: str) -> EncodedContext:
    """An MMDiT on 4 x 4 images whose condition is patched like x into a second stream."""
    torch.manual_seed(0)
    backbone = MMDiT(
        Patchify2D(2, patch_size=2),
        hidden_size=32,
        depth=2,
        num_heads=2,
        context={"mixture": ContextConfig(12, positions=PositionConfig(context_positions))},
    )
    return EncodedContext(
        randomize_(backbone), Patchify2D(3, patch_size=2), key="mixture", stream="mixture"
    )


def test_a_tokenized_condition_brings_its_grid_positions_to_its_stream():
    model = grid_conditioned_mmdit("sincos")
    x, t, condition = torch.randn(2, 2, 4, 4), torch.rand(2), torch.randn(2, 3, 4, 4)
    layout = Patchify2D(3, patch_size=2).encode(condition)
    direct = model.network(
        x, t, context={"mixture": layout.tokens}, positions={"mixture": layout.positions}
    )
    torch.testing.assert_close(model(x, t, mixture=condition), direct)
    assert layout.positions.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


@pytest.mark.parametrize("context_positions", ["sincos", "rope"])
def test_a_positioned_condition_stream_tells_where_each_patch_is(context_positions):
    """Joint attention is blind to the order of a stream's tokens unless they carry positions:
    swapping two patches of the condition leaves a position-free stream's output unchanged
    and changes a positioned one's."""
    x, t, condition = torch.randn(1, 2, 4, 4), torch.rand(1), torch.randn(1, 3, 4, 4)
    swapped = torch.cat([condition[..., 2:], condition[..., :2]], dim=-1)
    blind = grid_conditioned_mmdit("none")
    torch.testing.assert_close(blind(x, t, mixture=condition), blind(x, t, mixture=swapped))
    seeing = grid_conditioned_mmdit(context_positions)
    assert not torch.allclose(seeing(x, t, mixture=condition), seeing(x, t, mixture=swapped))
