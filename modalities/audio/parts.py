"""The shared base of the audio modality's own trained parts (the mel-VAE, the vocoder).

:class:`AudioPart` is the core's :class:`mmflow.pretrained.TrainablePart` (losses logged,
saved to ``export_dir`` at the end of fit) that trains on one waveform entry of the audio
datamodule's batches (``batch_key``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from mmflow.pretrained import TrainablePart

__all__ = ["AudioPart"]


class AudioPart(TrainablePart):
    """A trainable part fed ``batch[hparams.batch_key]`` waveforms.

    Subclasses save ``batch_key`` and ``export_dir`` as hyperparameters and implement
    :meth:`batch_losses` (a dict with ``"loss"``; ``"mel_l1"`` is shown in the progress bar).
    """

    progress_bar: ClassVar[tuple[str, ...]] = ("mel_l1",)

    def waveforms_of(self, batch: dict[str, Any]) -> Tensor:
        """``batch[batch_key]``, or a ``KeyError`` naming the key and what the batch has."""
        key = self.hparams.batch_key
        if key not in batch:
            raise KeyError(
                f"{type(self).__name__}: batch has no `{key}` (batch_key); it has {sorted(batch)}"
            )
        return batch[key]
