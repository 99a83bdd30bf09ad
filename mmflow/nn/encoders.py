"""Condition encoders that train with the flow: raw inputs in, context tokens out.

A frozen text encoder's embeddings can be computed once and passed as a context stream. An
encoder that trains with the flow has to live inside the velocity network instead, so the
optimizer, the EMA copy, checkpoints and exports all hold it: :class:`mmflow.nn.EncodedContext`
wraps a backbone with such an encoder. :class:`TimmEncoder` is the image encoder: any timm
architecture, built without its classifier, from random weights or from a user's safetensors
file (nothing is fetched from a hub).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from mmflow.files import load_weights

__all__ = ["TimmEncoder"]


class TimmEncoder(nn.Module):
    """A timm image model as a token encoder: images ``[B, C, H, W]`` -> tokens ``[B, L, dim]``.

    The tokens are the model's ``forward_features``: a vision transformer's token sequence
    (class token included), or a CNN's last feature map flattened over its ``h x w`` positions.

    Args:
        name: a timm architecture, e.g. ``vit_tiny_patch16_224`` or ``resnet10t``.
        in_chans: image channels.
        weights: a safetensors file of the architecture's weights (e.g. a classifier the user
            trained; its classifier head is left out), or ``None`` for random initial weights.
        model_args: further arguments of ``timm.create_model`` (``img_size``, ``patch_size``,
            ``depth`` ...).
    """

    def __init__(
        self,
        name: str,
        in_chans: int = 3,
        weights: str | None = None,
        model_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        try:
            self.model = timm.create_model(
                name, pretrained=False, num_classes=0, in_chans=in_chans, **(model_args or {})
            )
        except RuntimeError as error:
            raise ValueError(f"TimmEncoder: cannot build timm model {name!r} ({error})") from None
        self.in_chans = in_chans
        self.dim = int(self.model.num_features)
        if weights is not None:
            self._load(Path(weights))

    def _load(self, path: Path) -> None:
        """Load ``path`` strictly but for the classifier head, refusing non-finite weights."""
        state = load_weights(path)
        bad = sorted(name for name, value in state.items() if not torch.isfinite(value).all())
        if bad:
            raise ValueError(f"{path}: non-finite weights in {bad[:5]}")
        head = self.model.pretrained_cfg.get("classifier") or "head"
        prefixes = tuple(f"{h}." for h in ((head,) if isinstance(head, str) else head))
        state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
        own = {k: v.shape for k, v in self.model.state_dict().items()}
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        reshaped = sorted(k for k in set(own) & set(state) if state[k].shape != own[k])
        if missing or unexpected or reshaped:
            raise ValueError(
                f"{path}: weights do not fit the timm model (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, other shapes {reshaped[:5]})"
            )
        self.model.load_state_dict(state, strict=True)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_chans:
            raise ValueError(
                f"TimmEncoder: expected images [B, {self.in_chans}, H, W], "
                f"got {tuple(images.shape)}"
            )
        features = self.model.forward_features(images)
        if features.dim() == 4:
            features = features.flatten(2).transpose(1, 2)
        return features
