"""Inference-time search with a reward: best-of-N, SMC and rollover budget forcing (RBF).

Every method spends a fixed budget of model evaluations to find samples of high reward
``r(x1)``; each is a method of :func:`mmflow.sampling.sample` whose ``nfe`` is the budget per
prompt and whose ``solver_options`` hold the reward::

    result = sample(model, x0, "rbf", nfe=320, grid=rbf_time_grid(10),
                    solver_options={"reward": ClassLogProbability(classifier)}, class_labels=y)
    result.samples, result.nfe, result.info["rewards"]

The grid is explicit times, a grid name with ``steps`` (default 10) in the options, or the
method's default (uniform; Kim et al.'s :func:`rbf_time_grid` for RBF). ``result.info`` holds
``rewards`` (``[B]``, of the chosen samples), ``budget``, ``trajectory_nfe`` (``[S]``) and
``trajectory_rewards`` (``[S, B]``: the highest reward scored up to each record; for best-of-N
that of the first ``n`` samples, as if drawn one after another); RBF adds ``proposals``
(``[B, N_steps - 1]``, the evaluations spent on each searched transition) and SMC its final
weighted population: ``particles`` (``[B, K, *event]``), normalised ``log_weights``
(``[B, K]``: ``sum_k w_k f(x_k)`` estimates ``E[f]`` under ``p(x1) exp(lambda r(x1)) / Z``)
and ``resampled`` (``[N_steps - 1, B]``). Time runs from noise (t = 0) to data (t = 1) and candidates are scored on the
data estimate of the path (Tweedie's estimate for the linear path):

    x1_hat(x, t) = path.velocity_to_data(u(x, t), x, t)      (= x + (1 - t) u for the linear path)

**Rewards** are plain callables ``reward(x1_hat, **kwargs) -> Tensor [B]``, one value per
sample, higher is better; :class:`ClassLogProbability` turns any classifier into
``r = log p(y | x1_hat)``. ``kwargs`` are the model's keyword arguments (the condition) unless
``reward_kwargs`` is given, which lets the condition of the model and the reward differ
(generate unconditionally, reward a class).

**Budget.** ``budget`` (``nfe``) is the number of model evaluations allowed *per prompt*: a call of the
model on ``P`` particles of each of ``B`` prompts costs ``P``. Every result reports ``nfe``,
counted by wrapping the model (never inferred), and ``nfe <= budget``. Reward evaluations are
not model evaluations and are not counted.

Methods (Kim et al., "Inference-Time Scaling for Flow Models via Stochastic Generation and
Rollover Budget Forcing", 2025; reference code KAIST-Visual-AI-Group/Flow-Inference-Time-Scaling,
``rbf/rbf.py``):

- :func:`best_of_n` — ``N = floor(budget / c)`` independent samples from the initial noise
  with any registered solver costing ``c`` evaluations per sample (an ODE, or Euler-Maruyama);
  keep the one of highest reward.
- :func:`smc` — sequential Monte Carlo over Euler-Maruyama particles (Feynman-Kac steering,
  Singhal et al. 2025), ``K = floor(budget / N_steps)`` particles per prompt.
- :func:`rollover_budget_forcing` — a greedy search over one SDE chain per prompt that spends
  its evaluations one proposal at a time and rolls unused per-step quota forward.

The SDE is the one of :mod:`mmflow.sampling.sde` (same marginals as the flow's ODE):

    dX = [u + eps(t) s] dt + sqrt(2 eps(t)) dW,      s = path.velocity_to_score(u, x, t),

stepped by Euler-Maruyama with a deterministic last step, the DDIM step
``x_N = alpha(t_N) x1_hat + sigma(t_N) x0_hat`` (the Euler step on the linear path, the data
estimate ``x1_hat`` on any path ending at ``t_N = 1``). The default diffusion is Kim et al.'s
``g = 3 (1 - t)^2``, i.e. ``diffusion="square", diffusion_scale=3``.

**Kim et al.'s headline setting (VP-SDE + RBF)** runs on the re-timed model of
:func:`mmflow.sampling.sde.linear_to_vp` over their grid :func:`rbf_time_grid`; SMC and RBF
take the path of a :class:`~mmflow.interpolants.ConvertedVelocity` (``converted.target``) by
default, so the score, diffusion and data estimates are the VP path's::

    converted = linear_to_vp(model)
    x_bar = noise_to_target_start(converted, x0)
    result = sample(converted, x_bar, "rbf", nfe=320, solver_options={"reward": reward})

The chosen samples are data (``s_1 = 1`` at the end of the VP grid).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmflow.interpolants import AffinePath, ConvertedVelocity, LinearPath
from mmflow.sampling._shared import Callback, VelocityModel, batched_time, check_positive_int
from mmflow.sampling.registry import SampleResult, get_sampler, register_method, sample
from mmflow.sampling.sde import euler_maruyama_step, resolve_path, step_diffusions
from mmflow.timesteps import custom_grid, make_grid

Reward = Callable[..., Tensor]
Diffusion = str | Callable[[Tensor], Tensor]
Resampler = Callable[[Tensor, "torch.Generator | None"], Tensor]

KIM_DIFFUSION = "square"
KIM_DIFFUSION_SCALE = 3.0
KIM_INITIAL_PARTICLES = 25


GridSpec = str | Sequence[float] | Tensor | None
DEFAULT_STEPS = 10


class ClassLogProbability:
    """Reward ``r(x1_hat) = log p(y | x1_hat) = log_softmax(classifier(decode(x1_hat)))_y``.

    The label ``y`` of each sample is the keyword argument ``label_key`` (``[B]`` class ids, or
    one id for all); ``decode`` maps the flow's data space to the classifier's input (an
    adapter's ``decode``: pixels ``[-1, 1] -> [0, 1]``). Any ``nn.Module`` or function returning
    logits ``[B, C]`` works; the input is cast to the classifier's parameter dtype.
    """

    def __init__(
        self,
        classifier: nn.Module | Callable[[Tensor], Tensor],
        decode: Callable[[Tensor], Tensor] | None = None,
        label_key: str = "class_labels",
    ) -> None:
        self.classifier = classifier
        self.decode = decode
        self.label_key = label_key

    def _input(self, x1_hat: Tensor) -> Tensor:
        inputs = self.decode(x1_hat) if self.decode is not None else x1_hat
        parameter = (
            next(self.classifier.parameters(), None)
            if isinstance(self.classifier, nn.Module)
            else None
        )
        return inputs.to(parameter.dtype) if parameter is not None else inputs

    def __call__(self, x1_hat: Tensor, **kwargs: Any) -> Tensor:
        """``[B]`` log-probabilities of the labels in ``kwargs[label_key]``."""
        if self.label_key not in kwargs:
            raise ValueError(
                f"ClassLogProbability needs the labels as keyword `{self.label_key}`; "
                f"got {', '.join(sorted(kwargs)) or 'none'}"
            )
        batch = x1_hat.shape[0]
        labels = torch.as_tensor(kwargs[self.label_key], device=x1_hat.device).long()
        labels = labels.expand(batch) if labels.ndim == 0 else labels
        logits = self.classifier(self._input(x1_hat))
        if logits.ndim != 2 or logits.shape[0] != batch or labels.shape != (batch,):
            raise ValueError(
                f"ClassLogProbability: logits must be [{batch}, C] and `{self.label_key}` "
                f"[{batch}], got {tuple(logits.shape)} and {tuple(labels.shape)}"
            )
        precise = logits.to(torch.promote_types(logits.dtype, torch.float32))
        log_probabilities = F.log_softmax(precise, dim=-1)
        return log_probabilities.gather(1, labels[:, None]).squeeze(1).to(x1_hat.dtype)


class _EvaluationCounter:
    """Wraps a model and counts evaluations per prompt: a call on ``P * B`` rows costs ``P``."""

    def __init__(self, model: VelocityModel, prompts: int) -> None:
        self.model = model
        self.prompts = prompts
        self.rows = 0

    def __call__(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        self.rows += x.shape[0]
        return self.model(x, t, **kwargs)

    @property
    def nfe(self) -> int:
        return self.rows // self.prompts


# -- resampling ------------------------------------------------------------------------------


def _normalised(weights: Tensor) -> Tensor:
    return weights / weights.sum(dim=-1, keepdim=True)


def _systematic(weights: Tensor, generator: torch.Generator | None) -> Tensor:
    batch, particles = weights.shape
    cumulative = weights.cumsum(dim=-1)
    cumulative = (cumulative / cumulative[:, -1:]).contiguous()
    offset = torch.rand((batch, 1), generator=generator, dtype=weights.dtype, device=weights.device)
    positions = offset + torch.arange(particles, dtype=weights.dtype, device=weights.device)
    positions = (positions / particles).contiguous()
    ancestors = torch.searchsorted(cumulative, positions, right=True)
    return ancestors.clamp_(max=particles - 1)


def _multinomial(weights: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.multinomial(
        _normalised(weights), weights.shape[-1], replacement=True, generator=generator
    )


def _check_weights(weights: Tensor) -> None:
    if weights.ndim != 2 or weights.shape[-1] < 1:
        raise ValueError(f"`weights` must have shape [B, K], got {tuple(weights.shape)}")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError("`weights` must be finite and non-negative")
    if not bool((weights.sum(dim=-1) > 0).all()):
        raise ValueError("every row of `weights` needs a positive sum")


def systematic_resample(weights: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Ancestor indices ``[B, K]`` by systematic resampling of each row of ``weights`` ``[B, K]``.

    With ``C_j = sum_{i <= j} w_i / sum_i w_i`` and one uniform ``U`` per row, offspring ``k``
    takes the ancestor ``j`` with ``C_{j-1} <= (U + k) / K < C_j``. Particle ``j`` is copied
    ``floor(K w_j)`` or ``ceil(K w_j)`` times (``K w_j`` in expectation): lower variance than
    multinomial resampling, and zero-weight particles are never chosen.
    """
    _check_weights(weights)
    return _systematic(weights, generator)


def multinomial_resample(weights: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Ancestor indices ``[B, K]``: ``K`` independent draws from each row's ``w / sum w``."""
    _check_weights(weights)
    return _multinomial(weights, generator)


RESAMPLERS: dict[str, Resampler] = {"systematic": _systematic, "multinomial": _multinomial}


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """``ESS = 1 / sum_k w_k^2`` per row of log-weights ``[B, K]`` (``w`` normalised), in [1, K]."""
    return 1.0 / torch.softmax(log_weights, dim=-1).pow(2).sum(dim=-1)


# -- shared plumbing -------------------------------------------------------------------------


def _check_budget(budget: int, cost: int, what: str) -> int:
    """``floor(budget / cost)``: how many times ``cost`` evaluations fit in ``budget``."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < cost:
        raise ValueError(
            f"`nfe` (the budget per prompt) must be an integer >= {cost} ({what}), got {budget!r}"
        )
    return budget // cost


def _search_grid(
    method: str,
    grid: GridSpec,
    grid_kwargs: dict[str, Any],
    steps: int | None,
    like: Tensor,
    default: Callable[[int], Tensor] | None = None,
) -> Tensor:
    """The search grid: explicit times, a named grid of ``steps`` (default 10) steps, or the
    method's ``default(steps)`` grid; validated, increasing, in at least float32 on ``like``'s
    device."""
    if grid is not None and not isinstance(grid, str):
        if steps is not None or grid_kwargs:
            raise ValueError(f"`{method}`: give `steps` and `grid_kwargs` with a grid name only")
        try:
            ts = custom_grid(
                grid if isinstance(grid, Tensor) else torch.tensor(grid, dtype=torch.float64)
            )
        except ValueError as error:
            raise ValueError(f"`grid`: {error}") from None
    else:
        steps = DEFAULT_STEPS if steps is None else steps
        check_positive_int("steps", steps)
        if grid is None and default is not None:
            ts = default(steps)
        else:
            ts = make_grid(grid or "uniform", steps, dtype=torch.float64, **grid_kwargs)
    return ts.to(device=like.device, dtype=torch.promote_types(like.dtype, torch.float32))


def _check_call(method: str, nfe: int | None, callback: Callback | None, x0: Tensor) -> int:
    """The budget per prompt; a search takes no callback and needs ``[B, *event]`` prompts."""
    if nfe is None:
        raise ValueError(f"give `nfe`, the model evaluations `{method}` may spend per prompt")
    if callback is not None:
        raise ValueError(f"`{method}` takes no `callback`: its result's `info` has its trace")
    _check_prompts(x0)
    return nfe


def _check_prompts(x0: Tensor) -> None:
    if x0.ndim < 2:
        raise ValueError(
            f"`x0` must be [B, *event] (one initial noise per prompt), got {tuple(x0.shape)}"
        )


def _per_particle(
    kwargs: dict[str, Any], prompts: int, particles: int, name: str
) -> dict[str, Any]:
    """Repeat each per-prompt tensor ``particles`` times along dim 0 (prompt-major rows)."""
    expanded = {}
    for key, value in kwargs.items():
        if isinstance(value, Tensor) and value.ndim > 0:
            if value.shape[0] != prompts:
                raise ValueError(
                    f"{name} `{key}` has {value.shape[0]} rows; expected one per prompt "
                    f"({prompts}, the batch of `x0`)"
                )
            value = value.repeat_interleave(particles, dim=0)
        expanded[key] = value
    return expanded


def _particle_noise(x0: Tensor, particles: int, generator: torch.Generator | None) -> Tensor:
    """``[B * P, *event]`` initial noises: ``x0`` is particle 0 of each prompt, the rest drawn."""
    extra = torch.randn(
        (x0.shape[0], particles - 1, *x0.shape[1:]),
        generator=generator,
        dtype=x0.dtype,
        device=x0.device,
    )
    return torch.cat([x0.unsqueeze(1), extra], dim=1).flatten(0, 1)


class _Scorer:
    """Evaluates the reward on ``[B * P]`` rows with the right keyword arguments."""

    def __init__(
        self,
        reward: Reward,
        model_kwargs: dict[str, Any],
        reward_kwargs: dict[str, Any] | None,
        prompts: int,
    ) -> None:
        self.reward = reward
        self.kwargs = model_kwargs if reward_kwargs is None else reward_kwargs
        self.prompts = prompts
        self.name = "model input" if reward_kwargs is None else "reward_kwargs entry"
        self.cache = {1: _per_particle(self.kwargs, prompts, 1, self.name)}

    def __call__(self, x1_hat: Tensor, particles: int) -> Tensor:
        """``[B, P]`` rewards of the rows of ``x1_hat`` (prompt-major)."""
        if particles not in self.cache:
            self.cache[particles] = _per_particle(self.kwargs, self.prompts, particles, self.name)
        values = self.reward(x1_hat, **self.cache[particles])
        rows = self.prompts * particles
        if not isinstance(values, Tensor) or values.shape != (rows,):
            shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(
                f"`reward` must return one value per sample, shape [{rows}], got {shape}"
            )
        return values.to(torch.promote_types(values.dtype, torch.float32)).view(
            self.prompts, particles
        )


def _pick(rows: Tensor, index: Tensor) -> Tensor:
    """Rows ``[B * P, ...]`` (prompt-major) at particle ``index[b]`` of each prompt."""
    prompts = index.shape[0]
    particles = rows.shape[0] // prompts
    offsets = torch.arange(prompts, device=index.device) * particles
    return rows[offsets + index]


def _gather_particles(rows: Tensor, ancestors: Tensor) -> Tensor:
    """Rows ``[B * K, ...]`` reindexed by per-prompt ancestors ``[B, K]``."""
    prompts, particles = ancestors.shape
    offsets = torch.arange(prompts, device=ancestors.device)[:, None] * particles
    return rows[(offsets + ancestors).reshape(-1)]


def _as_column(values: Tensor, like: Tensor) -> Tensor:
    return values.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _model_path(model: VelocityModel, path: AffinePath | str | None) -> AffinePath:
    """``path``, or by default the path ``model`` follows: a converted model's target, else linear."""
    if path is not None:
        return resolve_path(path)
    return model.target if isinstance(model, ConvertedVelocity) else LinearPath()


def _deterministic_step(
    x: Tensor, velocity: Tensor, t: Tensor, t_next: Tensor, path: AffinePath
) -> Tensor:
    """DDIM step ``x' = alpha(t') x1_hat + sigma(t') x0_hat`` with both estimates at ``t``.

    For the linear path it is the Euler step ``x + (t' - t) u``; at ``t' = 1`` it is
    the data estimate ``x1_hat`` on any path, where an Euler step of a VP velocity is not.
    """
    data = path.velocity_to_data(velocity, x, t)
    noise = path.velocity_to_noise(velocity, x, t)
    return path.alpha(t_next) * data + path.noise_scale(t_next) * noise


def rbf_time_grid(steps: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Kim et al.'s ``time_schedule: exp`` grid in our time: ``t_i = 1 - sqrt(1 - (i / N)^2)``.

    Their code steps a query time uniformly, ``q = 1 - i / N`` (Flux time, 1 = noise), and
    evaluates the (converted) model at ``sigma = sqrt(1 - (1 - q)^2)``, i.e. our
    ``t = 1 - sigma``: steps are short at the noise end and long near the data
    (``N = 10``: 0, .005, .020, .046, .083, .134, .200, .286, .400, .564, 1). RBF's search
    ends at ``t_{N-1} = 1 - sqrt(2 / N - 1 / N^2)`` and returns the data estimate from there.
    With a :func:`mmflow.sampling.sde.linear_to_vp` model the times are VP-path times (their
    VP-SDE setting), with the model itself linear-path times (their linear-SDE setting).
    """
    check_positive_int("steps", steps)
    fraction = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    return (1 - torch.sqrt(1 - fraction**2)).to(dtype)


# -- best-of-N -------------------------------------------------------------------------------


def best_of_n(
    model: VelocityModel,
    x0: Tensor,
    nfe: int | None,
    grid: GridSpec,
    grid_kwargs: dict[str, Any],
    callback: Callback | None,
    *,
    reward: Reward,
    steps: int | None = None,
    solver: str = "euler",
    candidate_options: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> SampleResult:
    """Best of ``N`` samples from independent initial noises, chosen by reward.

    Each sample integrates ``dx/dt = u(x, t)`` (or an SDE, ``solver="euler_maruyama"``) over
    the grid at a cost of ``c = (len(ts) - 1) * evals_per_step + warmup`` evaluations, so
    ``N = floor(budget / c)`` and ``nfe = N c``. All ``N`` run as one batch; the result is
    ``x^(n*)`` with ``n* = argmax_n r(x^(n))``. Its trajectory records
    ``max_{m <= n} r(x^(m))`` at ``n c`` evaluations, the best-of-``n`` curve for every ``n <= N``.

    Args:
        model: velocity model ``model(x, t, **model_kwargs)``.
        x0: ``[B, *event]`` initial noise, the first candidate of each prompt; the other
            ``N - 1`` noises are drawn from ``generator``.
        nfe: the budget, model evaluations allowed per prompt.
        grid, grid_kwargs, steps: the grid of every candidate (module docstring).
        reward: ``reward(x1, **kwargs) -> [B]`` (see the module docstring).
        solver: a registered grid solver (see ``mmflow.sampling.SAMPLERS``).
        candidate_options: that solver's own options (an SDE's diffusion and generator).
        generator: draws the extra initial noises.
        reward_kwargs: the reward's keyword arguments (per prompt) when they differ from the
            model's.
    """
    budget = _check_call("best_of_n", nfe, callback, x0)
    ts = _search_grid("best_of_n", grid, grid_kwargs, steps, x0)
    spec = get_sampler(solver)
    if not spec.on_grid:
        raise ValueError(f"`solver` must be a grid solver, got `{solver}` ({spec.nfe_rule})")
    options = dict(candidate_options or {})
    cost = (len(ts) - 1) * spec.evals_per_step + spec.warmup_evals(options)
    candidates = _check_budget(budget, cost, f"one `{solver}` sample over {len(ts) - 1} steps")
    prompts = x0.shape[0]
    counter = _EvaluationCounter(model, prompts)
    scorer = _Scorer(reward, model_kwargs, reward_kwargs, prompts)
    with torch.no_grad():
        noise = _particle_noise(x0, candidates, generator)
        kwargs = _per_particle(model_kwargs, prompts, candidates, "model input")
        result = sample(
            counter, noise, method=solver, nfe=None, grid=ts, solver_options=options, **kwargs
        )
        rewards = scorer(result.samples, candidates)
    best = rewards.argmax(dim=1)
    return SampleResult(
        samples=_pick(result.samples, best),
        nfe=counter.nfe,
        grid=ts,
        info={
            "rewards": rewards.max(dim=1).values,
            "budget": budget,
            "trajectory_nfe": torch.arange(1, candidates + 1) * cost,
            "trajectory_rewards": rewards.cummax(dim=1).values.T,
        },
    )


# -- SMC -------------------------------------------------------------------------------------


def _check_smc(reward_scale: float, ess_threshold: float, resampling: str) -> Resampler:
    is_number = isinstance(reward_scale, int | float) and not isinstance(reward_scale, bool)
    if not (is_number and math.isfinite(reward_scale) and reward_scale >= 0):
        raise ValueError(f"`reward_scale` must be a finite number >= 0, got {reward_scale!r}")
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"`ess_threshold` must lie in [0, 1], got {ess_threshold}")
    if resampling not in RESAMPLERS:
        raise ValueError(f"`resampling` must be one of {', '.join(RESAMPLERS)}, got {resampling!r}")
    return RESAMPLERS[resampling]


def _resample_low_ess(
    log_weights: Tensor,
    ess_threshold: float,
    resampler: Resampler,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Resample the prompts whose ESS fell below ``ess_threshold * K``; keep the others.

    Returns normalised log-weights (zero-information ``-log K`` after resampling), ancestors
    ``[B, K]`` (the identity where nothing was resampled) and the ``[B]`` resampled mask.
    """
    prompts, particles = log_weights.shape
    low = effective_sample_size(log_weights) < ess_threshold * particles
    drawn = resampler(torch.softmax(log_weights, dim=-1), generator)
    identity = torch.arange(particles, device=log_weights.device).expand(prompts, particles)
    ancestors = torch.where(low[:, None], drawn, identity)
    uniform = torch.full_like(log_weights, -math.log(particles))
    normalised = log_weights - torch.logsumexp(log_weights, dim=-1, keepdim=True)
    return torch.where(low[:, None], uniform, normalised), ancestors, low


def smc(
    model: VelocityModel,
    x0: Tensor,
    nfe: int | None,
    grid: GridSpec,
    grid_kwargs: dict[str, Any],
    callback: Callback | None,
    *,
    reward: Reward,
    steps: int | None = None,
    reward_scale: float = 1.0,
    ess_threshold: float = 0.5,
    resampling: str = "systematic",
    diffusion: Diffusion = KIM_DIFFUSION,
    diffusion_scale: float = KIM_DIFFUSION_SCALE,
    path: AffinePath | str | None = None,
    generator: torch.Generator | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> SampleResult:
    """Sequential Monte Carlo over Euler-Maruyama particles, weighted by the reward.

    ``K = floor(budget / N)`` particles per prompt for an ``N``-step grid (``nfe = K N``).
    At step ``i`` every particle is evaluated once, ``u_i = u(x_i, t_i)``, and scored on its
    data estimate ``r_i = r(x1_hat(x_i, t_i))`` (the last step scores the final sample
    itself, the DDIM step ``x_N = alpha(t_N) x1_hat + sigma(t_N) x0_hat``, which is
    ``x_{N-1} + h u_{N-1}`` on the linear path). The weights take the Feynman-Kac "difference"
    potential of FK steering (Singhal et al. 2025), ``r_{-1} = 0``:

        log w_i = log w_{i-1} + lambda (r_i - r_{i-1}).

    The potentials telescope to ``exp(lambda r(x_N))``, so the weighted final population
    targets ``p(x1) exp(lambda r(x1)) / Z`` (for ``lambda = 1`` and ``r = log p(y | x)``, the
    class-conditional ``p(x1 | y)``); intermediate rewards only steer where resampling
    happens. When ``ESS = 1 / sum w^2 < ess_threshold * K`` a prompt's particles (with their
    ``u_i`` and ``r_i``) are resampled and its weights reset to uniform; then every particle
    takes its own Euler-Maruyama step (:mod:`mmflow.sampling.sde`). Weights accumulate
    between resampling events, unlike FK steering's code, which drops them.

    The chosen sample is the final particle of highest reward; ``particles`` and
    ``log_weights`` hold the weighted population. Kim et al.'s SMC baseline instead shrinks
    the particle count linearly over time to fit its budget; here ``K`` is fixed.

    Args:
        x0: ``[B, *event]`` initial noise, particle 0 of each prompt (the rest are drawn).
        reward_scale: ``lambda >= 0``; 0 gives plain Euler-Maruyama particles.
        ess_threshold: resample when the ESS falls below this fraction of ``K``.
        resampling: ``"systematic"`` or ``"multinomial"``.
        diffusion, diffusion_scale: the SDE (see
            :func:`mmflow.sampling.sde.sample_euler_maruyama`).
        path: the path of ``model``'s velocity (score, diffusion and data estimates); by
            default ``model.target`` for a :class:`~mmflow.interpolants.ConvertedVelocity`,
            else the linear path.
        generator: initial noises, Brownian increments and resampling.
        (others: see :func:`best_of_n`)
    """
    budget = _check_call("smc", nfe, callback, x0)
    resampler = _check_smc(reward_scale, ess_threshold, resampling)
    ts = _search_grid("smc", grid, grid_kwargs, steps, x0)
    path = _model_path(model, path)
    steps = len(ts) - 1
    particles = _check_budget(budget, steps, f"one evaluation per particle and step, {steps} steps")
    eps = step_diffusions(diffusion, ts, path, diffusion_scale)
    prompts = x0.shape[0]
    counter = _EvaluationCounter(model, prompts)
    scorer = _Scorer(reward, model_kwargs, reward_kwargs, prompts)
    kwargs = _per_particle(model_kwargs, prompts, particles, "model input")
    with torch.no_grad():
        x = _particle_noise(x0, particles, generator)
        log_weights = previous = seen = None
        trajectory, resampled = [], []
        for i in range(steps):
            h = ts[i + 1] - ts[i]
            u = counter(x, batched_time(ts[i], x), **kwargs)
            if i == steps - 1:
                x = _deterministic_step(x, u, ts[i], ts[i + 1], path)
                rewards = scorer(x, particles)
            else:
                rewards = scorer(path.velocity_to_data(u, x, ts[i]), particles)
            if previous is None:
                log_weights, seen = reward_scale * rewards, rewards.max(dim=1).values
            else:
                log_weights = log_weights + reward_scale * (rewards - previous)
                seen = torch.maximum(seen, rewards.max(dim=1).values)
            previous = rewards
            trajectory.append(seen)
            if i == steps - 1:
                break
            log_weights, ancestors, low = _resample_low_ess(
                log_weights, ess_threshold, resampler, generator
            )
            resampled.append(low)
            x, u = _gather_particles(x, ancestors), _gather_particles(u, ancestors)
            previous = previous.gather(1, ancestors)
            x = euler_maruyama_step(x, u, ts[i], h, eps[i], path, generator)
    best = previous.argmax(dim=1)
    log_weights = log_weights - torch.logsumexp(log_weights, dim=-1, keepdim=True)
    empty = torch.zeros((0, prompts), dtype=torch.bool, device=x.device)
    return SampleResult(
        samples=_pick(x, best),
        nfe=counter.nfe,
        grid=ts,
        info={
            "rewards": previous.max(dim=1).values,
            "budget": budget,
            "trajectory_nfe": torch.arange(1, steps + 1) * particles,
            "trajectory_rewards": torch.stack(trajectory),
            "particles": x.view(prompts, particles, *x.shape[1:]),
            "log_weights": log_weights,
            "resampled": torch.stack(resampled) if resampled else empty,
        },
    )


# -- rollover budget forcing -----------------------------------------------------------------


@dataclass
class _Chain:
    """One search chain per prompt: its state at ``ts[stage]`` and the current stage's best."""

    x: Tensor
    velocity: Tensor
    stage: Tensor
    best_reward: Tensor
    allowance: Tensor
    used: Tensor
    stage_x: Tensor
    stage_velocity: Tensor
    stage_reward: Tensor
    proposals: Tensor


def _initial_chain(
    counter: _EvaluationCounter,
    scorer: _Scorer,
    x0: Tensor,
    ts: Tensor,
    path: AffinePath,
    initial_particles: int,
    first_stage: int,
    quota: int,
    generator: torch.Generator | None,
    kwargs: dict[str, Any],
) -> _Chain:
    """Take ``initial_particles`` noises per prompt to ``ts[first_stage]``; keep the best by reward.

    Each noise is evaluated at ``t_0``; with ``first_stage = 1`` it then takes the deterministic
    step to ``t_1`` and is evaluated there, so it is scored on ``x1_hat(x_{t_1}, t_1)``.
    """
    x = _particle_noise(x0, initial_particles, generator)
    velocity = counter(x, batched_time(ts[0], x), **kwargs)
    for stage in range(first_stage):
        x = _deterministic_step(x, velocity, ts[stage], ts[stage + 1], path)
        velocity = counter(x, batched_time(ts[stage + 1], x), **kwargs)
    t = ts[first_stage]
    rewards = scorer(path.velocity_to_data(velocity, x, t), initial_particles)
    best = rewards.argmax(dim=1)
    prompts = x0.shape[0]
    chosen, u = _pick(x, best), _pick(velocity, best)
    counts = torch.zeros(prompts, dtype=torch.long, device=x0.device)
    return _Chain(
        x=chosen,
        velocity=u,
        stage=counts + first_stage,
        best_reward=rewards.max(dim=1).values,
        allowance=counts + quota,
        used=counts.clone(),
        stage_x=torch.zeros_like(chosen),
        stage_velocity=torch.zeros_like(u),
        stage_reward=torch.full_like(rewards[:, 0], -math.inf),
        proposals=torch.zeros(prompts, len(ts) - 2, dtype=torch.long, device=x0.device),
    )


def _propose(
    chain: _Chain,
    ts: Tensor,
    eps: Tensor,
    path: AffinePath,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """One Euler-Maruyama step of every chain from ``ts[stage]`` to ``ts[stage + 1]``."""
    t, t_next = ts[chain.stage], ts[chain.stage + 1]
    h = _as_column(t_next - t, chain.x)
    step_eps = _as_column(eps[chain.stage], chain.x)
    proposal = euler_maruyama_step(chain.x, chain.velocity, t, h, step_eps, path, generator)
    return proposal, t_next


def _choose(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where the per-prompt ``mask`` ``[B]`` holds, else ``old``."""
    return torch.where(mask.reshape(-1, *([1] * (new.ndim - 1))), new, old)


def _advance(
    chain: _Chain,
    proposal: Tensor,
    velocity: Tensor,
    rewards: Tensor,
    last_stage: int,
    quota: int,
) -> None:
    """Kim et al.'s rule after one proposal: accept-and-roll-over, force, or keep proposing.

    - the stage's best proposal is updated;
    - ``accept``: the proposal beats the best reward so far -> the chain moves to it and the
      unused quota rolls over: ``allowance = quota + (allowance - used)``;
    - ``force``: the stage's allowance is spent -> the chain moves to the stage's best
      proposal, ``allowance = quota``;
    - on the last stage the chain never moves: it keeps proposing until the budget ends.
    """
    improved = rewards > chain.stage_reward
    chain.stage_x = _choose(improved, proposal, chain.stage_x)
    chain.stage_velocity = _choose(improved, velocity, chain.stage_velocity)
    chain.stage_reward = torch.where(improved, rewards, chain.stage_reward)
    chain.used = chain.used + 1
    chain.proposals = chain.proposals.scatter_add(
        1, chain.stage[:, None], torch.ones_like(chain.stage[:, None])
    )
    movable = chain.stage < last_stage
    beats_best = rewards > chain.best_reward
    accept = beats_best & movable
    force = (chain.used >= chain.allowance) & ~accept & movable
    chain.best_reward = torch.where(beats_best, rewards, chain.best_reward)
    chain.x = _choose(accept, proposal, _choose(force, chain.stage_x, chain.x))
    chain.velocity = _choose(accept, velocity, _choose(force, chain.stage_velocity, chain.velocity))
    rolled = quota + chain.allowance - chain.used
    chain.allowance = torch.where(accept, rolled, torch.where(force, quota, chain.allowance))
    moved = accept | force
    chain.used = torch.where(moved, 0, chain.used)
    chain.stage = chain.stage + moved.long()
    chain.stage_reward = torch.where(moved, -math.inf, chain.stage_reward)


def rollover_budget_forcing(
    model: VelocityModel,
    x0: Tensor,
    nfe: int | None,
    grid: GridSpec,
    grid_kwargs: dict[str, Any],
    callback: Callback | None,
    *,
    reward: Reward,
    steps: int | None = None,
    initial_particles: int = KIM_INITIAL_PARTICLES,
    initial_step: bool = False,
    return_best: bool = False,
    diffusion: Diffusion = KIM_DIFFUSION,
    diffusion_scale: float = KIM_DIFFUSION_SCALE,
    path: AffinePath | str | None = None,
    generator: torch.Generator | None = None,
    reward_kwargs: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> SampleResult:
    """Rollover budget forcing (Kim et al. 2025): a greedy SDE search with an adaptive quota.

    For an ``N``-step grid, ``M = N - 1`` stochastic transitions ``t_j -> t_{j+1}``
    (``j < N - 1``) are searched; the last step ``t_{N-1} -> t_N`` is the deterministic DDIM
    step, which for a grid ending at 1 is the data estimate ``x1_hat`` (the reference code
    returns this Tweedie estimate of the last transition's best proposal):

    1. ``initial_particles = K0`` noises per prompt are evaluated at ``t_0`` (``K0``
       evaluations); the one with the best ``r(x1_hat)`` starts the chain and sets the running
       best reward ``r*``.
    2. Each transition gets a quota ``q = floor((budget - K0) / M)`` (the reference code
       divides by ``N``, which leaves a larger remainder to the last transition). A proposal
       is one Euler-Maruyama step from the chain's state,
       ``x' = x + h [u + eps s] + sqrt(2 eps h) xi``, and one evaluation
       ``u' = u(x', t_{j+1})``, scored by ``r' = r(x1_hat(x', t_{j+1}))``.
    3. The first proposal with ``r' > r*`` is accepted (``r* <- r'``) and the unused quota rolls
       over to the next transition. If the quota runs out first, the chain moves to the
       transition's best proposal (``r*`` is kept, as in the reference ``rbf/rbf.py``).
    4. On the last transition the chain keeps proposing until the budget is spent; the result
       is its best proposal, finished by the DDIM step to ``t_N``.

    With ``initial_step=True`` the initial particles are scored one step later: each takes the
    deterministic step ``t_0 -> t_1`` and is evaluated at ``t_1`` (``2 K0`` evaluations), the
    best starts the chain at ``t_1`` with that evaluation as its velocity, and the ``M = N - 2``
    transitions from ``t_1`` on are searched with ``q = floor((budget - 2 K0) / M)``. For an
    exact flow ``x1_hat(x, t_0 = 0) = E[x1]`` whatever the noise, so Kim et al.'s ranking at
    ``t_0`` ranks only the model's error there; at ``t_1`` the data estimates differ.

    With ``return_best=True`` the result is the data estimate ``x1_hat`` with the highest
    reward the search scored, so its reward is the trajectory's last value and at least the
    initial particles' best. Kim et al. return the last transition's best proposal even when
    it scores below an earlier one (a forced move, or an initial particle no proposal beat);
    on grids whose steps are all long (3 uniform steps) every scored ``x1_hat`` is a
    few-step sample like best-of-N's, and keeping the best of them is what a search is for.

    A transition takes between 1 and its allowance of proposals, the last one at least ``q``,
    and ``nfe = budget`` exactly; ``info["proposals"]`` shows the allocation. Proposals are
    drawn one at a time per prompt (sequential by design) and batched across prompts, whose
    chains may sit at different times. The diffusion must be positive on the searched
    transitions, else all proposals of a transition coincide. When ``r(x1_hat)`` rises along
    the path (sharper estimates score higher), early proposals are accepted at once and most of
    the budget rolls over to the last transition, where a diffusion vanishing at t = 1 (the
    default) leaves little to choose from on a uniform grid. Kim et al.'s grid
    (:func:`rbf_time_grid`) ends the search early (VP time 0.56 for ``N = 10``), where
    proposals still differ, and returns the data estimate from there.

    Args:
        initial_particles: ``K0``; Kim et al. use 25 with a budget of 500.
        initial_step: score the initial particles at ``t_1`` after one deterministic step
            (needs 3 steps), not at ``t_0``.
        return_best: return the highest-scored data estimate of the whole search (the
            chosen initial particle's or any proposal's), not the last transition's best
            proposal.
        (others: see :func:`smc`)
    """
    budget = _check_call("rbf", nfe, callback, x0)
    check_positive_int("initial_particles", initial_particles)
    ts = _search_grid("rbf", grid, grid_kwargs, steps, x0, default=rbf_time_grid)
    first_stage = int(bool(initial_step))
    if len(ts) < 3 + first_stage:
        why = " with `initial_step`" if initial_step else ""
        raise ValueError(
            f"`grid` needs at least {2 + first_stage} steps for a search{why}, got {len(ts) - 1}"
        )
    path = _model_path(model, path)
    transitions = len(ts) - 2 - first_stage
    initial_cost = initial_particles * (1 + first_stage)
    needed = initial_cost + transitions
    _check_budget(budget, needed, f"{initial_cost} initial evaluations + 1 per searched transition")
    quota = (budget - initial_cost) // transitions
    eps = step_diffusions(diffusion, ts, path, diffusion_scale)
    prompts = x0.shape[0]
    counter = _EvaluationCounter(model, prompts)
    scorer = _Scorer(reward, model_kwargs, reward_kwargs, prompts)
    kwargs = _per_particle(model_kwargs, prompts, 1, "model input")
    with torch.no_grad():
        init_kwargs = _per_particle(model_kwargs, prompts, initial_particles, "model input")
        chain = _initial_chain(
            counter,
            scorer,
            x0,
            ts,
            path,
            initial_particles,
            first_stage,
            quota,
            generator,
            init_kwargs,
        )
        seen, trajectory = chain.best_reward, [chain.best_reward]
        best_estimate = path.velocity_to_data(chain.velocity, chain.x, ts[first_stage])
        for _ in range(budget - initial_cost):
            proposal, t_next = _propose(chain, ts, eps, path, generator)
            velocity = counter(proposal, t_next.to(proposal.dtype), **kwargs)
            estimate = path.velocity_to_data(velocity, proposal, t_next)
            rewards = scorer(estimate, 1)[:, 0]
            _advance(chain, proposal, velocity, rewards, len(ts) - 3, quota)
            best_estimate = _choose(rewards > seen, estimate, best_estimate)
            seen = torch.maximum(seen, rewards)
            trajectory.append(seen)
        if return_best:
            samples = best_estimate
        else:
            samples = _deterministic_step(chain.stage_x, chain.stage_velocity, ts[-2], ts[-1], path)
        final_rewards = scorer(samples, 1)[:, 0]
    return SampleResult(
        samples=samples,
        nfe=counter.nfe,
        grid=ts,
        info={
            "rewards": final_rewards,
            "budget": budget,
            "trajectory_nfe": torch.arange(initial_cost, budget + 1),
            "trajectory_rewards": torch.stack(trajectory),
            "proposals": chain.proposals,
        },
    )


_BUDGET = "the budget per prompt"
register_method(
    "best_of_n",
    best_of_n,
    kind="search",
    description="the best by reward of N independent samples of a grid solver "
    "(options reward, steps, solver)",
    nfe_rule=f"{_BUDGET}: N = floor(nfe / evaluations of one sample)",
)
register_method(
    "smc",
    smc,
    kind="search",
    description="sequential Monte Carlo over Euler-Maruyama particles weighted by the reward "
    "(FK steering; options reward, steps)",
    nfe_rule=f"{_BUDGET}: K = floor(nfe / steps) particles",
)
register_method(
    "rbf",
    rollover_budget_forcing,
    kind="search",
    description="rollover budget forcing: a greedy SDE search that rolls unused proposals "
    "forward (Kim et al. 2025; options reward, steps)",
    nfe_rule=f"{_BUDGET}, spent exactly",
)


__all__ = [
    "RESAMPLERS",
    "ClassLogProbability",
    "best_of_n",
    "effective_sample_size",
    "multinomial_resample",
    "rbf_time_grid",
    "rollover_budget_forcing",
    "smc",
    "systematic_resample",
]
