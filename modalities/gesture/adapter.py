"""``GestureAdapter``: co-speech gestures as a flow over body-part motion latents (GestureLSM).

With ``E`` the frozen body-part RVQ-VAE's encoder (continuous pre-quantisation latents, scaled
to unit variance) and a window of ``W`` motion frames with its speech features ``s`` (``[W,
F]``, :func:`.speech.speech_frames`):

    x1 = E(motion)                       [B, D, W / 4, P]: channels, latent time, body part
    cond = {"context": {"speech": s'},   [B, W / 4, 4 F]: the speech of each latent frame's
                                          4 motion frames side by side, one token per latent
                                          frame (the same time positions as x1's rows)
            "pooled": [seed, has_seed]}  the last ``seed_frames`` latent frames of the
                                          previous window, flattened, and a 0/1 flag

That is ``speech_input="stream"``: the speech is a context stream of the MM-DiT and meets the
motion in joint attention, where 1-D RoPE on the speech tokens, on the same channels and
frequencies as the motion tokens' time axis, lets a motion token find its own frame's speech.
With ``speech_input="channels"`` the same speech is instead laid on ``x1``'s grid, copied to
every part, ``cond = {"speech": [B, 4 F, W / 4, P], "pooled": ...}``, and stacked on
``x_t``'s channels by :class:`mmflow.nn.ChannelConcat`: each motion token carries its own
frame's speech, and nothing has to be learned to line the two up.

``x1`` is laid out as a ``time x part`` grid, so :class:`mmflow.nn.Patchify2D` with patch 1
makes one token per latent frame and part, with 2-D positions ``(time, part)``: the MM-DiT's
attention runs across parts and across time (``x_attention="axial"`` restricts each token to
its frame and its part). The null condition (condition dropout, the unconditional branch of
CFG) replaces the speech by zeros and keeps the seed. In training the seed is the window's own
first ``seed_frames`` latent frames, left out (zeros, flag 0) with probability
``seed_dropout`` so the first window of a recording, which has none, is in distribution.
Decoding passes ``x1`` through the quantiser and the decoders to 6-D rotations and the root.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from mmflow.modality import Batch, Condition, ModalityAdapter
from mmflow.pretrained import Frozen

from .autoencoder import MotionAutoencoder
from .evaluators import GestureFrechetDistance
from .skeleton import default_skeleton

SPEECH_STREAM = "speech"

__all__ = ["GestureAdapter"]


class GestureAdapter(ModalityAdapter):
    """Speech (and the previous window's end) -> body-part motion latents (module docs).

    Args:
        autoencoder_path: folder of the trained body-part RVQ-VAE (``recipes/gesture/rvqvae.yaml``).
        seed_frames: latent frames of the previous window the network sees as the seed.
        seed_dropout: probability of training a window without its seed.
        fgd_autoencoder_path: the FGD-ours auto-encoder (``recipes/gesture/fgd_autoencoder.yaml``)
            for validation; ``None`` leaves FGD-ours out.
        speech_input: ``"stream"`` (a context stream named ``speech``) or ``"channels"`` (the
            keyword ``speech``, for :class:`mmflow.nn.ChannelConcat`): module docs.
    """

    def __init__(
        self,
        autoencoder_path: str,
        seed_frames: int = 1,
        seed_dropout: float = 0.3,
        fgd_autoencoder_path: str | None = None,
        speech_input: Literal["stream", "channels"] = "stream",
    ) -> None:
        super().__init__()
        if seed_frames < 1 or not 0 <= seed_dropout <= 1:
            raise ValueError(
                f"seed_frames must be >= 1 and seed_dropout in [0, 1], got {seed_frames}, "
                f"{seed_dropout}"
            )
        if speech_input not in ("stream", "channels"):
            raise ValueError(f"speech_input must be 'stream' or 'channels', got {speech_input!r}")
        self.speech_input = speech_input
        autoencoder = MotionAutoencoder.from_pretrained(autoencoder_path)
        if not autoencoder.hparams.num_quantizers:
            raise ValueError(
                f"{autoencoder_path}: a continuous auto-encoder; the flow runs on the RVQ-VAE"
            )
        self.autoencoder = Frozen(autoencoder)
        self.seed_frames, self.seed_dropout = seed_frames, seed_dropout
        self.skeleton = default_skeleton()
        self.metrics = nn.ModuleDict(
            {"fgd": GestureFrechetDistance(fgd_autoencoder_path)} if fgd_autoencoder_path else {}
        )

    @property
    def latent_dim(self) -> int:
        return self.autoencoder.hparams.latent_dim

    @property
    def num_parts(self) -> int:
        return len(self.autoencoder.part_names)

    def seed_dim(self) -> int:
        """Size of the pooled seed vector: ``seed_frames`` latent frames of every part, and the
        flag."""
        return self.seed_frames * self.num_parts * self.latent_dim + 1

    def speech_dim(self, speech_features: int) -> int:
        """Width of a speech token (or of the speech channels): one latent frame's motion
        frames of features."""
        return self.autoencoder.frames_per_latent * speech_features

    @torch.no_grad()
    def latents(self, rotations: Tensor, root: Tensor) -> Tensor:
        """``x1`` ``[B, D, T', P]`` of motion ``[B, W, J, 6]`` and ``[B, W, 3]``."""
        return self.autoencoder.encode(rotations, root).permute(0, 3, 1, 2).contiguous()

    def speech_tokens(self, speech: Tensor) -> Tensor:
        """Speech features ``[B, W, F]`` -> one token per latent frame ``[B, W / 4, 4 F]``."""
        batch, frames, features = speech.shape
        per_latent = self.autoencoder.frames_per_latent
        if frames % per_latent:
            raise ValueError(
                f"speech of {frames} frames: windows must be a multiple of {per_latent} frames"
            )
        return speech.reshape(batch, frames // per_latent, per_latent * features)

    def condition(self, speech: Tensor, seed: Tensor) -> Condition:
        """The network's keyword arguments for speech features ``[B, W, F]`` and a seed vector
        (:meth:`seed_vector`), laid out as ``speech_input`` says."""
        tokens = self.speech_tokens(speech)
        if self.speech_input == "stream":
            return {"context": {SPEECH_STREAM: tokens}, "pooled": seed}
        grid = tokens.transpose(1, 2)[..., None].expand(-1, -1, -1, self.num_parts)
        return {SPEECH_STREAM: grid, "pooled": seed}

    def seed_vector(self, latents: Tensor | None, batch_size: int, like: Tensor) -> Tensor:
        """``[B, seed_dim]``: the last ``seed_frames`` latent frames of ``latents`` (the
        previous window, ``[B, D, T', P]``) and the flag 1, or zeros and the flag 0 without."""
        if latents is None:
            return like.new_zeros(batch_size, self.seed_dim())
        seed = latents[:, :, -self.seed_frames :].flatten(1)
        return torch.cat([seed, seed.new_ones(batch_size, 1)], dim=1)

    def encode(self, batch: Batch) -> tuple[Tensor, Condition]:
        """``(x1, {speech tokens, pooled seed})`` of a batch of windows (module docs)."""
        for key in ("rotations", "root", "speech"):
            if key not in batch:
                raise KeyError(f"GestureAdapter: the batch has no `{key}` (keys: {sorted(batch)})")
        x1 = self.latents(batch["rotations"], batch["root"])
        seed = self.seed_vector(x1[:, :, : self.seed_frames], x1.shape[0], x1)
        if self.training and self.seed_dropout > 0:
            keep = torch.rand(x1.shape[0], 1, device=x1.device) >= self.seed_dropout
            seed = seed * keep
        return x1, self.condition(batch["speech"], seed)

    def null_condition(self, cond: Condition) -> Condition:
        """Silence for the speech (zeros), the same seed."""
        if self.speech_input == "channels":
            return {**cond, SPEECH_STREAM: torch.zeros_like(cond[SPEECH_STREAM])}
        speech = cond["context"][SPEECH_STREAM]
        return {**cond, "context": {SPEECH_STREAM: torch.zeros_like(speech)}}

    def decode(self, x1: Tensor, cond: Condition, batch: Batch | None = None) -> dict[str, Tensor]:
        """``{"rotations": [B, W, J, 6], "root": [B, W, 3]}``; the root starts where the batch's
        does (at the origin without a batch)."""
        latents = x1.permute(0, 2, 3, 1)
        start = None if batch is None else batch["root"][:, 0]
        rotations, root = self.autoencoder.decode(latents, self.skeleton.num_joints, start)
        return {"rotations": rotations, "root": root}

    def evaluators(self) -> nn.ModuleDict:
        return self.metrics
