"""The sweeps of ``python -m benchmarks.samplers``: the toy modality and the analytic field,
and its command line."""

import json
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.samplers import (
    DEFAULT_ADAPTIVE,
    FittedGrids,
    Method,
    SweepRow,
    TimeGrids,
    best_error_ratio,
    component_switches,
    endpoint_mean_error,
    endpoint_median_error,
    endpoint_rmse,
    error_table,
    expand_samplers,
    field_benchmark,
    main,
    ode_sampler_names,
    reference_endpoints,
    run_method,
    sampler_sweep,
    write_report,
)
from mmflow.data import load_datamodule, take_batches
from mmflow.hub import PretrainedFlow
from mmflow.sampling import SAMPLERS
from mmflow.sampling.analytic import (
    GaussianLinearFlow,
    GaussianMixtureFlow,
    random_gaussian_mixture,
)
from tests.mmflow.test_cli import run, write_recipe
from tests.mmflow.training.toy import CLASS_MEANS, CLASS_STD, ToyAdapter, ToyData, ToyVelocity

COMMAND = "python -m benchmarks.samplers"

ROW_KEYS = {
    "sampler",
    "grid",
    "nfe",
    "cfg_scale",
    "source",
    "schedule",
    "tolerance",
    "metrics",
    "counted_nfe",
    "seconds",
    "not_applicable",
    "times",
}


class ExactToyVelocity(torch.nn.Module):
    """The exact velocity towards N(mean of the label's class, 0.3^2) per sample."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the flow a device

    def forward(self, x, t, class_labels):
        means = CLASS_MEANS.to(x)[class_labels.clamp(max=len(CLASS_MEANS) - 1)]
        field = GaussianLinearFlow(torch.zeros(2), torch.full((2,), CLASS_STD))
        return means + field(x - t[:, None] * means, t)


@pytest.fixture
def flow():
    return PretrainedFlow(ExactToyVelocity(), ToyAdapter())


@pytest.fixture
def batches():
    return take_batches(ToyData(size=256, batch_size=64), "val", 128)


def cells(rows):
    return {(r.sampler, r.grid, r.nfe): r for r in rows}


def test_sweep_reports_every_cell_and_marks_impossible_budgets(flow, batches, tmp_path):
    rows = sampler_sweep(flow, batches, ["euler", "heun"], [1, 2, 8], media_dir=tmp_path)
    by_cell = cells(rows)
    heun_1 = by_cell[("heun", "uniform", 1)]
    assert heun_1.not_applicable and not heun_1.metrics
    assert all(r.counted_nfe == r.nfe for r in rows if r.metrics)
    # The exact field puts every class's generated mean on its true mean (up to sampling error).
    assert all(r.metrics["mean_error"] < 0.15 for r in rows if r.metrics)
    json_path, plot_path = write_report(
        rows, tmp_path, {"metric_names": {"mean_error": "mean error"}}
    )
    report = json.loads(json_path.read_text())
    assert report["rows"][0]["sampler"] == "euler"
    assert all(set(row) == ROW_KEYS for row in report["rows"])
    assert plot_path.stat().st_size > 0
    assert (tmp_path / "euler_nfe8.pt").exists()


def test_diffusers_rows_integrate_the_same_guided_model(flow, batches):
    """CFG at 2: FlowMatchEuler on our grid is our Euler row, and both differ from CFG 1."""
    schedulers = ["flow_euler", "dpmpp_2m", "unipc_bh2_2"]
    rows = sampler_sweep(flow, batches, ["euler"], [4, 8], cfg_scale=2.0, schedulers=schedulers)
    unguided = cells(sampler_sweep(flow, batches, ["euler"], [8], cfg_scale=1.0))
    by_cell = cells(rows)
    for nfe in (4, 8):
        ours = by_cell[("euler", "uniform", nfe)]
        theirs = by_cell[("diffusers:flow_euler", "ours: uniform", nfe)]
        assert theirs.source == "diffusers" and theirs.schedule == "mmflow"
        assert theirs.counted_nfe == ours.counted_nfe == nfe
        assert theirs.times == pytest.approx(ours.times, abs=1e-7)
        assert theirs.metrics["mean_error"] == pytest.approx(ours.metrics["mean_error"], abs=1e-5)
    guided = by_cell[("euler", "uniform", 8)].metrics["mean_error"]
    assert abs(guided - unguided[("euler", "uniform", 8)].metrics["mean_error"]) > 1e-2
    default = by_cell[("diffusers:dpmpp_2m", "diffusers default(shift=1)", 8)]
    assert default.schedule == "diffusers" and default.counted_nfe == 8
    assert default.times[0] == pytest.approx(1e-3, rel=1e-3)  # DPM starts at sigma = 0.999
    assert ("diffusers:dpmpp_2m", "ours: uniform", 8) not in by_cell  # it takes no sigmas
    assert ("diffusers:unipc_bh2_2", "ours: uniform", 8) in by_cell


def test_adaptive_rows_report_the_nfe_they_used(flow, batches):
    rows = sampler_sweep(flow, batches, ["dopri5"], [4], tolerances=[1e-2, 1e-5])
    assert [(r.sampler, r.nfe, r.tolerance) for r in rows] == [
        ("dopri5", None, 1e-2),
        ("dopri5", None, 1e-5),
    ]
    assert all(r.schedule == "adaptive" and r.metrics for r in rows)
    assert 0 < rows[0].counted_nfe < rows[1].counted_nfe


def test_all_means_every_ode_sampler_and_dopri5():
    names = expand_samplers(["all"])
    assert names[-1] == DEFAULT_ADAPTIVE
    ode_solvers = {name for name, spec in SAMPLERS.items() if spec.kind in ("ode", "multistep")}
    assert set(names[:-1]) == set(ode_sampler_names()) == ode_solvers
    assert "euler_maruyama" not in names and "dopri8" not in names
    with pytest.raises(ValueError, match="unknown sampler `eulr`"):
        expand_samplers(["eulr"])
    with pytest.raises(ValueError, match="`smc` is not an ODE solver"):
        expand_samplers(["smc"])
    with pytest.raises(ValueError, match="`grid` must be one of"):
        Method("mmflow", "euler", grid="karras")


def test_boss_grids_are_bellman_paths_through_the_costs():
    costs = torch.full((5, 5), float("inf"))
    for i in range(4):
        costs[i, i + 1 :] = torch.arange(1, 5 - i, dtype=torch.float32) ** 2
    grids = TimeGrids(costs)
    torch.testing.assert_close(grids("boss", 1.0, 4), torch.linspace(0, 1, 5, dtype=torch.float64))
    assert grids("boss", 1.0, 2).tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="BOSS grids need"):
        TimeGrids()("boss", 1.0, 2)


def test_fitted_grids_start_from_the_best_candidate_and_serve_optimised_rows():
    """Towards a narrow Gaussian, Heun's fitted grid beats every candidate on held-out noise."""
    field = GaussianLinearFlow(
        torch.zeros(2, dtype=torch.float64), torch.full((2,), 0.1, dtype=torch.float64)
    )
    fit, held_out = (
        torch.randn(64, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        for seed in (0, 1)
    )
    fitted = FittedGrids(field, fit, field.flow(fit, 1.0), TimeGrids(), [3.0], max_evals=200)
    grids = TimeGrids(fitted=fitted)
    optimised = run_method(Method("mmflow", "heun", "optimised"), field, held_out, 8, grids)
    assert optimised.nfe == 8 and set(fitted.seconds) == {"heun@8"}
    exact = field.flow(held_out, 1.0)
    error = (optimised.samples - exact).square().mean()
    for grid, shift in (("uniform", 1.0), ("shifted", 3.0)):
        candidate = run_method(Method("mmflow", "heun", grid, shift), field, held_out, 8, grids)
        assert error < 0.5 * (candidate.samples - exact).square().mean()
    assert grids.optimised("heun", 8) is fitted.grids["heun", 8]  # fitted once
    with pytest.raises(ValueError, match="NFE 7: heun uses 2 evaluations"):
        fitted("heun", 7)
    with pytest.raises(ValueError, match="no `optimised` grid here"):
        TimeGrids().optimised("heun", 8)
    with pytest.raises(ValueError, match="grid 'optimised'"):
        Method("diffusers", "flow_euler", grid="optimised")
    with pytest.raises(ValueError, match="unknown `objective` 'l1'"):
        FittedGrids(field, fit, field.flow(fit, 1.0), TimeGrids(), objective="l1")


def test_fitted_grids_minimise_the_objective_they_are_given():
    """Fitted for the mean per-sample error, Heun's grid has a lower mean error on its fit
    noise than the grid fitted for the MSE, and a higher MSE: each objective wins its own."""
    field = random_gaussian_mixture()
    fit = torch.randn(256, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    reference, _ = reference_endpoints(field, fit)
    losses = {}
    for objective in ("mse", "mean_error"):
        fitted = FittedGrids(field, fit, reference, TimeGrids(), [2.0], 120, objective)
        result = run_method(Method("mmflow", "heun", "optimised"), field, fit, 8,
                            TimeGrids(fitted=fitted))  # fmt: skip
        losses[objective] = (
            endpoint_rmse(result.samples, reference) ** 2,
            endpoint_mean_error(result.samples, reference),
        )
    assert losses["mse"][0] < losses["mean_error"][0]
    assert losses["mean_error"][1] < losses["mse"][1]


def test_reference_endpoints_agree_with_rk4():
    field = random_gaussian_mixture()
    noise = torch.randn(16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    reference, check = reference_endpoints(field, noise)
    assert check["rk4_gap_rmse"] < 1e-9
    assert check["reference_nfe"] > 100
    assert reference.shape == noise.shape


def test_field_benchmark_table_and_ratio(tmp_path):
    result = field_benchmark(
        "gmm16",
        num_samples=16,
        samplers=["euler", "heun", "dopri5"],
        schedulers=["flow_euler"],
        nfes=[4, 8],
        shifts=[3.0],
        tolerances=[1e-3],
    )
    by_cell = cells(result.rows)
    euler = by_cell[("euler", "uniform", 8)].metrics["endpoint_rmse"]
    theirs = by_cell[("diffusers:flow_euler", "ours: uniform", 8)].metrics["endpoint_rmse"]
    assert theirs == pytest.approx(euler, rel=1e-4)
    assert all(0 <= r.metrics["component_switches"] <= 1 for r in result.rows if r.metrics)
    assert by_cell[("euler", "boss", 8)].times[0] == 0.0
    assert ("diffusers:flow_euler", "diffusers default(shift=3)", 4) in by_cell
    ratio = best_error_ratio(result.rows, 8)
    assert 0 < ratio < 1  # Heun on a second-order budget beats any Euler
    table = error_table(result.rows)
    assert "diffusers:flow_euler" in table and "ratio" in table and "dopri5" in table
    json_path, _ = write_report(result.rows, tmp_path, result.context, envelope=True)
    assert json.loads(json_path.read_text())["reference"]["rk4_gap_rmse"] < 1e-9


def test_best_error_ratio_needs_both_sides():
    row = SweepRow("euler", "uniform", 8, None, metrics={"endpoint_rmse": 1.0})
    with pytest.raises(ValueError, match="no mmflow and diffusers rows"):
        best_error_ratio([row], 8)


def one_error_line(capsys) -> str:
    """The one line a user's error prints to stderr, as `mmflow` commands print it."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{COMMAND}: error: "), lines
    return lines[0]


def test_a_missing_diffusers_is_one_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    argv = ["--field", "gmm16", "--out", str(tmp_path)]
    assert main(argv) == 2
    error = one_error_line(capsys)
    assert "pip install diffusers" in error and "--diffusers []" in error


def test_field_mode_refuses_a_checkpoint(tmp_path, capsys):
    argv = ["--field", "gmm16", "--checkpoint", "x.ckpt"]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert "--field runs on an analytic field" in one_error_line(capsys)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"optimised_objective": "rmse"}, "unknown `objective` 'rmse'"),
        ({"optimised_samplers": ["unipc"]}, "unknown sampler `unipc`"),
    ],
)
def test_field_benchmark_names_a_bad_optimised_option_before_the_sweep(options, message):
    with pytest.raises(ValueError, match=message):
        field_benchmark("gmm16", num_samples=4, **options)


def test_optimised_grids_are_refused_without_a_field(tmp_path, capsys):
    argv = ["--checkpoint", "x.ckpt", "--optimised", "[heun]"]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert "--optimised fits grids to an analytic field" in one_error_line(capsys)


def test_take_batches_counts_examples_exactly():
    batches = take_batches(ToyData(size=256, batch_size=64), "test", 100)
    assert [len(b["label"]) for b in batches] == [64, 36]
    with pytest.raises(ValueError, match="only 256"):
        take_batches(ToyData(size=256, batch_size=64), "test", 1000)
    whole = take_batches(ToyData(size=200, batch_size=64), "test", None)
    assert [len(b["label"]) for b in whole] == [64, 64, 64, 8]


def test_take_batches_reads_the_training_split_seeded_and_names_a_bad_split():
    def first_labels(seed):
        torch.manual_seed(seed)
        return torch.cat([b["label"] for b in take_batches(ToyData(size=256), "train", 100)])

    assert torch.equal(first_labels(0), first_labels(0))
    assert not torch.equal(first_labels(0), first_labels(1))
    with pytest.raises(ValueError, match="`split`"):
        take_batches(ToyData(size=256), "training", 10)


def test_load_datamodule_from_a_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data:\n  class_path: tests.mmflow.training.toy.ToyData\n  init_args:\n    size: 32\n"
    )
    assert isinstance(load_datamodule(recipe), ToyData)
    recipe.write_text("model: {}\n")
    with pytest.raises(ValueError, match="r.yaml: no `data:`"):
        load_datamodule(recipe)
    recipe.write_text("data:\n  class_path: tests.mmflow.training.toy.NoSuchData\n")
    with pytest.raises(ValueError, match="r.yaml: cannot build `data`"):
        load_datamodule(recipe)


def test_median_endpoint_error_ignores_the_few_far_samples_that_the_rmse_counts() -> None:
    """Per-sample RMS errors 1, 2 and 10: median 2, mean 13 / 3, RMSE sqrt((1 + 4 + 100) / 3)."""
    reference = torch.zeros(3, 4, dtype=torch.float64)
    estimate = torch.tensor([1.0, 2.0, 10.0], dtype=torch.float64)[:, None].expand(3, 4)
    assert endpoint_median_error(estimate, reference) == pytest.approx(2.0)
    assert endpoint_mean_error(estimate, reference) == pytest.approx(13 / 3)
    assert endpoint_rmse(estimate, reference) == pytest.approx((105 / 3) ** 0.5)


def test_component_switches_count_endpoints_in_another_component_not_far_ones() -> None:
    """Two narrow 1-D components at -3 and +3: of four estimates, one crosses to the other
    component (a switch) and one overshoots far past its own mean (no switch), so 1/4."""
    mixture = GaussianMixtureFlow(
        torch.ones(2, dtype=torch.float64),
        torch.tensor([[-3.0], [3.0]], dtype=torch.float64),
        torch.full((2, 1), 0.2, dtype=torch.float64),
    )
    reference = torch.tensor([[-3.1], [2.9], [3.2], [-2.8]], dtype=torch.float64)
    estimate = torch.tensor([[-3.0], [-2.9], [9.0], [-2.7]], dtype=torch.float64)
    assert component_switches(mixture, estimate, reference) == pytest.approx(0.25)
    assert component_switches(mixture, reference, reference) == 0.0


# -- the command line --------------------------------------------------------------------------


def write_tiny_checkpoint(path: Path) -> Path:
    """A checkpoint as `mmflow fit` writes it, for a width-8 toy network (no training needed)."""
    torch.manual_seed(0)
    network = ToyVelocity(width=8)
    checkpoint = {
        "hyper_parameters": {
            "network": {
                "class_path": "tests.mmflow.training.toy.ToyVelocity",
                "init_args": {"width": 8},
            },
            "adapter": {"class_path": "tests.mmflow.training.toy.ToyAdapter"},
            "sampler": "heun",
            "nfe": 4,
            "cfg_scale": 2.0,
        },
        "state_dict": {f"network.{k}": v for k, v in network.state_dict().items()},
    }
    torch.save(checkpoint, path)
    return path


def test_benchmark_samplers_on_a_checkpoint(tmp_path):
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.ckpt")
    out = tmp_path / "bench"
    status = main(
        [
            "--config",
            str(write_recipe(tmp_path)),
            "--checkpoint",
            str(checkpoint),
            "--samplers",
            "[euler,heun,dopri5]",
            "--diffusers",
            "[flow_euler,dpmpp_3m]",
            "--nfe",
            "[1,4]",
            "--tolerances",
            "[1e-2]",
            "--num_samples",
            "64",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    report = json.loads((out / "metrics.json").read_text())
    rows = {(r["sampler"], r["grid"], r["nfe"]): r for r in report["rows"]}
    assert rows[("heun", "uniform", 1)]["not_applicable"]
    assert rows[("euler", "uniform", 4)]["counted_nfe"] == 4
    assert rows[("euler", "uniform", 4)]["cfg_scale"] == 2.0
    assert rows[("diffusers:flow_euler", "ours: uniform", 4)]["counted_nfe"] == 4
    assert rows[("diffusers:dpmpp_3m", "diffusers default(shift=1)", 1)]["metrics"]
    assert rows[("dopri5", "adaptive(tol=0.01)", None)]["counted_nfe"] > 0
    assert (out / "metrics_vs_nfe.png").stat().st_size > 0


def test_benchmark_samplers_on_the_gaussian_mixture_field(tmp_path, capsys):
    """Without diffusers rows (``--diffusers []``): importing diffusers alone takes seconds."""
    out = tmp_path / "gmm"
    status = main(
        [
            "--field",
            "gmm16",
            "--samplers",
            "[euler,rk4]",
            "--diffusers",
            "[]",
            "--nfe",
            "[4,8]",
            "--shifts",
            "[2.0]",
            "--num_samples",
            "8",
            "--optimised",
            "[rk4]",
            "--optimised_nfe",
            "[8]",
            "--optimised_evals",
            "4",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    stdout = capsys.readouterr().out
    assert "best endpoint_rmse over grids" in stdout and "NFE   8: mmflow" in stdout
    report = json.loads((out / "metrics.json").read_text())
    assert report["field"] == "gmm16" and report["reference"]["rk4_gap_rmse"] < 1e-9
    assert report["optimised"]["max_evals"] == 4 and report["optimised"]["objective"] == "mse"
    assert {r["grid"] for r in report["rows"]} == {"uniform", "shifted(2)", "boss", "optimised"}
    fitted = next(r for r in report["rows"] if r["grid"] == "optimised")
    assert (fitted["sampler"], fitted["nfe"]) == ("rk4", 8) and fitted["metrics"]
    assert {r["source"] for r in report["rows"]} == {"mmflow"}
    assert (out / "metrics_vs_nfe.png").stat().st_size > 0


def test_mmflow_benchmark_samplers_runs_a_model_with_its_stored_solver_options(tmp_path):
    """Through the `mmflow benchmark` alias: the checkpoint's own sampler (FlowTurbo, one Heun
    and one corrector step: 3 evaluations, a budget no plain step count spends) runs with the
    solver options it was trained with."""
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.ckpt")
    state = torch.load(checkpoint, weights_only=True)
    state["hyper_parameters"].update(
        sampler="flowturbo", nfe=3, solver_options={"heun_steps": 1, "corrector_steps": 1}
    )
    torch.save(state, checkpoint)
    out = tmp_path / "bench"
    args = ["--config", str(write_recipe(tmp_path)), "--checkpoint", str(checkpoint)]
    args += ["--samplers", "[flowturbo,euler]", "--diffusers", "[]", "--nfe", "[3]"]
    run("benchmark", "samplers", *args, "--num_samples", "32", "--out", str(out))
    rows = {r["sampler"]: r for r in json.loads((out / "metrics.json").read_text())["rows"]}
    assert rows["flowturbo"]["counted_nfe"] == 3 and rows["flowturbo"]["metrics"]
    assert rows["euler"]["counted_nfe"] == 3


def test_mmflow_benchmark_names_an_unknown_benchmark():
    result = run("benchmark", "nonexistent", check=False)
    assert result.returncode == 2 and "no benchmark `nonexistent`" in result.stderr
