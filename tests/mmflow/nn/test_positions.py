import math

import pytest
import torch

from mmflow.nn import PositionConfig, apply_rope, grid_position_ids, sincos_nd
from mmflow.nn.positions import RotaryPositions, SinCosPositions, build_positions


def _scores(rope: RotaryPositions, q: torch.Tensor, k: torch.Tensor, ids_q, ids_k) -> torch.Tensor:
    cq, sq = rope.rotary(ids_q)
    ck, sk = rope.rotary(ids_k)
    return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum(-1)


@pytest.mark.parametrize("axes", [[8], [4, 4], [2, 2, 4]])
def test_rope_scores_depend_only_on_position_difference(axes):
    torch.manual_seed(0)
    rope = RotaryPositions(head_dim=10, axes_dim=axes, theta=100.0, stream="s")
    k_axes = len(axes)
    q = torch.randn(1, 1, 1, 10).expand(1, 1, 6, 10)
    k = torch.randn(1, 1, 1, 10).expand(1, 1, 6, 10)
    pos_q = torch.randint(-20, 20, (6, k_axes)).float()
    pos_k = torch.randint(-20, 20, (6, k_axes)).float()
    shift = torch.randint(-50, 50, (1, k_axes)).float()
    base = _scores(rope, q, k, pos_q, pos_k)
    moved = _scores(rope, q, k, pos_q + shift, pos_k + shift)
    torch.testing.assert_close(moved, base, atol=1e-4, rtol=1e-4)
    other = _scores(rope, q, k, pos_q + shift, pos_k)
    assert (other - base).abs().max() > 1e-3


def test_rope_closed_form_one_pair():
    """One channel pair: <R(m) q, R(n) k> = |q||k| cos(angle(q) - angle(k) + (m - n) w)."""
    rope = RotaryPositions(head_dim=2, axes_dim=[2], theta=10000.0, stream="s")
    q = torch.tensor([0.6, -1.3]).view(1, 1, 1, 2)
    k = torch.tensor([2.0, 0.5]).view(1, 1, 1, 2)
    m, n = 5.0, 2.0
    score = _scores(rope, q, k, torch.tensor([[m]]), torch.tensor([[n]])).item()
    aq, ak = math.atan2(-1.3, 0.6), math.atan2(0.5, 2.0)
    expected = q.norm().item() * k.norm().item() * math.cos(aq - ak + (m - n) * 1.0)
    assert score == pytest.approx(expected, abs=1e-5)


def test_rope_identity_at_zero_and_unrotated_tail():
    rope = RotaryPositions(head_dim=8, axes_dim=[4], theta=10000.0, stream="s")
    x = torch.randn(2, 3, 4, 8)
    cos, sin = rope.rotary(torch.zeros(4, 1))
    torch.testing.assert_close(apply_rope(x, cos, sin), x)
    cos, sin = rope.rotary(torch.arange(4.0)[:, None])
    torch.testing.assert_close(apply_rope(x, cos, sin)[..., 4:], x[..., 4:])
    batched = rope.rotary(torch.arange(8.0).view(2, 4, 1))
    assert batched[0].shape == (2, 1, 4, 4)
    for b in range(2):  # a batch of ids gives, per sample, the unbatched rotation
        cos_b, sin_b = rope.rotary(torch.arange(8.0).view(2, 4, 1)[b])
        torch.testing.assert_close(batched[0][b : b + 1], cos_b)
        torch.testing.assert_close(batched[1][b : b + 1], sin_b)
    # Closed form: axis of 4 channels -> angles p * theta^(-2i/4), i = 0, 1; the tail is 0.
    cos, sin = rope.rotary(torch.tensor([[3.0]]))
    angles = torch.tensor([3.0, 3.0 / 100.0, 0.0, 0.0])
    torch.testing.assert_close(cos.flatten(), angles.cos())
    torch.testing.assert_close(sin.flatten(), angles.sin())


def test_sincos_matches_formula_and_sd3_table():
    ids = grid_position_ids((3, 5))
    emb = sincos_nd(ids, 8)
    w = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2)
    col, row = ids[:, 1:].double() * w, ids[:, :1].double() * w
    expected = torch.cat([col.sin(), col.cos(), row.sin(), row.cos()], dim=-1)
    torch.testing.assert_close(emb, expected)
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    table = get_2d_sincos_pos_embed(16, 6, base_size=3)
    ours = sincos_nd(grid_position_ids((6, 6)) * 0.5, 16)
    torch.testing.assert_close(ours.float(), table.float(), atol=1e-6, rtol=0)


def test_sincos_centre_crop():
    pos = SinCosPositions(hidden_size=8, theta=10000.0, crop_size=6, scale=1.0, stream="x")
    tokens = torch.zeros(1, 4, 8)
    out = pos.add(tokens, grid_position_ids((2, 2)), (2, 2))
    torch.testing.assert_close(out[0], sincos_nd(grid_position_ids((2, 2)) + 2, 8).float())
    with pytest.raises(ValueError, match="crop_size"):
        pos.add(torch.zeros(1, 49, 8), grid_position_ids((7, 7)), (7, 7))


def test_learned_positions_and_bad_kind():
    pos = build_positions(PositionConfig("learned", max_len=4), 8, 4, "text")
    assert pos.add(torch.zeros(2, 3, 8), None, (3,)).shape == (2, 3, 8)
    tokens = torch.randn(2, 3, 8)
    torch.testing.assert_close(pos.add(tokens, None, (3,)), tokens + pos.table[:3])
    assert pos.table.abs().sum() > 0  # the table starts random, so the positions differ
    with pytest.raises(ValueError, match="stream 'text'"):
        pos.add(torch.zeros(2, 5, 8), None, (5,))
    with pytest.raises(ValueError, match="stream 'a'"):
        build_positions(PositionConfig("alibi"), 8, 4, "a")
