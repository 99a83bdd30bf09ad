"""Embedders that build the global conditioning vector ``c`` of the MM-DiT.

``c = time(t) + pooled(p) + class(y) + step(d)``; every term is a ``[B, hidden]`` vector and
``c`` drives all adaLN-Zero modulations of the backbone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(s: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of a scalar per sample: ``[cos(s w_i), sin(s w_i)]``.

    ``w_i = max_period^(-i / (dim/2))`` for ``i = 0 .. dim/2 - 1``; the cosine half comes first
    (DiT's ``timestep_embedding``, diffusers' ``Timesteps(flip_sin_to_cos=True,
    downscale_freq_shift=0)``). An odd ``dim`` gets one zero channel at the end.

    Args:
        s: ``[B]`` scalars (already mapped to the embedder's input range).
        dim: number of output features.
        max_period: the longest period.
    Returns:
        ``[B, dim]`` float32 features.
    """
    half = dim // 2
    exponent = (
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=s.device) / half
    )
    args = s.float()[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """Time (or step size) → ``[B, hidden]``: sinusoid of an affine map of t, then an MLP.

    ``e(t) = W2 SiLU(W1 sin_cos(time_scale * t + time_offset) + b1) + b2``

    The affine input map lets checkpoints from other conventions plug in without touching the
    caller: our default ``time_scale=1000, time_offset=0`` feeds ``1000 t``; an SD3 checkpoint
    (``timestep = 1000 (1 - t)``) uses ``time_scale=-1000, time_offset=1000``.
    """

    def __init__(
        self,
        hidden_size: int,
        freq_dim: int = 256,
        time_scale: float = 1000.0,
        time_offset: float = 0.0,
        max_period: float = 10000.0,
    ) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_scale = time_scale
        self.time_offset = time_offset
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def affine(self, t: Tensor) -> Tensor:
        """``time_scale * t + time_offset``, evaluated as ``(t + offset / scale) * scale``.

        The factored form reproduces SD3's float32 ``1000 * (1 - t)`` bit for bit (as
        ``(t - 1) * -1000``); the expanded form would differ by an ulp of ~1e3, which a
        converted checkpoint's time MLP turns into visible output differences.
        """
        t = t.float()
        if self.time_scale == 0:
            return torch.full_like(t, self.time_offset)
        return (t + self.time_offset / self.time_scale) * self.time_scale

    def forward(self, t: Tensor) -> Tensor:
        """``t``: ``[B]`` → ``[B, hidden]``."""
        s = self.affine(t)
        freqs = sinusoidal_embedding(s, self.freq_dim, self.max_period)
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))


class StepSizeEmbedder(TimestepEmbedder):
    """Step size ``d`` in [0, 1] of a shortcut model → ``[B, hidden]`` (same form as time)."""


class ClassEmbedder(nn.Module):
    """Class label → ``[B, hidden]``; label ``num_classes`` is the null class (CFG dropout)."""

    def __init__(self, num_classes: int, hidden_size: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, hidden_size)
        nn.init.normal_(self.table.weight, std=0.02)

    @property
    def null_label(self) -> int:
        """Index of the unconditional (dropped) class."""
        return self.num_classes

    def forward(self, labels: Tensor) -> Tensor:
        return self.table(labels.long())


class PooledEmbedder(nn.Module):
    """Pooled condition vector (e.g. CLIP text embedding) → ``[B, hidden]``.

    ``e(p) = W2 SiLU(W1 p + b1) + b2`` (SD3's ``PixArtAlphaTextProjection`` with SiLU).
    """

    def __init__(self, pooled_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(pooled_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, pooled: Tensor) -> Tensor:
        return self.mlp(pooled)
