"""The sampling-throughput benchmark times the one sampling entry point, guided and not."""

import json

import pytest
import torch
from torch import nn

from benchmarks.sampling_throughput import main, measure, repeat_rows
from mmflow.training import FlowMatching
from tests.mmflow.training.toy import ToyAdapter, ToyVelocity


class RowCounter(nn.Module):
    """Wraps a velocity network and counts its calls and the rows it is given."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.calls = self.rows = 0

    def forward(self, x, t, **cond):
        self.calls += 1
        self.rows += x.shape[0]
        return self.network(x, t, **cond)


def toy_module(cfg_scale: float) -> FlowMatching:
    return FlowMatching(
        ToyAdapter(),
        RowCounter(ToyVelocity(width=16)),
        ema_decay=None,
        sampler="euler",
        nfe=4,
        cfg_scale=cfg_scale,
    )


def toy_batch(size: int = 3) -> dict:
    return {
        "point": torch.arange(2.0 * size).reshape(size, 2),
        "label": torch.arange(size) % 3,
        "caption": [f"row {i}" for i in range(size)],
    }


def test_rows_repeat_in_turn_for_tensors_and_lists():
    repeated = repeat_rows(toy_batch(3), 7)
    assert repeated["label"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert torch.equal(repeated["point"][4], torch.tensor([2.0, 3.0]))
    assert repeated["caption"][6] == "row 0"
    assert len(repeat_rows(toy_batch(3), 2)["caption"]) == 2


def test_entries_of_different_lengths_or_kinds_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        repeat_rows({**toy_batch(3), "caption": ["a"]}, 4)
    with pytest.raises(TypeError, match="`scale`"):
        repeat_rows({"points": torch.ones(2, 2), "scale": 1.0}, 3)


def test_guidance_is_one_batched_forward_of_twice_the_rows():
    module = toy_module(cfg_scale=2.0).eval()
    result = measure(module, toy_batch(), batch_size=5, repeats=1)
    counter = module.network
    # generate once for the samples, then a warm-up and one timed run each of the guided and
    # the unguided generation: 3 guided and 2 unguided runs of 4 steps
    assert counter.calls == 3 * 4 + 2 * 4
    assert counter.rows == 3 * 4 * 10 + 2 * 4 * 5
    assert result["nfe"] == 4 and result["cfg_scale"] == 2.0
    assert result["generate_s"] > 0 and result["unguided_s"] > 0 and result["decode_s"] > 0
    assert result["cfg_cost"] == pytest.approx(result["generate_s"] / result["unguided_s"])
    assert result["samples_per_second"] == pytest.approx(5 / result["generate_s"])
    assert result["samples_per_second"] > result["decoded_samples_per_second"]


def test_an_unguided_recipe_is_timed_once_with_no_cfg_cost():
    module = toy_module(cfg_scale=1.0).eval()
    result = measure(module, toy_batch(), batch_size=2, repeats=2)
    assert module.network.calls == 4 * (1 + 1 + 2)
    assert module.network.rows == 2 * module.network.calls
    assert result["cfg_cost"] == 1.0 and result["unguided_s"] == result["generate_s"]


RECIPE = """
model:
  adapter: {class_path: tests.mmflow.training.toy.ToyAdapter}
  network: {class_path: tests.mmflow.training.toy.ToyVelocity, init_args: {width: 8}}
  sampler: heun
  nfe: 4
  cfg_scale: 1.5
data:
  class_path: tests.mmflow.training.toy.ToyData
  init_args: {size: 16, batch_size: 4}
"""


def test_the_script_writes_a_row_per_batch_size(tmp_path, capsys):
    config = tmp_path / "toy.yaml"
    config.write_text(RECIPE)
    out = tmp_path / "throughput.json"
    argv = ["--config", str(config), "--batch_sizes", "1", "6", "--repeats", "1", "--out", str(out)]
    assert main([*argv, "--", "--model.nfe=2"]) == 0
    record = json.loads(out.read_text())
    assert [r["batch_size"] for r in record["results"]] == [1, 6]
    assert all(r["sampler"] == "heun" and r["nfe"] == 2 for r in record["results"])
    assert "| 6 | heun | 2 | 1.5 |" in capsys.readouterr().out
