"""The sampler sweep behind ``mmflow benchmark samplers``, on the toy modality."""

import json

import pytest
import torch

from mmflow.benchmark import sampler_sweep, write_report
from mmflow.data import load_datamodule, take_batches
from mmflow.hub import PretrainedFlow
from mmflow.sampling.analytic import GaussianLinearFlow

from .training.toy import CLASS_MEANS, CLASS_STD, ToyAdapter, ToyData


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


def test_sweep_reports_every_cell_and_marks_impossible_budgets(flow, tmp_path):
    batches = take_batches(ToyData(size=256, batch_size=64), "val", 128)
    rows = sampler_sweep(flow, batches, ["euler", "heun"], [1, 2, 8], media_dir=tmp_path)
    cells = {(r.sampler, r.nfe): r for r in rows}
    assert cells[("heun", 1)].not_applicable and not cells[("heun", 1)].metrics
    assert cells[("euler", 8)].counted_nfe == 8
    # The exact field puts every class's generated mean on its true mean (up to sampling error).
    assert all(r.metrics["mean_error"] < 0.15 for r in rows if r.metrics)
    json_path, plot_path = write_report(
        rows, tmp_path, {"metric_names": {"mean_error": "mean error"}}
    )
    assert json.loads(json_path.read_text())["rows"][0]["sampler"] == "euler"
    assert plot_path.stat().st_size > 0
    assert (tmp_path / "euler_nfe8.pt").exists()


def test_take_batches_counts_examples_exactly():
    batches = take_batches(ToyData(size=256, batch_size=64), "test", 100)
    assert [len(b["label"]) for b in batches] == [64, 36]
    with pytest.raises(ValueError, match="only 256"):
        take_batches(ToyData(size=256, batch_size=64), "test", 1000)


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
