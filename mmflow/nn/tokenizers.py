"""Tokenizers: data tensor in its native shape <-> tokens ``[B, L, token_dim]`` + position ids.

A tokenizer holds no weights: it only reshapes (patchify / unpatchify), produces position ids
and carries masks. The MM-DiT owns the linear patch embedding (``token_dim -> hidden``) and the
final projection back (``hidden -> token_dim``); a linear map on flattened ``p x p`` patches
equals the usual stride-``p`` convolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .positions import grid_position_ids, sequence_position_ids


@dataclass
class Tokens:
    """Tokens of one stream plus what the tokenizer needs to undo itself.

    Attributes:
        tokens: ``[B, L, token_dim]``.
        positions: ``[L, k]`` position ids (``None`` for sets).
        mask: ``[B, L]`` bool, ``True`` = real token, or ``None`` (all real).
        grid: token grid extent per axis (``()`` for sets).
        shape: shape of the original tensor.
        x_mask: mask of the original tensor (``[B, L_x]``) used to zero padded outputs.
    """

    tokens: Tensor
    positions: Tensor | None
    mask: Tensor | None
    grid: tuple[int, ...]
    shape: torch.Size
    x_mask: Tensor | None = None


def check_mask(mask: Tensor, batch: int, length: int, name: str) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``mask`` is bool ``[batch, length]``."""
    if mask.dtype != torch.bool or tuple(mask.shape) != (batch, length):
        raise ValueError(
            f"{name}: expected a bool mask of shape {(batch, length)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )


def _zero_padded(x: Tensor, mask: Tensor | None) -> Tensor:
    """``x`` ``[B, L, C]`` with rows where ``mask`` is ``False`` set to zero."""
    if mask is None:
        return x
    return torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))


class Tokenizer(nn.Module):
    """Interface: ``encode(x, mask) -> Tokens`` and ``decode(tokens, layout) -> x``.

    Attributes:
        in_channels: channels (features) of ``x``.
        token_dim: features per token.
        num_axes: number of position-id axes (0 for sets).
    """

    in_channels: int
    token_dim: int
    num_axes: int

    def encode(self, x: Tensor, mask: Tensor | None = None) -> Tokens:
        raise NotImplementedError

    def decode(self, tokens: Tensor, layout: Tokens) -> Tensor:
        raise NotImplementedError


class _GridPatchify(Tokenizer):
    """Channels-first N-D patchify: ``[B, C, *S]`` with ``S_a`` divisible by ``patch_a``."""

    def __init__(
        self, in_channels: int, patch_size: tuple[int, ...], pattern: str, axes: str
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.num_axes = len(patch_size)
        self.token_dim = in_channels * math.prod(patch_size)
        self._pattern = pattern
        self._axes = axes

    def _sizes(self, grid: tuple[int, ...]) -> dict[str, int]:
        return {
            **dict(zip(self._axes, grid)),
            **{f"p{a}": p for a, p in zip(self._axes, self.patch_size)},
        }

    def encode(self, x: Tensor, mask: Tensor | None = None) -> Tokens:
        name = type(self).__name__
        expected = 2 + self.num_axes
        if x.dim() != expected or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x: {name} expects [B, {self.in_channels}, {'S, ' * self.num_axes}] "
                f"({expected} dims), got {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        if any(s % p for s, p in zip(spatial, self.patch_size)):
            raise ValueError(
                f"x: spatial size {spatial} not divisible by patch size {self.patch_size}"
            )
        if mask is not None:
            raise ValueError(f"x_mask: {name} does not take a mask (grids have no padding)")
        grid = tuple(s // p for s, p in zip(spatial, self.patch_size))
        tokens = rearrange(x, self._pattern, **self._sizes(grid))
        return Tokens(tokens, grid_position_ids(grid, x.device), None, grid, x.shape)

    def decode(self, tokens: Tensor, layout: Tokens) -> Tensor:
        inverse = " -> ".join(reversed(self._pattern.split(" -> ")))
        return rearrange(tokens, inverse, **self._sizes(layout.grid))


class Patchify2D(_GridPatchify):
    """Images ``[B, C, H, W]`` → ``[B, (H/p)(W/p), C p p]`` (row-major, per-patch ``(c, p, q)``).

    Position ids are the 2-D patch coordinates ``(row, col)``.
    """

    def __init__(self, in_channels: int, patch_size: int = 2) -> None:
        super().__init__(
            in_channels,
            (patch_size, patch_size),
            "b c (h ph) (w pw) -> b (h w) (c ph pw)",
            "hw",
        )


class Patchify3D(_GridPatchify):
    """Volumes / videos ``[B, C, T, H, W]`` → tokens of ``pt x ph x pw`` patches, 3-D ids."""

    def __init__(self, in_channels: int, patch_size: int | tuple[int, int, int] = 2) -> None:
        patch = (patch_size,) * 3 if isinstance(patch_size, int) else tuple(patch_size)
        super().__init__(
            in_channels,
            patch,
            "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)",
            "thw",
        )


class Patchify1D(Tokenizer):
    """Sequences ``[B, L, C]`` → ``[B, ceil(L/p), p C]`` with 1-D ids.

    ``L`` is zero-padded to a multiple of ``p``. Padded elements (mask ``False``) are zeroed
    before patching, so their values cannot reach any token; a token is real if any of its
    ``p`` elements is. Outputs at padded elements are zero.
    """

    num_axes = 1

    def __init__(self, in_channels: int, patch_size: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.token_dim = in_channels * patch_size

    def encode(self, x: Tensor, mask: Tensor | None = None) -> Tokens:
        if x.dim() != 3 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"x: Patchify1D expects [B, L, {self.in_channels}], got {tuple(x.shape)}"
            )
        batch, length, _ = x.shape
        pad = -length % self.patch_size
        token_mask = None
        if mask is not None:
            check_mask(mask, batch, length, "x_mask")
            x = _zero_padded(x, mask)
            token_mask = (
                F.pad(mask, (0, pad), value=False).unflatten(1, (-1, self.patch_size)).any(-1)
            )
        x = F.pad(x, (0, 0, 0, pad))
        tokens = rearrange(x, "b (l p) c -> b l (p c)", p=self.patch_size)
        num = tokens.shape[1]
        ids = sequence_position_ids(num, 1, x.device)
        return Tokens(
            tokens, ids, token_mask, (num,), torch.Size((batch, length, self.in_channels)), mask
        )

    def decode(self, tokens: Tensor, layout: Tokens) -> Tensor:
        x = rearrange(tokens, "b l (p c) -> b (l p) c", p=self.patch_size)[:, : layout.shape[1]]
        return _zero_padded(x, layout.x_mask)


class SetTokens(Tokenizer):
    """Sets ``[B, N, C]``: one token per element, no positions (permutation-equivariant).

    Outputs at padded elements (mask ``False``) are zero.
    """

    num_axes = 0

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.token_dim = in_channels

    def encode(self, x: Tensor, mask: Tensor | None = None) -> Tokens:
        if x.dim() != 3 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"x: SetTokens expects [B, N, {self.in_channels}], got {tuple(x.shape)}"
            )
        if mask is not None:
            check_mask(mask, x.shape[0], x.shape[1], "x_mask")
        return Tokens(x, None, mask, (), x.shape, mask)

    def decode(self, tokens: Tensor, layout: Tokens) -> Tensor:
        return _zero_padded(tokens, layout.x_mask)
