"""Long speech, window by window: a whole recording's motion from a flow trained on windows.

In training, a window's seed is its *own* first ``s = seed_frames`` latent frames, so the flow
learns to begin a window with the seed it is given. Generation therefore lets consecutive
windows overlap by those ``s`` latent frames (GestureLSM's overlapping seed frames): window
``k`` starts ``W - s * 2^down`` motion frames after window ``k - 1``, is seeded by that
window's last ``s`` latent frames, and its own first ``s`` latent frames, which restate them,
are dropped when the windows are joined. The speech is cut at the same starts (the last window
padded with silence). The joined latents are decoded *once*: the convolutional decoder sees
the whole sequence, so there is no seam to blend at the windows' borders. The motion is cut
back to the speech's length.
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
    latent_window = window // per_latent
    overlap = adapter.seed_frames
    step = (latent_window - overlap) * per_latent
    if step <= 0:
        raise ValueError(
            f"generate_recording: a window of {latent_window} latent frames cannot overlap the "
            f"next by {overlap} seed frames"
        )
    count = 1 + max(0, math.ceil((frames - window) / step))
    padded = F.pad(speech, (0, 0, 0, (count - 1) * step + window - frames))
    shape = (1, adapter.latent_dim, latent_window, adapter.num_parts)
    pieces: list[Tensor] = []
    previous = None
    for index in range(count):
        features = padded[index * step : index * step + window][None]
        cond = adapter.condition(features, adapter.seed_vector(previous, 1, features))
        noise = torch.randn(shape, generator=generator, device=speech.device, dtype=speech.dtype)
        previous = flow.generate(cond, noise, **sampling).samples
        pieces.append(previous if index == 0 else previous[:, :, overlap:])
    motion = adapter.decode(torch.cat(pieces, dim=2), cond)
    return {key: value[0, :frames] for key, value in motion.items()}
