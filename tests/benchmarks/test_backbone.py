"""The backbone benchmark compares equal models and counts their FLOPs correctly."""

import json

import pytest
import torch
from torch import nn

from benchmarks import backbone
from benchmarks.backbone import (
    BackboneSize,
    build_pair,
    make_inputs,
    mmdit_call,
    sd3_call,
    training_flops,
)

TINY = BackboneSize(
    {
        "sample_size": 8,
        "patch_size": 2,
        "in_channels": 4,
        "out_channels": 4,
        "num_layers": 2,
        "attention_head_dim": 8,
        "num_attention_heads": 2,
        "joint_attention_dim": 12,
        "caption_projection_dim": 16,
        "pooled_projection_dim": 6,
        "pos_embed_max_size": 8,
        "qk_norm": "rms_norm",
    },
    batch=3,
    height=8,
    width=6,
    text_tokens=5,
)


def test_the_pair_computes_the_same_function():
    ours, sd3 = build_pair(TINY)
    inputs = make_inputs(TINY, torch.device("cpu"))
    with torch.no_grad():
        u, v = mmdit_call(ours)(inputs), sd3_call(sd3)(inputs)
    assert (u - v).abs().max() < 1e-4
    assert u.abs().max() > 1e-2  # random weights, no zero-initialised output


def hooked_forward_flops(model: nn.Module, inputs) -> int:
    """An independent count: every nn.Linear call (2 * rows * in * out) and every attention
    (QK^T and PV: 4 * B * H * Lq * Lk * d), read from hooks instead of the dispatcher."""
    flops = 0

    def linear_hook(module, args, output):
        nonlocal flops
        rows = args[0].numel() // module.in_features
        flops += 2 * rows * module.in_features * module.out_features

    original = torch.nn.functional.scaled_dot_product_attention

    def counted_attention(q, k, v, *args, **kwargs):
        nonlocal flops
        batch, heads, length_q, dim = q.shape
        flops += 4 * batch * heads * length_q * k.shape[-2] * dim
        return original(q, k, v, *args, **kwargs)

    handles = [
        m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)
    ]
    torch.nn.functional.scaled_dot_product_attention = counted_attention
    try:
        with torch.no_grad():
            mmdit_call(model)(inputs)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
        for handle in handles:
            handle.remove()
    return flops


def test_training_flops_are_three_forwards_of_linears_and_attention():
    ours, _ = build_pair(TINY)
    inputs = make_inputs(TINY, torch.device("cpu"))
    forward = hooked_forward_flops(ours, inputs)
    assert forward > 0
    # Backward is two matmuls per forward matmul except for the inputs that need no gradient
    # (the first layer of each input stream); the benchmark's count is within that.
    counted = training_flops(mmdit_call(ours), inputs)
    assert 2.5 * forward < counted <= 3 * forward


def test_main_writes_rows_for_both_models(tmp_path, monkeypatch):
    monkeypatch.setitem(backbone.SIZES, "tiny", TINY)
    out = tmp_path / "backbone.json"
    options = ["--sizes", "tiny", "--modes", "eager", "checkpointing", "--repeats", "2"]
    options += ["--profile", "1000", "--out"]
    assert backbone.main([*options, str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    # Every operator (fewer than 1000): which ones lead depends on the machine's load, so the
    # check is that the matrix products are there and the list is sorted by time.
    profile = result["profiles"]["tiny"]
    assert 10 < len(profile) < 1000
    assert any(entry["op"] in ("aten::mm", "aten::addmm") for entry in profile)
    times = [entry["ms_per_pass"] for entry in profile]
    assert times == sorted(times, reverse=True)
    assert [(r["mode"], r["model"]) for r in rows] == [
        ("eager", "mmflow"),
        ("eager", "diffusers"),
        ("checkpointing", "mmflow"),
        ("checkpointing", "diffusers"),
    ]
    for row in rows:
        assert row["max_output_difference"] < 1e-4
        assert row["train_s"] > 0 and row["forward_s"] > 0
    eager, checkpointed = rows[0], rows[2]
    assert checkpointed["saved_for_backward_mib"] < eager["saved_for_backward_mib"]


def test_an_unknown_size_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        backbone.main(["--sizes", "nope", "--out", str(tmp_path / "x.json")])
