"""FlowTurbo's velocity refiner (Zhao et al., 2024) and the objective that trains it.

Along a trained flow ``u`` (t = 0 noise, t = 1 data) the velocity changes little over a
short step, so a light network ``r`` can predict the change from the velocity ``v`` at an
earlier point to the velocity at a later one:

    u(x + h v, t + h) ~ v + r(x + h v, t + h, v),    v = u(x, t).

The ``flowturbo`` sampler (:mod:`mmflow.sampling.flowturbo`) ends with steps that call ``r``
instead of ``u``. :class:`VelocityRefiner` is the light network (the paper: one DiT block
whose input concatenates ``x`` and ``v`` channel-wise); :class:`TurboFlow` holds it beside the
frozen flow as one network, and :class:`RefinerObjective` trains it.

One network keeps a FlowTurbo model an ordinary mmflow model: ``network(x, t, **c)`` is the
flow's velocity, so every sampler, validation, export and ``mmflow sample`` work on it, and
``network(x, t, velocity=v, **c)`` is the refiner's correction, which the ``flowturbo`` sampler
calls for its refiner steps (through classifier-free guidance too: the correction of the
guided velocity is the guided combination of the two corrections, as guidance is linear).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmflow.hub import velocity_network
from mmflow.modality import Batch, Condition
from mmflow.nn import ClassEmbedder, FinalLayer, PositionConfig, SingleBlock, TimestepEmbedder
from mmflow.nn.mmdit import joint_key_mask
from mmflow.nn.positions import build_positions
from mmflow.nn.tokenizers import Tokenizer
from mmflow.pretrained import Frozen
from mmflow.training.objectives import ObjectiveOutput, TrainingContext, TrainingObjective

__all__ = ["RefinerObjective", "TurboFlow", "VelocityRefiner"]


class VelocityRefiner(nn.Module):
    """``r(x, t, v)``: the velocity correction from ``x``, ``t`` and an earlier velocity ``v``.

    ``x`` and ``v`` are tokenized alike by ``tokenizer`` (any data shape it takes), their
    tokens concatenated feature-wise and embedded, ``[x_tok, v_tok] W + b`` plus fixed sin-cos
    positions for grids; ``depth`` single-stream adaLN-Zero blocks conditioned on
    ``c = time(t) + class(y)`` follow, and a final layer maps back to the data shape. The
    output layer starts at zero, so an untrained refiner returns ``r = 0`` (the sampler then
    reuses ``v`` unchanged).

    One block at the base flow's width, as in the paper, is about ``1 / depth`` of a base
    MM-DiT's parameters; a narrower ``hidden_size`` makes it lighter still.

    Args:
        tokenizer: data <-> tokens, as for :class:`mmflow.nn.MMDiT`.
        hidden_size: token width.
        depth: number of transformer blocks.
        num_heads: attention heads (``hidden_size`` must be divisible by it).
        mlp_ratio: MLP hidden width / ``hidden_size``.
        num_classes: class labels for ``class_labels`` (``num_classes`` = null class), or
            ``None`` for an unconditional refiner.
        qk_norm: RMS-normalise queries and keys per head.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        hidden_size: int = 128,
        depth: int = 1,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        qk_norm: bool = True,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"`hidden_size`={hidden_size} is not divisible by `num_heads`")
        if depth < 1:
            raise ValueError(f"`depth` must be at least 1, got {depth}")
        self.tokenizer = tokenizer
        self.embed = nn.Linear(2 * tokenizer.token_dim, hidden_size)
        kind = "sincos" if tokenizer.num_axes else "none"
        self.positions = build_positions(
            PositionConfig(kind), hidden_size, hidden_size // num_heads, "x"
        )
        self.time_embed = TimestepEmbedder(hidden_size)
        self.class_embed = ClassEmbedder(num_classes, hidden_size) if num_classes else None
        self.blocks = nn.ModuleList(
            SingleBlock(hidden_size, num_heads, mlp_ratio, qk_norm) for _ in range(depth)
        )
        self.final = FinalLayer(hidden_size, tokenizer.token_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier input embedding; adaLN modulations and the output projection zero (DiT)."""
        nn.init.xavier_uniform_(self.embed.weight)
        nn.init.zeros_(self.embed.bias)
        for module in [*self.blocks, self.final]:
            for layer in module.modules():
                if hasattr(layer, "modulation"):
                    nn.init.zeros_(layer.modulation.weight)
                    nn.init.zeros_(layer.modulation.bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        velocity: Tensor,
        *,
        class_labels: Tensor | None = None,
        x_mask: Tensor | None = None,
    ) -> Tensor:
        """The correction ``r(x, t, v)`` with the shape of ``x`` (``t`` of shape ``[B]``)."""
        if (class_labels is None) != (self.class_embed is None):
            state = "was not configured" if self.class_embed is None else "is required"
            raise ValueError(f"`class_labels` {state} (num_classes of the refiner)")
        if velocity.shape != x.shape:
            raise ValueError(
                f"`velocity` {tuple(velocity.shape)} must have the shape of x {tuple(x.shape)}"
            )
        layout = self.tokenizer.encode(x, x_mask)
        velocity_tokens = self.tokenizer.encode(velocity, x_mask).tokens
        tokens = self.embed(torch.cat([layout.tokens, velocity_tokens], dim=-1))
        tokens = self.positions.add(tokens, layout.positions, layout.grid)
        c = self.time_embed(t.expand(x.shape[0]))
        if self.class_embed is not None:
            c = c + self.class_embed(class_labels)
        c_act = F.silu(c).to(tokens.dtype)
        mask = joint_key_mask({"x": tokens}, {"x": layout.mask}, x.shape[0])
        for block in self.blocks:
            tokens = block({"x": tokens}, c_act, None, mask)["x"]
        return self.tokenizer.decode(self.final(tokens, c_act), layout)


class TurboFlow(nn.Module):
    """A frozen flow ``u`` and its trainable velocity refiner ``r`` as one network::

        network(x, t, **c)              = u(x, t, **c)
        network(x, t, velocity=v, **c)  = r(x, t, v, **c)

    Only the refiner trains and is saved: the flow is held :class:`~mmflow.pretrained.Frozen`,
    outside the state dict, and rebuilt from ``flow`` (a checkpoint or pretrained folder) when
    the model is loaded.

    Args:
        flow: the base flow's velocity network, or a Lightning checkpoint file or pretrained
            folder to load it from (:func:`mmflow.hub.velocity_network`).
        refiner: the light refiner, e.g. :class:`VelocityRefiner`.
    """

    def __init__(self, flow: nn.Module | str | Path, refiner: nn.Module) -> None:
        super().__init__()
        self.flow = Frozen(velocity_network(flow, "flow"))
        self.refiner = refiner

    def forward(
        self, x: Tensor, t: Tensor, velocity: Tensor | None = None, **cond: Tensor
    ) -> Tensor:
        """The flow's velocity, or with ``velocity`` the refiner's correction to it."""
        if velocity is None:
            return self.flow(x, t, **cond)
        return self.refiner(x, t, velocity, **cond)


class RefinerObjective(TrainingObjective):
    """Train the refiner ``r`` of a :class:`TurboFlow` network on its frozen flow ``u``
    (FlowTurbo's ``transport.training_losses``):

        x0 ~ noise,  t ~ time_distribution,  c' = dropout(c),  x_t = alpha(t) x1 + sigma(t) x0,
        h ~ U[0, max_delta] clipped to 1 - t,   v = u(x_t, t, c'),   x' = x_t + h v,
        loss = L(r(x', t + h, v, c'),  u(x', t + h, c') - v,  t + h)

    i.e. ``|v + r(x', t + h, v) - u(x', t + h)|^2`` with the module's loss (MSE by default).
    Each sample draws its own ``h`` (the reference code draws one per batch and lets
    ``t + h`` pass 1), and all three calls see the same dropped condition. The flow is
    ``network(x, t, **c)`` and the refiner ``network(x, t, velocity=v, **c)``
    (:class:`TurboFlow`); the flow's evaluations run without gradients.

    Args:
        max_delta: the largest step ``h`` (0.12 in FlowTurbo's code).
    """

    def __init__(self, max_delta: float = 0.12) -> None:
        super().__init__()
        if not 0 < max_delta <= 1:
            raise ValueError(f"`max_delta` must be in (0, 1], got {max_delta}")
        self.max_delta = float(max_delta)

    def forward(
        self,
        network: nn.Module,
        x1: Tensor,
        cond: Condition,
        batch: Batch,
        generator: torch.Generator | None,
        context: TrainingContext,
    ) -> ObjectiveOutput:
        x0 = context.source_like(x1, cond, generator)
        t = context.sample_times(x1.shape[0], generator, x1.device, x1.dtype)
        cond = context.drop_conditions(cond, x1, generator)
        draw = context.path.sample(x0, x1, t)
        draws = context.uniform(x1.shape[0], generator, x1.device, x1.dtype)
        step = torch.minimum(self.max_delta * draws, 1 - draw.t)
        x_next, t_next, velocity, target = refiner_target(network, draw.x_t, draw.t, step, cond)
        prediction = network(x_next, t_next, velocity=velocity, **cond)
        loss = context.loss(prediction, target, t_next, mask=cond.get("x_mask"))
        return ObjectiveOutput(loss, {"target_rms": target.square().mean().sqrt()})

    def extra_repr(self) -> str:
        return f"max_delta={self.max_delta}"


@torch.no_grad()
def refiner_target(
    network: nn.Module, x_t: Tensor, t: Tensor, step: Tensor, cond: Condition
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x', t + h, v, u(x', t + h) - v)`` with ``v = u(x_t, t)``, ``x' = x_t + h v`` and ``u``
    the network's flow (``network(x, t, **cond)``)."""
    velocity = network(x_t, t, **cond)
    x_next = x_t + step.reshape(-1, *([1] * (x_t.ndim - 1))) * velocity
    t_next = t + step
    return x_next, t_next, velocity, network(x_next, t_next, **cond) - velocity
