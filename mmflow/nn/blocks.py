"""Transformer blocks of the MM-DiT: per-stream layers, joint and single-stream blocks.

adaLN-Zero (DiT, SD3). From the global conditioning vector ``c`` each stream layer regresses
``(shift1, scale1, gate1, shift2, scale2, gate2) = W SiLU(c) + b`` with ``W = b = 0`` at
construction, and computes

    h = LN(x) (1 + scale1) + shift1;   x <- x + gate1 * Out(Attention(h))
    h = LN(x) (1 + scale2) + shift2;   x <- x + gate2 * MLP(h)

so every residual branch starts switched off. ``LN`` has no affine parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .positions import apply_rope

Rope = tuple[Tensor, Tensor] | None


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x (1 + scale) + shift`` with per-sample ``[B, D]`` shift and scale over ``[B, L, D]``."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Mlp(nn.Module):
    """``fc2(GELU_tanh(fc1(x)))``."""

    def __init__(self, hidden_size: int, mlp_hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class StreamLayer(nn.Module):
    """The weights one stream owns inside one block (modulation, q/k/v, QK-norm, out-proj, MLP).

    With ``pre_only=True`` the layer only lends keys and values to the other streams: it has
    the modulation ``(shift1, scale1)`` and a ``kv`` projection and no update of its own (SD3's
    last joint block, after which the context streams are discarded).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float,
        qk_norm: bool,
        pre_only: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(hidden_size, (2 if pre_only else 6) * hidden_size)
        self.qkv = nn.Linear(hidden_size, (2 if pre_only else 3) * hidden_size)
        self.q_norm = (
            nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm and not pre_only else nn.Identity()
        )
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        if not pre_only:
            self.proj = nn.Linear(hidden_size, hidden_size)
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def modulations(self, c_act: Tensor) -> tuple[Tensor, ...]:
        """``W SiLU(c) + b`` split into 2 or 6 ``[B, D]`` chunks (``c_act = SiLU(c)``)."""
        return self.modulation(c_act).chunk(2 if self.pre_only else 6, dim=-1)

    def attention_inputs(
        self, x: Tensor, mod: tuple[Tensor, ...], rope: Rope
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        """Queries (``None`` when pre-only), keys, values ``[B, H, L, head_dim]``."""
        h = modulate(self.norm1(x), mod[0], mod[1])
        parts = (
            self.qkv(h).unflatten(-1, (-1, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        )
        q, (k, v) = (None, parts.unbind(0)) if self.pre_only else (parts[0], parts[1:].unbind(0))
        k = self.k_norm(k)
        q = None if q is None else self.q_norm(q)
        if rope is not None:
            k = apply_rope(k, *rope)
            q = None if q is None else apply_rope(q, *rope)
        return q, k, v

    def update(self, x: Tensor, attn_out: Tensor, mod: tuple[Tensor, ...]) -> Tensor:
        """Gated residual updates after attention; ``attn_out`` is ``[B, L, D]`` (heads merged)."""
        _, _, gate1, shift2, scale2, gate2 = mod
        x = x + gate1[:, None] * self.proj(attn_out)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v`` via SDPA, heads merged: ``[B, Lq, H * d]``."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


class JointBlock(nn.Module):
    """SD3 joint block: separate weights per stream, one attention over all streams' tokens.

    Streams missing from the input (optional contexts left out) simply contribute no tokens.
    """

    def __init__(
        self,
        streams: list[str],
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float,
        qk_norm: bool,
        pre_only: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(
            {
                s: StreamLayer(hidden_size, num_heads, mlp_ratio, qk_norm, s in pre_only)
                for s in streams
            }
        )

    def forward(
        self, xs: dict[str, Tensor], c_act: Tensor, rope: dict[str, Rope], mask: Tensor | None
    ) -> dict[str, Tensor]:
        """``xs``: stream name → ``[B, L_s, D]``; ``mask``: bool ``[B, 1, 1, sum L_s]`` (keys)
        or ``[B, 1, sum L_s, sum L_s]`` (queries x keys), or None."""
        mods = {s: self.layers[s].modulations(c_act) for s in xs}
        qkv = {s: self.layers[s].attention_inputs(x, mods[s], rope.get(s)) for s, x in xs.items()}
        queries = [s for s in xs if qkv[s][0] is not None]
        out = attend(
            torch.cat([qkv[s][0] for s in queries], dim=2),
            torch.cat([qkv[s][1] for s in xs], dim=2),
            torch.cat([qkv[s][2] for s in xs], dim=2),
            _query_rows(mask, xs, queries),
        )
        outs = dict(zip(queries, out.split([xs[s].shape[1] for s in queries], dim=1)))
        return {
            s: self.layers[s].update(x, outs[s], mods[s]) if s in outs else x for s, x in xs.items()
        }


def _query_rows(mask: Tensor | None, xs: dict[str, Tensor], queries: list[str]) -> Tensor | None:
    """The rows of a query x key ``mask`` that belong to the streams that ask queries (pre-only
    streams lend keys and values only); a key-only mask passes as it is."""
    if mask is None or mask.shape[-2] == 1 or len(queries) == len(xs):
        return mask
    rows, start = [], 0
    for stream, x in xs.items():
        if stream in queries:
            rows.append(torch.arange(start, start + x.shape[1], device=mask.device))
        start += x.shape[1]
    return mask[..., torch.cat(rows), :]


class SingleBlock(nn.Module):
    """Single-stream block (plain DiT style): one set of weights over the concatenated streams.

    The streams are concatenated along the token axis, go through one adaLN-Zero transformer
    layer, and are split back so later blocks and long skips still see them by name.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool) -> None:
        super().__init__()
        self.layer = StreamLayer(hidden_size, num_heads, mlp_ratio, qk_norm)

    def forward(
        self, xs: dict[str, Tensor], c_act: Tensor, rope: Rope, mask: Tensor | None
    ) -> dict[str, Tensor]:
        """Like :meth:`JointBlock.forward`, but ``rope`` is already concatenated over streams."""
        x = torch.cat(list(xs.values()), dim=1)
        mod = self.layer.modulations(c_act)
        q, k, v = self.layer.attention_inputs(x, mod, rope)
        x = self.layer.update(x, attend(q, k, v, mask), mod)
        return dict(zip(xs, x.split([t.shape[1] for t in xs.values()], dim=1)))


class FinalLayer(nn.Module):
    """``Linear(LN(x) (1 + scale) + shift)`` with ``(shift, scale) = W SiLU(c) + b``.

    Both the modulation and the output projection are zero-initialised, so the network's
    output is exactly zero at construction.
    """

    def __init__(self, hidden_size: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(hidden_size, 2 * hidden_size)
        self.linear = nn.Linear(hidden_size, out_dim)

    def forward(self, x: Tensor, c_act: Tensor) -> Tensor:
        shift, scale = self.modulation(c_act).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))
