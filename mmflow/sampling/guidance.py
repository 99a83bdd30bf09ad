"""Wrappers that change the velocity model a solver integrates.

Classifier-free guidance (Ho & Salimans, 2022), written for velocities:

    u_w(x, t) = u(x, t | null) + w * (u(x, t | c) - u(x, t | null))

``w = 1`` is the conditional model, ``w = 0`` the unconditional one. The conditional and the
unconditional branch run as one forward pass on a doubled batch, so one call of the guided
model is one solver evaluation (one NFE as :func:`mmflow.sampling.sample` counts it) and two
network evaluations per sample.

Guidance by a differentiable loss on the predicted data (FlowChef; Patel et al., "Steering
Rectified Flow Models in the Vector Field for Controlled Image Generation") is a sampler of its
own, :func:`sample_loss_guided`: it moves the state, not the velocity, and needs no backward
pass through the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from mmflow.sampling._shared import Callback, VelocityModel, batched_time, check_grid
from mmflow.sampling.registry import register_sampler

NullCondition = Callable[[dict[str, Any]], dict[str, Any]]
LossFn = Callable[[Tensor], Tensor]
StepSchedule = Callable[[Tensor], Tensor]


def concat_conditions(cond: Any, uncond: Any, key: str = "condition") -> Any:
    """Stack a conditional and an unconditional condition along the batch dimension.

    Tensors are concatenated on dim 0, dicts recursively key by key; any other value
    (``None``, numbers, strings) must be equal in both and is passed through.
    """
    if isinstance(cond, Tensor) and isinstance(uncond, Tensor):
        if cond.shape[1:] != uncond.shape[1:]:
            raise ValueError(
                f"CFG: conditional and null `{key}` differ in shape: "
                f"{tuple(cond.shape)} vs {tuple(uncond.shape)}"
            )
        return torch.cat([cond, uncond], dim=0)
    if isinstance(cond, dict) and isinstance(uncond, dict):
        if cond.keys() != uncond.keys():
            raise ValueError(f"CFG: conditional and null `{key}` have different keys")
        return {k: concat_conditions(cond[k], uncond[k], f"{key}.{k}") for k in cond}
    if cond is uncond or cond == uncond:
        return cond
    raise ValueError(f"CFG: cannot batch `{key}`: {type(cond).__name__} vs {type(uncond).__name__}")


class ClassifierFreeGuidance(nn.Module):
    """Guided velocity ``u_null + scale * (u_cond - u_null)`` as a model for any solver.

    Args:
        model: the velocity network, ``model(x, t, **conditions)``.
        scale: the guidance weight ``w``.
        null_condition: maps the conditional keyword arguments to the unconditional ones
            (a modality adapter's ``null_condition``); by default every key given in
            ``null_kwargs`` is replaced.
        null_kwargs: fixed unconditional values, e.g. ``{"class_labels": null_ids}``.
        interval: ``(t_start, t_end)``; guidance is applied only for ``t_start <= t <= t_end``
            and the conditional velocity is used elsewhere (guidance interval,
            Kynkaanniemi et al., 2024).
    """

    def __init__(
        self,
        model: Callable[..., Tensor],
        scale: float,
        null_condition: NullCondition | None = None,
        null_kwargs: dict[str, Any] | None = None,
        interval: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if null_condition is None and not null_kwargs:
            raise ValueError("ClassifierFreeGuidance needs `null_condition` or `null_kwargs`")
        if interval is not None and not 0.0 <= interval[0] <= interval[1] <= 1.0:
            raise ValueError(f"CFG `interval` must satisfy 0 <= start <= end <= 1, got {interval}")
        self.model = model
        self.scale = scale
        self.null_condition = null_condition
        self.null_kwargs = dict(null_kwargs or {})
        self.interval = interval

    def _null(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.null_condition is not None:
            return self.null_condition(kwargs)
        return {**kwargs, **self.null_kwargs}

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        uncond_kwargs = self._null(kwargs)
        # A key the null condition leaves out (a mixture to separate, a mask) stays as given.
        both = {k: concat_conditions(v, uncond_kwargs.get(k, v), k) for k, v in kwargs.items()}
        u_cond, u_null = self.model(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
        guided = u_null + self.scale * (u_cond - u_null)
        if self.interval is None:
            return guided
        inside = (t >= self.interval[0]) & (t <= self.interval[1])
        return torch.where(inside.view(-1, *([1] * (x.ndim - 1))), guided, u_cond)


def _constant_weight(t: Tensor) -> Tensor:
    return torch.ones_like(t)


def _linear_decay_weight(t: Tensor) -> Tensor:
    return 1 - t


STEP_SCHEDULES: dict[str, StepSchedule] = {
    "constant": _constant_weight,
    "linear_decay": _linear_decay_weight,
}


def _step_schedule(schedule: str | StepSchedule) -> StepSchedule:
    if callable(schedule):
        return schedule
    if schedule not in STEP_SCHEDULES:
        raise ValueError(
            f"unknown `step_schedule` {schedule!r}; known: {', '.join(STEP_SCHEDULES)} "
            "or a function of t"
        )
    return STEP_SCHEDULES[schedule]


def _check_loss_guidance(step_size: float, inner_steps: int, guided_fraction: float) -> None:
    is_number = isinstance(step_size, (int, float)) and not isinstance(step_size, bool)
    if not (is_number and math.isfinite(step_size) and step_size >= 0):
        raise ValueError(f"`step_size` must be a finite number >= 0, got {step_size!r}")
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
        raise ValueError(f"`inner_steps` must be a positive integer, got {inner_steps!r}")
    if not 0.0 <= guided_fraction <= 1.0:
        raise ValueError(f"`guided_fraction` must lie in [0, 1], got {guided_fraction}")


def _per_sample_loss(loss: Tensor, batch: int) -> Tensor:
    if loss.ndim == 0 or loss.shape == (batch,):
        return loss
    raise ValueError(
        f"`loss_fn` must return one loss per sample (shape [{batch}]) or a scalar, "
        f"got shape {tuple(loss.shape)}"
    )


def _steer(
    x: Tensor, u: Tensor, t: Tensor, loss_fn: LossFn, step: Tensor, inner_steps: int
) -> tuple[Tensor, Tensor]:
    """``inner_steps`` descents ``x <- x - step * grad L(x + (1 - t) u)`` with ``u`` fixed."""
    for _ in range(inner_steps):
        with torch.enable_grad():
            data_prediction = (x + (1 - t) * u).detach().requires_grad_(True)
            loss = _per_sample_loss(loss_fn(data_prediction), x.shape[0])
            (gradient,) = torch.autograd.grad(loss.sum(), data_prediction)
        x = x - step * gradient
    return x, loss.detach()


def sample_loss_guided(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None = None,
    *,
    loss_fn: LossFn,
    step_size: float,
    inner_steps: int = 1,
    guided_fraction: float = 1.0,
    step_schedule: str | StepSchedule = "constant",
    **model_kwargs: Any,
) -> Tensor:
    """Euler sampling steered by a differentiable loss on the predicted data (FlowChef).

    Each step ``t_i -> t_{i+1}`` (``h_i = t_{i+1} - t_i``) evaluates the model once, without
    autograd, and steers the state before the Euler move::

        u = u(x, t_i)                              (1 NFE, no graph)
        repeat inner_steps times:
            x1_hat = x + (1 - t_i) u               (data prediction, u held fixed)
            x <- x - s_i * grad_{x1_hat} L(x1_hat)
        x <- x + h_i u                             (Euler with the *old* u)

    Holding ``u`` fixed makes ``d x1_hat / d x = I``, so the gradient with respect to ``x``
    is the gradient with respect to ``x1_hat`` ("gradient skipping"): no backpropagation
    through the model, whatever its size. ``s_i = step_size * w(t_i)`` with ``w`` from
    ``step_schedule``. With ``step_size = 0`` this is exactly :func:`sample_euler`.

    Args:
        model: velocity model ``model(x, t, **model_kwargs)``.
        x: the starting point, usually noise at t = 0.
        ts: increasing time grid ``t_0, ..., t_N``.
        loss_fn: ``L(x1_hat)``, one loss per sample (shape ``[B]``, so that a sample's step
            does not depend on the batch size) or a scalar; e.g. ``||A x1_hat - y||^2`` for an
            inverse problem, or a classifier's negative log-probability.
        step_size: ``s``, the gradient step (FlowChef's ``gradient_scale`` / learning rate).
        callback: called after each step with the solvers' keys (``step``, ``t``, ``t_next``,
            ``x``, ``velocity``) and ``loss``, the per-sample loss of the last inner step
            (``None`` on unguided steps).
        inner_steps: gradient steps per time step, all with the same ``u`` (FlowChef's Flux
            editing uses 4); the NFE stays one per step.
        guided_fraction: guide the first ``floor(guided_fraction * N + 1/2)`` steps only and
            integrate the rest unguided (FlowChef's ``max_steps``; its pixel-space code leaves
            the last step unguided).
        step_schedule: ``"constant"`` (``w = 1``), ``"linear_decay"`` (``w = 1 - t``: full
            strength at noise, none at data) or a function ``w(t)`` of the grid time.
    """
    check_grid(ts)
    _check_loss_guidance(step_size, inner_steps, guided_fraction)
    weight = _step_schedule(step_schedule)
    guided_steps = math.floor(guided_fraction * (len(ts) - 1) + 0.5)
    for i in range(len(ts) - 1):
        with torch.no_grad():
            u = model(x, batched_time(ts[i], x), **model_kwargs)
        loss = None
        if i < guided_steps:
            t = ts[i].to(x.dtype)
            x, loss = _steer(x, u, t, loss_fn, step_size * weight(t), inner_steps)
        x = x + (ts[i + 1] - ts[i]) * u
        if callback is not None:
            callback(
                {"step": i, "t": ts[i], "t_next": ts[i + 1], "x": x, "velocity": u, "loss": loss}
            )
    return x


register_sampler(
    "loss_guided",
    evals_per_step=1,
    order=1,
    kind="guidance",
    description="Euler steered by a differentiable loss on the predicted data (FlowChef; "
    "options loss_fn, step_size)",
)(sample_loss_guided)
