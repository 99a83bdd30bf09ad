"""diffusers' schedulers on mmflow velocity models: the edge conversion, NFE and parity.

Where the algorithms coincide the results must too: FlowMatchEuler on our grid is our Euler;
DPM-Solver++ 2M on its own schedule is our ``dpmpp_2m`` with ``lower_order_final=True`` on that
schedule; UniPC (bh2, order 2) is our ``unipc_bh2_2`` with ``lower_order_final=True``. diffusers
steps in float32, hence the tolerances.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmflow.sampling import GaussianLinearFlow, GaussianMixtureFlow, sample
from mmflow.sampling.diffusers_schedulers import (
    DIFFUSERS_SCHEDULERS,
    DiffusersMissingError,
    accepts_sigmas,
    build_scheduler,
    diffusers_output,
    require_diffusers,
    sigmas_from_grid,
    time_from_sigma,
)
from mmflow.timesteps import shifted_grid, uniform_grid

ROOT = Path(__file__).resolve().parents[3]
FLOAT32_ATOL = 2e-5


def mixture() -> GaussianMixtureFlow:
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    means = torch.tensor([[2.0, 0.0, 1.0], [-1.0, 1.5, -0.5]], dtype=torch.float64)
    stds = torch.tensor([[0.4, 1.0, 0.6], [0.8, 0.3, 0.5]], dtype=torch.float64)
    return GaussianMixtureFlow(weights, means, stds)


def noise(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_time_and_output_are_converted_at_the_edge():
    grid = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert sigmas_from_grid(grid).tolist() == [1.0, 0.75, 0.5]
    with pytest.raises(ValueError, match="end at t = 1"):
        sigmas_from_grid(torch.tensor([0.0, 0.5, 0.9]))
    sigma = torch.tensor(0.25)
    assert float(time_from_sigma(sigma)) == 0.75
    field = GaussianLinearFlow(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.3]))
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    expected = -field(x, torch.full((4,), 0.75))
    torch.testing.assert_close(diffusers_output(field, x, sigma, {}), expected)


@pytest.mark.parametrize(
    "grid", [uniform_grid(4, torch.float64), shifted_grid(9, 3.0, torch.float64)], ids=["u4", "s9"]
)
def test_flow_euler_on_our_grid_is_our_euler(grid):
    field, x0 = mixture(), noise()
    theirs = sample(field, x0, "diffusers_flow_euler", len(grid) - 1, grid=grid)
    ours = sample(field, x0, method="euler", nfe=None, grid=grid)
    torch.testing.assert_close(theirs.grid, grid, rtol=0, atol=1e-7)
    assert theirs.nfe == ours.nfe == len(grid) - 1
    torch.testing.assert_close(theirs.samples, ours.samples, rtol=0, atol=FLOAT32_ATOL)


@pytest.mark.parametrize("steps", [6, 16])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_dpmpp_2m_on_its_own_schedule_is_ours_with_lower_order_final(steps, shift):
    """16 steps also covers diffusers' ``>= 15`` branch, where only the last step drops order."""
    field, x0 = mixture(), noise()
    theirs = sample(field, x0, "diffusers_dpmpp_2m", steps, solver_options={"shift": shift})
    assert 0 < float(theirs.grid[0]) < 2e-3 and float(theirs.grid[-1]) == 1.0
    ours = sample(
        field,
        x0,
        method="dpmpp_2m",
        nfe=steps,
        grid=theirs.grid,
        solver_options={"lower_order_final": True},
    )
    torch.testing.assert_close(theirs.samples, ours.samples, rtol=0, atol=FLOAT32_ATOL)


def test_unipc_is_ours_with_lower_order_final():
    """On our uniform grid; diffusers moves the first sigma from 1 to 1 - 1e-6."""
    field, x0, steps = mixture(), noise(), 8
    theirs = sample(field, x0, "diffusers_unipc_bh2_2", steps, grid=uniform_grid(steps))
    assert 0 < float(theirs.grid[0]) < 2e-6
    ours = sample(
        field,
        x0,
        method="unipc_bh2_2",
        nfe=steps,
        grid=theirs.grid,
        solver_options={"lower_order_final": True},
    )
    torch.testing.assert_close(theirs.samples, ours.samples, rtol=0, atol=FLOAT32_ATOL)


@pytest.mark.parametrize("name", sorted(DIFFUSERS_SCHEDULERS))
@pytest.mark.parametrize("nfe", [1, 3])
def test_every_scheduler_spends_exactly_its_nfe(name, nfe):
    """UniPC with ``B(h) = h`` (bh1) returns NaN in diffusers 0.42: on the last step, into
    sigma = 0, ``h`` is infinite and multiplies a zero correction."""
    result = sample(mixture(), noise(2), f"diffusers_{name}", nfe)
    assert result.nfe == nfe and len(result.grid) == nfe + 1
    assert bool(torch.isfinite(result.samples).all()) == ("bh1" not in name)


def test_which_schedulers_take_our_grid():
    assert accepts_sigmas("flow_euler") and accepts_sigmas("unipc_bh2_2")
    assert not accepts_sigmas("dpmpp_2m")
    with pytest.raises(ValueError, match="takes no explicit sigmas"):
        build_scheduler("dpmpp_3m", 4, grid=uniform_grid(4))
    with pytest.raises(ValueError, match="4 steps, `nfe` asks for 5"):
        build_scheduler("flow_euler", 5, grid=uniform_grid(4))
    with pytest.raises(ValueError, match="unknown diffusers scheduler `ddim`"):
        build_scheduler("ddim", 4)
    with pytest.raises(ValueError, match="not both"):
        build_scheduler("unipc_bh2_2", 4, grid=uniform_grid(4), shift=3.0)


def test_a_missing_diffusers_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(DiffusersMissingError, match="pip install diffusers"):
        require_diffusers()
    with pytest.raises(DiffusersMissingError, match="pip install diffusers"):
        sample(mixture(), noise(2), "diffusers_flow_euler", 2)


def test_mmflow_imports_without_diffusers():
    """diffusers is imported when a scheduler is built, not by mmflow or the benchmark."""
    code = (
        "import sys; sys.modules['diffusers'] = None; "
        "import mmflow.sampling.diffusers_schedulers, mmflow.cli, benchmarks.samplers; print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
