"""Wrappers that change the velocity model a solver integrates.

Classifier-free guidance (Ho & Salimans, 2022), written for velocities:

    u_w(x, t) = u(x, t | null) + w * (u(x, t | c) - u(x, t | null))

``w = 1`` is the conditional model, ``w = 0`` the unconditional one. The conditional and the
unconditional branch run as one forward pass on a doubled batch, so one call of the guided
model is one solver evaluation (one NFE as :func:`mmflow.sampling.sample` counts it) and two
network evaluations per sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

NullCondition = Callable[[dict[str, Any]], dict[str, Any]]


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
