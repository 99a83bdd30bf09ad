"""Generation from a velocity network and a modality adapter, shared by training and the hub."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmflow.modality import Condition, ModalityAdapter
from mmflow.sampling import ClassifierFreeGuidance, SampleResult, get_sampler, sample

SCORE_BASED_KINDS = ("sde", "search")


@torch.no_grad()
def generate(
    network: nn.Module,
    adapter: ModalityAdapter,
    cond: Condition,
    x0: Tensor,
    sampler: str = "heun",
    nfe: int = 16,
    cfg_scale: float = 1.0,
    cfg_interval: tuple[float, float] | None = None,
    **sampler_kwargs: Any,
) -> SampleResult:
    """Integrate ``network``'s velocity from ``x0`` under ``cond``, guided when ``cfg_scale != 1``.

    Guidance uses the adapter's ``null_condition`` (see :class:`ClassifierFreeGuidance`), for
    ``cfg_interval[0] <= t <= cfg_interval[1]`` only when an interval is given (the conditional
    velocity elsewhere); an unconditional adapter ignores ``cfg_scale``. A method that chooses
    its own steps (an adaptive solver) ignores ``nfe``. The result's ``nfe`` is counted.
    Methods that turn the velocity into a score (stochastic samplers, search) need the
    standard Gaussian source.
    """
    spec = get_sampler(sampler)
    if spec.kind in SCORE_BASED_KINDS and not adapter.source.standard_gaussian:
        raise ValueError(
            f"sampler `{sampler}` turns the velocity into a score, which assumes x0 ~ N(0, I); "
            f"this flow starts from {adapter.source!r}: use a deterministic sampler"
        )
    model: Any = network
    if cfg_scale != 1.0 and adapter.conditioned():
        model = ClassifierFreeGuidance(
            network, cfg_scale, null_condition=adapter.null_condition, interval=cfg_interval
        )
    budget = nfe if spec.takes_nfe else None
    return sample(model, x0, method=sampler, nfe=budget, **sampler_kwargs, **cond)


def checked_interval(interval: Any) -> tuple[float, float] | None:
    """A guidance interval ``(t_start, t_end)`` with ``0 <= t_start <= t_end <= 1``, or ``None``."""
    if interval is None:
        return None
    start, end = (float(t) for t in interval)
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(
            f"`cfg_interval` must satisfy 0 <= start <= end <= 1, got {list(interval)}"
        )
    return start, end


@dataclass
class GenerationDefaults:
    """Sampler settings stored with a pretrained model; ``solver_options`` (the sampler's own
    settings, ``sample(..., solver_options=...)``) go with ``sampler`` only."""

    sampler: str = "heun"
    nfe: int = 16
    cfg_scale: float = 1.0
    solver_options: dict[str, Any] | None = None
    cfg_interval: tuple[float, float] | None = None

    @classmethod
    def from_hparams(cls, hparams: Any) -> GenerationDefaults:
        """The validation settings of a ``FlowMatching`` module's hyperparameters."""
        return cls(
            hparams.get("sampler", "heun"),
            hparams.get("nfe", 16),
            hparams.get("cfg_scale", 1.0),
            hparams.get("solver_options"),
            hparams.get("cfg_interval"),
        )

    def __post_init__(self) -> None:
        self.cfg_interval = checked_interval(self.cfg_interval)

    def options_for(self, sampler: str | None) -> dict[str, Any] | None:
        """``solver_options`` when generating with ``sampler`` (``None``: the default one)."""
        return self.solver_options if sampler in (None, self.sampler) else None

    def generate(
        self,
        network: nn.Module,
        adapter: ModalityAdapter,
        cond: Condition,
        x0: Tensor,
        sampler: str | None = None,
        nfe: int | None = None,
        cfg_scale: float | None = None,
    ) -> SampleResult:
        """:func:`generate` with these defaults for what is not given."""
        return generate(
            network,
            adapter,
            cond,
            x0,
            sampler=sampler or self.sampler,
            nfe=nfe or self.nfe,
            cfg_scale=self.cfg_scale if cfg_scale is None else cfg_scale,
            cfg_interval=self.cfg_interval,
            solver_options=self.options_for(sampler),
        )
