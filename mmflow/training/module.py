"""``FlowMatching``: the one LightningModule every modality trains with.

Training step, for a batch encoded by the modality adapter into ``(x1, cond)``:

    x0 ~ adapter.noise_like(x1),   t ~ time_distribution,
    x_t = alpha(t) x1 + sigma(t) x0,   target = alpha'(t) x1 + sigma'(t) x0,
    loss = L(network(x_t, t, **cond'), target, t),

where ``cond'`` replaces each sample's condition by the adapter's null condition with
probability ``cond_dropout`` (so one network learns the conditional and the unconditional
velocity, as classifier-free guidance needs). An exponential moving average of the weights,
``theta_ema <- decay * theta_ema + (1 - decay) * theta``, is kept in the checkpoint and is
the network validation and generation sample with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mmflow.generation import generate
from mmflow.interpolants import AffinePath, LinearPath
from mmflow.losses import VelocityLoss
from mmflow.metrics import log_and_reset
from mmflow.modality import Batch, Condition, ModalityAdapter, drop_conditions
from mmflow.timesteps import LogitNormal, TimeDistribution

_OBJECT_ARGUMENTS = (
    "adapter",
    "network",
    "path",
    "time_distribution",
    "loss",
    "optimizer",
    "scheduler",
)


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


class FlowMatching(pl.LightningModule):
    """Flow-matching training and sampling for any modality adapter and velocity network.

    Args:
        adapter: the modality adapter (encode / decode / null_condition / evaluators).
        network: the velocity network, ``network(x_t, t, **cond)``.
        path: the interpolant between noise (t = 0) and data (t = 1).
        time_distribution: training distribution of ``t``.
        loss: the regression loss on the velocity.
        cond_dropout: probability of training a sample with the null condition (CFG).
        ema_decay: decay of the weight EMA; ``None`` keeps no EMA and samples with the weights.
        optimizer: builds the optimizer from the network's parameters.
        scheduler: builds an LR scheduler (stepped every optimizer step), or ``None``.
        sampler: sampler name used in validation and generation (see ``mmflow info``).
        nfe: model evaluations for validation sampling.
        cfg_scale: classifier-free guidance scale for validation sampling (1 = no guidance).
        val_sample_batches: validation batches that are also generated and evaluated.
        sample_seed: seed of the validation noise, so epochs are compared on the same noise.
    """

    def __init__(
        self,
        adapter: ModalityAdapter,
        network: nn.Module,
        path: AffinePath | None = None,
        time_distribution: TimeDistribution | None = None,
        loss: VelocityLoss | None = None,
        cond_dropout: float = 0.1,
        ema_decay: float | None = 0.999,
        optimizer: OptimizerCallable = _default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        sampler: str = "heun",
        nfe: int = 16,
        cfg_scale: float = 1.0,
        val_sample_batches: int = 1,
        sample_seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"`cond_dropout` must be in [0, 1), got {cond_dropout}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in (0, 1) or None, got {ema_decay}")
        # Built from a config (LightningCLI, hub), the hyperparameters are that config and are
        # saved whole, so a checkpoint can rebuild every part. Built in Python, the live objects
        # are left out: they are not config, and their weights are in the state dict anyway.
        built_from_config = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=[] if built_from_config else list(_OBJECT_ARGUMENTS))
        self.adapter = adapter
        self.network = network
        self.path = path or LinearPath()
        self.time_distribution = time_distribution or LogitNormal()
        self.loss = loss or VelocityLoss()
        self.ema = (
            AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            if ema_decay is not None
            else None
        )
        if self.ema is not None:
            # The EMA copy is never optimised: leaving it out of autograd keeps it out of the
            # trainable-parameter count and out of DDP's gradient synchronisation.
            self.ema.requires_grad_(False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # Evaluators stay out of the module tree: their feature networks are not weights of
        # this model and must not be written into every checkpoint.
        self._evaluators: dict[str, nn.Module] = dict(adapter.evaluators())

    @property
    def sampling_network(self) -> nn.Module:
        """The network used to generate: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.network

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        return self.network(x, t, **cond)

    def flow_loss(
        self, x1: Tensor, cond: Condition, generator: torch.Generator | None = None
    ) -> Tensor:
        """The flow-matching loss of encoded data (condition dropout applied when training)."""
        x0 = self.adapter.noise_like(x1, generator=generator)
        t = self.time_distribution.sample(x1.shape[0], generator=generator, device=x1.device)
        if self.training and self.hparams.cond_dropout > 0 and self.adapter.conditioned():
            drop = (
                torch.rand(x1.shape[0], device=x1.device, generator=generator)
                < self.hparams.cond_dropout
            )
            cond = drop_conditions(cond, self.adapter.null_condition(cond), drop)
        draw = self.path.sample(x0, x1, t.to(x1.dtype))
        prediction = self.network(draw.x_t, draw.t, **cond)
        return self.loss(prediction, draw.target, draw.t, mask=cond.get("x_mask"))

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x1, cond = self.adapter.encode(batch)
        loss = self.flow_loss(x1, cond)
        self.log("train/loss", loss, prog_bar=True, batch_size=x1.shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.network)

    def generate(
        self,
        cond: Condition,
        x0: Tensor,
        sampler: str | None = None,
        nfe: int | None = None,
        cfg_scale: float | None = None,
    ) -> tuple[Tensor, int]:
        """Integrate the (guided) EMA velocity from ``x0``; returns ``(x1, counted NFE)``.

        ``sampler``, ``nfe`` and ``cfg_scale`` default to the module's validation settings.
        """
        result = generate(
            self.sampling_network,
            self.adapter,
            cond,
            x0,
            sampler=sampler or self.hparams.sampler,
            nfe=nfe or self.hparams.nfe,
            cfg_scale=self.hparams.cfg_scale if cfg_scale is None else cfg_scale,
        )
        return result.samples, result.nfe

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Loss on fixed noise and times; the first batches are also generated and evaluated."""
        self._evaluate_batch(batch, batch_idx, "val", self.hparams.val_sample_batches)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """As validation, on the test split, generating and evaluating *every* batch.

        ``mmflow test`` / ``mmflow evaluate --split test`` report the held-out figures.
        """
        self._evaluate_batch(batch, batch_idx, "test", None)

    def _evaluate_batch(
        self, batch: Batch, batch_idx: int, stage: str, sample_batches: int | None
    ) -> None:
        x1, cond = self.adapter.encode(batch)
        generator = torch.Generator(device=x1.device).manual_seed(
            self.hparams.sample_seed + batch_idx
        )
        self.log(
            f"{stage}/loss",
            self.flow_loss(x1, cond, generator),
            prog_bar=True,
            batch_size=x1.shape[0],
        )
        if sample_batches is not None and batch_idx >= sample_batches:
            return
        samples, _ = self.generate(cond, self.adapter.noise_like(x1, generator=generator))
        media = self.adapter.decode(samples, cond, batch)
        for metric in self._evaluators.values():
            metric.to(self.device).update(media, batch)
        if batch_idx == 0 and self.trainer.is_global_zero:
            name = f"epoch{self.current_epoch:04d}" if stage == "val" else stage
            self.adapter.save_media(media, self._media_dir(), name, batch)

    def predict_step(self, batch: Batch, batch_idx: int) -> Any:
        """Media generated under each example's condition (``mmflow predict``), on seeded noise."""
        x1, cond = self.adapter.encode(batch)
        generator = torch.Generator(device=x1.device).manual_seed(
            self.hparams.sample_seed + batch_idx
        )
        samples, _ = self.generate(cond, self.adapter.noise_like(x1, generator=generator))
        return self.adapter.decode(samples, cond, batch)

    def on_validation_epoch_end(self) -> None:
        """Log every evaluator as ``val/<name>``; a metric returning a dict logs each entry."""
        self._log_evaluators("val")

    def on_test_epoch_end(self) -> None:
        """Log every evaluator as ``test/<name>``."""
        self._log_evaluators("test")

    def _log_evaluators(self, stage: str) -> None:
        log_and_reset(self, self._evaluators, stage)

    def _media_dir(self) -> Path:
        root = self.trainer.log_dir or self.trainer.default_root_dir
        return Path(root) / "samples"

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.network.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
