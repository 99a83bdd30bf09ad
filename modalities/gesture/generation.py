"""Long speech, window by window: a whole recording's motion from a flow trained on windows.

The speech features are cut into back-to-back windows of ``window`` frames (the last padded
with silence). Each window is generated from fresh noise under its speech and the seed of the
window before it (its last ``seed_frames`` latent frames; none for the first window, as in
training with seed dropout), so one window continues the motion of the last. The windows'
latents are joined along time and decoded *once*: the convolutional decoder sees the whole
sequence, so there is no seam to blend at the windows' borders. The motion is cut back to the
speech's length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mmflow.hub import PretrainedFlow

from .adapter import GestureAdapter


@torch.no_grad()
def generate_recording(
    flow: PretrainedFlow,
    speech: Tensor,
    window: int,
    generator: torch.Generator | None = None,
    **sampling: object,
) -> dict[str, Tensor]:
    """Motion ``{"rotations": [F, J, 6], "root": [F, 3]}`` for speech features ``[F, D]``.

    ``flow`` is a trained flow (:func:`mmflow.hub.load_flow`) whose adapter is a
    :class:`.adapter.GestureAdapter`; ``sampling`` goes to its ``generate`` (``sampler``,
    ``nfe``, ``cfg_scale``; its stored defaults otherwise).

    Raises:
        ValueError: a window that is not a multiple of the auto-encoder's latent frame, or
            speech that is not ``[frames, features]``.
    """
    adapter: GestureAdapter = flow.adapter
    per_latent = adapter.autoencoder.frames_per_latent
    if window % per_latent or speech.ndim != 2:
        raise ValueError(
            f"generate_recording: window {window} must be a multiple of {per_latent} and speech "
            f"[frames, features], got {tuple(speech.shape)}"
        )
    frames = speech.shape[0]
    count = math.ceil(frames / window)
    padded = F.pad(speech, (0, 0, 0, count * window - frames))
    shape = (1, adapter.latent_dim, window // per_latent, adapter.num_parts)
    pieces: list[Tensor] = []
    for index in range(count):
        features = padded[index * window : (index + 1) * window][None]
        previous = pieces[-1] if pieces else None
        cond = adapter.condition(features, adapter.seed_vector(previous, 1, features))
        noise = torch.randn(shape, generator=generator, device=speech.device, dtype=speech.dtype)
        pieces.append(flow.generate(cond, noise, **sampling).samples)
    motion = adapter.decode(torch.cat(pieces, dim=2), cond)
    return {key: value[0, :frames] for key, value in motion.items()}
