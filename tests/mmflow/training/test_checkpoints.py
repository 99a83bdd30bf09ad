"""Checkpoints that never lose work and numerical faults that stop the run, through the
``mmflow`` command on the toy modality (``tests/mmflow/test_cli.py``'s recipe)."""

import os
import pickle
import signal
import subprocess
import time

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mmflow.cli import SIGTERM_EXIT_STATUS, main
from mmflow.faults import TrainingFault
from mmflow.files import read_checkpoint
from mmflow.training import (
    AtomicCheckpointIO,
    ExactResume,
    FlowMatching,
    NonFiniteGuard,
    RunCheckpoint,
    install_safeguards,
)
from mmflow.training.checkpoints import changed_training_settings

from ..test_cli import ROOT, mmflow_command, run, write_recipe
from .toy import FaultyVelocity, ToyAdapter, ToyData, ToyVelocity, one_thread

FAULTY = ["--model.network=tests.mmflow.training.toy.FaultyVelocity", "--model.network.nan_from=13"]


@pytest.fixture
def mmflow(capfd):
    """``mmflow ARGS`` in this process: ``(exit status, error output)``."""

    def call(*args: str, check: bool = True) -> tuple[int, str]:
        capfd.readouterr()
        try:
            status = main(list(args))
        except SystemExit as stop:  # the argument parser's own errors
            status = int(stop.code or 0)
        err = capfd.readouterr().err
        assert not check or status == 0, err[-3000:]
        return status, err

    return call


def checkpoints(tmp_path):
    return sorted((tmp_path / "checkpoints").glob("*.ckpt"))


def test_last_checkpoint_is_the_true_end_of_a_run_off_the_checkpoint_grid(tmp_path, mmflow):
    mmflow("fit", "--config", str(write_recipe(tmp_path, max_steps=23)))
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 23


def test_a_smoke_run_never_writes_into_a_runs_checkpoints(tmp_path, mmflow):
    recipe = str(write_recipe(tmp_path, max_steps=10))
    mmflow("fit", "--config", recipe)
    before = {path: path.stat().st_mtime_ns for path in checkpoints(tmp_path)}
    mmflow("fit", "--config", recipe, "--trainer.fast_dev_run=true")
    assert {path: path.stat().st_mtime_ns for path in checkpoints(tmp_path)} == before


def test_a_nan_loss_stops_the_run_at_that_step_and_keeps_the_last_finite_checkpoint(
    tmp_path, mmflow
):
    # checkpoints every 5 steps; the network's output is NaN from its 13th training call on
    recipe = str(write_recipe(tmp_path, max_steps=40))
    status, err = mmflow("fit", "--config", recipe, *FAULTY, check=False)
    assert status == 1
    message = err.strip().splitlines()[-1]
    assert "step 12: non-finite loss" in message
    assert "last.ckpt" in message and "Traceback" not in err
    saved = {path.name: read_checkpoint(path) for path in checkpoints(tmp_path)}
    assert saved["last.ckpt"]["global_step"] == 10
    for checkpoint in saved.values():
        assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def _fit_toy(tmp_path, network, max_steps, **trainer_args):
    module = FlowMatching(ToyAdapter(), network, ema_decay=None)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        **trainer_args,
    )
    with one_thread():
        install_safeguards(trainer)
        trainer.fit(module, datamodule=ToyData(size=128, batch_size=32))
    return module, trainer


def test_skipped_non_finite_steps_leave_the_weights_and_then_stop(tmp_path):
    network = FaultyVelocity(nan_from=3)
    guard = NonFiniteGuard(max_skipped_steps=2)
    with pytest.raises(TrainingFault, match="step 4: non-finite loss"):
        _fit_toy(tmp_path, network, max_steps=10, callbacks=[guard], enable_checkpointing=False)
    assert guard.skipped_in_a_row == 2
    assert all(torch.isfinite(p).all() for p in network.parameters())


def test_non_finite_weights_are_never_saved(tmp_path):
    module, trainer = _fit_toy(tmp_path, ToyVelocity(width=8), max_steps=2)
    callback = trainer.checkpoint_callback
    assert isinstance(callback, RunCheckpoint)
    with torch.no_grad():
        next(module.network.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingFault, match="not finite; not saving"):
        callback._save_checkpoint(trainer, str(tmp_path / "broken.ckpt"))
    assert not (tmp_path / "broken.ckpt").exists()


class _SigtermAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_sigterm_saves_last_at_the_step_it_stopped_off_the_checkpoint_grid(tmp_path):
    every_five = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=5)
    with pytest.raises(SIGTERMException):
        _fit_toy(tmp_path, ToyVelocity(width=8), 100, callbacks=[every_five, _SigtermAt(13)])
    assert read_checkpoint(tmp_path / "ckpt" / "last.ckpt")["global_step"] == 13


def test_safeguards_upgrade_lightnings_checkpoint_callback_and_add_the_guards(tmp_path):
    trainer = pl.Trainer(logger=False, default_root_dir=tmp_path, callbacks=[ModelCheckpoint()])
    install_safeguards(trainer)
    kinds = [type(callback) for callback in trainer.callbacks]
    assert RunCheckpoint in kinds and ExactResume in kinds and NonFiniteGuard in kinds
    assert ModelCheckpoint not in kinds
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert trainer.checkpoint_callback.state_key.startswith("ModelCheckpoint{")


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_io_reads_data_only_whatever_it_is_asked(tmp_path):
    marker, path = tmp_path / "payload-ran", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, path)
    with pytest.raises(ValueError, match="evil.ckpt: not a data-only checkpoint .*`io.open`"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()
    with open(tmp_path / "legacy.ckpt", "wb") as handle:
        pickle.dump({"payload": _Payload(marker)}, handle)
    with pytest.raises(ValueError, match="legacy.ckpt: not a readable checkpoint"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "legacy.ckpt")
    assert not marker.exists()


def test_a_sigterm_saves_the_last_step_and_the_resumed_run_ends_as_an_uninterrupted_one(
    tmp_path,
):
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    for folder in (reference, interrupted):
        folder.mkdir()
    recipe = str(write_recipe(interrupted, max_steps=100000))
    process = subprocess.Popen(
        [*mmflow_command(), "fit", "--config", recipe],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = interrupted / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not last.exists():
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == SIGTERM_EXIT_STATUS
    end = read_checkpoint(last)["global_step"] + 30
    # separate processes, as a user runs them
    run("fit", "--config", recipe, "--ckpt_path", "last", f"--trainer.max_steps={end}")
    run("fit", "--config", str(write_recipe(reference, max_steps=end)))
    a, b = read_checkpoint(reference / "checkpoints" / "last.ckpt"), read_checkpoint(last)
    assert a["global_step"] == b["global_step"] == end
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name


def test_a_resume_that_changes_what_is_trained_is_refused_and_one_that_changes_sampling_runs(
    tmp_path, mmflow
):
    recipe = str(write_recipe(tmp_path, max_steps=10))
    mmflow("fit", "--config", recipe)
    resume = ("fit", "--config", recipe, "--ckpt_path", "last", "--trainer.max_steps=20")
    status, err = mmflow(*resume, "--model.ema_decay=0.5", check=False)
    assert status == 2
    assert "model.ema_decay: 0.9 -> 0.5" in err.strip().splitlines()[-1]
    status, err = mmflow(*resume, "--data.init_args.batch_size=16", check=False)
    assert status == 2
    assert (
        "data.batch_size: the checkpoint's run used global batches of 32 (32 x 1 processes), this one 16"
        in err
    )
    mmflow(*resume, "--model.nfe=2")
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 20


def test_changed_training_settings_names_each_change_and_ignores_sampling():
    saved = {"ema_decay": 0.9, "nfe": 4, "optimizer": {"init_args": {"lr": 1e-3}}}
    current = {"ema_decay": 0.9, "nfe": 8, "optimizer": {"init_args": {"lr": 2e-3}}}
    assert changed_training_settings(saved, current) == [
        "model.optimizer.init_args.lr: 0.001 -> 0.002"
    ]


def test_a_setting_the_checkpoint_predates_is_taken_as_unchanged():
    saved = {"network": {"init_args": {"depth": 2}}}
    current = {"network": {"init_args": {"depth": 2, "step_size_scale": 1000.0}}}
    assert changed_training_settings(saved, current) == []


def test_a_new_run_into_a_folder_holding_another_runs_checkpoints_is_refused(tmp_path, mmflow):
    recipe = str(write_recipe(tmp_path, max_steps=5))
    mmflow("fit", "--config", recipe)
    before = {path: path.stat().st_mtime_ns for path in checkpoints(tmp_path)}
    status, err = mmflow("fit", "--config", recipe, check=False)
    assert status == 2
    assert "holds checkpoints of an earlier run" in err.strip().splitlines()[-1]
    assert {path: path.stat().st_mtime_ns for path in checkpoints(tmp_path)} == before
    mmflow("fit", "--config", recipe, "--ckpt_path", "last", "--trainer.max_steps=8")
    assert [p.name for p in checkpoints(tmp_path)] == ["epoch=0-step=5.ckpt", "last.ckpt"]
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 8


class _CtrlCInBackward(Callback):
    """Ctrl-C in the middle of step ``step``, after its forward pass, before its update."""

    def __init__(self, step):
        self.step = step

    def on_before_backward(self, trainer, pl_module, loss):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def _fit_with_ema(root, callbacks=(), ckpt_path=None):
    pl.seed_everything(0)
    module = FlowMatching(ToyAdapter(), ToyVelocity(width=8), ema_decay=0.9)
    every_five = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_train_steps=5)
    trainer = pl.Trainer(
        max_steps=40,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=root,
        callbacks=[every_five, *callbacks],
    )
    install_safeguards(trainer)
    with one_thread():
        trainer.fit(module, datamodule=ToyData(size=256, batch_size=32), ckpt_path=ckpt_path)
    return root / "ckpt" / "last.ckpt"


def test_ctrl_c_inside_a_step_saves_the_step_before_and_the_resumed_run_ends_the_same(tmp_path):
    reference = read_checkpoint(_fit_with_ema(tmp_path / "reference"))
    with pytest.raises(SystemExit):  # Lightning ends a run stopped by Ctrl-C with exit status 1
        _fit_with_ema(tmp_path / "stopped", callbacks=[_CtrlCInBackward(13)])
    last = tmp_path / "stopped" / "ckpt" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 13
    resumed = read_checkpoint(_fit_with_ema(tmp_path / "stopped", ckpt_path=str(last)))
    assert resumed["global_step"] == reference["global_step"] == 40
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name


def test_a_nan_in_one_of_two_processes_stops_both_at_that_step(tmp_path):
    recipe = str(write_recipe(tmp_path, max_steps=40))
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--model.network.nan_rank=1"]
    result = run("fit", "--config", recipe, *FAULTY, *ddp, check=False, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "step 12: non-finite" in result.stderr
    assert result.stderr.count("mmflow fit: error:") == 1  # said once, by the first process
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 10
