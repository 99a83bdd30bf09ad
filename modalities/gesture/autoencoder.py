"""Body-part motion auto-encoders: GestureLSM's per-part Conv1d RVQ-VAEs, and the continuous
full-body auto-encoder behind FGD-ours.

Each body part (upper body, hands, lower body with the root's velocity) has its own
T2M-GPT-style Conv1d encoder (``down`` stride-2 convolutions, so ``2^down`` frames make one
latent frame, each followed by dilated residual blocks), a residual vector quantiser and a
mirrored decoder. The flow transports the *continuous pre-quantisation* latents (scaled to unit
variance, :class:`mmflow.pretrained.LatentAutoencoderPart`); decoding passes them through the
quantiser and the decoder, as GestureLSM does.

The residual quantiser (SoundStream, T2M-GPT) codes ``z`` with ``Q`` codebooks in turn, each
coding what the previous left: ``r_0 = z``, ``c_q = argmin_k |r_q - e_{q,k}|``,
``r_{q+1} = r_q - e_{q,c_q}``, ``z_q = sum_q e_{q,c_q}``. Codebooks follow exponential moving
averages of the vectors assigned to them (decay ``gamma``): ``N_k <- gamma N_k + (1 - gamma)
n_k``, ``m_k <- gamma m_k + (1 - gamma) sum_{i -> k} r_i``, ``e_k = m_k / N_k`` (Laplace
smoothed); a code whose ``N_k`` falls below ``dead_threshold`` is reset to a random residual
of the batch. Gradients reach the encoder by the straight-through estimator, ``z + sg(z_q - z)``,
and the commitment loss ``|z - sg(z_q)|^2`` keeps ``z`` near its codes. Quantiser dropout: in
training, with probability ``quantizer_dropout`` a batch uses only its first ``n ~ U{1..Q}``
quantisers, so coarse codes alone decode to plausible motion.

With ``num_quantizers = 0`` the auto-encoder is continuous: that is the FGD-ours evaluator's
(EMAGE trains its own motion auto-encoder on the training split and takes the Fréchet distance
of its latents; ours does the same on our data, so the metric is named FGD-ours).
"""

from __future__ import annotations

from itertools import islice
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmflow.pretrained import LatentAutoencoderPart

ROOT_VELOCITY = "root_velocity"


class ResidualQuantizer(nn.Module):
    """``num_quantizers`` EMA codebooks of ``codebook_size`` codes of ``dim`` (module docstring)."""

    def __init__(
        self,
        num_quantizers: int,
        codebook_size: int,
        dim: int,
        decay: float = 0.99,
        quantizer_dropout: float = 0.2,
        dead_threshold: float = 1.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_quantizers, self.codebook_size, self.dim = num_quantizers, codebook_size, dim
        self.decay, self.quantizer_dropout = decay, quantizer_dropout
        self.dead_threshold, self.eps = dead_threshold, eps
        self.register_buffer("codebooks", torch.zeros(num_quantizers, codebook_size, dim))
        self.register_buffer("counts", torch.ones(num_quantizers, codebook_size))
        self.register_buffer("sums", torch.zeros(num_quantizers, codebook_size, dim))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def forward(self, z: Tensor, num_active: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``z`` ``[B, D, T]`` -> (straight-through ``z_q`` ``[B, D, T]``, commitment loss,
        codes ``[B, Q', T]``). ``num_active`` quantisers are used (default: all, or a random
        number under quantiser dropout in training)."""
        flat = z.transpose(1, 2).reshape(-1, self.dim)
        if self.training and not bool(self.initialised):
            self._initialise(flat.detach())
        if num_active is None:
            num_active = self.num_quantizers
            if self.training and torch.rand(()) < self.quantizer_dropout:
                num_active = int(torch.randint(1, self.num_quantizers + 1, ()))
        residual, quantised, codes = flat, torch.zeros_like(flat), []
        for q in range(num_active):
            distances = torch.cdist(residual.detach(), self.codebooks[q])
            code = distances.argmin(dim=1)
            chosen = self.codebooks[q][code]
            if self.training:
                self._update(q, residual.detach(), code)
            quantised = quantised + chosen
            residual = residual - chosen
            codes.append(code)
        commitment = F.mse_loss(flat, quantised.detach())
        straight = flat + (quantised - flat).detach()
        batch, _, length = z.shape
        out = straight.reshape(batch, length, self.dim).transpose(1, 2)
        return out, commitment, torch.stack(codes, 1).reshape(batch, length, -1).transpose(1, 2)

    @torch.no_grad()
    def _initialise(self, vectors: Tensor) -> None:
        """Codebooks from random batch vectors (each quantiser codes residuals of the one
        before, so later books start from scaled-down copies)."""
        for q in range(self.num_quantizers):
            picks = torch.randint(0, len(vectors), (self.codebook_size,), device=vectors.device)
            self.codebooks[q] = vectors[picks] * (0.5**q)
            self.sums[q] = self.codebooks[q] * self.counts[q, :, None]
        self.initialised.fill_(True)

    @torch.no_grad()
    def _update(self, q: int, residual: Tensor, code: Tensor) -> None:
        onehot = F.one_hot(code, self.codebook_size).to(residual.dtype)
        self.counts[q].mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.sums[q].mul_(self.decay).add_(onehot.T @ residual, alpha=1 - self.decay)
        total = self.counts[q].sum()
        smoothed = (self.counts[q] + self.eps) / (total + self.codebook_size * self.eps) * total
        self.codebooks[q] = self.sums[q] / smoothed[:, None]
        dead = self.counts[q] < self.dead_threshold
        if dead.any():
            picks = torch.randint(0, len(residual), (int(dead.sum()),), device=residual.device)
            self.codebooks[q][dead] = residual[picks]
            self.sums[q][dead] = residual[picks]
            self.counts[q][dead] = 1.0


class ResidualStack(nn.Module):
    """``depth`` residual blocks ``x + W2 relu(W1_d relu(x))`` with dilations ``growth^i``
    (largest first), kernel 3."""

    def __init__(self, width: int, depth: int, growth: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                nn.Conv1d(width, width, 3, padding=growth**i, dilation=growth**i),
                nn.ReLU(),
                nn.Conv1d(width, width, 1),
            )
            for i in reversed(range(depth))
        )

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


def conv_encoder(channels: int, width: int, latent: int, down: int, depth: int, growth: int):
    layers: list[nn.Module] = [nn.Conv1d(channels, width, 3, padding=1), nn.ReLU()]
    for _ in range(down):
        layers += [
            nn.Conv1d(width, width, 4, stride=2, padding=1),
            ResidualStack(width, depth, growth),
        ]
    layers.append(nn.Conv1d(width, latent, 3, padding=1))
    return nn.Sequential(*layers)


def conv_decoder(channels: int, width: int, latent: int, down: int, depth: int, growth: int):
    layers: list[nn.Module] = [nn.Conv1d(latent, width, 3, padding=1), nn.ReLU()]
    for _ in range(down):
        layers += [
            ResidualStack(width, depth, growth),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv1d(width, width, 3, padding=1),
        ]
    layers += [
        nn.Conv1d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv1d(width, channels, 3, padding=1),
    ]
    return nn.Sequential(*layers)


class PartAutoencoder(nn.Module):
    """One part's encoder, quantiser (or none) and decoder over ``[B, C, T]`` features."""

    def __init__(
        self,
        channels: int,
        width: int,
        latent_dim: int,
        down: int,
        depth: int,
        growth: int,
        num_quantizers: int,
        codebook_size: int,
        quantizer_dropout: float,
    ):
        super().__init__()
        self.encoder = conv_encoder(channels, width, latent_dim, down, depth, growth)
        self.quantizer = (
            ResidualQuantizer(
                num_quantizers, codebook_size, latent_dim, quantizer_dropout=quantizer_dropout
            )
            if num_quantizers
            else None
        )
        self.decoder = conv_decoder(channels, width, latent_dim, down, depth, growth)

    def quantise(self, z: Tensor, num_active: int | None = None) -> tuple[Tensor, Tensor]:
        """``(z_q, commitment)``: ``z`` through the quantiser's first ``num_active`` codebooks
        (``None``: as the quantiser decides; itself and 0 when continuous)."""
        if self.quantizer is None:
            return z, z.new_zeros(())
        quantised, commitment, _ = self.quantizer(z, num_active)
        return quantised, commitment


class MotionAutoencoder(LatentAutoencoderPart):
    """Per-part motion auto-encoders over 6-D joint rotations (and the root's velocity).

    Args:
        parts: part name -> the joint indices it encodes; the part named ``root_part`` also
            encodes the root's velocity (3 values a frame, metres per second).
        root_part: the part holding the root's velocity (``None``: no root motion).
        fps: frames per second (the root velocity's unit).
        width, depth, growth: channels, residual blocks per stage and their dilation growth.
        down: stride-2 stages (``2^down`` frames a latent frame).
        latent_dim: channels of a latent frame, per part.
        num_quantizers, codebook_size, quantizer_dropout: the residual quantiser (0: none).
        commitment_weight: weight of the commitment loss.
        velocity_weight, acceleration_weight: weights of the L1 losses on the first and second
            frame differences of the reconstruction (EMAGE's velocity and acceleration terms,
            which GestureLSM sets but zeroes): they keep the moments the motion slows down,
            the beats BC scores, where a plain reconstruction loss smooths them away.
        lr: AdamW learning rate.
        statistics_batches: training batches the per-feature mean and std are measured on
            at the start of fit.
        latent_scale_batches, export_dir: see :class:`mmflow.pretrained.LatentAutoencoderPart`.

    A batch holds ``rotations`` ``[B, T, J, 6]`` and ``root`` ``[B, T, 3]``; ``T`` must be a
    multiple of ``2^down``.
    """

    creation_hint: ClassVar[str] = (
        "train it with its recipe: `mmflow fit --config recipes/gesture/rvqvae.yaml` "
        "(the flow's RVQ-VAE) or `recipes/gesture/fgd_autoencoder.yaml` (FGD-ours)"
    )
    progress_bar: ClassVar[tuple[str, ...]] = ("loss",)

    def __init__(
        self,
        parts: dict[str, list[int]],
        root_part: str | None = "lower",
        fps: float = 30.0,
        width: int = 128,
        depth: int = 2,
        growth: int = 3,
        down: int = 2,
        latent_dim: int = 64,
        num_quantizers: int = 3,
        codebook_size: int = 256,
        quantizer_dropout: float = 0.2,
        commitment_weight: float = 0.02,
        velocity_weight: float = 0.0,
        acceleration_weight: float = 0.0,
        lr: float = 2e-4,
        statistics_batches: int = 32,
        latent_scale_batches: int = 16,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        if root_part is not None and root_part not in parts:
            raise ValueError(f"root_part {root_part!r} is not one of the parts {sorted(parts)}")
        self.save_hyperparameters()
        self.part_names = list(parts)
        self.channels = {
            name: 6 * len(joints) + (3 if name == root_part else 0)
            for name, joints in parts.items()
        }
        self.parts = nn.ModuleDict(
            {
                name: PartAutoencoder(channels, width, latent_dim, down, depth, growth,
                                      num_quantizers, codebook_size, quantizer_dropout)
                for name, channels in self.channels.items()
            }
        )  # fmt: skip
        total = sum(self.channels.values())
        self.register_buffer("feature_mean", torch.zeros(total))
        self.register_buffer("feature_std", torch.ones(total))
        self.register_buffer("statistics_measured", torch.zeros((), dtype=torch.bool))
        self.register_buffer("latent_scale", torch.ones(()))

    @property
    def frames_per_latent(self) -> int:
        return 2**self.hparams.down

    # -- features ----------------------------------------------------------------------------

    def features(self, rotations: Tensor, root: Tensor) -> Tensor:
        """Every part's raw features, concatenated: ``[B, T, sum C_p]``."""
        pieces = []
        for name, joints in self.hparams.parts.items():
            pieces.append(rotations[:, :, joints].flatten(2))
            if name == self.hparams.root_part:
                pieces.append(root_velocity(root, self.hparams.fps))
        return torch.cat(pieces, dim=-1)

    def split_features(self, features: Tensor) -> dict[str, Tensor]:
        return dict(zip(self.part_names, features.split(list(self.channels.values()), dim=-1)))

    def normalise(self, features: Tensor) -> Tensor:
        return (features - self.feature_mean) / self.feature_std

    def to_motion(self, features: Tensor, num_joints: int, start: Tensor | None = None):
        """Normalised features ``[B, T, C]`` -> (6-D rotations ``[B, T, J, 6]`` with the joints
        of no part at the identity, root translation ``[B, T, 3]`` integrated from ``start``,
        default 0)."""
        raw = features * self.feature_std + self.feature_mean
        identity = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], device=raw.device, dtype=raw.dtype)
        batch, frames = raw.shape[:2]
        rotations = identity.expand(batch, frames, num_joints, 6).clone()
        root = raw.new_zeros(batch, frames, 3)
        for name, values in self.split_features(raw).items():
            joints = self.hparams.parts[name]
            rotations[:, :, joints] = values[..., : 6 * len(joints)].unflatten(-1, (len(joints), 6))
            if name == self.hparams.root_part:
                root = integrate_velocity(values[..., 6 * len(joints) :], self.hparams.fps)
        if start is not None:
            root = root + start[:, None, :]
        return rotations, root

    # -- latents -----------------------------------------------------------------------------

    def encode_unscaled(self, rotations: Tensor, root: Tensor) -> Tensor:
        """Pre-quantisation latents ``[B, T / 2^down, P, latent_dim]``."""
        self._check_length(rotations.shape[1])
        parts = self.split_features(self.normalise(self.features(rotations, root)))
        latents = [self.parts[n].encoder(parts[n].transpose(1, 2)) for n in self.part_names]
        return torch.stack(latents, dim=2).permute(0, 3, 2, 1)

    def encode(self, rotations: Tensor, root: Tensor) -> Tensor:
        """The flow's latents: ``latent_scale`` times the pre-quantisation latents."""
        return self.latent_scale * self.encode_unscaled(rotations, root)

    def decode_features(self, latents: Tensor, num_quantizers: int | None = None) -> Tensor:
        """Scaled latents ``[B, T', P, D]`` -> normalised features ``[B, T, C]`` through the
        quantiser's first ``num_quantizers`` codebooks (``None``: all of them) and the
        decoders."""
        unscaled = latents / self.latent_scale
        active = num_quantizers or self.hparams.num_quantizers
        pieces = []
        for index, name in enumerate(self.part_names):
            z = unscaled[:, :, index].transpose(1, 2)
            quantised, _ = self.parts[name].quantise(z, active)
            pieces.append(self.parts[name].decoder(quantised).transpose(1, 2))
        return torch.cat(pieces, dim=-1)

    def decode(self, latents: Tensor, num_joints: int, start: Tensor | None = None):
        """Scaled latents -> (6-D rotations ``[B, T, J, 6]``, root translation ``[B, T, 3]``)."""
        return self.to_motion(self.decode_features(latents), num_joints, start)

    def posterior_mean(self, batch: dict[str, Any]) -> Tensor:
        return self.encode_unscaled(batch["rotations"], batch["root"])

    # -- training ----------------------------------------------------------------------------

    def batch_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Per part: smooth-L1 reconstruction of the normalised features ``x`` plus the
        weighted commitment loss (GestureLSM's objective), plus the weighted L1 losses
        ``|D x_hat - D x|`` and ``|D^2 x_hat - D^2 x|`` of the frame differences ``D``."""
        self._check_length(batch["rotations"].shape[1])
        target = self.split_features(
            self.normalise(self.features(batch["rotations"], batch["root"]))
        )
        losses: dict[str, Tensor] = {}
        total = 0.0
        for name in self.part_names:
            part = self.parts[name]
            quantised, commitment = part.quantise(part.encoder(target[name].transpose(1, 2)))
            estimate = part.decoder(quantised).transpose(1, 2)
            reconstruction = F.smooth_l1_loss(estimate, target[name])
            losses[f"{name}_reconstruction"] = reconstruction
            total = total + reconstruction + self.hparams.commitment_weight * commitment
            total = total + self._difference_losses(estimate, target[name])
        losses["loss"] = total
        return losses

    def _difference_losses(self, estimate: Tensor, target: Tensor) -> Tensor | float:
        """Weighted L1 of the first and second frame differences (``[B, T, C]``)."""
        total: Tensor | float = 0.0
        for order, weight in (
            (1, self.hparams.velocity_weight),
            (2, self.hparams.acceleration_weight),
        ):
            if weight:
                difference = F.l1_loss(estimate.diff(order, dim=1), target.diff(order, dim=1))
                total = total + weight * difference
        return total

    def on_fit_start(self) -> None:
        """Measure the feature statistics on the datamodule's training batches (once: a
        resumed or fine-tuned auto-encoder keeps its own)."""
        if bool(self.statistics_measured):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise ValueError(
                "MotionAutoencoder measures its feature statistics on the datamodule's "
                "training batches: fit it with a datamodule"
            )
        self.measure_statistics(datamodule.train_dataloader(), self.hparams.statistics_batches)

    @torch.no_grad()
    def measure_statistics(self, batches: Any, max_batches: int) -> None:
        """Set the per-feature mean and std (floored at 1e-3: a joint that never moves) from up
        to ``max_batches`` batches."""
        features = torch.cat(
            [
                self.features(b["rotations"], b["root"]).flatten(0, 1)
                for b in islice(batches, max_batches)
            ]
        ).double()
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp_min(1e-3))
        self.statistics_measured.fill_(True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, betas=(0.9, 0.99))

    def _check_length(self, frames: int) -> None:
        if frames % self.frames_per_latent:
            raise ValueError(
                f"motion of {frames} frames: the auto-encoder needs a multiple of "
                f"{self.frames_per_latent} frames (2^down)"
            )


def root_velocity(root: Tensor, fps: float) -> Tensor:
    """``[B, T, 3]`` positions -> velocities ``(p[t+1] - p[t]) * fps``, the last repeated."""
    velocity = (root[:, 1:] - root[:, :-1]) * fps
    return torch.cat([velocity, velocity[:, -1:]], dim=1)


def integrate_velocity(velocity: Tensor, fps: float) -> Tensor:
    """The inverse of :func:`root_velocity` from ``p[0] = 0``: ``p[t] = sum_{s<t} v[s] / fps``."""
    steps = torch.cumsum(velocity[:, :-1] / fps, dim=1)
    return torch.cat([torch.zeros_like(velocity[:, :1]), steps], dim=1)
