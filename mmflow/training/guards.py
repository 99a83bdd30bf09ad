"""Numerical faults stop training: a non-finite loss or gradient ends the run at that step.

An optimizer step taken with a NaN or infinite gradient writes it into every weight, and all
that follows (checkpoints, EMA, samples) is lost. :class:`NonFiniteGuard` checks the loss
before the backward pass and the gradients before the optimizer step, so the weights are
still those of the last good step when it raises :class:`TrainingFault`, which names the step
and the last checkpoint; the ``mmflow`` command then exits with status 1. With
``max_skipped_steps > 0`` it first skips up to that many such steps in a row (the gradients
are dropped, the optimizer does not move), as mixed-precision loss scaling does. Under data
parallelism the processes decide together, so a fault in one stops (or skips) all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from mmflow.faults import TrainingFault
from mmflow.numerics import first_non_finite


def last_checkpoint(trainer: pl.Trainer) -> Path | None:
    """The newest checkpoint a checkpoint callback of ``trainer`` wrote, if any."""
    for callback in trainer.checkpoint_callbacks:
        path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        if path:
            return Path(path)
    return None


class NonFiniteGuard(Callback):
    """Stops (or skips, ``max_skipped_steps``) a step whose loss or gradient is not finite.

    Args:
        max_skipped_steps: non-finite steps in a row that are skipped before the run stops.
    """

    def __init__(self, max_skipped_steps: int = 0) -> None:
        if max_skipped_steps < 0:
            raise ValueError(f"`max_skipped_steps` must be >= 0, got {max_skipped_steps}")
        self.max_skipped_steps = max_skipped_steps
        self.skipped_in_a_row = 0
        self._loss_fault: str | None = None

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        self._loss_fault = None if bool(torch.isfinite(loss).all()) else f"loss {loss.item()}"

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        gradients = {name: p.grad for name, p in pl_module.named_parameters() if p.grad is not None}
        fault = self._loss_fault
        bad = first_non_finite(gradients)
        if fault is None and bad is not None:
            fault = f"gradient of `{bad}`"
        if trainer.strategy.reduce_boolean_decision(fault is not None, all=False) and not fault:
            fault = "loss in another process"
        if fault is None:
            self.skipped_in_a_row = 0
            return
        step = trainer.global_step
        if self.skipped_in_a_row < self.max_skipped_steps:
            self.skipped_in_a_row += 1
            optimizer.zero_grad(set_to_none=True)
            rank_zero_warn(f"step {step}: non-finite {fault}; step skipped")
            return
        last = last_checkpoint(trainer)
        raise TrainingFault(
            f"step {step}: non-finite {fault}; training stopped before the optimizer step. "
            f"The last checkpoint is {last if last else 'none (no checkpoint was written)'}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_in_a_row": self.skipped_in_a_row}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_in_a_row = state_dict.get("skipped_in_a_row", 0)
