"""MM-DiT: the multi-modal diffusion transformer backbone (SD3-style joint attention).

The main stream ``x`` (the data being transported) and any number of named context streams
(text tokens, speech features, a mixture spectrogram ...) are embedded into ``hidden_size``
tokens with separate weights per stream and processed by

1. ``depth`` joint blocks: per-stream weights, one attention over all tokens;
2. ``num_single_blocks`` single-stream blocks: shared weights over the concatenated tokens;
3. a final adaLN layer and a linear map back to the tokenizer's token features for ``x``.

All blocks are modulated (adaLN-Zero) by one global vector
``c = time(t) + pooled(p) + class(y) + step(d)``. The network predicts the velocity
``u = d x_t / dt`` with ``t = 0`` noise and ``t = 1`` data; it outputs zero at construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .blocks import FinalLayer, JointBlock, Rope, SingleBlock
from .embedders import ClassEmbedder, PooledEmbedder, StepSizeEmbedder, TimestepEmbedder
from .positions import PositionConfig, build_positions, identity_rope, sequence_position_ids
from .tokenizers import Tokenizer, Tokens, check_mask

X_STREAM = "x"


@dataclass
class ContextConfig:
    """One context stream: tokens ``[B, L, dim]`` passed as ``context[name]``.

    Attributes:
        dim: feature size of the raw context tokens (projected to ``hidden_size`` by a linear).
        positions: how the stream encodes positions (default: none, e.g. text-encoder outputs
            that already carry them).
        optional: whether the stream may be left out of ``forward`` (it then adds no tokens);
            a required stream that is missing raises a ``ValueError``.
    """

    dim: int
    positions: PositionConfig = field(default_factory=PositionConfig)
    optional: bool = False


class MMDiT(nn.Module):
    """Multi-modal diffusion transformer with joint attention over named token streams.

    Args:
        tokenizer: turns ``x`` into tokens and back (``Patchify2D``, ``Patchify1D``, ...).
        hidden_size: token width of every stream.
        depth: number of joint (per-stream weights) blocks.
        num_heads: attention heads (``hidden_size`` must be divisible by it).
        mlp_ratio: MLP hidden width / ``hidden_size``.
        positions: position encoding of ``x``; ``None`` picks ``sincos`` when the tokenizer has
            position axes and ``none`` for sets.
        context: context streams by name (``"x"`` is reserved).
        pooled_dim: size of a pooled condition vector (``None``: no pooled input).
        num_classes: number of class labels (``None``: no class input); label ``num_classes``
            is the null class.
        step_size_embedding: embed a step size ``d`` (shortcut models).
        num_single_blocks: single-stream blocks after the joint ones.
        long_skips: U-ViT long skips on the ``x`` stream: the output of block ``i`` in the first
            half is concatenated to the input of block ``N - 1 - i`` and mapped back to
            ``hidden_size`` by a linear initialised to ``[I, 0]`` (so it starts as a no-op).
        qk_norm: RMS-normalise queries and keys per head (learnable scale, per stream).
        time_freq_dim: sinusoid features of the time embedding.
        time_scale, time_offset: the time embedder sees ``time_scale * t + time_offset``.
        step_size_scale: the step-size embedder sees ``step_size_scale * d``. A model trained
            through a derivative in ``t`` and ``d`` (MeanFlow's JVP) wants small scales for
            both: the sinusoids' slopes grow with them, and with those the target.
        gradient_checkpointing: recompute blocks in backward (``use_reentrant=False``).
        x_attention: ``"full"`` (every token attends every token) or ``"axial"``: an ``x``
            token attends only the ``x`` tokens that share one of its position ids on some
            axis (its row and column of a 2-D grid; its frame and its part in a time x part
            layout), and every context token; context tokens attend everything. One joint
            attention with that mask sees what a row attention followed by a column attention
            sees over two layers, in one.

    When there are no single-stream blocks, the context streams only lend keys and values in
    the last joint block (their update would be discarded), as in SD3.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        positions: PositionConfig | None = None,
        context: dict[str, ContextConfig] | None = None,
        pooled_dim: int | None = None,
        num_classes: int | None = None,
        step_size_embedding: bool = False,
        num_single_blocks: int = 0,
        long_skips: bool = False,
        qk_norm: bool = True,
        time_freq_dim: int = 256,
        time_scale: float = 1000.0,
        time_offset: float = 0.0,
        step_size_scale: float = 1000.0,
        gradient_checkpointing: bool = False,
        x_attention: str = "full",
    ) -> None:
        super().__init__()
        if x_attention not in ("full", "axial"):
            raise ValueError(f"x_attention must be 'full' or 'axial', got {x_attention!r}")
        if x_attention == "axial" and tokenizer.num_axes < 2:
            raise ValueError(
                f"x_attention='axial' needs a tokenizer with at least 2 position axes; "
                f"{type(tokenizer).__name__} has {tokenizer.num_axes}"
            )
        self.x_attention = x_attention
        context = dict(context or {})
        self._check_config(hidden_size, num_heads, depth, num_single_blocks, context)
        self.tokenizer = tokenizer
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.context_config = context
        self.gradient_checkpointing = gradient_checkpointing
        head_dim = hidden_size // num_heads
        if positions is None:
            positions = PositionConfig("sincos" if tokenizer.num_axes else "none")
        if tokenizer.num_axes == 0 and positions.kind in ("sincos", "rope"):
            raise ValueError(
                f"stream 'x': {type(tokenizer).__name__} has no position ids for '{positions.kind}'"
            )

        self.x_embed = nn.Linear(tokenizer.token_dim, hidden_size)
        self.x_positions = build_positions(positions, hidden_size, head_dim, X_STREAM)
        self.context_embed = nn.ModuleDict(
            {n: nn.Linear(c.dim, hidden_size) for n, c in context.items()}
        )
        self.context_positions = nn.ModuleDict(
            {n: build_positions(c.positions, hidden_size, head_dim, n) for n, c in context.items()}
        )
        self.time_embed = TimestepEmbedder(hidden_size, time_freq_dim, time_scale, time_offset)
        self.pooled_embed = PooledEmbedder(pooled_dim, hidden_size) if pooled_dim else None
        self.class_embed = ClassEmbedder(num_classes, hidden_size) if num_classes else None
        self.step_embed = (
            StepSizeEmbedder(hidden_size, time_freq_dim, step_size_scale)
            if step_size_embedding
            else None
        )

        streams = [X_STREAM, *context]
        last_pre_only = frozenset(context) if num_single_blocks == 0 else frozenset()
        self.joint_blocks = nn.ModuleList(
            JointBlock(
                streams,
                hidden_size,
                num_heads,
                mlp_ratio,
                qk_norm,
                last_pre_only if i == depth - 1 else frozenset(),
            )
            for i in range(depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleBlock(hidden_size, num_heads, mlp_ratio, qk_norm)
            for _ in range(num_single_blocks)
        )
        num_skips = (depth + num_single_blocks) // 2 if long_skips else 0
        self.skips = nn.ModuleList(
            nn.Linear(2 * hidden_size, hidden_size) for _ in range(num_skips)
        )
        self.final = FinalLayer(hidden_size, tokenizer.token_dim)
        self.reset_parameters()

    @staticmethod
    def _check_config(
        hidden_size: int,
        num_heads: int,
        depth: int,
        num_single: int,
        context: dict[str, ContextConfig],
    ) -> None:
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        if depth < 0 or num_single < 0 or depth + num_single == 0:
            raise ValueError(
                f"need at least one block, got depth={depth}, num_single_blocks={num_single}"
            )
        if X_STREAM in context:
            raise ValueError(
                f"context: the stream name '{X_STREAM}' is reserved for the main stream"
            )
        bad = [n for n in context if not n or "." in n]
        if bad:
            raise ValueError(
                f"context: stream names must be non-empty and contain no '.', got {bad}"
            )

    def reset_parameters(self) -> None:
        """Xavier linears, zero biases; adaLN modulations and the output projection zero.

        Long-skip linears start as ``[I, 0]``: the skip path is initially ignored.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear) and not _inside(
                module, self.time_embed, self.step_embed
            ):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for block in [*self.joint_blocks, *self.single_blocks, self.final]:
            for module in block.modules():
                if hasattr(module, "modulation"):
                    nn.init.zeros_(module.modulation.weight)
                    nn.init.zeros_(module.modulation.bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)
        for skip in self.skips:
            with torch.no_grad():
                skip.weight.zero_()
                skip.weight[:, : self.hidden_size].copy_(torch.eye(self.hidden_size))

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        *,
        context: dict[str, Tensor] | None = None,
        context_mask: dict[str, Tensor] | None = None,
        x_mask: Tensor | None = None,
        pooled: Tensor | None = None,
        class_labels: Tensor | None = None,
        step_size: Tensor | None = None,
        positions: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """Velocity ``u(x, t)`` with the shape of ``x``.

        Args:
            x: data in its native shape (``[B, C, H, W]`` images, ``[B, L, C]`` sequences/sets).
            t: ``[B]`` (or scalar) times in [0, 1]; 0 is noise, 1 is data.
            context: stream name → tokens ``[B, L_s, dim_s]``.
            context_mask: stream name → bool ``[B, L_s]``, ``True`` for real tokens.
            x_mask: bool mask of ``x`` for sequence / set tokenizers.
            pooled: ``[B, pooled_dim]`` pooled condition.
            class_labels: ``[B]`` integer labels (``num_classes`` = null class).
            step_size: ``[B]`` step sizes for shortcut models.
            positions: stream name (``"x"`` or a context) → position ids ``[L, k]`` or
                ``[B, L, k]`` overriding the defaults.
        """
        context, context_mask, positions = (
            dict(context or {}),
            dict(context_mask or {}),
            dict(positions or {}),
        )
        self._check_keys(context, context_mask, positions)
        layout = self.tokenizer.encode(x, x_mask)
        batch = x.shape[0]
        xs, masks, rope, x_ids = self._embed_x(layout, positions.get(X_STREAM))
        self._embed_context(context, context_mask, positions, batch, xs, masks, rope)
        c = self._condition(_check_t(t, batch), batch, pooled, class_labels, step_size)
        mask = joint_key_mask(xs, masks, batch)
        if self.x_attention == "axial":
            structure = axial_attention_mask(x_ids, sum(v.shape[1] for v in xs.values()))
            mask = structure if mask is None else mask & structure
        xs = self._run_blocks(xs, F.silu(c), rope, mask)
        return self.tokenizer.decode(self.final(xs[X_STREAM], F.silu(c)), layout)

    def _check_keys(self, context: dict, context_mask: dict, positions: dict) -> None:
        for arg, keys, allowed in (
            ("context", context, self.context_config),
            ("context_mask", context_mask, context),
            ("positions", positions, [X_STREAM, *context]),
        ):
            unknown = sorted(set(keys) - set(allowed))
            if unknown:
                raise ValueError(
                    f"{arg}: unknown stream(s) {unknown}; expected a subset of {sorted(allowed)}"
                )
        missing = [
            n for n, cfg in self.context_config.items() if n not in context and not cfg.optional
        ]
        if missing:
            raise ValueError(f"context: required stream(s) {missing} missing")

    def _embed_x(
        self, layout: Tokens, ids: Tensor | None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor | None], dict[str, Rope], Tensor | None]:
        ids = (
            layout.positions if ids is None else _check_ids(ids, layout.tokens.shape[:2], X_STREAM)
        )
        tokens = self.x_positions.add(self.x_embed(layout.tokens), ids, layout.grid)
        rope = {X_STREAM: self.x_positions.rotary(ids)}
        return {X_STREAM: tokens}, {X_STREAM: layout.mask}, rope, ids

    def _embed_context(
        self,
        context: dict[str, Tensor],
        context_mask: dict[str, Tensor],
        positions: dict[str, Tensor],
        batch: int,
        xs: dict[str, Tensor],
        masks: dict[str, Tensor | None],
        rope: dict[str, Rope],
    ) -> None:
        """Embed each given context stream into ``xs``, ``masks`` and ``rope`` (config order)."""
        for name, cfg in self.context_config.items():
            if name not in context:
                continue
            tokens = context[name]
            if tokens.dim() != 3 or tokens.shape[0] != batch or tokens.shape[-1] != cfg.dim:
                raise ValueError(
                    f"context['{name}']: expected [B={batch}, L, {cfg.dim}], "
                    f"got {tuple(tokens.shape)}"
                )
            length = tokens.shape[1]
            if name in context_mask:
                check_mask(context_mask[name], batch, length, f"context_mask['{name}']")
            pos = self.context_positions[name]
            ids = positions.get(name)
            if ids is None and pos.needs_ids:
                ids = sequence_position_ids(length, _num_rope_axes(cfg.positions), tokens.device)
            elif ids is not None:
                ids = _check_ids(ids, (batch, length), name)
            xs[name] = pos.add(self.context_embed[name](tokens), ids, (length,))
            masks[name] = context_mask.get(name)
            rope[name] = pos.rotary(ids)

    def _condition(
        self,
        t: Tensor,
        batch: int,
        pooled: Tensor | None,
        class_labels: Tensor | None,
        step_size: Tensor | None,
    ) -> Tensor:
        """``c = time(t) + pooled(p) + class(y) + step(d)`` (terms present per the config)."""
        c = self.time_embed(t)
        for name, value, embedder, shape in (
            ("pooled", pooled, self.pooled_embed, None),
            ("class_labels", class_labels, self.class_embed, (batch,)),
            ("step_size", step_size, self.step_embed, (batch,)),
        ):
            if (value is None) != (embedder is None):
                state = "was not configured" if embedder is None else "is required by the config"
                raise ValueError(f"{name}: {state}")
            if embedder is None:
                continue
            expected = shape or (batch, embedder.mlp[0].in_features)
            if tuple(value.shape) != expected:
                raise ValueError(f"{name}: expected shape {expected}, got {tuple(value.shape)}")
            c = c + embedder(value).to(c.dtype)
        return c

    def _run_blocks(
        self, xs: dict[str, Tensor], c_act: Tensor, rope: dict[str, Rope], mask: Tensor | None
    ) -> dict[str, Tensor]:
        blocks = [*self.joint_blocks, *self.single_blocks]
        rope_cat = (
            _concat_rope(xs, rope, self.hidden_size // self.num_heads)
            if self.single_blocks
            else None
        )
        first_consumer = len(blocks) - len(self.skips)
        saved: list[Tensor] = []
        for i, block in enumerate(blocks):
            if i >= first_consumer:
                skip = self.skips[i - first_consumer]
                xs = {**xs, X_STREAM: skip(torch.cat([xs[X_STREAM], saved.pop()], dim=-1))}
            block_rope = rope_cat if isinstance(block, SingleBlock) else rope
            if self.gradient_checkpointing and torch.is_grad_enabled():
                xs = checkpoint(block, xs, c_act, block_rope, mask, use_reentrant=False)
            else:
                xs = block(xs, c_act, block_rope, mask)
            if i < len(self.skips):
                saved.append(xs[X_STREAM])
        return xs


def _inside(module: nn.Module, *parents: nn.Module | None) -> bool:
    return any(p is not None and any(module is m for m in p.modules()) for p in parents)


def _num_rope_axes(cfg: PositionConfig) -> int:
    return len(cfg.rope_axes_dim) if cfg.kind == "rope" and cfg.rope_axes_dim else 1


def _check_t(t: Tensor, batch: int) -> Tensor:
    if t.dim() == 0:
        return t.expand(batch)
    if tuple(t.shape) != (batch,):
        raise ValueError(f"t: expected shape ({batch},) or a scalar, got {tuple(t.shape)}")
    return t


def _check_ids(ids: Tensor, batch_length: tuple[int, int], stream: str) -> Tensor:
    batch, length = batch_length
    if (
        ids.dim() not in (2, 3)
        or ids.shape[-2] != length
        or (ids.dim() == 3 and ids.shape[0] != batch)
    ):
        raise ValueError(
            f"positions['{stream}']: expected [L={length}, k] or [B={batch}, L, k], "
            f"got {tuple(ids.shape)}"
        )
    return ids.float()


def axial_attention_mask(x_ids: Tensor, total_length: int) -> Tensor:
    """Bool mask ``[B or 1, 1, L, L]`` (``True`` = may attend) over the ``x`` tokens, whose
    position ids ``x_ids`` (``[L_x, k]`` or ``[B, L_x, k]``) come first, followed by the
    context tokens up to ``total_length``: ``x`` token ``i`` attends ``x`` token ``j`` when
    ``ids_i[a] == ids_j[a]`` on some axis ``a``; every other pair may attend."""
    ids = x_ids if x_ids.dim() == 3 else x_ids[None]
    length = ids.shape[1]
    same_axis = (ids[:, :, None, :] == ids[:, None, :, :]).any(dim=-1)
    mask = torch.ones(ids.shape[0], total_length, total_length, dtype=torch.bool, device=ids.device)
    mask[:, :length, :length] = same_axis
    return mask[:, None]


def joint_key_mask(
    xs: dict[str, Tensor], masks: dict[str, Tensor | None], batch: int
) -> Tensor | None:
    """Key mask ``[B, 1, 1, L_total]`` over the concatenated streams, ``None`` if nothing is padded.

    A sample whose keys are all padding attends to everything instead (its outputs are
    meaningless anyway, but SDPA would return NaN).
    """
    if all(masks.get(s) is None for s in xs):
        return None
    parts = [
        masks[s]
        if masks.get(s) is not None
        else torch.ones(batch, x.shape[1], dtype=torch.bool, device=x.device)
        for s, x in xs.items()
    ]
    mask = torch.cat(parts, dim=1)
    mask = mask | ~mask.any(dim=1, keepdim=True)
    return mask[:, None, None, :]


def _concat_rope(xs: dict[str, Tensor], rope: dict[str, Rope], head_dim: int) -> Rope:
    """Per-stream ``(cos, sin)`` joined along the tokens (identity for streams without rope)."""
    if all(rope.get(s) is None for s in xs):
        return None
    batch = max(r[0].shape[0] for r in rope.values() if r is not None)
    parts = [
        tuple(p.expand(batch, -1, -1, -1) for p in rope[s])
        if rope.get(s) is not None
        else identity_rope(batch, x.shape[1], head_dim, x.device)
        for s, x in xs.items()
    ]
    return torch.cat([p[0] for p in parts], dim=2), torch.cat([p[1] for p in parts], dim=2)
