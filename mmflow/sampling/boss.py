"""BOSS: Bellman optimal step sizes for a trained velocity model (Nguyen et al., 2023).

"Bellman Optimal Stepsize Straightening of Flow-Matching Models" picks, for one model and a
budget of ``K`` Euler steps, the time grid that best follows the model's own trajectories.
In mmflow's time (t = 0 noise, t = 1 data; BOSS uses the same convention):

1. **Reference trajectories.** From ``N`` noises, integrate ``dx/dt = u(x, t)`` on the
   ``K_max``-step uniform grid ``t_i = i / K_max``, keeping the states ``x_i`` and the
   velocities ``v_i = u(x_i, t_i)`` (Euler by default; any registered solver may be used).
2. **Cost of a jump.** For every pair of nodes ``i < j``::

       c_ij = mean_n || x_i + (t_j - t_i) v_i - x_j ||^2

   (squared error summed over coordinates, averaged over the ``N`` samples), the error of one
   Euler step from ``t_i`` straight to ``t_j`` started on the reference trajectory.
3. **Dynamic programme.** With ``D_1(i) = c_{i,K_max}`` and
   ``D_k(i) = min_{i < j < K_max} c_ij + D_{k-1}(j)``, the grid is the path from node 0 to
   node ``K_max`` of exactly ``K`` jumps that attains ``D_K(0)``, found by backtracking.

What the cost measures: each ``c_ij`` is a *local* error, the gap one coarse Euler step opens
against the reference; the total is the sum of these gaps and ignores how an early error is
carried forward (BOSS's approximation). With the Euler reference, ``c_{i,i+1} = 0`` and the
grid approaches the ``K_max``-step Euler solution; with a higher-order reference (``"rk4"``)
it approaches the exact flow. On a field whose trajectories are straight lines every grid
costs zero. Because propagation is ignored, a lower BOSS cost means a lower endpoint error
only where the flow does not amplify errors: on an expanding flow (``du/dx > 0``) the BOSS
grid can do worse than the uniform one, on a contracting one or towards a narrow target (where
trajectories bend near the data, as image models' do) it does better (``docs/sampling.md``
has the measured ratios). The grid is optimised for Euler steps; other solvers accept it as any explicit
grid: ``sample(model, x0, method="heun", grid=boss_grid(...), nfe=None)``.

Computing a grid costs ``K_max`` batched model calls per solver stage on the ``N`` noises,
so grids are cached per model and ``K`` (in memory and as JSON files).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmflow.files import read_json
from mmflow.sampling._shared import GridCache, check_positive_int, digest, model_fingerprint
from mmflow.sampling.registry import get_sampler, sample
from mmflow.timesteps import uniform_grid

CACHE_FORMAT = 1
_cache = GridCache("boss")


def _reference_trajectory(
    model: Callable[..., Tensor],
    noise: Tensor,
    max_steps: int,
    reference: str,
    model_kwargs: dict[str, Any],
) -> tuple[Tensor, Tensor, Tensor]:
    """Times ``[K_max + 1]``, states ``[K_max + 1, N, ...]`` and velocities ``[K_max, N, ...]``."""
    states, velocities = [noise], []

    def keep(info: dict[str, Any]) -> None:
        states.append(info["x"])
        velocities.append(info["velocity"])

    result = sample(
        model,
        noise,
        method=reference,
        nfe=None,
        grid=uniform_grid(max_steps, torch.float64),
        callback=keep,
        **model_kwargs,
    )
    return result.grid, torch.stack(states), torch.stack(velocities)


def _jump_costs(times: Tensor, states: Tensor, velocities: Tensor) -> Tensor:
    """``c_ij = mean_n ||x_i + (t_j - t_i) v_i - x_j||^2`` for ``i < j``, ``inf`` elsewhere.

    One tensor expression per start node ``i`` covers every later node and every sample.
    """
    nodes = times.numel()
    cost = torch.full((nodes, nodes), float("inf"), dtype=torch.float64)
    extra_dims = (1,) * (states.ndim - 1)
    for i in range(nodes - 1):
        steps = (times[i + 1 :] - times[i]).to(states.dtype).view(-1, *extra_dims)
        gap = states[i] + steps * velocities[i] - states[i + 1 :]
        squared = gap.to(torch.float64).square().flatten(2).sum(dim=2)
        cost[i, i + 1 :] = squared.mean(dim=1).cpu()
    return cost


def boss_cost_matrix(
    model: Callable[..., Tensor],
    noise: Tensor,
    max_steps: int = 100,
    reference: str = "euler",
    **model_kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """The BOSS cost of every Euler jump between the nodes of the ``max_steps`` uniform grid.

    ``c_ij = mean_n ||x_i + (t_j - t_i) v_i - x_j||^2`` on reference trajectories started
    from ``noise`` (module docstring). Returns the node times ``t_i = i / K_max`` (float64,
    CPU) and the ``[K_max + 1, K_max + 1]`` float64 cost matrix, ``inf`` where ``j <= i``.
    ``reference`` names the registered solver that computes the trajectories; its callback
    must report ``u(x_i, t_i)`` as the step's velocity, as every solver here does.
    """
    check_positive_int("max_steps", max_steps)
    if noise.ndim < 2 or noise.shape[0] < 1:
        raise ValueError(f"`noise` must be a batch [N, ...], got shape {tuple(noise.shape)}")
    get_sampler(reference)
    with torch.no_grad():
        times, states, velocities = _reference_trajectory(
            model, noise, max_steps, reference, model_kwargs
        )
        cost = _jump_costs(times, states, velocities)
    return uniform_grid(max_steps, torch.float64), cost


def bellman_path(cost: Tensor, steps: int) -> tuple[Tensor, float]:
    """The cheapest path of exactly ``steps`` jumps from node 0 to the last node.

    Dynamic programme over ``n = cost.shape[0] - 1``::

        D_1(i) = c_{i,n},    D_k(i) = min_{i < j < n} c_ij + D_{k-1}(j),

    then backtracking from node 0. Only ``c_ij`` with ``i < j`` is read. Costs
    ``O(steps * n^2)``. Returns the node indices (``steps + 1`` of them, from 0 to ``n``)
    and the path's total cost ``D_steps(0)``.
    """
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1] or cost.shape[0] < 2:
        raise ValueError(f"`cost` must be a square matrix of 2+ nodes, got {tuple(cost.shape)}")
    last = cost.shape[0] - 1
    check_positive_int("steps", steps)
    if steps > last:
        raise ValueError(f"`steps` ({steps}) cannot exceed the {last} jumps between the nodes")
    forward = torch.ones_like(cost, dtype=torch.bool).triu(diagonal=1)
    cost = torch.where(forward, cost.to(torch.float64), float("inf")).cpu()
    to_end = cost[:, last]
    choices = []
    for _ in range(steps - 1):
        to_end, best_next = (cost[:, :last] + to_end[:last]).min(dim=1)
        choices.append(best_next)
    path = [0]
    for best_next in reversed(choices):
        path.append(int(best_next[path[-1]]))
    path.append(last)
    return torch.tensor(path), float(to_end[0])


def _cache_fields(
    fingerprint: str,
    noise: Tensor,
    steps: int,
    max_steps: int,
    reference: str,
    model_kwargs: dict[str, Any],
) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "model": fingerprint,
        "steps": steps,
        "max_steps": max_steps,
        "num_samples": noise.shape[0],
        "noise": digest(noise),
        "reference": reference,
        "model_kwargs": digest(model_kwargs),
    }


def _cache_path(directory: Path, fields: dict[str, Any], key: str) -> Path:
    return directory / f"boss-{fields['steps']}of{fields['max_steps']}-{key[:24]}.json"


def _read_cached_path(path: Path, steps: int, max_steps: int) -> list[int]:
    entry = read_json(path, written_by="mmflow.sampling.boss")
    path_nodes = entry.get("indices") if isinstance(entry, dict) else None
    if (
        not isinstance(path_nodes, list)
        or len(path_nodes) != steps + 1
        or path_nodes[0] != 0
        or path_nodes[-1] != max_steps
        or any(later <= earlier for earlier, later in itertools.pairwise(path_nodes))
    ):
        raise ValueError(f"{path}: not a BOSS grid of {steps} steps; delete the file")
    return [int(node) for node in path_nodes]


def clear_boss_memory_cache() -> None:
    """Forget the grids kept in memory (files in the cache folder stay)."""
    _cache.clear()


def boss_grid(
    model: Callable[..., Tensor],
    noise: Tensor,
    steps: int,
    *,
    max_steps: int = 100,
    reference: str = "euler",
    fingerprint: str | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    **model_kwargs: Any,
) -> Tensor:
    """The BOSS time grid of ``steps`` Euler steps for ``model`` (module docstring).

    Args:
        model: velocity model ``model(x, t, **model_kwargs)``.
        noise: the ``[N, ...]`` starting points of the reference trajectories (BOSS uses
            ``N = 100``); they set the data the grid is fitted to.
        steps: ``K``, the number of steps of the returned grid.
        max_steps: ``K_max``; the grid's times are nodes of the ``K_max``-step uniform grid.
        reference: registered solver of the reference trajectories (``"euler"`` as in BOSS,
            or a higher-order one such as ``"rk4"`` to aim at the exact flow).
        fingerprint: identifies the model in the cache key; defaults to
            :func:`model_fingerprint` for an ``nn.Module``. A plain function without one is
            never cached.
        cache: look the grid up in, and store it to, memory and ``cache_dir``.
        cache_dir: folder of the JSON files, default ``$MMFLOW_CACHE/boss`` (else
            ``~/.cache/mmflow/boss``).

    The cache key holds the model fingerprint, ``K``, ``K_max``, the number of samples, a
    hash of the noise itself (which pins its seed and distribution), the reference solver and
    a hash of ``model_kwargs``.

    Returns:
        Increasing float64 times from 0 to 1, length ``steps + 1``, ready for
        ``sample(..., grid=times, nfe=None)``.
    """
    check_positive_int("steps", steps)
    check_positive_int("max_steps", max_steps)
    if steps > max_steps:
        raise ValueError(f"`steps` ({steps}) cannot exceed `max_steps` ({max_steps})")
    if fingerprint is None and isinstance(model, nn.Module):
        fingerprint = model_fingerprint(model)
    if not cache or fingerprint is None:
        return _solve_grid(model, noise, steps, max_steps, reference, model_kwargs)[0]
    fields = _cache_fields(fingerprint, noise, steps, max_steps, reference, model_kwargs)
    key = digest(json.dumps(fields, sort_keys=True))
    path = _cache_path(_cache.directory(cache_dir), fields, key)
    cached = _cache.lookup(key, path, lambda file: _read_cached_path(file, steps, max_steps))
    if cached is not None:
        return uniform_grid(max_steps, torch.float64)[cached]
    times, path_nodes, total, uniform_total = _solve_grid(
        model, noise, steps, max_steps, reference, model_kwargs
    )
    entry = {
        **fields,
        "indices": path_nodes,
        "times": times.tolist(),
        "cost": total,
        "uniform_cost": uniform_total,
    }
    _cache.store(key, path, path_nodes, entry)
    return times


def _solve_grid(
    model: Callable[..., Tensor],
    noise: Tensor,
    steps: int,
    max_steps: int,
    reference: str,
    model_kwargs: dict[str, Any],
) -> tuple[Tensor, list[int], float, float | None]:
    """BOSS times, their node indices, their cost and that of the uniform ``steps`` grid.

    The uniform grid's cost is ``None`` unless its times are nodes (``steps`` divides
    ``max_steps``).
    """
    nodes, cost = boss_cost_matrix(model, noise, max_steps, reference, **model_kwargs)
    path_nodes, total = bellman_path(cost, steps)
    uniform_total = None
    if max_steps % steps == 0:
        stride = max_steps // steps
        uniform_total = float(sum(cost[i, i + stride] for i in range(0, max_steps, stride)))
    return nodes[path_nodes], path_nodes.tolist(), total, uniform_total
