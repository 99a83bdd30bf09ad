"""BOSS time grids against fields whose trajectories are known in closed form."""

import itertools
import json

import pytest
import torch
from torch import nn

from mmflow.sampling import sample
from mmflow.sampling.analytic import GaussianLinearFlow, RiccatiFlow
from mmflow.sampling.boss import (
    bellman_path,
    boss_cost_matrix,
    boss_grid,
    clear_boss_memory_cache,
    model_fingerprint,
)
from mmflow.sampling.solvers import sample_euler


class StraightFlow(nn.Module):
    """``u(x, t) = (m - x) / (T - t)``: every path runs straight to ``m``, reached at time ``T``.

    Its trajectories ``x_t = m + (x0 - m) (T - t) / T`` are lines with the constant velocity
    ``(m - x0) / T``, so Euler is exact on every grid. ``T = 1`` is GaussianLinearFlow's field
    in the limit std -> 0 (data = the point m); std = 1 is not straight, since its flow
    ``t m + sqrt(V_t) x0`` has ``V_t = t^2 + (1 - t)^2``, not the square of a line. ``T > 1``
    keeps the field finite at t = 1, where RK4 evaluates it.
    """

    def __init__(self, target: torch.Tensor, arrival: float) -> None:
        super().__init__()
        self.register_buffer("target", target)
        self.arrival = arrival

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (self.target - x) / (self.arrival - t.to(x.dtype)).unsqueeze(-1)


@pytest.fixture(autouse=True)
def fresh_memory_cache():
    clear_boss_memory_cache()
    yield
    clear_boss_memory_cache()


def gaussian_noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def uniform_noise(n: int, low: float, high: float, seed: int) -> torch.Tensor:
    draw = torch.rand(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return low + (high - low) * draw


def euler_endpoint_error(field, noise, grid) -> float:
    samples = sample(field, noise, method="euler", grid=grid, nfe=None).samples
    return (samples - field.flow(noise, 1.0)).square().sum(dim=1).mean().item()


@pytest.mark.parametrize("reference", ["euler", "rk4"])
def test_straight_trajectories_make_every_jump_free(reference):
    field = StraightFlow(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), arrival=1.25)
    nodes, cost = boss_cost_matrix(field, gaussian_noise(32, 0), max_steps=16, reference=reference)
    forward = torch.ones(17, 17, dtype=torch.bool).triu(diagonal=1)
    assert cost[forward].max() < 1e-24, "any grid of Euler jumps follows a straight line exactly"
    assert torch.isinf(cost[~forward]).all()
    torch.testing.assert_close(nodes, torch.linspace(0, 1, 17, dtype=torch.float64))
    for steps in (1, 3, 16):
        path, total = bellman_path(cost, steps)
        assert len(path) == steps + 1 and total < 1e-24


def test_cost_matrix_equals_the_pairwise_definition():
    """c_ij = mean_n ||x_i + (t_j - t_i) v_i - x_j||^2 on the Euler reference, pair by pair."""
    field, noise, max_steps = RiccatiFlow(0.5), uniform_noise(5, -1.0, 1.0, 0), 6
    states, velocities = [noise], []
    times = torch.linspace(0, 1, max_steps + 1, dtype=torch.float64)

    def keep(info):
        states.append(info["x"])
        velocities.append(info["velocity"])

    sample_euler(field, noise, times, callback=keep)
    _, cost = boss_cost_matrix(field, noise, max_steps=max_steps)
    for i, j in itertools.combinations(range(max_steps + 1), 2):
        per_sample = [
            ((states[i][n] + (times[j] - times[i]) * velocities[i][n] - states[j][n]) ** 2).sum()
            for n in range(noise.shape[0])
        ]
        torch.testing.assert_close(cost[i, j], torch.stack(per_sample).mean())
    assert cost[torch.arange(max_steps), torch.arange(1, max_steps + 1)].abs().max() < 1e-28


@pytest.mark.parametrize("steps", [2, 4, 8])
def test_boss_beats_uniform_on_riccati_flow(steps):
    """Held-out Euler endpoint error of the BOSS grid against the uniform grid.

    BOSS minimises a sum of local errors; that sum follows the endpoint error where the flow
    does not amplify earlier errors. ``du/dx = 2 c(t) x`` is negative for x < 0, so noise in
    [-1, -0.5] keeps the trajectories contracting for most of the way, while
    ``c(t) = 0.6 (1 + t)`` grows along them (measured ratios 0.91 / 0.81 / 0.76 for
    K = 2 / 4 / 8). With the default rate 0.25 the best grid is almost uniform.
    """
    field = RiccatiFlow(rate=0.6)
    grid = boss_grid(field, uniform_noise(64, -1.0, -0.5, 0), steps, max_steps=64, cache=False)
    test_noise = uniform_noise(256, -1.0, -0.5, 1)
    uniform = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    assert euler_endpoint_error(field, test_noise, grid) < euler_endpoint_error(
        field, test_noise, uniform
    )
    assert sample(field, test_noise, method="heun", grid=grid, nfe=None).nfe == 2 * steps


@pytest.mark.parametrize("steps", [2, 4, 8])
def test_boss_halves_the_error_on_a_narrow_gaussian_target(steps):
    """Trajectories towards N(m, 0.2^2) bend late (near data); measured ratios 0.38-0.28."""
    field = GaussianLinearFlow(
        torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64), torch.full((3,), 0.2).double()
    )
    grid = boss_grid(field, gaussian_noise(64, 0), steps, max_steps=64, cache=False)
    test_noise = gaussian_noise(256, 1)
    uniform = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    assert euler_endpoint_error(field, test_noise, grid) < 0.5 * euler_endpoint_error(
        field, test_noise, uniform
    )
    assert bool((grid[1:] - grid[:-1] > 0).all()) and grid[0] == 0 and grid[-1] == 1


def test_boss_path_costs_no_more_than_the_uniform_path():
    _, cost = boss_cost_matrix(RiccatiFlow(), uniform_noise(32, -1.0, 1.0, 0), max_steps=32)
    for steps in (2, 4, 8, 16):
        stride = 32 // steps
        uniform_total = sum(cost[i, i + stride] for i in range(0, 32, stride))
        assert bellman_path(cost, steps)[1] <= uniform_total + 1e-15


@pytest.mark.parametrize("max_steps", [5, 7])
def test_dynamic_programme_equals_brute_force(max_steps):
    generator = torch.Generator().manual_seed(max_steps)
    cost = torch.rand(max_steps + 1, max_steps + 1, generator=generator, dtype=torch.float64)
    for steps in range(1, max_steps + 1):
        candidates = [
            (0, *interior, max_steps)
            for interior in itertools.combinations(range(1, max_steps), steps - 1)
        ]
        totals = [sum(cost[a, b].item() for a, b in itertools.pairwise(p)) for p in candidates]
        best = min(range(len(candidates)), key=totals.__getitem__)
        path, total = bellman_path(cost, steps)
        assert tuple(path.tolist()) == candidates[best]
        assert total == pytest.approx(totals[best], rel=1e-12)


def test_bellman_path_rejects_impossible_requests():
    with pytest.raises(ValueError, match="cannot exceed"):
        bellman_path(torch.rand(5, 5), 5)
    with pytest.raises(ValueError, match="square"):
        bellman_path(torch.rand(5, 4), 2)
    with pytest.raises(ValueError, match="`steps`"):
        bellman_path(torch.rand(5, 5), 0)


def counted(field: nn.Module) -> list[int]:
    calls: list[int] = []
    field.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_cache_returns_the_same_grid_without_calling_the_model(tmp_path):
    field = GaussianLinearFlow(
        torch.tensor([1.0, 0.0, -1.0]).double(), torch.full((3,), 0.3).double()
    )
    calls, noise = counted(field), gaussian_noise(16, 0)
    first = boss_grid(field, noise, 4, max_steps=32, cache_dir=tmp_path)
    assert len(calls) == 32
    from_memory = boss_grid(field, noise, 4, max_steps=32, cache_dir=tmp_path)
    clear_boss_memory_cache()
    from_disk = boss_grid(field, noise, 4, max_steps=32, cache_dir=tmp_path)
    assert len(calls) == 32
    assert torch.equal(from_memory, first) and torch.equal(from_disk, first)
    (path,) = tmp_path.glob("*.json")
    entry = json.loads(path.read_text())
    assert entry["times"] == first.tolist() and entry["cost"] <= entry["uniform_cost"]
    assert (entry["steps"], entry["max_steps"], entry["num_samples"]) == (4, 32, 16)


def test_cache_misses_when_the_model_k_or_noise_change(tmp_path):
    field = GaussianLinearFlow(torch.zeros(3).double(), torch.full((3,), 0.3).double())
    calls, noise = counted(field), gaussian_noise(16, 0)
    boss_grid(field, noise, 4, max_steps=16, cache_dir=tmp_path)
    boss_grid(field, noise, 2, max_steps=16, cache_dir=tmp_path)
    boss_grid(field, gaussian_noise(16, 1), 4, max_steps=16, cache_dir=tmp_path)
    field.mean += 1.0
    boss_grid(field, noise, 4, max_steps=16, cache_dir=tmp_path)
    assert len(calls) == 4 * 16 and len(list(tmp_path.glob("*.json"))) == 4


def test_fingerprint_sees_state_and_plain_settings():
    assert model_fingerprint(RiccatiFlow(0.25)) == model_fingerprint(RiccatiFlow(0.25))
    assert model_fingerprint(RiccatiFlow(0.25)) != model_fingerprint(RiccatiFlow(0.5))
    std = torch.ones(2)
    assert model_fingerprint(GaussianLinearFlow(torch.zeros(2), std)) != model_fingerprint(
        GaussianLinearFlow(torch.ones(2), std)
    )


def test_plain_functions_are_cached_only_with_a_fingerprint(tmp_path):
    calls = []

    def field(x, t):
        calls.append(1)
        return torch.ones_like(x)

    noise = gaussian_noise(4, 0)
    for _ in range(2):
        boss_grid(field, noise, 2, max_steps=8, cache_dir=tmp_path)
    assert len(calls) == 16 and not list(tmp_path.iterdir())
    for _ in range(2):
        boss_grid(field, noise, 2, max_steps=8, cache_dir=tmp_path, fingerprint="ones-v1")
    assert len(calls) == 24 and len(list(tmp_path.glob("*.json"))) == 1


def test_default_cache_folder_follows_mmflow_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFLOW_CACHE", str(tmp_path))
    boss_grid(RiccatiFlow(), uniform_noise(4, -1.0, 1.0, 0), 2, max_steps=8)
    assert len(list((tmp_path / "boss").glob("boss-2of8-*.json"))) == 1


def test_a_damaged_cache_file_names_itself(tmp_path):
    field, noise = RiccatiFlow(), uniform_noise(4, -1.0, 1.0, 0)
    boss_grid(field, noise, 2, max_steps=8, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")
    path.write_text(json.dumps({"indices": [0, 8]}))
    clear_boss_memory_cache()
    with pytest.raises(ValueError, match=path.name):
        boss_grid(field, noise, 2, max_steps=8, cache_dir=tmp_path)


def test_bad_arguments_name_themselves():
    field, noise = RiccatiFlow(), uniform_noise(4, -1.0, 1.0, 0)
    with pytest.raises(ValueError, match="`steps`"):
        boss_grid(field, noise, 9, max_steps=8, cache=False)
    with pytest.raises(ValueError, match="`noise`"):
        boss_grid(field, torch.zeros(3), 2, max_steps=8, cache=False)
    with pytest.raises(ValueError, match="unknown sampler"):
        boss_grid(field, noise, 2, max_steps=8, reference="dopri42", cache=False)
