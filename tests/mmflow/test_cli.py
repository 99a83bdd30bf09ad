"""The installed ``mmflow`` console script, called as a user would, on the toy modality."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from mmflow.cli import main

ROOT = Path(__file__).resolve().parents[2]

RECIPE = """
seed_everything: 0
trainer:
  accelerator: cpu
  max_steps: {max_steps}
  limit_val_batches: 2
  val_check_interval: 10
  check_val_every_n_epoch: null
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  callbacks:
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args:
        dirpath: {root}/checkpoints
        save_last: true
        every_n_train_steps: 5
model:
  adapter:
    class_path: tests.mmflow.training.toy.ToyAdapter
  network:
    class_path: tests.mmflow.training.toy.ToyVelocity
    init_args:
      width: 32
  ema_decay: 0.9
  nfe: 4
  val_sample_batches: 1
data:
  class_path: tests.mmflow.training.toy.ToyData
  init_args:
    size: 256
    batch_size: 32
"""


def mmflow_command() -> list[str]:
    script = Path(sys.executable).parent / "mmflow"
    found = str(script) if script.exists() else shutil.which("mmflow")
    assert found, "the `mmflow` console script is not installed: run `make test` (pip install -e .)"
    return [found]


def run(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMFLOW_TRUSTED_PACKAGES": "tests"}
    result = subprocess.run(
        mmflow_command() + list(args),
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
        **kwargs,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def write_recipe(tmp_path: Path, max_steps: int = 20) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(RECIPE.format(root=tmp_path, max_steps=max_steps))
    return path


def test_info_lists_registered_components():
    out = run("info").stdout
    assert "t=0 noise, t=1 data" in out
    for name in ("heun", "rk4", "logit_normal", "linear", "stochastic"):
        assert name in out


def test_info_lists_every_sampling_method_by_kind_with_its_nfe_rule():
    from mmflow.sampling import KINDS, SAMPLERS

    lines = run("info").stdout.splitlines()
    for title in KINDS.values():
        assert f"  {title}:" in lines
    listed = {line.split()[0]: line for line in lines if line.startswith("    ")}
    assert set(SAMPLERS) <= set(listed)
    for name, spec in SAMPLERS.items():
        assert f"NFE: {spec.nfe_rule}" in listed[name]


def test_unknown_subcommand_fails_with_a_clear_message():
    result = run("bogus", check=False)
    assert result.returncode != 0
    assert "bogus" in result.stderr
    assert "Traceback" not in result.stderr


def test_print_config_shows_every_setting(tmp_path):
    out = run("fit", "--config", str(write_recipe(tmp_path)), "--print_config").stdout
    for key in (
        "cond_dropout:",
        "ema_decay: 0.9",
        "time_distribution:",
        "sampler: heun",
        "max_steps: 20",
    ):
        assert key in out


def test_unknown_key_is_one_clear_error(tmp_path):
    result = run(
        "fit", "--config", str(write_recipe(tmp_path)), "--model.ema_decy=0.5", check=False
    )
    assert result.returncode != 0
    assert "ema_decy" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_type_is_one_clear_error(tmp_path):
    result = run("fit", "--config", str(write_recipe(tmp_path)), "--model.nfe=many", check=False)
    assert result.returncode != 0
    assert "nfe" in result.stderr and "Traceback" not in result.stderr


def test_fit_sample_export_evaluate(tmp_path):
    recipe = write_recipe(tmp_path)
    run("fit", "--config", str(recipe))
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    assert checkpoint.exists()
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 20

    out = run(
        "sample",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(tmp_path / "samples"),
        "--num_samples",
        "6",
    ).stdout
    samples = torch.load(tmp_path / "samples" / "samples.pt")
    assert samples.shape == (6, 2) and "samples.pt" in out

    run("export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "pretrained"))
    run(
        "sample",
        "--pretrained",
        str(tmp_path / "pretrained"),
        "--out",
        str(tmp_path / "again"),
        "--num_samples",
        "6",
    )
    assert torch.equal(torch.load(tmp_path / "again" / "samples.pt"), samples)

    run("predict", "--config", str(recipe), "--ckpt_path", str(checkpoint))

    metrics = tmp_path / "metrics.json"
    run("evaluate", "--config", str(recipe), "--ckpt_path", str(checkpoint), "--out", str(metrics))
    assert "val/mean_error" in metrics.read_text()
    test_metrics = tmp_path / "test.json"
    evaluate = ["evaluate", "--split", "test", "--config", str(recipe)]
    run(*evaluate, "--ckpt_path", str(checkpoint), "--out", str(test_metrics))
    assert "test/mean_error" in test_metrics.read_text()


def test_sample_with_a_missing_checkpoint_names_it(tmp_path):
    result = run(
        "sample", "--checkpoint", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path), check=False
    )
    assert result.returncode == 2
    assert "nope.ckpt" in result.stderr and "Traceback" not in result.stderr


def test_killed_fit_resumes_from_last_checkpoint(tmp_path):
    recipe = write_recipe(tmp_path, max_steps=100000)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        mmflow_command() + ["fit", "--config", str(recipe)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = tmp_path / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (last.exists() and _step(last) >= 10):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = _step(last)
    assert killed_at >= 10, "fit never wrote a checkpoint"

    target = killed_at + 10
    result = run(
        "fit", "--config", str(recipe), "--ckpt_path", "last", f"--trainer.max_steps={target}"
    )
    assert "Restored all states from the checkpoint" in result.stderr + result.stdout
    assert _step(last) == target


def _step(path: Path) -> int:
    for _ in range(20):
        try:
            return int(torch.load(path, weights_only=True)["global_step"])
        except (EOFError, RuntimeError, FileNotFoundError):
            time.sleep(0.1)
    return -1


def test_missing_file_in_a_recipe_is_one_line_naming_it(tmp_path):
    recipe = ROOT / "recipes" / "image" / "mnist.yaml"
    missing = tmp_path / "no-classifier.safetensors"
    result = run(
        "fit",
        "--config",
        str(recipe),
        f"--model.adapter.init_args.classifier_path={missing}",
        check=False,
    )
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("mmflow fit: error:") and str(missing) in last_line
    assert "Traceback" not in result.stderr


def test_bad_numbers_and_a_file_as_output_folder_are_one_clear_error(tmp_path, capfd):
    def in_process(*args):
        capfd.readouterr()
        try:
            status = main(list(args))
        except SystemExit as stop:  # the argument parser's own errors
            status = int(stop.code or 0)
        return status, capfd.readouterr().err

    for option in ("--num_samples=0", "--batch_size=0", "--nfe=-1"):
        status, err = in_process("sample", "--pretrained", str(tmp_path), "--out", "x", option)
        assert status == 2, option
        assert option.split("=")[0].lstrip("-") in err and "Traceback" not in err
    existing = tmp_path / "taken.png"
    existing.write_bytes(b"")
    for command in ("sample", "export"):
        source = "--pretrained" if command == "sample" else "--checkpoint"
        status, err = in_process(command, source, str(tmp_path), "--out", str(existing))
        assert status == 2
        assert f"--out {existing}: is a file" in err.strip().splitlines()[-1]
