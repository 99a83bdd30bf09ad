"""Best-of-N, SMC and rollover budget forcing against closed forms for Gaussian targets (float64).

For data ``x1 ~ N(m, diag(s^2))`` the exact velocity (:class:`GaussianLinearFlow`) is affine
in ``x``, so every Euler or Euler-Maruyama chain started from ``N(0, I)`` stays Gaussian:

- the Euler ODE maps ``x0`` to ``a + b x0`` (read off by running it from 0 and 1);
- one Euler-Maruyama step maps ``N(mu, v)`` to ``N(mu', v')`` with ``V = t^2 s^2 + (1 - t)^2``,
  ``k = (t s^2 - (1 - t)) / V``, ``g = k - eps / V``,
  ``mu' = mu + h (m + g (mu - t m))``, ``v' = (1 + h g)^2 v + 2 eps h`` (last step: eps = 0).

Best-of-N with ``r = -(x1 - c)^2`` then has ``E[max of N] = -int_0^inf P(R <= -s)^N ds`` and
SMC with ``r = a x1`` targets ``N(mu_N + lambda a v_N, v_N)``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmflow.sampling import sample
from mmflow.sampling.analytic import GaussianLinearFlow
from mmflow.sampling.sde import diffusion_coefficient, linear_to_vp, noise_to_target_start
from mmflow.sampling.search import (
    ClassLogProbability,
    _advance,
    _Chain,
    effective_sample_size,
    multinomial_resample,
    rbf_time_grid,
    systematic_resample,
)

DTYPE = torch.float64
STANDARD_ERRORS = 4.0


def grid(steps: int) -> torch.Tensor:
    return torch.linspace(0, 1, steps + 1, dtype=DTYPE)


def noise(prompts: int, dim: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(prompts, dim, generator=generator, dtype=DTYPE)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def closeness(target: float):
    """``r(x) = -|x - target|^2``, one value per sample."""

    def reward(x1_hat: torch.Tensor, **kwargs) -> torch.Tensor:
        return -((x1_hat - target) ** 2).sum(dim=1)

    return reward


def search(method: str, model, x0, ts, reward, budget, **options):
    """``sample(model, x0, method, nfe=budget, grid=ts)`` with the reward among the options."""
    return sample(
        model, x0, method, nfe=budget, grid=ts, solver_options={"reward": reward, **options}
    )


def zero_reward(x1_hat: torch.Tensor, **kwargs) -> torch.Tensor:
    return torch.zeros(x1_hat.shape[0], dtype=x1_hat.dtype)


class RowCounter(nn.Module):
    """Counts the rows the wrapped field is evaluated on (an independent NFE count)."""

    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.field = field
        self.rows = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.field(x, t, **kwargs)


class ShiftedGaussian(nn.Module):
    """The Gaussian field around a per-sample mean given as a condition: ``u(x, t | mean)``."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, mean: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype).view(-1, 1)
        variance = t**2 * self.std**2 + (1 - t) ** 2
        covariance = t * self.std**2 - (1 - t)
        return mean + covariance / variance * (x - t * mean)


# -- closed forms ----------------------------------------------------------------------------


def euler_affine_map(field: nn.Module, ts: torch.Tensor) -> tuple[float, float]:
    """``(a, b)`` with Euler's ODE output ``a + b x0`` (1-D, exact because ``u`` is affine)."""
    at_zero = sample(field, torch.zeros(1, 1, dtype=DTYPE), method="euler", nfe=None, grid=ts)
    at_one = sample(field, torch.ones(1, 1, dtype=DTYPE), method="euler", nfe=None, grid=ts)
    offset = at_zero.samples.item()
    return offset, at_one.samples.item() - offset


def expected_best_reward(offset: float, scale: float, target: float, candidates: int) -> float:
    """``E[max_{n <= N} -(X_n - c)^2]`` for i.i.d. ``X_n ~ N(offset, scale^2)``."""
    shift = offset - target
    upper = (abs(shift) + 12 * abs(scale)) ** 2
    s = torch.linspace(0, upper, 400_001, dtype=DTYPE)
    root = s.sqrt()
    inside = torch.special.ndtr((root - shift) / abs(scale)) - torch.special.ndtr(
        (-root - shift) / abs(scale)
    )
    return -torch.trapezoid((1 - inside) ** candidates, s).item()


def euler_maruyama_moments(
    mean: torch.Tensor, std: torch.Tensor, ts: torch.Tensor, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and variance of the Euler-Maruyama chain's output (module docstring)."""
    mu, v = torch.zeros_like(mean), torch.ones_like(mean)
    for i in range(len(ts) - 1):
        t, h = ts[i], ts[i + 1] - ts[i]
        step_eps = 0.0 if i == len(ts) - 2 else eps[i]
        variance = t**2 * std**2 + (1 - t) ** 2
        gain = (t * std**2 - (1 - t)) / variance - step_eps / variance
        mu = mu + h * (mean + gain * (mu - t * mean))
        v = (1 + h * gain) ** 2 * v + 2 * step_eps * h
    return mu, v


def kim_diffusion(ts: torch.Tensor) -> torch.Tensor:
    return diffusion_coefficient("square", ts[:-1], "linear", 3.0)


# -- best-of-N -------------------------------------------------------------------------------


def test_best_of_n_mean_reward_matches_order_statistics_and_rises_with_n():
    field = GaussianLinearFlow(torch.tensor([0.5], dtype=DTYPE), torch.tensor([0.8], dtype=DTYPE))
    ts, target, prompts = grid(8), 1.3, 4000
    offset, scale = euler_affine_map(field, ts)
    observed, expected = [], []
    for seed, candidates in enumerate((1, 2, 4, 8)):
        result = search(
            "best_of_n",
            field,
            noise(prompts, seed=seed),
            ts,
            closeness(target),
            8 * candidates,
            generator=seeded(100 + seed),
        )
        rewards = result.info["rewards"]
        mean = rewards.mean().item()
        standard_error = rewards.std().item() / math.sqrt(prompts)
        truth = expected_best_reward(offset, scale, target, candidates)
        assert abs(mean - truth) < STANDARD_ERRORS * standard_error, (candidates, mean, truth)
        observed.append(mean)
        expected.append(truth)
    assert expected == sorted(expected) and len(set(expected)) == len(expected)
    assert observed == sorted(observed), observed


def test_best_of_n_keeps_the_first_candidate_and_the_highest_reward():
    field = GaussianLinearFlow(torch.tensor([0.5], dtype=DTYPE), torch.tensor([0.8], dtype=DTYPE))
    ts, x0, reward = grid(8), noise(64), closeness(1.0)
    single = search("best_of_n", field, x0, ts, reward, 8)
    plain = sample(field, x0, method="euler", nfe=None, grid=ts).samples
    torch.testing.assert_close(single.samples, plain)
    several = search("best_of_n", field, x0, ts, reward, 8 * 5, generator=seeded(1))
    rewards = several.info["rewards"]
    assert bool((rewards >= reward(plain)).all())
    torch.testing.assert_close(rewards, reward(several.samples))
    torch.testing.assert_close(several.info["trajectory_rewards"][-1], rewards)


# -- NFE accounting --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, budget, options, expected_nfe",
    [
        ("best_of_n", 30, {}, 24),
        ("best_of_n", 30, {"solver": "heun"}, 16),
        ("best_of_n", 17, {"solver": "euler_maruyama"}, 16),
        ("smc", 30, {}, 24),
        ("smc", 8, {}, 8),
        ("rbf", 37, {"initial_particles": 5}, 37),
        ("rbf", 12, {"initial_particles": 5}, 12),
        ("rbf", 64, {"initial_particles": 25}, 64),
        ("rbf", 37, {"initial_particles": 5, "initial_step": True}, 37),
        ("rbf", 16, {"initial_particles": 5, "initial_step": True}, 16),
    ],
)
def test_nfe_is_counted_exactly_and_stays_within_budget(method, budget, options, expected_nfe):
    field = RowCounter(
        GaussianLinearFlow(torch.tensor([0.5], dtype=DTYPE), torch.tensor([0.8], dtype=DTYPE))
    )
    if options.get("solver") == "euler_maruyama":
        options = {**options, "candidate_options": {"generator": seeded(3)}}
    prompts = 6
    result = search(
        method,
        field,
        noise(prompts),
        grid(8),
        closeness(1.0),
        budget,
        generator=seeded(2),
        **options,
    )
    info = result.info
    assert result.nfe == expected_nfe == field.rows // prompts
    assert field.rows == expected_nfe * prompts
    assert result.nfe <= info["budget"] == budget
    assert int(info["trajectory_nfe"][-1]) == result.nfe
    assert bool((info["trajectory_nfe"].diff() > 0).all())
    assert info["trajectory_rewards"].shape == (len(info["trajectory_nfe"]), prompts)
    assert bool((info["trajectory_rewards"].diff(dim=0) >= 0).all())
    assert bool((info["trajectory_rewards"][-1] >= info["rewards"] - 1e-12).all())
    if method == "rbf":
        stepped = int(options.get("initial_step", False))
        initial, transitions = options["initial_particles"] * (1 + stepped), 7 - stepped
        proposals = info["proposals"]
        searched = proposals[:, stepped:]
        assert bool((proposals.sum(dim=1) == budget - initial).all())
        assert bool((proposals[:, :stepped] == 0).all())
        assert bool((searched >= 1).all())
        assert bool((searched[:, -1] >= (budget - initial) // transitions).all())


@pytest.mark.parametrize(
    "method, budget, options",
    [
        ("best_of_n", 7, {}),
        ("best_of_n", 15, {"solver": "heun"}),
        ("smc", 7, {}),
        ("rbf", 11, {"initial_particles": 5}),
        ("rbf", 40.0, {"initial_particles": 5}),
        ("rbf", 15, {"initial_particles": 5, "initial_step": True}),
    ],
)
def test_a_budget_too_small_for_one_sample_is_refused(method, budget, options):
    field = GaussianLinearFlow(torch.tensor([0.5], dtype=DTYPE), torch.tensor([0.8], dtype=DTYPE))
    with pytest.raises(ValueError, match=r"`nfe` \(the budget per prompt\) must be an integer"):
        search(method, field, noise(2), grid(8), closeness(1.0), budget, **options)


# -- conditions follow their particles -------------------------------------------------------


def test_per_prompt_conditions_and_reward_kwargs_follow_their_particles():
    field = ShiftedGaussian(std=0.1)
    prompts, ts = 5, grid(10)
    means = 10.0 * torch.arange(prompts, dtype=DTYPE)[:, None]
    by_mean = closeness(0.0)

    def near_own_mean(x1_hat, *, mean):
        return -((x1_hat - mean) ** 2).sum(dim=1)

    def near_target(x1_hat, *, target):
        return -((x1_hat - target) ** 2).sum(dim=1)

    bon = sample(
        field,
        noise(prompts),
        "best_of_n",
        nfe=40,
        grid=ts,
        solver_options={"reward": near_own_mean, "generator": seeded(0)},
        mean=means,
    )
    filtered = sample(
        field,
        noise(prompts),
        "smc",
        nfe=40,
        grid=ts,
        solver_options={"reward": by_mean, "generator": seeded(1)},
        mean=means,
    )
    greedy = sample(
        field,
        noise(prompts),
        "rbf",
        nfe=40,
        grid=ts,
        solver_options={
            "reward": near_target,
            "initial_particles": 4,
            "generator": seeded(2),
            "reward_kwargs": {"target": means + 0.05},
        },
        mean=means,
    )
    assert (bon.samples - means).abs().max() < 1.0
    assert (filtered.info["particles"] - means[:, None]).abs().max() < 1.0
    assert (greedy.samples - means).abs().max() < 1.0
    torch.testing.assert_close(
        greedy.info["rewards"], near_target(greedy.samples, target=means + 0.05)
    )


# -- SMC -------------------------------------------------------------------------------------


def test_smc_with_zero_reward_keeps_the_sde_marginals():
    mean = torch.tensor([1.5, -2.0], dtype=DTYPE)
    std = torch.tensor([0.3, 0.8], dtype=DTYPE)
    field = GaussianLinearFlow(mean, std)
    ts, prompts, particles = grid(20), 3000, 4
    result = search(
        "smc", field, noise(prompts, dim=2), ts, zero_reward, 20 * particles, generator=seeded(5)
    )
    assert not bool(result.info["resampled"].any())
    torch.testing.assert_close(
        result.info["log_weights"],
        torch.full((prompts, particles), -math.log(particles), dtype=DTYPE),
    )
    chain_mean, chain_variance = euler_maruyama_moments(mean, std, ts, kim_diffusion(ts))
    samples = result.info["particles"].reshape(-1, 2)
    count = samples.shape[0]
    covariance = torch.cov(samples.T)
    mean_error = STANDARD_ERRORS * (chain_variance / count).sqrt()
    assert bool(((samples.mean(0) - chain_mean).abs() < mean_error).all())
    variance_error = STANDARD_ERRORS * chain_variance * math.sqrt(2 / (count - 1))
    assert bool(((covariance.diagonal() - chain_variance).abs() < variance_error).all())
    cross_error = STANDARD_ERRORS * (chain_variance.prod() / count).sqrt()
    assert abs(covariance[0, 1].item()) < cross_error.item()
    chosen = result.samples
    chosen_error = STANDARD_ERRORS * (chain_variance / prompts).sqrt()
    assert bool(((chosen.mean(0) - chain_mean).abs() < chosen_error).all())


@pytest.mark.parametrize("resampling", ["systematic", "multinomial"])
def test_smc_weighted_population_reaches_the_tilted_gaussian(resampling):
    # Each prompt's estimate sum_k w_k x_k is self-normalised: its bias is about
    # -exp(sigma^2) lambda a v / K with sigma = lambda a sqrt(v) (0.0014 here, 0.6 standard
    # errors), hence the many particles and the mild tilt.
    mean, std = torch.tensor([0.5], dtype=DTYPE), torch.tensor([0.8], dtype=DTYPE)
    field = GaussianLinearFlow(mean, std)
    ts, prompts, particles, slope, scale = grid(10), 500, 256, 0.5, 1.0

    def linear(x1_hat, **kwargs):
        return slope * x1_hat.sum(dim=1)

    result = search(
        "smc",
        field,
        noise(prompts),
        ts,
        linear,
        10 * particles,
        reward_scale=scale,
        ess_threshold=0.9,
        resampling=resampling,
        generator=seeded(7),
    )
    info = result.info
    assert bool(info["resampled"].any())
    chain_mean, chain_variance = euler_maruyama_moments(mean, std, ts, kim_diffusion(ts))
    tilted_mean = (chain_mean + scale * slope * chain_variance).item()
    estimates = (info["log_weights"].exp() * info["particles"][..., 0]).sum(dim=1)
    standard_error = estimates.std().item() / math.sqrt(prompts)
    assert abs(estimates.mean().item() - tilted_mean) < STANDARD_ERRORS * standard_error
    assert abs(chain_mean.item() - tilted_mean) > 50 * standard_error


# -- RBF -------------------------------------------------------------------------------------


def test_rbf_beats_best_of_n_at_the_same_nfe():
    field = GaussianLinearFlow(torch.tensor([0.0], dtype=DTYPE), torch.tensor([1.0], dtype=DTYPE))
    ts, prompts, budget, reward = grid(8), 400, 64, closeness(2.5)
    bon = search("best_of_n", field, noise(prompts), ts, reward, budget, generator=seeded(11))
    rbf = search(
        "rbf", field, noise(prompts), ts, reward, budget, initial_particles=8, generator=seeded(12)
    )
    assert bon.nfe == rbf.nfe == budget
    rbf_rewards, bon_rewards = rbf.info["rewards"], bon.info["rewards"]
    gap = rbf_rewards.mean() - bon_rewards.mean()
    spread = torch.cat([rbf_rewards, bon_rewards]).std() / math.sqrt(prompts)
    assert gap > STANDARD_ERRORS * spread, (rbf_rewards.mean(), bon_rewards.mean())


def test_rbf_initial_particles_rank_nothing_at_t0_and_their_best_of_k_one_step_later():
    # For the exact flow x1_hat(x, 0) = m for every noise, so Kim et al.'s initial ranking
    # sees one reward, -(m - c)^2. After the step to t_1 the data estimate is the Euler map
    # over [0, t_1, 1], a + b x0, and the chain starts from the best of K0 such rewards.
    mean, target, prompts, particles = 0.5, 1.3, 4000, 6
    field = GaussianLinearFlow(torch.tensor([mean], dtype=DTYPE), torch.tensor([0.8], dtype=DTYPE))
    ts, reward = grid(8), closeness(target)
    options = {"initial_particles": particles, "generator": seeded(4)}
    at_start = search("rbf", field, noise(prompts), ts, reward, 20, **options)
    torch.testing.assert_close(
        at_start.info["trajectory_rewards"][0],
        torch.full((prompts,), -((mean - target) ** 2), dtype=DTYPE),
    )
    stepped = search("rbf", field, noise(prompts), ts, reward, 20, initial_step=True, **options)
    offset, scale = euler_affine_map(field, ts[[0, 1, -1]])
    first = stepped.info["trajectory_rewards"][0]
    truth = expected_best_reward(offset, scale, target, particles)
    standard_error = first.std().item() / math.sqrt(prompts)
    assert abs(first.mean().item() - truth) < STANDARD_ERRORS * standard_error, (first, truth)
    assert truth > -((mean - target) ** 2)
    assert int(stepped.info["trajectory_nfe"][0]) == 2 * particles


def test_rbf_return_best_keeps_the_best_scored_estimate_of_the_same_search():
    # Both runs draw the same noises, so they are one search returned two ways. Kim et al.'s
    # rule returns the last transition's best proposal, which can score below an earlier
    # estimate; `return_best` returns the trajectory's best, at least the best of the K0
    # initial particles, whose mean has the closed form of the previous test.
    mean, target, prompts, particles = 0.5, 1.3, 4000, 4
    field = GaussianLinearFlow(torch.tensor([mean], dtype=DTYPE), torch.tensor([0.8], dtype=DTYPE))
    ts, reward = grid(4), closeness(target)

    def run(return_best: bool):
        return search(
            "rbf",
            field,
            noise(prompts),
            ts,
            reward,
            14,
            initial_particles=particles,
            initial_step=True,
            return_best=return_best,
            generator=seeded(6),
        )

    last, best = run(False), run(True)
    best_rewards, last_rewards = best.info["rewards"], last.info["rewards"]
    trajectory = best.info["trajectory_rewards"]
    torch.testing.assert_close(trajectory, last.info["trajectory_rewards"])
    torch.testing.assert_close(best_rewards, trajectory[-1])
    torch.testing.assert_close(best_rewards, reward(best.samples))
    assert bool((best_rewards >= last_rewards - 1e-12).all())
    assert bool((best_rewards > last_rewards + 1e-6).any())
    offset, scale = euler_affine_map(field, ts[[0, 1, -1]])
    floor = expected_best_reward(offset, scale, target, particles)
    assert best_rewards.mean().item() > floor
    assert best.nfe == last.nfe == 14


def chain(stage, best, allowance, used, stage_reward) -> _Chain:
    count = len(stage)
    return _Chain(
        x=torch.zeros(count, 1),
        velocity=torch.zeros(count, 1),
        stage=torch.tensor(stage),
        best_reward=torch.tensor(best),
        allowance=torch.tensor(allowance),
        used=torch.tensor(used),
        stage_x=torch.full((count, 1), -1.0),
        stage_velocity=torch.full((count, 1), -1.0),
        stage_reward=torch.tensor(stage_reward),
        proposals=torch.zeros(count, 3, dtype=torch.long),
    )


def test_rbf_rule_accepts_and_rolls_over_forces_at_quota_and_holds_the_last_stage():
    # chains: 0 beats its best early; 1 spends its quota without beating it; 2 is mid-stage;
    # 3 beats its best but sits on the last stage (stage 2 of 3 transitions).
    state = chain(
        stage=[0, 1, 1, 2],
        best=[1.0, 5.0, 5.0, 0.0],
        allowance=[4, 3, 3, 9],
        used=[0, 2, 0, 4],
        stage_reward=[-math.inf, 4.5, -math.inf, -math.inf],
    )
    proposal = torch.arange(1.0, 5.0)[:, None]
    velocity = 10 * proposal
    rewards = torch.tensor([2.0, 3.0, 4.0, 7.0])
    _advance(state, proposal, velocity, rewards, last_stage=2, quota=3)
    assert state.stage.tolist() == [1, 2, 1, 2]
    assert state.allowance.tolist() == [3 + 4 - 1, 3, 3, 9]
    assert state.used.tolist() == [0, 0, 1, 5]
    assert state.x[:, 0].tolist() == [1.0, -1.0, 0.0, 0.0]  # accepted, forced to stage best
    assert state.velocity[:, 0].tolist() == [10.0, -1.0, 0.0, 0.0]
    assert state.best_reward.tolist() == [2.0, 5.0, 5.0, 7.0]
    assert state.stage_reward.tolist() == [-math.inf, -math.inf, 4.0, 7.0]
    assert state.stage_x[:, 0].tolist() == [1.0, -1.0, 3.0, 4.0]
    assert state.proposals.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_rbf_needs_two_steps_and_a_positive_initial_particle_count():
    field = GaussianLinearFlow(torch.tensor([0.5], dtype=DTYPE), torch.tensor([0.8], dtype=DTYPE))
    with pytest.raises(ValueError, match="`grid` needs at least 2 steps"):
        search("rbf", field, noise(2), grid(1), closeness(0.0), 10, initial_particles=2)
    with pytest.raises(ValueError, match="initial_particles"):
        search("rbf", field, noise(2), grid(4), closeness(0.0), 10, initial_particles=0)
    with pytest.raises(ValueError, match="at least 3 steps for a search with `initial_step`"):
        search(
            "rbf",
            field,
            noise(2),
            grid(2),
            closeness(0.0),
            10,
            initial_particles=2,
            initial_step=True,
        )


# -- Kim et al.'s VP setting -----------------------------------------------------------------


def test_rbf_time_grid_is_kims_exp_schedule_in_our_time():
    # Their query time q = 1 - i/10 (Flux time) gives sigma = sqrt(1 - (1 - q)^2); ours is 1 - sigma.
    ts = rbf_time_grid(10, DTYPE)
    query = 1 - torch.arange(11, dtype=DTYPE) / 10
    assert torch.allclose(ts, 1 - torch.sqrt(1 - (1 - query) ** 2), rtol=0, atol=1e-15)
    assert ts[0].item() == 0.0 and ts[-1].item() == 1.0
    assert ts[9].item() == pytest.approx(1 - math.sqrt(0.19), abs=1e-15)  # 0.564: search ends here
    assert bool((ts.diff() > 0).all()) and bool((ts.diff().diff() > 0).all())
    with pytest.raises(ValueError, match="steps"):
        rbf_time_grid(0)


def vp_posterior_mean(x_bar, r, mean, std, path):
    """``E[x1 | x_bar_r]`` on the VP path for ``x1 ~ N(mean, std^2)``: the exact data estimate."""
    alpha, sigma = path.alpha(r), path.noise_scale(r)
    return mean + alpha * std**2 / (alpha**2 * std**2 + sigma**2) * (x_bar - alpha * mean)


@pytest.mark.parametrize(
    "method, options",
    [
        ("rbf", {"initial_particles": 1}),
        ("smc", {"reward_scale": 0.0}),
    ],
)
def test_search_on_a_vp_converted_model_ends_at_the_exact_data_estimate(method, options):
    # With no diffusion the chain is Euler on the VP-converted field up to t_{N-1}; the final
    # step must be the data estimate there (the DDIM step to t_N = 1), not an Euler step.
    mean, std = torch.tensor([1.5], dtype=DTYPE), torch.tensor([0.5], dtype=DTYPE)
    converted = linear_to_vp(GaussianLinearFlow(mean, std))
    ts, x_bar = rbf_time_grid(4, DTYPE), noise_to_target_start(converted, noise(3))
    result = search(
        method,
        converted,
        x_bar,
        ts,
        zero_reward,
        8,
        diffusion_scale=0.0,
        generator=seeded(3),
        **options,
    )
    chain = sample(converted, x_bar, method="euler", nfe=None, grid=ts[:-1]).samples
    expected = vp_posterior_mean(chain, ts[-2], mean, std, converted.target)
    assert torch.allclose(result.samples, expected, rtol=0, atol=1e-9)
    euler = chain + (ts[-1] - ts[-2]) * converted(chain, ts[-2].expand(3))
    assert (euler - expected).abs().min() > 0.05


# -- resampling ------------------------------------------------------------------------------


def test_systematic_resampling_copies_each_particle_floor_or_ceil_of_k_w_times():
    generator = seeded(0)
    weights = torch.rand(500, 7, generator=generator, dtype=DTYPE) ** 3
    weights[:, 2] = 0.0
    weights = weights / weights.sum(dim=1, keepdim=True)
    ancestors = systematic_resample(weights, seeded(1))
    counts = torch.zeros_like(weights).scatter_add_(1, ancestors, torch.ones_like(weights))
    expected = 7 * weights
    assert bool((counts >= torch.floor(expected - 1e-9)).all())
    assert bool((counts <= torch.ceil(expected + 1e-9)).all())
    assert bool((counts[:, 2] == 0).all())
    assert bool((counts.sum(dim=1) == 7).all())


@pytest.mark.parametrize("resample", [systematic_resample, multinomial_resample])
def test_resampling_is_unbiased(resample):
    rows, particles = 20_000, 5
    weights = torch.tensor([0.05, 0.4, 0.0, 0.3, 0.25], dtype=DTYPE).expand(rows, particles)
    ancestors = resample(3.0 * weights, seeded(4))  # unnormalised weights are accepted
    counts = torch.zeros(rows, particles, dtype=DTYPE)
    counts.scatter_add_(1, ancestors, torch.ones(rows, particles, dtype=DTYPE))
    expected = particles * weights[0]
    multinomial_error = (particles * weights[0] * (1 - weights[0]) / rows).sqrt()
    assert bool(((counts.mean(0) - expected).abs() <= STANDARD_ERRORS * multinomial_error).all())
    assert bool((counts[:, 2] == 0).all())


def test_effective_sample_size_spans_one_to_k():
    log_weights = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -math.inf, -math.inf, -math.inf]])
    torch.testing.assert_close(effective_sample_size(log_weights), torch.tensor([4.0, 1.0]))


@pytest.mark.parametrize(
    "weights",
    [torch.tensor([0.5, 0.5]), torch.tensor([[0.5, -0.1]]), torch.tensor([[0.0, 0.0]])],
)
def test_invalid_weights_are_refused(weights):
    with pytest.raises(ValueError, match="`weights`"):
        systematic_resample(weights)
    with pytest.raises(ValueError, match="`weights`"):
        multinomial_resample(weights)


# -- rewards and options ---------------------------------------------------------------------


def test_class_log_probability_is_the_log_softmax_of_the_label():
    torch.manual_seed(0)
    classifier = nn.Linear(3, 4).to(torch.float32)
    x = torch.randn(5, 3, dtype=DTYPE)
    labels = torch.tensor([0, 3, 1, 2, 3])
    reward = ClassLogProbability(classifier, decode=lambda z: 2 * z)
    expected = torch.log_softmax(classifier(2 * x.float()), dim=1)[torch.arange(5), labels]
    values = reward(x, class_labels=labels)
    assert values.dtype == DTYPE
    torch.testing.assert_close(values, expected.to(DTYPE))
    torch.testing.assert_close(
        reward(x, class_labels=torch.tensor(3)), reward(x, class_labels=torch.full((5,), 3))
    )
    with pytest.raises(ValueError, match="class_labels"):
        reward(x)
    with pytest.raises(ValueError, match="class_labels"):
        reward(x, class_labels=labels[:3])


def test_bad_rewards_options_and_conditions_are_refused():
    field = GaussianLinearFlow(torch.tensor([0.5], dtype=DTYPE), torch.tensor([0.8], dtype=DTYPE))
    x0, ts = noise(3), grid(4)
    with pytest.raises(ValueError, match="`reward`"):
        search("best_of_n", field, x0, ts, lambda x, **kw: x, 8)
    with pytest.raises(ValueError, match="`ess_threshold`"):
        search("smc", field, x0, ts, zero_reward, 8, ess_threshold=1.5)
    with pytest.raises(ValueError, match="`resampling`"):
        search("smc", field, x0, ts, zero_reward, 8, resampling="stratified")
    with pytest.raises(ValueError, match="`reward_scale`"):
        search("smc", field, x0, ts, zero_reward, 8, reward_scale=-1.0)
    with pytest.raises(ValueError, match="`x0`"):
        search("smc", field, torch.zeros(3, dtype=DTYPE), ts, zero_reward, 8)
    with pytest.raises(ValueError, match="`grid`"):
        search("smc", field, x0, torch.tensor([0.0, 0.6, 0.4], dtype=DTYPE), zero_reward, 8)
    with pytest.raises(ValueError, match="`target`"):
        search(
            "rbf",
            field,
            x0,
            ts,
            closeness(0.0),
            12,
            initial_particles=2,
            reward_kwargs={"target": torch.zeros(2, 1)},
        )


def test_search_grids_are_explicit_times_a_named_grid_of_steps_or_the_default():
    field = GaussianLinearFlow(torch.tensor([0.5], dtype=DTYPE), torch.tensor([0.8], dtype=DTYPE))
    x0, reward = noise(3), {"reward": zero_reward}
    named = sample(field, x0, "smc", nfe=16, grid="uniform", solver_options={**reward, "steps": 8})
    torch.testing.assert_close(named.grid, grid(8))
    default = sample(field, x0, "rbf", nfe=60, solver_options={**reward, "initial_particles": 2})
    torch.testing.assert_close(default.grid, rbf_time_grid(10, DTYPE))
    assert sample(field, x0, "best_of_n", nfe=30, solver_options=reward).grid.shape == (11,)
    with pytest.raises(ValueError, match="with a grid name only"):
        sample(field, x0, "smc", nfe=16, grid=grid(8), solver_options={**reward, "steps": 8})
    with pytest.raises(ValueError, match="give `nfe`"):
        sample(field, x0, "smc", grid=grid(8), solver_options=reward)
    with pytest.raises(ValueError, match="takes no `callback`"):
        sample(field, x0, "smc", nfe=16, grid=grid(8), callback=print, solver_options=reward)
    with pytest.raises(ValueError, match="needs the option"):
        sample(field, x0, "best_of_n", nfe=16, grid=grid(8))
