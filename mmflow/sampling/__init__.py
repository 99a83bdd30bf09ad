"""Sampling: stateless solvers over explicit time grids, model wrappers and one entry point.

>>> result = sample(model, torch.randn(8, 2), method="heun", nfe=16)
>>> result.samples, result.nfe

Importing this package registers every named sampler (ODE solvers and Euler–Maruyama).
Modules: ``solvers`` (Euler, Heun, midpoint, RK4), ``multistep`` (DPM-Solver++, UniPC),
``sde`` (Euler–Maruyama, linear -> VP), ``adaptive`` (torchdiffeq), ``boss`` (Bellman-optimal
Euler grids), ``grid_search`` (grids optimised for a given sampler), ``guidance`` (CFG, loss
guidance), ``inverse`` (linear inverse problems), ``inversion`` (data -> noise),
``likelihood`` (change of variables), ``search`` (best-of-N, SMC, rollover budget forcing),
``diffusers_schedulers`` (diffusers' schedulers on an mmflow velocity model, for comparisons;
needs diffusers), ``analytic`` (closed-form fields for tests).
"""

from mmflow.sampling.adaptive import sample_adaptive
from mmflow.sampling.analytic import GaussianLinearFlow, GaussianMixtureFlow, RiccatiFlow
from mmflow.sampling.boss import boss_grid
from mmflow.sampling.diffusers_schedulers import DIFFUSERS_SCHEDULERS, sample_diffusers
from mmflow.sampling.grid_search import optimized_grid
from mmflow.sampling.guidance import (
    ClassifierFreeGuidance,
    concat_conditions,
    sample_loss_guided,
)
from mmflow.sampling.inverse import (
    Denoising,
    GaussianDeblur,
    Inpainting,
    LinearOperator,
    SuperResolution,
    solve_inverse_problem,
)
from mmflow.sampling.inversion import InversionResult, invert
from mmflow.sampling.likelihood import LikelihoodResult, log_likelihood
from mmflow.sampling.multistep import (
    sample_dpmpp_multistep,
    sample_dpmpp_singlestep,
    sample_unipc,
)
from mmflow.sampling.registry import (
    SAMPLERS,
    NFECounter,
    SampleResult,
    SamplerSpec,
    get_sampler,
    plan_grid,
    register_sampler,
    sample,
)
from mmflow.sampling.sde import linear_to_vp, sample_euler_maruyama
from mmflow.sampling.search import (
    ClassLogProbability,
    RBFResult,
    SearchResult,
    SMCResult,
    best_of_n,
    rbf_time_grid,
    rollover_budget_forcing,
    smc,
)
from mmflow.sampling.solvers import sample_euler, sample_heun, sample_midpoint, sample_rk4

__all__ = [
    "DIFFUSERS_SCHEDULERS",
    "SAMPLERS",
    "ClassLogProbability",
    "ClassifierFreeGuidance",
    "Denoising",
    "GaussianDeblur",
    "GaussianLinearFlow",
    "GaussianMixtureFlow",
    "Inpainting",
    "InversionResult",
    "LikelihoodResult",
    "LinearOperator",
    "NFECounter",
    "RBFResult",
    "RiccatiFlow",
    "SMCResult",
    "SampleResult",
    "SamplerSpec",
    "SearchResult",
    "SuperResolution",
    "best_of_n",
    "boss_grid",
    "concat_conditions",
    "get_sampler",
    "invert",
    "linear_to_vp",
    "log_likelihood",
    "optimized_grid",
    "plan_grid",
    "rbf_time_grid",
    "register_sampler",
    "rollover_budget_forcing",
    "sample",
    "sample_adaptive",
    "sample_diffusers",
    "sample_dpmpp_multistep",
    "sample_dpmpp_singlestep",
    "sample_euler",
    "sample_euler_maruyama",
    "sample_heun",
    "sample_loss_guided",
    "sample_midpoint",
    "sample_rk4",
    "sample_unipc",
    "smc",
    "solve_inverse_problem",
]
