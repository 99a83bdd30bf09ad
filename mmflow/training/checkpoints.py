"""Checkpoints that never lose work, and resumed runs that continue exactly.

Three parts, which the ``mmflow`` command installs in every trainer
(:func:`install_safeguards`):

- :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file in the same folder
  and moves it over the target in one step (a run killed while saving leaves the previous
  file whole), and reads checkpoints with ``weights_only=True`` whatever a config asks: a
  checkpoint is data, never code.
- :class:`RunCheckpoint` is Lightning's ``ModelCheckpoint`` (every one a recipe names is made
  one) that also saves ``last.ckpt`` at the true end of a run (``max_steps`` off the
  checkpoint grid, SIGTERM, Ctrl-C between optimizer steps), never saves in a smoke run
  (``fast_dev_run``) or from non-finite weights, so retention never replaces the last finite
  checkpoint by a broken one.
- :class:`ExactResume` keeps in each checkpoint what the weights do not hold: the random
  states (torch, CUDA, NumPy, Python) and how far the epoch got, which the training loader
  (:class:`mmflow.data.ResumableLoader`) needs to continue with the next batch. A run killed
  at any moment and resumed with ``--ckpt_path last`` then ends with the weights of a run
  that was never stopped (``benchmarks/kill_resume.py`` measures it).
"""

from __future__ import annotations

import random
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mmflow.data import ResumableLoader
from mmflow.faults import TrainingFault
from mmflow.files import atomic_write, read_checkpoint
from mmflow.numerics import first_non_finite
from mmflow.training.guards import NonFiniteGuard


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves atomically (:func:`mmflow.files.atomic_write`); loads as data only."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        atomic_write(path, lambda temporary: torch.save(checkpoint, temporary))

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return read_checkpoint(path, map_location)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that never loses work (module docstring); same arguments.

    SIGTERM stops training at the next step boundary, decided together by all data-parallel
    processes (the signal needs to reach one of them): from the start of training its handler
    only records the signal, and every process asks at the start of each step whether any
    process has it. (Lightning's own handler broadcasts from inside the signal handler, which
    deadlocks a multi-process run when the signal lands during validation.)
    """

    _optimizer_stepping = False
    _stop_requested = False

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's key, so runs checkpointed before the upgrade resume as well."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse a new run (not a resume, not a smoke run) whose checkpoint folder holds
        another run's checkpoints: Lightning would write ``last-v1.ckpt`` beside them, and a
        later ``--ckpt_path .../last.ckpt`` would load the old run."""
        if trainer.ckpt_path is not None or trainer.fast_dev_run or self.dirpath is None:
            return
        folder = Path(self.dirpath)
        earlier = sorted(p.name for p in folder.glob("*.ckpt")) if trainer.is_global_zero else []
        earlier = trainer.strategy.broadcast(earlier, src=0)
        if earlier:
            raise ValueError(
                f"{folder}: holds checkpoints of an earlier run ({', '.join(earlier[:3])}); "
                "continue it with --ckpt_path last, or train into another folder "
                "(--trainer.default_root_dir), or remove them"
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_requested = trainer.received_sigterm
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._request_stop)

    def _request_stop(self, signum: int, frame: Any) -> None:
        self._stop_requested = True

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._optimizer_stepping = False
        if trainer.strategy.reduce_boolean_decision(self._stop_requested, all=False):
            raise SIGTERMException

    def on_before_optimizer_step(self, trainer: pl.Trainer, *args: Any) -> None:
        self._optimizer_stepping = True

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._optimizer_stepping = False
        super().on_train_batch_end(trainer, *args)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save the end of the run, also when it is off the ``every_n_train_steps`` grid."""
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_end(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """On SIGTERM or Ctrl-C, save where the run stands unless an optimizer step was half
        done (then the last saved checkpoint is the end); other errors save nothing."""
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        if self._optimizer_stepping:
            rank_zero_warn(
                f"interrupted during optimizer step {trainer.global_step}: the last checkpoint "
                f"is {self.last_model_path or self.best_model_path or 'none'}"
            )
            return
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_end(trainer)

    def _save_end(self, trainer: pl.Trainer) -> None:
        candidates = self._monitor_candidates(trainer)
        if self.save_last:
            self._save_last_checkpoint(trainer, candidates)
        elif self.monitor is None and self.save_top_k:
            self._save_none_monitor_checkpoint(trainer, candidates)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        bad = first_non_finite(trainer.lightning_module.state_dict())
        if bad is not None:
            raise TrainingFault(
                f"step {trainer.global_step}: `{bad}` is not finite; not saving {filepath}. "
                f"The last checkpoint is {self.last_model_path or self.best_model_path or 'none'}"
            )
        super()._save_checkpoint(trainer, filepath)

    def _should_skip_saving_checkpoint(self, trainer: pl.Trainer) -> bool:
        return super()._should_skip_saving_checkpoint(trainer) or bool(trainer.fast_dev_run)


def _random_states() -> dict[str, Any]:
    """The global random states, as tensors and numbers (a checkpoint holds only data)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ExactResume(Callback):
    """Saves the random states and the epoch's progress; a resumed run restores them.

    The states saved are those at the start of the next step: after the step a checkpoint
    follows, or, for a checkpoint written while a step was interrupted before its optimizer
    step, those at that step's start (its weights are the previous step's). They are restored
    when training starts, after everything the resume itself draws. The training loader's
    position is told to a :class:`~mmflow.data.ResumableLoader` at every batch; a run resumed
    mid-epoch with another loader is not exact, and says so.
    """

    def __init__(self) -> None:
        self._step_start_states: dict[str, Any] | None = None
        self._states_to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"random_states": self._step_start_states or _random_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._states_to_restore = state_dict.get("random_states")

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Refuse a resume whose recipe trains differently from the run it continues
        (evaluating a checkpoint under another training recipe is fine)."""
        if trainer.state.fn != TrainerFn.FITTING:
            return
        changed = changed_training_settings(
            checkpoint.get("hyper_parameters") or {}, dict(pl_module.hparams)
        )
        if changed:
            raise ValueError(
                f"resuming with other training settings than the checkpoint's run: "
                f"{'; '.join(changed)}. A resumed run keeps its recipe; to change it, start a "
                "new run from the checkpoint's weights with --model.init_from"
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._states_to_restore is not None:
            _set_random_states(self._states_to_restore)
            self._states_to_restore = None
            loader = trainer.train_dataloader
            if not isinstance(loader, ResumableLoader):
                rank_zero_warn(
                    "the training loader is not an mmflow.data.ResumableLoader: the resumed "
                    "run sees other batches than an uninterrupted run would"
                )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_start_states = _random_states()
        self._track(trainer, batch_idx)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._step_start_states = None
        self._track(trainer, batch_idx + 1)

    @staticmethod
    def _track(trainer: pl.Trainer, consumed: int) -> None:
        loader = trainer.train_dataloader
        if isinstance(loader, ResumableLoader):
            loader.track(consumed, int(min(trainer.num_training_batches, len(loader))))


FREE_ON_RESUME = frozenset(
    {"sampler", "nfe", "solver_options", "cfg_scale", "val_sample_batches", "sample_seed"}
    | {"export_dir"}
)
"""Model settings a resumed run may change: they steer validation, generation and where the
result is written, not what is trained."""


def _flat(value: Any, key: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for name, item in value.items():
            flat.update(_flat(item, f"{key}.{name}" if key else str(name)))
        return flat
    return {key: value}


def changed_training_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``model.<key>: old -> new`` for each setting that differs and changes training.

    A setting the checkpoint does not record (one added to the code after it was written) is
    taken to be unchanged: the run that wrote it behaved as its default does."""
    old, new = _flat(saved), _flat(current)
    changes = []
    for key in sorted(set(old) | set(new)):
        if key.split(".")[0] in FREE_ON_RESUME or key not in old or old[key] == new.get(key):
            continue
        changes.append(f"model.{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changes


def install_safeguards(trainer: pl.Trainer) -> pl.Trainer:
    """Make every ``ModelCheckpoint`` a :class:`RunCheckpoint`, save through
    :class:`AtomicCheckpointIO`, and add :class:`ExactResume` and the
    :class:`~mmflow.training.guards.NonFiniteGuard` unless the trainer has them."""
    for callback in trainer.callbacks:
        if type(callback) is ModelCheckpoint:
            callback.__class__ = RunCheckpoint
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    for kind in (ExactResume, NonFiniteGuard):
        if not any(isinstance(callback, kind) for callback in trainer.callbacks):
            trainer.callbacks.insert(0, kind())
    return trainer
