import math

import torch

from mmflow.nn import ClassEmbedder, TimestepEmbedder, sinusoidal_embedding


def test_sinusoid_matches_diffusers_timesteps():
    from diffusers.models.embeddings import Timesteps

    s = torch.tensor([0.0, 3.5, 999.0])
    ref = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(s)
    torch.testing.assert_close(sinusoidal_embedding(s, 256), ref)
    assert sinusoidal_embedding(s, 7).shape == (3, 7)
    odd = sinusoidal_embedding(s, 7)  # 3 cosines, 3 sines, then one zero channel
    w = torch.exp(-math.log(10000.0) * torch.arange(3.0) / 3)
    torch.testing.assert_close(odd[:, :3], torch.cos(s[:, None] * w))
    torch.testing.assert_close(odd[:, 3:6], torch.sin(s[:, None] * w))
    assert torch.equal(odd[:, 6], torch.zeros(3))


def test_time_affine_map():
    t = torch.tensor([0.0, 0.1, 0.37, 1.0])
    sd3 = TimestepEmbedder(16, time_scale=-1000.0, time_offset=1000.0)
    assert torch.equal(sd3.affine(t), 1000 * (1 - t))
    ours = TimestepEmbedder(16)
    torch.testing.assert_close(ours.affine(t), 1000 * t)
    assert ours(t).shape == (4, 16)
    expected = ours.mlp(sinusoidal_embedding(1000 * t, ours.freq_dim))
    torch.testing.assert_close(ours(t), expected)
    w1, b1, w2, b2 = ours.mlp[0].weight, ours.mlp[0].bias, ours.mlp[2].weight, ours.mlp[2].bias
    by_hand = torch.nn.functional.silu(sinusoidal_embedding(1000 * t, 256) @ w1.T + b1) @ w2.T + b2
    torch.testing.assert_close(ours(t), by_hand)
    assert not torch.allclose(ours(t)[0], ours(t)[3])  # different times, different embeddings
    assert math.isclose(
        TimestepEmbedder(4, time_scale=0.0, time_offset=2.0).affine(t)[1].item(), 2.0
    )


def test_class_embedder_null_class():
    emb = ClassEmbedder(num_classes=10, hidden_size=8)
    assert emb.null_label == 10
    assert emb(torch.tensor([0, 10])).shape == (2, 8)
    labels = torch.tensor([3, 10, 3])
    assert emb.table.weight.shape == (11, 8)  # one extra row for the null class
    torch.testing.assert_close(emb(labels), emb.table.weight[labels])
    assert not torch.allclose(emb(labels)[0], emb(labels)[1])
