"""FlowTurbo (Zhao et al., 2024): Heun, pseudo-corrector and velocity-refiner blocks.

The grid ``t_0 < ... < t_N`` (uniform by default, t = 0 noise, t = 1 data) is split into
``N = N_H + N_P + N_R`` steps taken in that order, with ``h_i = t_{i+1} - t_i`` and a
velocity cache ``c`` handed from each step to the next:

- **Heun** (2 evaluations): ``d = u(x_i, t_i)``, ``x~ = x_i + h_i d``,
  ``d' = u(x~, t_{i+1})``, ``x_{i+1} = x_i + h_i (d + d') / 2``; ``c <- d'``.
- **pseudo-corrector** (1 evaluation): the Heun step with ``d = c``, the previous step's
  velocity at its *predicted* point ``x~``, instead of ``u(x_i, t_i)``; ``c <- d'``. Without a
  Heun step before it, the first one has no cache and evaluates ``d = u(x_i, t_i)``.
- **refiner** (no evaluation of the flow, 2 calls of the light refiner ``r``):
  ``d = c + r(x_i, t_i, c)``, ``x~ = x_i + h_i d``, ``d' = d + r(x~, t_{i+1}, c)``,
  ``x_{i+1} = x_i + h_i (d + d') / 2``; ``c <- d`` (the refined velocity at ``x_i``).

The refiner blocks follow the reference code (``VelocityRefinerBlock`` in FlowTurbo's
``models_assemble.py``): both refiner calls take the velocity ``c`` the step started with, the
second correction is added to ``d`` (not to ``c``), and the step hands ``d``, not ``d'``, on.
``r`` is trained (:class:`mmflow.fewstep.flowturbo.RefinerObjective`) so that
``c + r(x + h c, t + h, c) = u(x + h c, t + h)`` for ``c = u(x, t)``. It is the model itself
called with the cached velocity, ``model(x, t, velocity=c, **kwargs)`` (a
:class:`mmflow.fewstep.flowturbo.TurboFlow`), unless the ``refiner`` option names another.

The cost is counted: ``result.nfe`` is the flow's evaluations, ``2 N_H + N_P`` plus one when
``N_H = 0 < N_P``, and ``result.info["refiner_calls"]`` the refiner's, ``2 N_R``. Steps are
tensor code only (no host reads), so the sampler runs on CUDA without synchronisation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mmflow.sampling._shared import (
    Callback,
    NFECounter,
    VelocityModel,
    batched_time,
    check_increasing,
    report_step,
)
from mmflow.sampling.registry import SampleResult, explicit_grid, register_method
from mmflow.timesteps import make_grid

__all__ = ["flowturbo_evaluations", "sample_flowturbo"]

Refiner = Callable[..., Tensor]


class _CountedRefiner:
    """Calls ``refiner(x, t, velocity, **model_kwargs)`` with ``t`` of shape ``[B]``, counted."""

    def __init__(self, refiner: Refiner) -> None:
        self.refiner = refiner
        self.calls = 0

    def __call__(
        self, x: Tensor, t: Tensor, velocity: Tensor, model_kwargs: dict[str, Any]
    ) -> Tensor:
        self.calls += 1
        return self.refiner(x, batched_time(t, x), velocity, **model_kwargs)


def _model_refiner(
    model: VelocityModel, x: Tensor, t: Tensor, velocity: Tensor, **kwargs: Any
) -> Tensor:
    """The model's own refiner mode, ``model(x, t, velocity=v, **kwargs)``."""
    try:
        return model(x, t, velocity=velocity, **kwargs)
    except TypeError as error:
        if "velocity" not in str(error):
            raise
        raise ValueError(
            "refiner steps need a `refiner` in solver_options, or a model that refines itself "
            f"when called with `velocity=` (mmflow.fewstep.flowturbo.TurboFlow): {error}"
        ) from None


def flowturbo_evaluations(heun_steps: int, corrector_steps: int) -> int:
    """Evaluations of the flow for ``N_H`` Heun and ``N_P`` pseudo-corrector steps:
    ``2 N_H + N_P``, plus one when the first corrector step has no cache (``N_H = 0 < N_P``)."""
    cold_start = 1 if heun_steps == 0 and corrector_steps > 0 else 0
    return 2 * heun_steps + corrector_steps + cold_start


def _check_steps(
    heun_steps: int | None, corrector_steps: int, refiner_steps: int, nfe: int | None
) -> tuple[int, int, int]:
    """Validate the step counts (``heun_steps=None`` spends the rest of ``nfe`` on Heun)."""
    for name, value in (("corrector_steps", corrector_steps), ("refiner_steps", refiner_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}")
    if heun_steps is None:
        heun_steps = _heun_steps_from_budget(nfe, corrector_steps)
    if isinstance(heun_steps, bool) or not isinstance(heun_steps, int) or heun_steps < 0:
        raise ValueError(f"`heun_steps` must be a non-negative integer, got {heun_steps!r}")
    if heun_steps + corrector_steps + refiner_steps == 0:
        raise ValueError("`heun_steps`, `corrector_steps` and `refiner_steps` are all 0")
    if refiner_steps and heun_steps + corrector_steps == 0:
        raise ValueError(
            "`refiner_steps` need a Heun or corrector step before them: the refiner corrects "
            "the velocity of the step before"
        )
    spent = flowturbo_evaluations(heun_steps, corrector_steps)
    if nfe is not None and nfe != spent:
        raise ValueError(
            f"`nfe`={nfe} disagrees with heun_steps={heun_steps}, "
            f"corrector_steps={corrector_steps}: they spend {spent} evaluations; pass nfe=None"
        )
    return heun_steps, corrector_steps, refiner_steps


def _heun_steps_from_budget(nfe: int | None, corrector_steps: int) -> int:
    """``N_H = (nfe - N_P) / 2``, which must be a positive integer."""
    if nfe is None:
        raise ValueError("give `heun_steps` in solver_options, or an `nfe` to spend on Heun steps")
    rest = nfe - corrector_steps
    if rest < 2 or rest % 2:
        raise ValueError(
            f"`heun_steps` not given: `nfe`={nfe} minus corrector_steps={corrector_steps} "
            "must be a positive even number of Heun evaluations"
        )
    return rest // 2


def _time_grid(
    steps: int,
    grid: str | Sequence[float] | Tensor | None,
    grid_kwargs: dict[str, Any],
    like: Tensor,
) -> Tensor:
    if grid is None or isinstance(grid, str):
        ts = make_grid(grid or "uniform", steps, dtype=torch.float64, **grid_kwargs)
    else:
        ts = explicit_grid(grid)
        if len(ts) != steps + 1:
            raise ValueError(f"`grid` has {len(ts)} times; {steps} steps need {steps + 1}")
    check_increasing(ts)
    # The grid is kept in at least float32 even for half-precision samples.
    return ts.to(device=like.device, dtype=torch.promote_types(like.dtype, torch.float32))


def _trapezoid(x: Tensor, h: Tensor, d: Tensor, d_next: Tensor) -> Tensor:
    return x + 0.5 * h * (d + d_next)


def sample_flowturbo(
    model: VelocityModel,
    x0: Tensor,
    nfe: int | None,
    grid: str | Sequence[float] | Tensor | None,
    grid_kwargs: dict[str, Any],
    callback: Callback | None,
    *,
    heun_steps: int | None = None,
    corrector_steps: int = 0,
    refiner_steps: int = 0,
    refiner: Refiner | None = None,
    **model_kwargs: Any,
) -> SampleResult:
    """FlowTurbo's Heun -> pseudo-corrector -> refiner schedule (module docstring).

    Args:
        heun_steps: ``N_H``, Heun steps first; ``None`` spends what ``nfe`` leaves after the
            corrector steps on Heun steps (``N_H = (nfe - N_P) / 2``).
        corrector_steps: ``N_P``, pseudo-corrector steps next.
        refiner_steps: ``N_R``, refiner steps last; they need a Heun or corrector step
            before them.
        refiner: the velocity refiner, ``refiner(x, t, velocity, **model_kwargs)`` with ``t``
            of shape ``[B]``, returning the correction added to ``velocity``
            (:class:`mmflow.fewstep.flowturbo.VelocityRefiner`); by default the model's own,
            ``model(x, t, velocity=velocity, **model_kwargs)``.

    ``nfe`` is ``None`` or the flow evaluations the steps spend (:func:`flowturbo_evaluations`);
    ``grid`` is a grid name (uniform by default, as in FlowTurbo) or ``N_H + N_P + N_R + 1``
    explicit increasing times.

    Returns:
        A :class:`SampleResult` with the counted flow evaluations as ``nfe`` and the counted
        refiner calls as ``info["refiner_calls"]``.
    """
    heun_steps, corrector_steps, refiner_steps = _check_steps(
        heun_steps, corrector_steps, refiner_steps, nfe
    )
    if refiner is None:
        refiner = functools.partial(_model_refiner, model)
    blocks = ["heun"] * heun_steps + ["corrector"] * corrector_steps + ["refiner"] * refiner_steps
    ts = _time_grid(len(blocks), grid, grid_kwargs, x0)
    counted, counted_refiner = NFECounter(model), _CountedRefiner(refiner)
    x, cache = x0, None
    for i, block in enumerate(blocks):
        t, t_next, h = ts[i], ts[i + 1], ts[i + 1] - ts[i]
        if block == "refiner":
            d = cache + counted_refiner(x, t, cache, model_kwargs)
            d_next = d + counted_refiner(x + h * d, t_next, cache, model_kwargs)
            cache = d
        else:
            d = cache if block == "corrector" and cache is not None else None
            if d is None:
                d = counted(x, batched_time(t, x), **model_kwargs)
            d_next = counted(x + h * d, batched_time(t_next, x), **model_kwargs)
            cache = d_next
        x = _trapezoid(x, h, d, d_next)
        report_step(callback, i, ts, x, d, block=block)
    info = {"refiner_calls": counted_refiner.calls, "blocks": blocks}
    return SampleResult(samples=x, nfe=counted.count, grid=ts, info=info)


register_method(
    "flowturbo",
    sample_flowturbo,
    kind="fewstep",
    description="FlowTurbo: Heun, pseudo-corrector (cached velocity) and light refiner steps",
    nfe_rule=(
        "2 per Heun step + 1 per corrector step (+1 without a Heun step before them); refiner "
        "steps call only the refiner (info['refiner_calls']); nfe=None or that count"
    ),
)
