"""Position encodings, one module per token stream.

Kinds (chosen per stream with :class:`PositionConfig`):

- ``"none"``: no positions; the stream is a set and the network is permutation-equivariant on it.
- ``"learned"``: a table ``P[max_len, hidden]`` added to the tokens by flat token index.
- ``"sincos"``: fixed sin-cos features of the position ids added to the tokens (DiT / SD3 style).
- ``"rope"``: rotary embedding applied to queries and keys inside attention, 1-D, 2-D or 3-D.

Position ids are float tensors ``[L, k]`` or ``[B, L, k]`` (``k`` axes), produced by the
tokenizer or passed explicitly to ``MMDiT.forward(positions=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

POSITION_KINDS = ("none", "learned", "sincos", "rope")


@dataclass
class PositionConfig:
    """How one stream encodes token positions.

    Attributes:
        kind: ``"none"``, ``"learned"``, ``"sincos"`` or ``"rope"``.
        max_len: ``learned`` only: number of rows of the table (longest sequence).
        rope_axes_dim: ``rope`` only: rotated channels per axis (each even, sum <= head dim;
            channels past the sum are not rotated). ``None`` rotates the whole head dim over one
            axis per position-id axis, split evenly.
        theta: base of the frequencies (``rope`` and ``sincos``).
        crop_size: ``sincos`` only: side of the (virtual) square table that the grid is
            centre-cropped from, SD3's ``pos_embed_max_size``; ``None`` uses the ids as they are.
        scale: ``sincos`` only: multiplies the (offset) ids before the sinusoid; SD3 uses
            ``base_size / crop_size``.
    """

    kind: str = "none"
    max_len: int = 0
    rope_axes_dim: list[int] | None = None
    theta: float = 10000.0
    crop_size: int | None = None
    scale: float = 1.0


def grid_position_ids(sizes: tuple[int, ...], device: torch.device | None = None) -> Tensor:
    """Integer coordinates of a row-major grid as floats: ``[prod(sizes), len(sizes)]``."""
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(sizes))


def sequence_position_ids(
    length: int, num_axes: int = 1, device: torch.device | None = None
) -> Tensor:
    """Default ids of a sequence: ``0 .. L-1`` repeated on every axis, ``[L, num_axes]``."""
    ids = torch.arange(length, device=device, dtype=torch.float32)
    return ids[:, None].expand(length, num_axes)


def sincos_1d(pos: Tensor, dim: int, theta: float = 10000.0) -> Tensor:
    """``[sin(p w_i), cos(p w_i)]`` with ``w_i = theta^(-i / (dim/2))``: ``[...] -> [..., dim]``."""
    dtype = torch.float32 if pos.device.type == "mps" else torch.float64
    omega = 1.0 / theta ** (torch.arange(dim // 2, device=pos.device, dtype=dtype) / (dim / 2))
    out = pos.to(dtype)[..., None] * omega
    return torch.cat([torch.sin(out), torch.cos(out)], dim=-1)


def sincos_nd(ids: Tensor, dim: int, theta: float = 10000.0) -> Tensor:
    """Concatenated 1-D sin-cos features over the axes of ``ids`` ``[..., k]`` → ``[..., dim]``.

    Each axis gets ``dim / k`` channels. The axes are taken last-first (for a 2-D grid: the
    column coordinate, then the row), the layout of the DiT and SD3 tables.
    """
    k = ids.shape[-1]
    return torch.cat([sincos_1d(ids[..., a], dim // k, theta) for a in reversed(range(k))], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs ``(x_2i, x_2i+1)`` by angles ``phi_i``.

    ``(x_2i, x_2i+1) -> (x_2i cos phi_i - x_2i+1 sin phi_i, x_2i sin phi_i + x_2i+1 cos phi_i)``.
    With ``phi_i = p w_i`` for a query at position m and a key at n,
    ``<R(m) q, R(n) k> = sum_i Re[q_i conj(k_i) e^{i (m - n) w_i}]`` depends only on ``m - n``.

    Args:
        x: ``[B, H, L, D]`` queries or keys.
        cos, sin: ``[B or 1, 1, L, D/2]`` (identity rotation is ``cos=1, sin=0``).
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def identity_rope(
    batch: int, length: int, head_dim: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """``cos = 1, sin = 0`` of shape ``[batch, 1, length, head_dim/2]``."""
    shape = (batch, 1, length, head_dim // 2)
    return torch.ones(shape, device=device), torch.zeros(shape, device=device)


class Positions(nn.Module):
    """Base: no positions. Subclasses add to tokens (:meth:`add`) or rotate q/k (:meth:`rotary`)."""

    needs_ids = False

    def add(self, tokens: Tensor, ids: Tensor | None, grid: tuple[int, ...]) -> Tensor:
        """Tokens ``[B, L, hidden]`` with additive positions (identity here)."""
        return tokens

    def rotary(self, ids: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """``(cos, sin)`` for :func:`apply_rope`, or ``None`` without rotary positions."""
        return None


class LearnedPositions(Positions):
    """``tokens + P[0:L]`` with a learned table ``P[max_len, hidden]`` (flat token index)."""

    def __init__(self, max_len: int, hidden_size: int, stream: str) -> None:
        super().__init__()
        if max_len <= 0:
            raise ValueError(
                f"stream '{stream}': learned positions need max_len > 0, got {max_len}"
            )
        self.stream = stream
        self.table = nn.Parameter(torch.randn(max_len, hidden_size) * 0.02)

    def add(self, tokens: Tensor, ids: Tensor | None, grid: tuple[int, ...]) -> Tensor:
        length = tokens.shape[1]
        if length > self.table.shape[0]:
            raise ValueError(
                f"stream '{self.stream}': {length} tokens exceed max_len={self.table.shape[0]}"
            )
        return tokens + self.table[:length].to(tokens.dtype)


class SinCosPositions(Positions):
    """``tokens + sincos_nd(scale * (ids + offset))``, fixed (not learned).

    With ``crop_size = M``, a grid of extent ``G_a`` on axis ``a`` is centred in an ``M``-sided
    table: ``offset_a = (M - G_a) // 2`` (SD3's ``cropped_pos_embed``).
    """

    needs_ids = True

    def __init__(
        self, hidden_size: int, theta: float, crop_size: int | None, scale: float, stream: str
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.theta = theta
        self.crop_size = crop_size
        self.scale = scale
        self.stream = stream

    def offsets(self, grid: tuple[int, ...], num_axes: int) -> list[int]:
        if self.crop_size is None:
            return [0] * num_axes
        if len(grid) != num_axes:
            raise ValueError(f"stream '{self.stream}': crop_size needs a grid with {num_axes} axes")
        if max(grid) > self.crop_size:
            raise ValueError(
                f"stream '{self.stream}': token grid {grid} exceeds crop_size={self.crop_size}"
            )
        return [(self.crop_size - g) // 2 for g in grid]

    def add(self, tokens: Tensor, ids: Tensor | None, grid: tuple[int, ...]) -> Tensor:
        k = ids.shape[-1]
        if self.hidden_size % (2 * k):
            raise ValueError(
                f"stream '{self.stream}': hidden size {self.hidden_size} "
                f"not divisible by 2 * {k} axes"
            )
        shift = torch.tensor(self.offsets(grid, k), device=ids.device, dtype=ids.dtype)
        table = sincos_nd((ids + shift) * self.scale, self.hidden_size, self.theta)
        return tokens + table.to(tokens.dtype)


class RotaryPositions(Positions):
    """Rotary positions over ``k`` axes; axis ``a`` owns ``d_a`` channels of every head.

    Angles ``phi = concat_a(p_a * w_a)`` with ``w_a,i = theta^(-2i / d_a)``, ``i < d_a / 2``;
    channels past ``sum_a d_a`` are left unrotated (angle 0).
    """

    needs_ids = True

    def __init__(
        self, head_dim: int, axes_dim: list[int] | None, theta: float, stream: str
    ) -> None:
        super().__init__()
        if axes_dim is not None and (sum(axes_dim) > head_dim or any(d % 2 for d in axes_dim)):
            raise ValueError(
                f"stream '{stream}': rope_axes_dim={axes_dim} must be even "
                f"and sum to <= head dim {head_dim}"
            )
        self.head_dim = head_dim
        self.axes_dim = list(axes_dim) if axes_dim is not None else None
        self.theta = theta
        self.stream = stream

    def axes_for(self, num_axes: int) -> list[int]:
        if self.axes_dim is None:
            per_axis = (self.head_dim // num_axes) // 2 * 2
            return [per_axis] * num_axes
        if len(self.axes_dim) != num_axes:
            raise ValueError(
                f"stream '{self.stream}': position ids have {num_axes} axes but "
                f"rope_axes_dim={self.axes_dim} has {len(self.axes_dim)}"
            )
        return self.axes_dim

    def rotary(self, ids: Tensor | None) -> tuple[Tensor, Tensor]:
        axes = self.axes_for(ids.shape[-1])
        angles = [
            ids[..., a, None].float()
            * self.theta ** (-torch.arange(0, d, 2, device=ids.device, dtype=torch.float32) / d)
            for a, d in enumerate(axes)
        ]
        phi = torch.cat(angles, dim=-1)
        phi = nn.functional.pad(phi, (0, self.head_dim // 2 - phi.shape[-1]))
        phi = phi.unsqueeze(-3) if phi.dim() == 3 else phi[None, None]
        return torch.cos(phi), torch.sin(phi)


def build_positions(cfg: PositionConfig, hidden_size: int, head_dim: int, stream: str) -> Positions:
    """The position module of one stream from its config."""
    if cfg.kind not in POSITION_KINDS:
        raise ValueError(f"stream '{stream}': position kind '{cfg.kind}' not in {POSITION_KINDS}")
    if cfg.kind == "learned":
        return LearnedPositions(cfg.max_len, hidden_size, stream)
    if cfg.kind == "sincos":
        return SinCosPositions(hidden_size, cfg.theta, cfg.crop_size, cfg.scale, stream)
    if cfg.kind == "rope":
        return RotaryPositions(head_dim, cfg.rope_axes_dim, cfg.theta, stream)
    return Positions()
