"""Shortcut models (Frans, Hafner, Levine, Abbeel 2024, "One Step Diffusion via Shortcut Models").

A shortcut model ``s(x_t, t, d)`` takes the step size ``d`` beside the time ``t`` and predicts
the average velocity of the flow over ``[t, t + d]``, so that one step of any size lands on the
flow::

    x_{t+d} = x_t + d s(x_t, t, d),        s(x_t, t, 0) = u(x_t, t)  (the instantaneous velocity)

Two steps of size ``d`` make one of size ``2d``, which gives a target for ``s`` at ``2d`` from
the model itself at ``d`` (self-consistency)::

    s(x_t, t, 2d) = (s(x_t, t, d) + s(x'_{t+d}, t + d, d)) / 2,    x'_{t+d} = x_t + d s(x_t, t, d)

:class:`ShortcutObjective` trains both in one batch: most rows regress the path velocity at the
flow-matching step size (plain flow matching), the rest regress the stop-gradient
self-consistency target at a power-of-two step size ``D = 2d``. The model is sampled with
``sample(model, x0, method="step_euler", nfe=k)`` for any power-of-two ``k <= max_steps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mmflow.interpolants import expand_time_like
from mmflow.modality import Batch, Condition, drop_conditions
from mmflow.training.objectives import ObjectiveOutput, TrainingContext, TrainingObjective

__all__ = ["ShortcutBatch", "ShortcutObjective"]

FlowMatchingStep = Literal["zero", "finest"]
FlowTimes = Literal["context", "grid"]


@dataclass
class ShortcutBatch:
    """One regression batch of the shortcut objective.

    The first ``bootstrap_rows`` rows are self-consistency rows (``target`` is the stop-gradient
    two-step target at ``step_size``); the others are flow-matching rows (``target`` is the path
    velocity, ``step_size`` the flow-matching step size).

    Attributes:
        x0: the noise of every row.
        x_t: the network input, on the path between ``x0`` and the data.
        t: times ``[B]``.
        step_size: step sizes ``[B]`` passed to the network as ``step_size=``.
        target: what ``network(x_t, t, step_size=step_size, **cond)`` regresses.
        cond: the network's condition for every row (after classifier-free-guidance dropout).
        bootstrap_rows: the number of leading self-consistency rows.
    """

    x0: Tensor
    x_t: Tensor
    t: Tensor
    step_size: Tensor
    target: Tensor
    cond: Condition
    bootstrap_rows: int


def select_rows(cond: Condition, rows: slice | Tensor) -> Condition:
    """The rows ``rows`` of every batched tensor of ``cond`` (dicts recursively; other values
    such as ``None`` pass through), with the convention of :func:`mmflow.modality.drop_conditions`
    that every tensor of a condition has a leading batch dimension."""
    selected: Condition = {}
    for key, value in cond.items():
        if isinstance(value, Tensor):
            selected[key] = value[rows]
        elif isinstance(value, dict):
            selected[key] = select_rows(value, rows)
        else:
            selected[key] = value
    return selected


def _check_arguments(
    bootstrap_fraction: float,
    max_steps: int,
    flow_matching_step: str,
    flow_times: str,
    target_clip: float | None,
    state_clip: float | None,
    guidance_scale: float | None,
) -> None:
    if not 0.0 <= bootstrap_fraction <= 1.0:
        raise ValueError(f"`bootstrap_fraction` must be in [0, 1], got {bootstrap_fraction}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 2:
        raise ValueError(f"`max_steps` must be an integer power of two >= 2, got {max_steps!r}")
    if max_steps & (max_steps - 1):
        raise ValueError(f"`max_steps` must be a power of two, got {max_steps}")
    if flow_matching_step not in ("zero", "finest"):
        raise ValueError(
            f"`flow_matching_step` must be 'zero' or 'finest', got {flow_matching_step!r}"
        )
    if flow_times not in ("context", "grid"):
        raise ValueError(f"`flow_times` must be 'context' or 'grid', got {flow_times!r}")
    for name, clip in (("target_clip", target_clip), ("state_clip", state_clip)):
        if clip is not None and not clip > 0:
            raise ValueError(f"`{name}` must be > 0 or None, got {clip}")
    if guidance_scale is not None and not guidance_scale > 0:
        raise ValueError(f"`guidance_scale` must be > 0 or None, got {guidance_scale}")


class ShortcutObjective(TrainingObjective):
    """The shortcut-model objective: flow matching at one step size plus self-consistency.

    Per batch of ``B`` rows, ``round(B * bootstrap_fraction)`` rows (stochastically rounded)
    are self-consistency rows and the rest flow-matching rows, with ``x0 ~ noise``,
    ``c' = dropout(c)``, ``x_t = alpha(t) x1 + sigma(t) x0``:

    - flow matching: ``t ~ time_distribution`` (or uniform on ``{0, 1/M, ..., 1 - 1/M}``),
      step size ``d_fm`` (0, or ``1/M``), target ``alpha'(t) x1 + sigma'(t) x0`` (``x1 - x0``);
    - self-consistency: ``D`` cycles through the powers of two ``1, 1/2, ..., D_min`` (the same
      number of rows per level, from a random first level), ``t`` uniform on the multiples of
      ``D`` below 1 (so ``t + D <= 1``), ``h = D / 2``, ``h_in = h`` if ``h >= 1/M`` else 0,
      and, with the target network ``s_bar`` (the EMA, else the online network) without
      gradient::

          v1 = s_bar(x_t, t, h_in),   x' = clip(x_t + h v1),   v2 = s_bar(x', t + h, h_in),
          target = clip((v1 + v2) / 2)

    and ``loss = L(s(x_t, t, step, c'), target, t)`` over all rows, masked by ``cond["x_mask"]``.

    With ``flow_matching_step="zero"`` the flow-matching rows train ``s(., ., 0)`` (plain flow
    matching, so the network is also a velocity model for every ODE sampler), the levels run
    down to ``D_min = 1/M`` and the finest level is two half-steps of the instantaneous velocity.
    ``"finest"`` is the official code: flow matching at ``d = 1/M`` and levels down to ``2/M``.

    Classifier-free guidance: without ``guidance_scale``, the dropout ``c'`` applies to every row
    and the target is computed under the row's own ``c'``, so conditional and unconditional
    shortcuts are trained and guidance can be applied at sampling time at any step count. With
    ``guidance_scale = w`` (the official ``bootstrap_cfg``), self-consistency rows keep their
    condition and, where the half-steps are at the flow-matching step size, the target uses the
    guided velocity ``v_u + w (v_c - v_u)``: the coarser levels learn the guided flow (sample them
    without guidance).

    Args:
        bootstrap_fraction: share of each batch given to self-consistency (paper: 1/8).
        max_steps: ``M``, the finest step count: the smallest step trained is ``1/M``
            (paper: 128).
        flow_matching_step: the step size of the flow-matching rows, ``"zero"`` (``d = 0``) or
            ``"finest"`` (``d = 1/M``, as the official code).
        flow_times: times of the flow-matching rows: ``"context"`` (the module's time
            distribution) or ``"grid"`` (uniform on the multiples of ``1/M``, as the official
            code).
        ema_targets: compute targets with the EMA network when the module keeps one (paper);
            the online network without gradient otherwise.
        target_clip: clip the self-consistency target to ``[-c, c]`` (paper: 4); ``None``: off.
        state_clip: clip the intermediate point ``x'`` to ``[-c, c]`` (official code: 4);
            ``None``: off.
        guidance_scale: distil classifier-free guidance of this scale into the shortcut levels
            (official ImageNet runs: 1.5); ``None``: no guidance in the targets.
    """

    def __init__(
        self,
        bootstrap_fraction: float = 0.125,
        max_steps: int = 128,
        flow_matching_step: FlowMatchingStep = "zero",
        flow_times: FlowTimes = "context",
        ema_targets: bool = True,
        target_clip: float | None = 4.0,
        state_clip: float | None = 4.0,
        guidance_scale: float | None = None,
    ) -> None:
        super().__init__()
        _check_arguments(
            bootstrap_fraction,
            max_steps,
            flow_matching_step,
            flow_times,
            target_clip,
            state_clip,
            guidance_scale,
        )
        self.bootstrap_fraction = float(bootstrap_fraction)
        self.max_steps = max_steps
        self.flow_matching_step = flow_matching_step
        self.flow_times = flow_times
        self.ema_targets = ema_targets
        self.target_clip = target_clip
        self.state_clip = state_clip
        self.guidance_scale = guidance_scale

    @property
    def finest_step(self) -> float:
        """``1/M``, the smallest step size the model is trained for."""
        return 1.0 / self.max_steps

    @property
    def flow_matching_step_size(self) -> float:
        """The step size of the flow-matching rows: 0 or ``1/M``."""
        return 0.0 if self.flow_matching_step == "zero" else self.finest_step

    @property
    def shortcut_step_sizes(self) -> list[float]:
        """The self-consistency levels ``D``: ``1, 1/2, ...`` down to ``1/M`` (flow matching at
        0) or ``2/M`` (flow matching at ``1/M``)."""
        levels = int(math.log2(self.max_steps)) + (1 if self.flow_matching_step == "zero" else 0)
        return [2.0**-level for level in range(levels)]

    def bootstrap_count(
        self, batch_size: int, generator: torch.Generator | None, device: torch.device | str
    ) -> int:
        """``B * bootstrap_fraction`` rows, rounded up with probability its fractional part."""
        expected = batch_size * self.bootstrap_fraction
        count = math.floor(expected)
        remainder = expected - count
        if remainder > 1e-9:
            count += int(torch.rand((), generator=generator, device=device).item() < remainder)
        return min(count, batch_size)

    def draw_bootstrap_times(
        self,
        n: int,
        generator: torch.Generator | None,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor]:
        """``(t, D)`` for ``n`` self-consistency rows: ``D`` cycles through the levels from a
        random first one, ``t = k D`` with ``k`` uniform in ``{0, ..., 1/D - 1}``."""
        levels = torch.tensor(self.shortcut_step_sizes, dtype=torch.float64, device=device)
        first = torch.randint(len(levels), (1,), generator=generator, device=device)
        step = levels[(torch.arange(n, device=device) + first) % len(levels)]
        uniform = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        t = torch.floor(uniform / step) * step
        return t.to(dtype), step.to(dtype)

    def draw_flow_times(
        self,
        n: int,
        generator: torch.Generator | None,
        device: torch.device | str,
        context: TrainingContext,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Times of ``n`` flow-matching rows (see ``flow_times``)."""
        if self.flow_times == "context":
            return context.time_distribution.sample(n, generator, device=device, dtype=dtype)
        uniform = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        return (torch.floor(uniform * self.max_steps) / self.max_steps).to(dtype)

    def _clip(self, value: Tensor, clip: float | None) -> Tensor:
        return value if clip is None else value.clamp(-clip, clip)

    def _half_step_velocity(
        self,
        network: nn.Module,
        x: Tensor,
        t: Tensor,
        step_input: Tensor,
        cond: Condition,
        null_cond: Condition | None,
    ) -> Tensor:
        """``s(x, t, step_input)``, guided ``v_u + w (v_c - v_u)`` on the rows at the
        flow-matching step size when ``null_cond`` is given."""
        velocity = network(x, t, step_size=step_input, **cond)
        if null_cond is None or self.guidance_scale is None:
            return velocity
        rows = torch.nonzero(step_input == self.flow_matching_step_size).squeeze(1)
        if rows.numel() == 0:
            return velocity
        unconditional = network(
            x[rows], t[rows], step_size=step_input[rows], **select_rows(null_cond, rows)
        )
        guided = unconditional + self.guidance_scale * (velocity[rows] - unconditional)
        return velocity.index_copy(0, rows, guided)

    def bootstrap_target(
        self,
        network: nn.Module,
        x_t: Tensor,
        t: Tensor,
        step_size: Tensor,
        cond: Condition,
        null_cond: Condition | None = None,
    ) -> Tensor:
        """The stop-gradient target of ``s(x_t, t, D)`` from two half-steps ``h = D / 2``:
        ``(s(x_t, t, h) + s(x_t + h s(x_t, t, h), t + h, h)) / 2``, the half-steps below
        ``1/M`` evaluated at step size 0 (see the class docstring for the clips and guidance)."""
        half = step_size / 2
        step_input = torch.where(half < self.finest_step, torch.zeros_like(half), half)
        with torch.no_grad():
            first = self._half_step_velocity(network, x_t, t, step_input, cond, null_cond)
            midpoint = self._clip(x_t + expand_time_like(half, x_t) * first, self.state_clip)
            second = self._half_step_velocity(
                network, midpoint, t + half, step_input, cond, null_cond
            )
            return self._clip((first + second) / 2, self.target_clip)

    def _conditions(
        self,
        cond: Condition,
        x1: Tensor,
        bootstrap_rows: int,
        generator: torch.Generator | None,
        context: TrainingContext,
    ) -> tuple[Condition, Condition | None]:
        """The network's condition per row after dropout, and the null condition of the
        self-consistency rows when their targets are guided."""
        dropped = context.drop_conditions(cond, x1, generator)
        if self.guidance_scale is None or not context.adapter.conditioned():
            return dropped, None
        keep = torch.arange(x1.shape[0], device=x1.device) < bootstrap_rows
        kept = drop_conditions(dropped, cond, keep)
        return kept, context.null_condition(select_rows(cond, slice(0, bootstrap_rows)))

    def target_network(self, network: nn.Module, context: TrainingContext) -> nn.Module:
        """The EMA network when ``ema_targets`` and the module keeps one, else ``network``."""
        if self.ema_targets and context.ema_network is not None:
            return context.ema_network
        return network

    def regression_batch(
        self,
        network: nn.Module,
        x1: Tensor,
        cond: Condition,
        generator: torch.Generator | None,
        context: TrainingContext,
    ) -> ShortcutBatch:
        """Inputs and targets of one batch (see the class docstring)."""
        batch_size, device, dtype = x1.shape[0], x1.device, x1.dtype
        x0 = context.source_like(x1, cond, generator)
        rows = self.bootstrap_count(batch_size, generator, device)
        row_cond, null_cond = self._conditions(cond, x1, rows, generator, context)
        shortcut_t, shortcut_step = context.per_example(
            rows,
            lambda m: torch.stack(self.draw_bootstrap_times(m, generator, device, dtype), dim=1),
        ).unbind(1)
        flow_t = context.per_example(
            batch_size - rows,
            lambda m: self.draw_flow_times(m, generator, device, context, dtype),
        )
        flow_step = torch.full_like(flow_t, self.flow_matching_step_size)
        draw = context.path.sample(x0, x1, torch.cat([shortcut_t, flow_t]))
        target = draw.target
        if rows > 0:
            shortcut_target = self.bootstrap_target(
                self.target_network(network, context),
                draw.x_t[:rows],
                draw.t[:rows],
                shortcut_step,
                select_rows(row_cond, slice(0, rows)),
                null_cond,
            )
            target = torch.cat([shortcut_target, draw.target[rows:]])
        return ShortcutBatch(
            x0=x0,
            x_t=draw.x_t,
            t=draw.t,
            step_size=torch.cat([shortcut_step, flow_step]),
            target=target,
            cond=row_cond,
            bootstrap_rows=rows,
        )

    def forward(
        self,
        network: nn.Module,
        x1: Tensor,
        cond: Condition,
        batch: Batch,
        generator: torch.Generator | None,
        context: TrainingContext,
    ) -> ObjectiveOutput:
        shortcut = self.regression_batch(network, x1, cond, generator, context)
        prediction = network(
            shortcut.x_t, shortcut.t, step_size=shortcut.step_size, **shortcut.cond
        )
        mask = shortcut.cond.get("x_mask")
        loss = context.loss(prediction, shortcut.target, shortcut.t, mask=mask)
        return ObjectiveOutput(loss, self._branch_losses(prediction, shortcut, mask, context))

    def _branch_losses(
        self,
        prediction: Tensor,
        shortcut: ShortcutBatch,
        mask: Tensor | None,
        context: TrainingContext,
    ) -> dict[str, Tensor]:
        """The loss of the flow-matching and of the self-consistency rows, for logging."""
        terms = {}
        rows = shortcut.bootstrap_rows
        for name, part in (
            ("bootstrap_loss", slice(0, rows)),
            ("flow_matching_loss", slice(rows, None)),
        ):
            if shortcut.t[part].numel() == 0:
                continue
            part_mask = None if mask is None else mask[part]
            terms[name] = context.loss(
                prediction[part].detach(), shortcut.target[part], shortcut.t[part], mask=part_mask
            )
        return terms

    def extra_repr(self) -> str:
        return (
            f"bootstrap_fraction={self.bootstrap_fraction}, max_steps={self.max_steps}, "
            f"flow_matching_step={self.flow_matching_step!r}, flow_times={self.flow_times!r}, "
            f"ema_targets={self.ema_targets}, target_clip={self.target_clip}, "
            f"state_clip={self.state_clip}, guidance_scale={self.guidance_scale}"
        )
