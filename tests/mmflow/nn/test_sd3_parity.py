"""Parity with diffusers' SD3Transformer2DModel after the convention conversion.

converted(x, t, context={"text": e}, pooled=p) == -sd3(x, timestep=1000 (1 - t), e, p).
"""

import diffusers  # a dev dependency: `make test` installs it with `pip install -e ".[dev]"`
import pytest
import torch

from mmflow.nn import mmdit_from_sd3

from .helpers import randomize_

CONFIG = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 4,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": 16,
    "caption_projection_dim": 16,
    "pooled_projection_dim": 8,
    "out_channels": 4,
    "pos_embed_max_size": 8,
}


def _sd3(qk_norm: str | None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = diffusers.SD3Transformer2DModel(**CONFIG, qk_norm=qk_norm).eval()
    return randomize_(model, std=0.3, seed=seed)  # zero-initialised weights become non-zero too


def _inputs(t: list[float], height: int, width: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    batch = len(t)
    x = torch.randn(batch, 4, height, width, generator=gen)
    text = torch.randn(batch, 5, 16, generator=gen)
    pooled = torch.randn(batch, 8, generator=gen)
    return x, torch.tensor(t), text, pooled


def _run_sd3(model, x, timestep, text, pooled):
    with torch.no_grad():
        return model(
            x, encoder_hidden_states=text, pooled_projections=pooled, timestep=timestep
        ).sample


@pytest.mark.parametrize("qk_norm", [None, "rms_norm"])
@pytest.mark.parametrize("size", [(8, 8), (4, 6), (12, 16)])
@pytest.mark.parametrize("t", [[0.1, 0.37, 0.9], [0.0, 0.25, 1.0]])
def test_converted_model_matches_sd3(qk_norm, size, t):
    sd3 = _sd3(qk_norm)
    ours = mmdit_from_sd3(dict(sd3.config), sd3.state_dict()).eval()
    x, t, text, pooled = _inputs(t, *size)
    with torch.no_grad():
        u = ours(x, t, context={"text": text}, pooled=pooled)
    v_sd3 = _run_sd3(sd3, x, 1000 * (1 - t), text, pooled)
    assert u.shape == x.shape
    assert (u - (-v_sd3)).abs().max() <= 1e-4
    # The comparison is sensitive to both conventions: a wrong sign or time map fails it.
    assert (u - v_sd3).abs().max() > 1e-2
    wrong_time = _run_sd3(sd3, x, 1000 * t, text, pooled)
    assert (u - (-wrong_time)).abs().max() > 1e-2


def test_conversion_keeps_zero_init_structure_and_gradients():
    sd3 = _sd3("rms_norm")
    ours = mmdit_from_sd3(dict(sd3.config), sd3.state_dict())
    x, t, text, pooled = _inputs([0.3, 0.6], 8, 8)
    ours(x, t, context={"text": text}, pooled=pooled).sum().backward()
    assert all(p.grad is not None for p in ours.parameters())
    assert any(p.grad.abs().sum() > 0 for p in ours.final.parameters())
    # The converted model keeps the adaLN-Zero layout: re-initialising it outputs exactly 0.
    ours.reset_parameters()
    with torch.no_grad():
        assert torch.equal(ours(x, t, context={"text": text}, pooled=pooled), torch.zeros_like(x))


def test_rejects_dual_attention_and_bad_state_dicts():
    sd3 = _sd3(None)
    config, state = dict(sd3.config), sd3.state_dict()
    with pytest.raises(ValueError, match="dual_attention_layers"):
        mmdit_from_sd3({**config, "dual_attention_layers": (0,)}, state)
    with pytest.raises(ValueError, match="unexpected keys"):
        mmdit_from_sd3(config, {**state, "extra.weight": torch.zeros(1)})
    missing = {k: v for k, v in state.items() if k != "proj_out.bias"}
    with pytest.raises(ValueError, match="proj_out.bias"):
        mmdit_from_sd3(config, missing)
    with pytest.raises(ValueError, match="pos_embed"):
        mmdit_from_sd3(
            config, {**state, "pos_embed.pos_embed": torch.randn_like(state["pos_embed.pos_embed"])}
        )
    with pytest.raises(ValueError, match="qk_norm"):
        mmdit_from_sd3({**config, "qk_norm": "layer_norm"}, state)
