"""``FlowMatching``: the one LightningModule every modality trains with.

Each training step encodes a batch with the modality adapter into ``(x1, cond)`` and hands it
to the training objective (:mod:`mmflow.training.objectives`); the default,
:class:`~mmflow.training.objectives.FlowMatchingObjective`, is

    x0 ~ adapter.source (noise),   t ~ time_distribution,
    x_t = alpha(t) x1 + sigma(t) x0,   target = alpha'(t) x1 + sigma'(t) x0,
    loss = L(network(x_t, t, **cond'), target, t),

where ``cond'`` replaces each sample's condition by the adapter's null condition with
probability ``cond_dropout`` (so one network learns the conditional and the unconditional
velocity, as classifier-free guidance needs). The module owns what every objective shares:
the path, time distribution and loss, the condition dropout, an exponential moving average of
the weights, ``theta_ema <- decay * theta_ema + (1 - decay) * theta`` (kept in the checkpoint
and the network validation and generation sample with), the optimizer, and the validation
and test loops of :class:`~mmflow.training.evaluation.EvaluatedModule`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mmflow.distributed import SeedPurpose, data_parallel_position, shared_seed
from mmflow.fewstep.couplings import coupling_parts
from mmflow.finetune import LoRA, add_lora, freeze_parameters, load_initial_weights
from mmflow.generation import GenerationDefaults, checked_interval
from mmflow.interpolants import AffinePath, LinearPath
from mmflow.losses import VelocityLoss
from mmflow.modality import Batch, Condition, ModalityAdapter
from mmflow.numerics import keyed_generator
from mmflow.timesteps import LogitNormal, TimeDistribution
from mmflow.training.evaluation import EvaluatedBatch, EvaluatedModule
from mmflow.training.objectives import (
    FlowMatchingObjective,
    ObjectiveOutput,
    TrainingContext,
    TrainingObjective,
)

DRAW_SEED_KEY = "mmflow_draw_seed"

_OBJECT_ARGUMENTS = (
    "adapter",
    "network",
    "path",
    "time_distribution",
    "loss",
    "objective",
    "optimizer",
    "scheduler",
    "lora",
)


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


def built_from_config() -> bool:
    """Whether the module being built comes from a config (LightningCLI, a hub export): its
    hyperparameters are then that config, saved whole so a checkpoint can rebuild every part.
    Built in Python, live objects (networks, optimizer callables) are not config."""
    return _given_hyperparameters.get() is not None


def optimization(
    parameters: list[nn.Parameter],
    optimizer: OptimizerCallable,
    scheduler: LRSchedulerCallable | None = None,
) -> Any:
    """What a module's ``configure_optimizers`` returns: ``optimizer(parameters)``, and with a
    ``scheduler`` that scheduler stepped after every optimizer step (not every epoch), so a
    recipe's decay is written in steps, like its ``max_steps``."""
    built = optimizer(parameters)
    if scheduler is None:
        return built
    return {
        "optimizer": built,
        "lr_scheduler": {"scheduler": scheduler(built), "interval": "step"},
    }


class FlowMatching(EvaluatedModule):
    """Flow-matching training and sampling for any modality adapter and velocity network.

    Args:
        adapter: the modality adapter (encode / decode / null_condition / evaluators).
        network: the velocity network, ``network(x_t, t, **cond)``.
        path: the interpolant between noise (t = 0) and data (t = 1).
        time_distribution: training distribution of ``t``.
        loss: the regression loss on the velocity.
        objective: what training minimises (default: :class:`FlowMatchingObjective`).
        cond_dropout: probability of training a sample with the null condition (CFG).
        ema_decay: decay of the weight EMA; ``None`` keeps no EMA and samples with the weights.
        optimizer: builds the optimizer from the network's parameters.
        scheduler: builds an LR scheduler (stepped every optimizer step), or ``None``.
        sampler: sampler name used in validation and generation (see ``mmflow info``).
        nfe: model evaluations for validation sampling.
        solver_options: the sampler's own settings (``sample(..., solver_options=...)``), used
            whenever the module generates with ``sampler``, e.g. FlowTurbo's step counts.
        cfg_scale: classifier-free guidance scale for validation sampling (1 = no guidance).
        cfg_interval: ``[t_start, t_end]``: guide only there, the conditional velocity
            elsewhere (guidance interval, Kynkaanniemi et al., 2024); ``None`` guides always.
        mean_of_samples: generate this many samples per condition, from independent source
            draws, and keep their mean in the flow's space: an estimate of the posterior mean
            ``E[x1 | c]``, which squared-error metrics (SDR, PSNR) reward over any one sample;
            costs that many times the NFE. Used by validation, test and ``mmflow predict``.
        val_sample_batches: validation batches that are also generated and evaluated.
        sample_seed: seed of the validation noise, so epochs are compared on the same noise.
        init_from: fine-tune: start the network from a pretrained folder (``mmflow export``)
            or a Lightning checkpoint (its EMA weights); the matched / missing / unexpected /
            reshaped names are printed and kept as ``initial_weights``.
        freeze: shell-style patterns of network parameters that do not train.
        lora: train LoRA adapters instead of the weights (:class:`LoRA`); an export merges
            them into the weights.
        compile_network: train through ``torch.compile`` of the network (``nn.Module.compile``:
            the same parameters and checkpoint keys; compiled on the first step, again when
            input shapes change). The EMA copy that samples stays eager.
    """

    def __init__(
        self,
        adapter: ModalityAdapter,
        network: nn.Module,
        path: AffinePath | None = None,
        time_distribution: TimeDistribution | None = None,
        loss: VelocityLoss | None = None,
        objective: TrainingObjective | None = None,
        cond_dropout: float = 0.1,
        ema_decay: float | None = 0.999,
        optimizer: OptimizerCallable = _default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        sampler: str = "heun",
        nfe: int = 16,
        solver_options: dict[str, Any] | None = None,
        cfg_scale: float = 1.0,
        cfg_interval: tuple[float, float] | None = None,
        mean_of_samples: int = 1,
        val_sample_batches: int = 1,
        sample_seed: int = 0,
        init_from: str | None = None,
        freeze: list[str] | None = None,
        lora: LoRA | None = None,
        compile_network: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"`cond_dropout` must be in [0, 1), got {cond_dropout}")
        checked_interval(cfg_interval)
        if mean_of_samples < 1:
            raise ValueError(f"`mean_of_samples` must be >= 1, got {mean_of_samples}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in (0, 1) or None, got {ema_decay}")
        self.save_hyperparameters(ignore=[] if built_from_config() else list(_OBJECT_ARGUMENTS))
        self.adapter = adapter
        self.network = self._prepare_network(network, init_from, freeze or [], lora)
        self.path = path or LinearPath()
        self.time_distribution = time_distribution or LogitNormal()
        self.loss = loss or VelocityLoss()
        self.objective = objective or FlowMatchingObjective()
        self.ema = (
            AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            if ema_decay is not None
            else None
        )
        if self.ema is not None:
            # The EMA copy is never optimised: leaving it out of autograd keeps it out of the
            # trainable-parameter count and out of DDP's gradient synchronisation.
            self.ema.requires_grad_(False)
        if compile_network:
            self.network.compile()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.draw_seed: int | None = None
        self.use_evaluators(adapter.evaluators())

    def _prepare_network(
        self, network: nn.Module, init_from: str | None, freeze: list[str], lora: LoRA | None
    ) -> nn.Module:
        """Initial weights, then frozen names, then LoRA adapters (before the EMA copy)."""
        self.initial_weights = None
        if init_from is not None:
            self.initial_weights = load_initial_weights(network, init_from)
            rank_zero_info(self.initial_weights.summary())
        freeze_parameters(network, freeze)
        if lora is not None:
            add_lora(network, lora)
        return network

    @property
    def sampling_network(self) -> nn.Module:
        """The network used to generate: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.network

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        return self.network(x, t, **cond)

    def encode(self, batch: Batch) -> tuple[Tensor, Condition]:
        """``(x1, cond)``: the adapter's encoding of a modality batch, or the stored sample and
        condition of a coupling batch (:mod:`mmflow.fewstep.couplings`), already encoded."""
        parts = coupling_parts(batch)
        return parts if parts is not None else self.adapter.encode(batch)

    def context(self) -> TrainingContext:
        """What the objective shares with the module for the current step."""
        rank, world_size = data_parallel_position(self._trainer)
        return TrainingContext(
            path=self.path,
            time_distribution=self.time_distribution,
            loss=self.loss,
            adapter=self.adapter,
            ema_network=self.ema.module if self.ema is not None else None,
            cond_dropout=self.hparams.cond_dropout if self.training else 0.0,
            rank=rank,
            world_size=world_size,
        )

    def objective_output(
        self,
        x1: Tensor,
        cond: Condition,
        batch: Batch,
        generator: torch.Generator | None = None,
    ) -> ObjectiveOutput:
        """The objective's loss and terms for encoded data (condition dropout when training)."""
        return self.objective(self.network, x1, cond, batch, generator, self.context())

    def on_fit_start(self) -> None:
        """Draw the seed of the training draws (kept in the checkpoint), the same in every
        process."""
        if self.draw_seed is None:
            self.draw_seed = shared_seed(self.trainer, SeedPurpose.TRAINING_DRAWS)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[DRAW_SEED_KEY] = self.draw_seed

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.draw_seed = checkpoint.get(DRAW_SEED_KEY)

    def training_generator(self, batch_idx: int, device: torch.device) -> torch.Generator | None:
        """The generator of this batch's draws, keyed on ``(draw_seed, step, micro-batch)``:
        the same in every process and again on resume (``None`` outside ``fit``)."""
        if self.draw_seed is None:
            return None
        micro_batch = batch_idx % self.trainer.accumulate_grad_batches
        return keyed_generator(self.draw_seed, self.global_step, micro_batch, device=device)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x1, cond = self.encode(batch)
        generator = self.training_generator(batch_idx, x1.device)
        output = self.objective_output(x1, cond, batch, generator)
        self.log("train/loss", output.loss, prog_bar=True, batch_size=x1.shape[0])
        for name, value in output.terms.items():
            self.log(f"train/{name}", value, batch_size=x1.shape[0])
        return output.loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the EMA update: once per optimizer step (not per batch
        under gradient accumulation), and done before a checkpoint of that step is saved."""
        super().optimizer_step(*args, **kwargs)
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

        ``sampler``, ``nfe`` and ``cfg_scale`` default to the module's validation settings; the
        module's ``solver_options`` go with its own sampler only.
        """
        result = GenerationDefaults.from_hparams(self.hparams).generate(
            self.sampling_network, self.adapter, cond, x0, sampler, nfe, cfg_scale
        )
        return result.samples, result.nfe

    def evaluate_batch(
        self, batch: Batch, generator: torch.Generator, with_media: bool
    ) -> EvaluatedBatch:
        """The objective's loss on the generator's noise and times, then (``with_media``)
        samples from the generator's next noise, decoded. A batch without the entries the
        objective reads (real data for an objective on stored noise) has no loss."""
        x1, cond = self.encode(batch)
        loss, terms = None, {}
        if all(key in batch for key in self.objective.batch_keys()):
            output = self.objective_output(x1, cond, batch, generator)
            loss, terms = output.loss, output.terms
        media = self._media(x1, cond, batch, generator) if with_media else None
        return EvaluatedBatch(loss, x1.shape[0], media, terms)

    def predict_media(self, batch: Batch, generator: torch.Generator) -> Any:
        """Media generated under each example's condition (``mmflow predict``)."""
        x1, cond = self.encode(batch)
        return self._media(x1, cond, batch, generator)

    def _media(self, x1: Tensor, cond: Condition, batch: Batch, generator: torch.Generator) -> Any:
        """Decoded samples under ``cond``: the mean of ``mean_of_samples`` generations."""
        draws = [
            self.generate(cond, self.context().source_like(x1, cond, generator))[0]
            for _ in range(self.hparams.mean_of_samples)
        ]
        samples = draws[0] if len(draws) == 1 else torch.stack(draws).mean(dim=0)
        return self.adapter.decode(samples, cond, batch)

    def save_media(
        self, media: Any, directory: Path, name: str, batch: Batch | None = None
    ) -> list[Path]:
        """The adapter's media writer."""
        return self.adapter.save_media(media, directory, name, batch)

    def configure_optimizers(self) -> Any:
        trainable = [p for p in self.network.parameters() if p.requires_grad]
        return optimization(trainable, self.optimizer_factory, self.scheduler_factory)
