"""Generation from a velocity network and a modality adapter, shared by training and the hub."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mmflow.modality import Condition, ModalityAdapter
from mmflow.sampling import ClassifierFreeGuidance, SampleResult, get_sampler, sample


@torch.no_grad()
def generate(
    network: nn.Module,
    adapter: ModalityAdapter,
    cond: Condition,
    x0: Tensor,
    sampler: str = "heun",
    nfe: int = 16,
    cfg_scale: float = 1.0,
    **sampler_kwargs: Any,
) -> SampleResult:
    """Integrate ``network``'s velocity from ``x0`` under ``cond``, guided when ``cfg_scale != 1``.

    Guidance uses the adapter's ``null_condition`` (see :class:`ClassifierFreeGuidance`);
    an unconditional adapter ignores ``cfg_scale``. A method that chooses its own steps (an
    adaptive solver) ignores ``nfe``. The result's ``nfe`` is counted.
    """
    model: Any = network
    if cfg_scale != 1.0 and adapter.conditioned():
        model = ClassifierFreeGuidance(network, cfg_scale, null_condition=adapter.null_condition)
    budget = nfe if get_sampler(sampler).takes_nfe else None
    return sample(model, x0, method=sampler, nfe=budget, **sampler_kwargs, **cond)
