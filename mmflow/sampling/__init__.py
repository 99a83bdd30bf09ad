"""Sampling: one entry point over a registry of methods, and the wrappers that change a model.

>>> result = sample(model, torch.randn(8, 2), method="heun", nfe=16)
>>> result.samples, result.nfe

Every method is reached through :func:`sample` with the same arguments and returns a
:class:`SampleResult` (``mmflow info`` lists the methods, their kinds and NFE rules).
Importing this package registers them all. Modules: ``solvers`` (Euler, Heun, midpoint, RK4),
``multistep`` (DPM-Solver++, UniPC), ``sde`` (Euler-Maruyama, linear -> VP), ``adaptive``
(torchdiffeq), ``guidance`` (CFG, loss guidance), ``inverse`` (linear inverse problems),
``search`` (best-of-N, SMC, rollover budget forcing), ``diffusers_schedulers`` (diffusers'
schedulers on an mmflow velocity model, for comparisons; needs diffusers), ``boss`` and
``grid_search`` (time grids fitted to a model), ``inversion`` (data -> noise), ``likelihood``
(change of variables), ``analytic`` (closed-form fields for tests).
"""

from mmflow.sampling import adaptive, diffusers_schedulers, multistep, solvers  # noqa: F401
from mmflow.sampling._shared import NFECounter, model_fingerprint
from mmflow.sampling.analytic import GaussianLinearFlow, GaussianMixtureFlow, RiccatiFlow
from mmflow.sampling.boss import boss_grid
from mmflow.sampling.diffusers_schedulers import DIFFUSERS_SCHEDULERS
from mmflow.sampling.flowturbo import sample_flowturbo  # noqa: F401
from mmflow.sampling.grid_search import optimized_grid
from mmflow.sampling.guidance import ClassifierFreeGuidance, concat_conditions
from mmflow.sampling.inverse import Denoising, LinearOperator
from mmflow.sampling.inversion import InversionResult, invert
from mmflow.sampling.likelihood import LikelihoodResult, log_likelihood
from mmflow.sampling.registry import (
    KINDS,
    SAMPLERS,
    SampleResult,
    SamplerSpec,
    get_sampler,
    plan_grid,
    register_method,
    register_sampler,
    sample,
)
from mmflow.sampling.sde import linear_to_vp, noise_to_target_start, target_to_source
from mmflow.sampling.search import ClassLogProbability, rbf_time_grid

__all__ = [
    "DIFFUSERS_SCHEDULERS",
    "KINDS",
    "SAMPLERS",
    "ClassLogProbability",
    "ClassifierFreeGuidance",
    "Denoising",
    "GaussianLinearFlow",
    "GaussianMixtureFlow",
    "InversionResult",
    "LikelihoodResult",
    "LinearOperator",
    "NFECounter",
    "RiccatiFlow",
    "SampleResult",
    "SamplerSpec",
    "boss_grid",
    "concat_conditions",
    "get_sampler",
    "invert",
    "linear_to_vp",
    "log_likelihood",
    "model_fingerprint",
    "noise_to_target_start",
    "optimized_grid",
    "plan_grid",
    "rbf_time_grid",
    "register_method",
    "register_sampler",
    "sample",
    "target_to_source",
]
