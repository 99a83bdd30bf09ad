"""``python -m benchmarks.fewstep``: every model at every budget on the same data, with its
size, training time and speed, against a reference row."""

import json

import pytest

from benchmarks.fewstep import main, read_models
from tests.mmflow.test_cli import write_recipe

from .test_samplers import write_tiny_checkpoint


def write_models(path, checkpoint):
    path.write_text(
        f"""
- name: teacher
  checkpoint: {checkpoint}
  sampler: heun
  nfe: [8]
  cfg_scale: 2.0
  train_seconds: 12
- name: one-step
  checkpoint: {checkpoint}
  sampler: euler
  nfe: [1, 2]
"""
    )
    return path


def test_the_table_scores_every_budget_and_measures_speed(tmp_path):
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.ckpt")
    models = write_models(tmp_path / "models.yaml", checkpoint)
    out = tmp_path / "bench"
    arguments = ["--config", str(write_recipe(tmp_path)), "--models", str(models)]
    assert main([*arguments, "--num_samples", "64", "--speed_batch", "64", "--out", str(out)]) == 0
    rows = json.loads((out / "fewstep.json").read_text())
    assert [(r["name"], r["nfe"]) for r in rows] == [
        ("teacher", 8),
        ("one-step", 1),
        ("one-step", 2),
    ]
    assert all("mean_error" in r["metrics"] for r in rows)
    assert rows[0]["train_seconds"] == 12 and rows[1]["train_seconds"] is None
    assert rows[0]["parameters"] == rows[1]["parameters"] > 0
    assert rows[0]["straightness"] > 0 and rows[0]["straightness"] != rows[1]["straightness"]
    teacher, one_step = rows[0]["samples_per_second"], rows[1]["samples_per_second"]
    assert one_step > 3 * teacher, "16 guided evaluations against 1 unguided one"
    table = (out / "fewstep.md").read_text()
    assert "| teacher | heun | 8 |" in table and "1.0x" in table
    header, _, first, *_ = table.splitlines()
    assert first.count("|") == header.count("|")
    assert f"{rows[0]['straightness']:.4f}" in first


def test_a_bad_models_file_is_named(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("- name: x\n  sampler: euler\n  nfe: [1]\n  steps: 4\n")
    with pytest.raises(ValueError, match=r"models.yaml: entry 0: unknown keys \['steps'\]"):
        read_models(path)
    path.write_text("{}")
    with pytest.raises(ValueError, match="non-empty list"):
        read_models(path)


def test_adapter_args_change_how_every_model_is_scored(tmp_path, capsys):
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.ckpt")
    models = write_models(tmp_path / "models.yaml", checkpoint)
    arguments = ["--config", str(write_recipe(tmp_path)), "--models", str(models)]
    arguments += ["--num_samples", "16", "--speed_batch", "16", "--out", str(tmp_path / "b")]
    assert main([*arguments, "--adapter_args", "{no_such_setting: 1}"]) == 2
    assert "no_such_setting" in capsys.readouterr().err
