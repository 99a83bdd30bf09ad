import pytest
import torch

from mmflow.nn import (
    ContextConfig,
    MMDiT,
    Patchify1D,
    Patchify2D,
    Patchify3D,
    PositionConfig,
    SetTokens,
)

from .helpers import image_text_inputs, image_text_model, randomize_


def test_image_text_forward_backward():
    model = randomize_(image_text_model(qk_norm=True))
    x, t, kw = image_text_inputs()
    x.requires_grad_(True)
    out = model(x, t, **kw)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())
    # Samples are independent, and both conditions reach the output: changing sample 1's text
    # or pooled vector changes sample 1 only.
    with torch.no_grad():
        base = model(x, t, **kw)
        torch.testing.assert_close(base, out.detach())
        for key in ("text", "pooled"):
            changed = {"context": dict(kw["context"]), "pooled": kw["pooled"].clone()}
            if key == "text":
                changed["context"]["text"] = kw["context"]["text"].clone()
                changed["context"]["text"][1] += 1.0
            else:
                changed["pooled"][1] += 1.0
            other = model(x, t, **changed)
            torch.testing.assert_close(other[0], base[0])
            assert (other[1] - base[1]).abs().max() > 1e-3, key


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_single_blocks": 2, "long_skips": True},
        {"num_classes": 3, "step_size_embedding": True},
        {"positions": PositionConfig("learned", max_len=16)},
        {"positions": PositionConfig("rope", rope_axes_dim=[4, 4])},
    ],
)
def test_zero_output_at_construction(kwargs):
    model = image_text_model(**kwargs)
    x, t, kw = image_text_inputs()
    if "num_classes" in kwargs:
        kw.update(class_labels=torch.tensor([0, 3]), step_size=torch.tensor([0.5, 0.25]))
    out = model(x, t, **kw)
    assert torch.equal(out, torch.zeros_like(x))


def test_sequence_padding_does_not_leak():
    torch.manual_seed(0)
    model = MMDiT(
        Patchify1D(in_channels=3, patch_size=2),
        hidden_size=32,
        depth=2,
        num_heads=4,
        positions=PositionConfig("rope"),
        context={"cond": ContextConfig(dim=5, positions=PositionConfig("learned", max_len=8))},
        num_single_blocks=1,
    )
    randomize_(model)
    x = torch.randn(2, 11, 3)
    x_mask = torch.ones(2, 11, dtype=torch.bool)
    x_mask[0, 7:] = False  # boundary inside a patch (7 = 3 * 2 + 1)
    x_mask[1, 4:] = False
    cond = torch.randn(2, 6, 5)
    cond_mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    t = torch.tensor([0.3, 0.8])
    out = model(x, t, context={"cond": cond}, context_mask={"cond": cond_mask}, x_mask=x_mask)
    x2 = torch.where(x_mask[..., None], x, torch.randn_like(x) * 100)
    cond2 = torch.where(cond_mask[..., None], cond, torch.randn_like(cond) * 100)
    out2 = model(x2, t, context={"cond": cond2}, context_mask={"cond": cond_mask}, x_mask=x_mask)
    assert out.shape == x.shape
    assert (out[x_mask] - out2[x_mask]).abs().max() <= 1e-5
    assert torch.equal(out[~x_mask], torch.zeros_like(out[~x_mask]))
    out.sum().backward()


def test_set_stream_is_permutation_equivariant():
    model = randomize_(
        MMDiT(
            SetTokens(in_channels=3),
            hidden_size=32,
            depth=2,
            num_heads=4,
            context={"c": ContextConfig(dim=4)},
        )
    )
    assert model.x_positions.needs_ids is False
    x = torch.randn(2, 9, 3)
    c = torch.randn(2, 3, 4)
    t = torch.tensor([0.2, 0.6])
    perm = torch.randperm(9)
    out = model(x, t, context={"c": c})
    out_perm = model(x[:, perm], t, context={"c": c})
    torch.testing.assert_close(out_perm, out[:, perm], atol=1e-5, rtol=0)
    out.sum().backward()


def test_rope_model_is_translation_invariant():
    """Shifting every stream's ids by the same offset leaves joint attention unchanged.

    Both streams use the same two-axis rope layout, so cross-stream scores are relative too.
    """
    rope = PositionConfig("rope", rope_axes_dim=[4, 4])
    model = randomize_(
        image_text_model(positions=rope, context={"text": ContextConfig(dim=12, positions=rope)})
    )
    x, t, kw = image_text_inputs()
    ids = torch.stack(
        torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1
    ).reshape(-1, 2)
    text_ids = torch.arange(5.0)[:, None].expand(5, 2)
    base = model(x, t, **kw, positions={"x": ids, "text": text_ids})
    default = model(x, t, **kw)
    shifted = model(x, t, **kw, positions={"x": ids + 7, "text": text_ids + 7})
    torch.testing.assert_close(default, base, atol=1e-5, rtol=0)
    torch.testing.assert_close(shifted, base, atol=1e-4, rtol=1e-4)
    other = model(x, t, **kw, positions={"x": ids.flip(0), "text": text_ids})
    assert (other - base).abs().max() > 1e-3


def test_patchify3d_model_runs():
    model = randomize_(
        MMDiT(
            Patchify3D(in_channels=2, patch_size=(1, 2, 2)),
            hidden_size=24,
            depth=1,
            num_heads=2,
            positions=PositionConfig("rope", rope_axes_dim=[4, 4, 4]),
        )
    )
    x = torch.randn(2, 2, 3, 4, 4)
    t = torch.rand(2)
    out = model(x, t)
    assert out.shape == x.shape
    out.sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(model(x[1:], t[1:]), out[1:].detach(), atol=1e-5, rtol=1e-5)
        # Attention mixes the frames: changing frame 0 changes the velocity of frame 2.
        moved = x.clone()
        moved[:, :, 0] += 1.0
        assert (model(moved, t) - out)[:, :, 2].abs().max() > 1e-3


def test_long_skips_and_single_blocks_change_the_function():
    x, t, kw = image_text_inputs()
    plain = randomize_(image_text_model(depth=3))
    outs, models = {}, {}
    for name, kwargs in {
        "skips": {"long_skips": True},
        "single": {"num_single_blocks": 2},
        "both": {"long_skips": True, "num_single_blocks": 2},
    }.items():
        model = models[name] = randomize_(image_text_model(depth=3, **kwargs))
        outs[name] = model(x, t, **kw)
        assert outs[name].shape == x.shape
        outs[name].sum().backward()
        assert all(p.grad is not None for p in model.parameters()), name
    assert len(image_text_model(depth=3, long_skips=True, num_single_blocks=2).skips) == 2
    assert (outs["skips"] - plain(x, t, **kw)).abs().max() > 1e-3
    # The single blocks do work: zeroing their adaLN modulations (gates 0, identity blocks)
    # changes the output; resetting the skips to [I, 0] changes the "both" model's output.
    with torch.no_grad():
        single = models["single"]
        for block in single.single_blocks:
            block.layer.modulation.weight.zero_()
            block.layer.modulation.bias.zero_()
        assert (single(x, t, **kw) - outs["single"]).abs().max() > 1e-3
        both = models["both"]
        for skip in both.skips:
            skip.weight.zero_()
            skip.weight[:, :32].copy_(torch.eye(32))
        assert (both(x, t, **kw) - outs["both"]).abs().max() > 1e-3


def test_long_skips_start_as_identity():
    """With [I, 0] skip linears a freshly initialised skip model equals the plain one."""
    x, t, kw = image_text_inputs()
    plain = randomize_(image_text_model(depth=4))
    skips = image_text_model(depth=4, long_skips=True)
    result = skips.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith("skips.") for k in result.missing_keys)
    torch.testing.assert_close(skips(x, t, **kw), plain(x, t, **kw))


def test_step_size_and_class_embedding():
    model = randomize_(image_text_model(num_classes=3, step_size_embedding=True))
    x, t, kw = image_text_inputs()
    labels = torch.tensor([1, 3])  # 3 is the null class
    a = model(x, t, **kw, class_labels=labels, step_size=torch.tensor([0.5, 0.5]))
    b = model(x, t, **kw, class_labels=labels, step_size=torch.tensor([0.125, 0.5]))
    assert (a[0] - b[0]).abs().max() > 1e-4
    torch.testing.assert_close(a[1], b[1])
    assert model.class_embed.null_label == 3
    with pytest.raises(ValueError, match="step_size"):
        model(x, t, **kw, class_labels=labels)


def test_the_step_size_embedder_sees_the_step_at_its_own_scale():
    """The same weights at scale 1000 and at scale 1 agree when the step is 1000 times larger."""
    torch.manual_seed(0)
    default = randomize_(image_text_model(num_classes=3, step_size_embedding=True))
    raw = image_text_model(num_classes=3, step_size_embedding=True, step_size_scale=1.0)
    raw.load_state_dict(default.state_dict())
    x, t, kw = image_text_inputs()
    labels = torch.tensor([1, 2])
    steps = torch.tensor([0.5, 0.25])
    expected = default(x, t, **kw, class_labels=labels, step_size=steps / 1000)
    torch.testing.assert_close(raw(x, t, **kw, class_labels=labels, step_size=steps), expected)
    assert (
        raw(x, t, **kw, class_labels=labels, step_size=steps / 1000) - expected
    ).abs().max() > 1e-4


@pytest.mark.parametrize("kwargs", [{}, {"num_single_blocks": 1, "long_skips": True}])
def test_gradient_checkpointing_matches(kwargs):
    x, t, kw = image_text_inputs()
    grads = []
    outs = []
    for flag in (False, True):
        model = randomize_(image_text_model(gradient_checkpointing=flag, **kwargs))
        out = model(x, t, **kw)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_shape_errors_name_the_stream():
    model = image_text_model()
    x, t, kw = image_text_inputs()
    with pytest.raises(ValueError, match=r"context\['text'\]"):
        model(x, t, context={"text": torch.randn(2, 5, 13)}, pooled=kw["pooled"])
    with pytest.raises(ValueError, match=r"context: required stream\(s\) \['text'\]"):
        model(x, t, pooled=kw["pooled"])
    with pytest.raises(ValueError, match="unknown stream"):
        model(x, t, context={**kw["context"], "audio": torch.randn(2, 3, 4)}, pooled=kw["pooled"])
    with pytest.raises(ValueError, match=r"context_mask\['text'\]"):
        model(x, t, **kw, context_mask={"text": torch.ones(2, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="pooled"):
        model(x, t, context=kw["context"], pooled=torch.randn(2, 7))
    with pytest.raises(ValueError, match="^x:"):
        model(torch.randn(2, 3, 8, 8), t, **kw)
    with pytest.raises(ValueError, match="^t:"):
        model(x, torch.rand(3), **kw)
    with pytest.raises(ValueError, match=r"positions\['x'\]"):
        model(x, t, **kw, positions={"x": torch.zeros(15, 2)})
    with pytest.raises(ValueError, match="class_labels: was not configured"):
        model(x, t, **kw, class_labels=torch.tensor([0, 1]))


def test_config_errors():
    with pytest.raises(ValueError, match="reserved"):
        image_text_model(context={"x": ContextConfig(dim=3)})
    with pytest.raises(ValueError, match="divisible"):
        image_text_model(num_heads=5)
    with pytest.raises(ValueError, match="stream 'x'"):
        MMDiT(SetTokens(3), hidden_size=16, depth=1, num_heads=2, positions=PositionConfig("rope"))
    with pytest.raises(ValueError, match="stream 'text'"):
        image_text_model(
            context={
                "text": ContextConfig(
                    dim=12, positions=PositionConfig("rope", rope_axes_dim=[6, 6])
                )
            }
        )


def test_optional_context_can_be_left_out():
    model = randomize_(image_text_model(context={"text": ContextConfig(dim=12, optional=True)}))
    x, t, kw = image_text_inputs()
    with_text = model(x, t, **kw)
    without = model(x, t, pooled=kw["pooled"])
    assert without.shape == x.shape and (with_text - without).abs().max() > 1e-4
    # Leaving the stream out equals passing it fully masked (its tokens are never attended).
    masked = model(x, t, **kw, context_mask={"text": torch.zeros(2, 5, dtype=torch.bool)})
    torch.testing.assert_close(masked, without, atol=1e-5, rtol=1e-5)


def _changed_tokens(model: MMDiT, text: bool = False) -> torch.Tensor:
    """Which of a 3 x 4 grid's outputs move when only pixel (0, 0) of the input moves."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 3, 4, generator=generator)
    moved = x.clone()
    moved[0, 0, 0, 0] += 1.0
    t = torch.full((1,), 0.5)
    context = {"text": torch.randn(1, 5, 12, generator=generator)} if text else None
    with torch.no_grad():
        difference = model(moved, t, context=context) - model(x, t, context=context)
    return difference[0, 0] != 0


@pytest.mark.parametrize("text", [False, True])
def test_axial_attention_reaches_the_row_and_column_in_one_block(text: bool):
    def model(x_attention: str, depth: int) -> MMDiT:
        context = {"text": ContextConfig(dim=12)} if text else None
        return randomize_(
            MMDiT(Patchify2D(in_channels=1, patch_size=1), hidden_size=16, depth=depth,
                  num_heads=2, context=context, x_attention=x_attention)
        )  # fmt: skip

    on_axes = torch.zeros(3, 4, dtype=torch.bool)
    on_axes[0, :] = on_axes[:, 0] = True
    # One block: the context tokens only lend keys and values (the last block does not update
    # them), so (0, 0) reaches its own row and column.
    assert torch.equal(_changed_tokens(model("axial", 1), text), on_axes)
    # Two blocks: row, then column (or through the updated context tokens).
    assert _changed_tokens(model("axial", 2), text).all()
    assert _changed_tokens(model("full", 1), text).all()
    with pytest.raises(ValueError, match="at least 2 position axes"):
        MMDiT(Patchify1D(in_channels=2, patch_size=1), hidden_size=16, depth=1, num_heads=2,
              x_attention="axial")  # fmt: skip
