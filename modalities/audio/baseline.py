"""A discriminative mask separator: the baseline FlowSep is compared with.

Same backbone as the flow (an :class:`mmflow.nn.MMDiT` with the text query as a context stream
and the pooled query embedding), same data, same training budget; but it *predicts* instead of
generating. From the mixture's standardised log-mel ``L_mix`` and the query ``q`` it predicts a
mel-band mask ``m = sigmoid(network(L_mix, q))`` in ``[0, 1]``, and the estimate is

    L_hat = log(max(m * exp(L_mix), 1e-5)),      loss = mean |L_hat - L_target|

(L1 between log-mels, the quantity the flow's VAE reconstructs). The network's time input is
held at ``t = 1``. To a waveform, the estimate goes through the same inverter as the flow's
(mixture phase with band gains: the gain is exactly the mask), and it is scored by the same
evaluators, through the same validation and test loops
(:class:`mmflow.training.EvaluatedModule`), so the two models are compared on equal terms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from mmflow.pretrained import Frozen
from mmflow.training import EvaluatedBatch, EvaluatedModule, built_from_config, optimization

from .evaluators import separation_metrics
from .media import write_separation_batch
from .mel import LOG_FLOOR, LogMel, MelInverter, MixturePhaseInverter
from .sources import ALL_CLASSES
from .text import SentenceEncoder

__all__ = ["MaskSeparator"]


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)


class MaskSeparator(EvaluatedModule):
    """Mixture log-mel + text query -> a mel-band mask (see the module docs).

    Args:
        network: the backbone, ``network(x, t, context=..., context_mask=..., pooled=...)``
            mapping ``[B, 1, n_mels, frames]`` to the same shape (e.g. MMDiT with
            ``Patchify2D(1, patch)``; ``n_mels`` and the frame count must divide by the patch).
        text_encoder_path: a local transformers encoder folder; ``None`` is all-MiniLM-L6-v2.
        inverter: log-mel -> waveform for evaluation (default: mixture phase, band gains).
        class_names: class names of ``batch["class_index"]`` for per-class metrics.
        max_query_tokens: queries are truncated to this many tokens.
        query_stream: name of the query context stream.
        use_pooled: also pass the pooled query embedding as ``pooled``.
        mel_mean, mel_std: standardisation of the input log-mel.
        optimizer: builds the optimizer from the network's parameters (default AdamW, lr
            1e-3), as :class:`~mmflow.training.FlowMatching`'s does.
        scheduler: builds an LR scheduler (stepped every optimizer step), or ``None``.
        media_examples: examples written from the first validation / test batch.
        classifier_path: an audio classifier (``python -m modalities.audio.classifier``) for
            the query-accuracy metric; ``None`` leaves that metric out.
    """

    def __init__(
        self,
        network: nn.Module,
        text_encoder_path: str | None = None,
        inverter: MelInverter | None = None,
        class_names: list[str] | None = None,
        max_query_tokens: int = 32,
        query_stream: str = "query",
        use_pooled: bool = True,
        mel_mean: float = -5.0,
        mel_std: float = 4.0,
        optimizer: OptimizerCallable = _default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        media_examples: int = 4,
        classifier_path: str | None = None,
    ) -> None:
        super().__init__()
        live_objects = [] if built_from_config() else ["optimizer", "scheduler"]
        self.save_hyperparameters(ignore=["network", "inverter", *live_objects])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.network = network
        self.mel = LogMel()
        self.inverter = inverter or MixturePhaseInverter()
        self.inverter.mel = self.mel
        self.text_encoder = Frozen(SentenceEncoder(text_encoder_path, max_query_tokens))
        self.class_names = list(ALL_CLASSES if class_names is None else class_names)
        self.use_evaluators(separation_metrics(self.class_names, self.mel, classifier_path))

    def forward(self, mixture: Tensor, captions: list[str]) -> Tensor:
        """The estimated log-mel ``[B, n_mels, frames]`` of the queried source."""
        mixture_log_mel = self.mel(mixture)
        return self.estimate(mixture_log_mel, self.predict_mask(mixture_log_mel, captions))

    def predict_mask(self, mixture_log_mel: Tensor, captions: list[str]) -> Tensor:
        """The mask ``sigmoid(network(standardised log-mel, query))``, ``[B, n_mels, frames]``."""
        text = self.text_encoder(captions)
        cond = text.network_inputs(self.hparams.query_stream, self.hparams.use_pooled, self.device)
        inputs = (mixture_log_mel - self.hparams.mel_mean) / self.hparams.mel_std
        t = torch.ones(inputs.shape[0], device=inputs.device)
        return torch.sigmoid(self.network(inputs.unsqueeze(1), t, **cond)[:, 0])

    @staticmethod
    def estimate(mixture_log_mel: Tensor, mask: Tensor) -> Tensor:
        """``log(max(mask * exp(L_mix), 1e-5))``."""
        return (mask * mixture_log_mel.exp()).clamp_min(LOG_FLOOR).log()

    def loss(self, batch: dict[str, Any], estimate: Tensor | None = None) -> Tensor:
        """``mean |L_hat - L_target|`` (``estimate``: the batch's ``L_hat`` if already made)."""
        if estimate is None:
            estimate = self(batch["mixture"], batch["caption"])
        return (estimate - self.mel(batch["target"])).abs().mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["mixture"].shape[0])
        return loss

    def waveforms(self, estimate: Tensor, batch: dict[str, Any]) -> Tensor:
        """Separated waveforms ``[B, T]`` of estimated log-mels (through the inverter)."""
        return self.inverter(estimate, batch["mixture"], batch["mixture"].shape[-1])

    @torch.no_grad()
    def separate(self, batch: dict[str, Any]) -> Tensor:
        """Separated waveforms ``[B, T]`` of a batch."""
        return self.waveforms(self(batch["mixture"], batch["caption"]), batch)

    def evaluate_batch(
        self, batch: dict[str, Any], generator: torch.Generator, with_media: bool
    ) -> EvaluatedBatch:
        """The L1 loss and (``with_media``) the separated waveforms; no randomness."""
        estimate = self(batch["mixture"], batch["caption"])
        media = self.waveforms(estimate, batch) if with_media else None
        return EvaluatedBatch(self.loss(batch, estimate), batch["mixture"].shape[0], media)

    def predict_media(self, batch: dict[str, Any], generator: torch.Generator) -> Tensor:
        return self.separate(batch)

    def save_media(
        self, media: Any, directory: Path, name: str, batch: dict[str, Any] | None = None
    ) -> list[Path]:
        """WAVs of mixture / estimate / reference and a spectrogram PNG per example."""
        if batch is None:
            return []
        return write_separation_batch(
            directory,
            name,
            media,
            batch,
            self.hparams.media_examples,
            self.mel.sample_rate,
            self.mel.hop_length,
        )

    def configure_optimizers(self) -> Any:
        return optimization(
            list(self.network.parameters()), self.optimizer_factory, self.scheduler_factory
        )
