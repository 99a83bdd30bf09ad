"""``FlowSepAdapter``: language-queried separation as a flow in a mel-VAE latent space.

FlowSep (Yuan et al., 2025) transports Gaussian noise to the latent of the *queried source*,
conditioned on the latent of the *mixture* and on a text query. With ``E`` the frozen mel-VAE
encoder (latents scaled to unit variance), ``mel`` the log-mel transform and ``T`` the frozen
sentence encoder:

    x1 = E(mel(target))                          what the flow generates   [B, z, H, W]
    cond = {"mixture": E(mel(mixture)),           stacked on x_t's channels by
                                                  :class:`mmflow.nn.ChannelConcat`
            "context": {"query": T(q).tokens},   a context stream of the MMDiT
            "context_mask": {"query": T(q).mask},
            "pooled": T(q).pooled}               added to the time embedding (adaLN)

The flow starts from Gaussian noise, as in FlowSep, or (``source``) from a density centred on
the mixture's latent, ``x0 = E(mel(mixture)) + s eps`` (:class:`mmflow.sources.ConditionSource`
with ``key: mixture``), so it carries the mixture to the source it holds.

Decoding can be *relative to the mixture* (``relative_decoding``): the estimate's log-mel is
taken as ``mel(mixture) + D(x1) - D(E(mel(mixture)))``, the change the estimate makes to the
mixture's own decoding. The decoder's reconstruction error, common to both decodings, cancels:
where the target dominates the mixture the estimate stays at the mixture instead of at its
lossy reconstruction. With the mixture-phase inverter the band gain is then exactly
``exp(D(x1) - D(z_mixture))``, a mask read off two decodings.

The null condition (condition dropout in training, the unconditional branch of CFG) replaces
only the query by the empty string; the mixture is never dropped, since separating nothing is
meaningless. Decoding runs the VAE decoder to a log-mel and a :class:`.mel.MelInverter` to a
waveform — mixture phase (needs the batch's mixture), Griffin-Lim, or the neural vocoder —
cut to the mixture's length.

The VAE, the text encoder and the inverter are frozen sub-models loaded from local files;
they stay out of the flow's checkpoints (see :class:`mmflow.modality.ModalityAdapter`), so the
inverter can be swapped at evaluation time: ``--model.adapter.init_args.inverter ...``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmflow.modality import Batch, Condition, ModalityAdapter
from mmflow.pretrained import Frozen
from mmflow.sources import GaussianSource, Source

from .captions import NULL_CAPTION
from .evaluators import separation_metrics
from .media import write_separation_batch
from .mel import MelInverter, MixturePhaseInverter
from .sources import ALL_CLASSES
from .text import SentenceEncoder
from .vae import MelVAE

__all__ = ["FlowSepAdapter"]


class FlowSepAdapter(ModalityAdapter):
    """Mixture + text query -> the queried source, through mel-VAE latents (module docs).

    Args:
        vae_path: folder of a trained :class:`.vae.MelVAE` (``recipes/audio/mel_vae.yaml``).
        text_encoder_path: a local transformers encoder folder; ``None`` is all-MiniLM-L6-v2.
        inverter: log-mel -> waveform (default: :class:`.mel.MixturePhaseInverter`). Inverters
            without weights are given the VAE's mel transform; a vocoder must have been
            trained on the same mel settings as the VAE (checked).
        class_names: names of ``batch["class_index"]`` for per-class metrics (default: the
            classes of :class:`.data.LASSMixtures`); ``[]`` reports overall means only.
        max_query_tokens: queries are truncated to this many tokens.
        query_stream: name of the MMDiT context stream holding the query tokens.
        use_pooled: also pass the pooled query embedding as ``pooled`` (the network then needs
            ``pooled_dim`` = the encoder's width).
        media_examples: how many examples of a batch :meth:`save_media` writes.
        classifier_path: an audio classifier (``python -m modalities.audio.classifier``) for
            the query-accuracy metric; ``None`` leaves that metric out.
        source: what the flow starts from (default Gaussian noise); a
            :class:`mmflow.sources.ConditionSource` on ``mixture`` starts at the mixture.
        relative_decoding: decode the estimate *relative to the mixture*: the log-mel is
            ``mel(mixture) + D(x1) - D(z_mixture)`` instead of ``D(x1)``, so the decoder's own
            error, shared by the two decodings, cancels, and an estimate equal to the mixture's
            latent gives back the mixture itself (module docs).
        target_cache_size: keep the latents of up to this many target waveforms, keyed by
            their bytes (a hit is exact), so a clip that is the target again in a later epoch
            is not encoded again; ``0`` turns the cache off. Mixtures are not cached: each
            training mixture is drawn afresh.
    """

    def __init__(
        self,
        vae_path: str,
        text_encoder_path: str | None = None,
        inverter: MelInverter | None = None,
        class_names: list[str] | None = None,
        max_query_tokens: int = 32,
        query_stream: str = "query",
        use_pooled: bool = True,
        media_examples: int = 4,
        classifier_path: str | None = None,
        source: Source | None = None,
        relative_decoding: bool = False,
        target_cache_size: int = 0,
    ) -> None:
        super().__init__()
        if target_cache_size < 0:
            raise ValueError(f"`target_cache_size` must be >= 0, got {target_cache_size}")
        self.source = source or GaussianSource()
        self.relative_decoding = relative_decoding
        self.target_latents = LatentCache(target_cache_size)
        vae = MelVAE.from_pretrained(vae_path)
        self.vae = Frozen(vae)
        self.text_encoder = Frozen(SentenceEncoder(text_encoder_path, max_query_tokens))
        inverter = inverter or MixturePhaseInverter()
        _check_same_framing(inverter, vae)
        inverter.mel = vae.mel
        self.inverter = Frozen(inverter)
        self.class_names = list(ALL_CLASSES if class_names is None else class_names)
        self.query_stream = query_stream
        self.use_pooled = use_pooled
        self.media_examples = media_examples
        self.metrics = separation_metrics(self.class_names, vae.mel, classifier_path)

    @property
    def sample_rate(self) -> int:
        return self.vae.mel.sample_rate

    @torch.no_grad()
    def latents(self, waveforms: Tensor) -> Tensor:
        """Scaled VAE latents ``[B, z, n_mels / f, frames / f]`` of ``[B, T]`` waveforms."""
        return self.vae.encode(self.vae.mel(waveforms))

    def encode(self, batch: Batch) -> tuple[Tensor, Condition]:
        """``(E(mel(target)), {mixture latent, query tokens, mask, pooled})``."""
        mixture, target = _waveforms(batch)
        cond = {"mixture": self.latents(mixture), **self.query_condition(batch["caption"])}
        return self.target_latents(target, self.latents), cond

    def query_condition(self, captions: list[str]) -> Condition:
        """The network inputs of text queries: the context stream, its mask, the pooled vector."""
        text = self.text_encoder(captions)
        return text.network_inputs(self.query_stream, self.use_pooled, self.vae.latent_scale.device)

    def null_condition(self, cond: Condition) -> Condition:
        """The empty query, padded to the query stream's length; the mixture is kept."""
        tokens = cond["context"][self.query_stream]
        null = self.query_condition([NULL_CAPTION] * tokens.shape[0])
        null_tokens = null["context"][self.query_stream]
        null_mask = null["context_mask"][self.query_stream]
        length = tokens.shape[1]
        if null_tokens.shape[1] > length:
            raise ValueError(
                f"the null query has {null_tokens.shape[1]} tokens but the query stream only "
                f"{length}; the query encoder must encode '' within every query's length"
            )
        padded = tokens.new_zeros(tokens.shape)
        padded[:, : null_tokens.shape[1]] = null_tokens
        padded_mask = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        padded_mask[:, : null_mask.shape[1]] = null_mask
        null["context"] = {self.query_stream: padded}
        null["context_mask"] = {self.query_stream: padded_mask}
        return null

    def decode(self, x1: Tensor, cond: Condition, batch: Batch | None = None) -> Tensor:
        """Waveforms ``[B, T]``: VAE decoder -> log-mel -> the inverter, at the mixture's length
        (with ``relative_decoding``, the log-mel relative to the mixture's)."""
        log_mel = self.log_mel_from_latents(x1, batch)
        if self.relative_decoding:
            log_mel = self.relative_to_mixture(log_mel, cond, batch)
        return self.waveforms_from_log_mel(log_mel, batch)

    def relative_to_mixture(self, log_mel: Tensor, cond: Condition, batch: Batch | None) -> Tensor:
        """``mel(mixture) + log_mel - D(z_mixture)``: the estimate's change to the mixture's
        decoding, applied to the mixture's own log-mel."""
        if batch is None or "mixture" not in batch:
            raise ValueError("relative_decoding needs the batch's `mixture` to decode against")
        mixture_log_mel = self.vae.mel(batch["mixture"])
        decoded_mixture = self.log_mel_from_latents(cond["mixture"], batch)
        return mixture_log_mel[..., : log_mel.shape[-1]] + log_mel - decoded_mixture

    def log_mel_from_latents(self, x1: Tensor, batch: Batch | None = None) -> Tensor:
        """The VAE decoder's log-mel, cropped to the frames of the batch's mixture if given."""
        frames = None
        if batch is not None and "mixture" in batch:
            frames = self.vae.mel.frames_for(batch["mixture"].shape[-1])
        with torch.no_grad():
            return self.vae.decode(x1, frames)

    def waveforms_from_log_mel(self, log_mel: Tensor, batch: Batch | None = None) -> Tensor:
        """The inverter's waveforms (mixture phase needs ``batch["mixture"]``)."""
        mixture = batch.get("mixture") if batch is not None else None
        length = mixture.shape[-1] if mixture is not None else None
        with torch.no_grad():
            return self.inverter(log_mel, mixture, length)

    def evaluators(self) -> nn.ModuleDict:
        """SDR, SI-SDR, SDRi, SI-SDRi and mel L1, overall and per class."""
        return self.metrics

    def save_media(
        self, media: Any, directory: Path, name: str, batch: Batch | None = None
    ) -> list[Path]:
        """WAVs of mixture / estimate / reference and a spectrogram PNG per example."""
        if batch is None:
            return []
        return write_separation_batch(
            directory,
            name,
            media,
            batch,
            self.media_examples,
            self.sample_rate,
            self.vae.mel.hop_length,
        )


class LatentCache:
    """Latents of waveforms already encoded, keyed by a hash of their bytes (module docs).

    ``cache(waveforms, encode)`` returns ``encode(waveforms)`` row for row, calling ``encode``
    only on the rows not seen before; at most ``size`` entries are kept (oldest dropped).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[bytes, Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __call__(self, waveforms: Tensor, encode: Callable[[Tensor], Tensor]) -> Tensor:
        if self.size == 0:
            return encode(waveforms)
        keys = [_waveform_key(row) for row in waveforms]
        missing = [row for row, key in enumerate(keys) if key not in self.entries]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            for row, latent in zip(missing, encode(waveforms[missing]), strict=True):
                self.entries[keys[row]] = latent
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        found = [self.entries.get(key) for key in keys]
        if any(latent is None for latent in found):  # evicted within this batch: recompute
            return encode(waveforms)
        return torch.stack(found)


def _waveform_key(waveform: Tensor) -> bytes:
    data = waveform.detach().cpu().contiguous().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=16).digest() + str(waveform.dtype).encode()


def _waveforms(batch: Batch) -> tuple[Tensor, Tensor]:
    for key in ("mixture", "target", "caption"):
        if key not in batch:
            raise KeyError(f"FlowSepAdapter: batch has no `{key}`; it has {sorted(batch)}")
    mixture, target = batch["mixture"], batch["target"]
    if mixture.shape != target.shape or mixture.ndim != 2:
        raise ValueError(
            f"FlowSepAdapter: `mixture` {tuple(mixture.shape)} and `target` "
            f"{tuple(target.shape)} must both be [B, T]"
        )
    if len(batch["caption"]) != mixture.shape[0]:
        raise ValueError(
            f"FlowSepAdapter: {len(batch['caption'])} captions for {mixture.shape[0]} mixtures"
        )
    return mixture, target


def _check_same_framing(inverter: MelInverter, vae: MelVAE) -> None:
    ours, theirs = inverter.mel.settings(), vae.mel.settings()
    learned = any(True for _ in inverter.parameters())
    if learned and ours != theirs:
        different = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
        raise ValueError(
            f"the inverter's mel settings differ from the VAE's: {different} (inverter, VAE)"
        )
