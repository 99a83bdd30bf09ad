"""Sampling: stateless solvers over explicit time grids, model wrappers and one entry point.

>>> result = sample(model, torch.randn(8, 2), method="heun", nfe=16)
>>> result.samples, result.nfe
"""

from mmflow.sampling.guidance import ClassifierFreeGuidance, concat_conditions
from mmflow.sampling.registry import (
    SAMPLERS,
    NFECounter,
    SampleResult,
    SamplerSpec,
    get_sampler,
    register_sampler,
    sample,
)
from mmflow.sampling.solvers import sample_euler, sample_heun, sample_midpoint, sample_rk4

__all__ = [
    "SAMPLERS",
    "ClassifierFreeGuidance",
    "NFECounter",
    "SampleResult",
    "SamplerSpec",
    "concat_conditions",
    "get_sampler",
    "register_sampler",
    "sample",
    "sample_euler",
    "sample_heun",
    "sample_midpoint",
    "sample_rk4",
]
