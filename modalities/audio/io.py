"""Audio clips of the separation modality: cutting recordings into fixed-length clips.

Reading and writing files is :mod:`mmflow.waveforms` (re-exported here): everything audio in
mmflow is mono float32 in [-1, 1] at one sample rate (16 kHz by default, as in FlowSep).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmflow.waveforms import load_audio, save_wav

__all__ = ["fit_length", "load_audio", "save_wav", "split_into_clips"]


def fit_length(audio: Tensor, num_samples: int, mode: str = "pad") -> Tensor:
    """``audio[..., :num_samples]``, zero-padded at the end when shorter.

    ``mode="pad"`` appends silence to a clip shorter than the window (the fix-up used for
    short recordings); ``mode="error"`` raises ``ValueError`` instead.
    """
    if mode not in ("pad", "error"):
        raise ValueError(f"fit_length mode must be 'pad' or 'error', got {mode!r}")
    length = audio.shape[-1]
    if length >= num_samples:
        return audio[..., :num_samples]
    if mode == "error":
        raise ValueError(f"clip has {length} samples, shorter than the window of {num_samples}")
    return torch.nn.functional.pad(audio, (0, num_samples - length))


def split_into_clips(audio: Tensor, clip_samples: int, min_fill: float = 0.5) -> Tensor:
    """Cut ``[T]`` into consecutive non-overlapping clips ``[N, clip_samples]``.

    The last, partial window is zero-padded and kept when it holds at least ``min_fill`` of a
    window, otherwise dropped. A recording shorter than one window always gives one
    zero-padded clip (``N >= 1``).
    """
    full, remainder = divmod(audio.shape[-1], clip_samples)
    keep_partial = remainder > 0 and (full == 0 or remainder >= min_fill * clip_samples)
    count = full + int(keep_partial)
    return fit_length(audio, count * clip_samples).reshape(count, clip_samples)
