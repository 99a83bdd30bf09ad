"""A TripoSG-style shape VAE: surface points in, a set of latent tokens, an SDF decoder out.

**Encoder.** A surface point ``p`` with normal ``n`` becomes a token ``W [gamma(p), n]``, with
the Fourier embedding (TripoSG's: 8 octaves, no factor pi)

    gamma(p) = [p, sin(2^k p), cos(2^k p)]   for k = 0 .. F - 1.

The highest frequency bounds how fast the decoded SDF can vary, and its slope
``2^(F-1)`` is what the network must cancel to meet the eikonal and normal terms; with a
factor pi the slopes start three times steeper.

``M`` of the points, picked by farthest-point sampling, are the queries: they cross-attend to
all the point tokens, then self-attention layers mix them, and a linear map gives the mean and
log-variance of a diagonal Gaussian over ``M`` latent tokens of ``C`` channels
(``q(z | surface)``). The latent set has no order: a token is tied to its query's place on the
surface only through what it holds.

**Decoder.** The latents go through a linear map and self-attention layers; a query point
``x`` embedded by ``W' gamma(x)`` cross-attends to them and a linear head gives ``f(x)``, the
signed distance (negative inside).

**Losses** (TripoSG's four; weights are this project's choice, since none are published),
with points ``x`` near the surface and uniform in [-1, 1]^3, surface points ``y`` with
normals ``n``:

    L = mean |f(x) - sdf(x)| + mean |f(y)|                         SDF, the surface at 0
      + lambda_n mean (1 - cos(grad f(y), n))                        surface normals
      + lambda_e mean (|grad f(x)| - 1)^2                            eikonal
      + beta mean KL(q(z | surface) || N(0, I))                      per latent element

The gradients are taken with respect to the query points by autograd with ``create_graph``
(the loss differentiates through them), with the math attention kernel, the one whose
backward is itself differentiable. Validation reports the SDF error and the volumetric IoU of
the insides at the uniform points (Lightning validates without gradients, so the two gradient
terms are training-only).

**For the flow.** ``encode(surface)`` returns ``latent_scale * mu`` ``[B, M, C]``, where
``latent_scale = 1 / std(mu)`` is measured on training batches at the end of fit, so the flow
sees unit-variance tokens; ``sdf_function(latents)`` returns the decoder of one shape as a
function of points, which :func:`modalities.shape.mesh_from_sdf` meshes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmflow.losses import kl_to_standard_normal
from mmflow.numerics import gaussian_sample
from mmflow.pretrained import LatentAutoencoderPart

from .evaluators import inside_iou
from .sampling import farthest_point_sampling

__all__ = ["CrossAttentionBlock", "FourierEmbedding", "ShapeAutoencoder", "ShapeVAE"]


class FourierEmbedding(nn.Module):
    """``gamma(p) = [p, sin(2^k p), cos(2^k p)]``, ``k < num_frequencies`` (module docstring)."""

    def __init__(self, num_frequencies: int = 8) -> None:
        super().__init__()
        frequencies = 2.0 ** torch.arange(num_frequencies, dtype=torch.float32)
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.out_dim = 3 * (1 + 2 * num_frequencies)

    def forward(self, points: Tensor) -> Tensor:
        angles = (points[..., None] * self.frequencies).flatten(-2)
        return torch.cat([points, angles.sin(), angles.cos()], dim=-1)


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention and MLP, each residual:

    ``x <- x + Out(softmax(Q K^T / sqrt(d)) V)`` with ``Q = W_q LN(x)``, ``K, V`` from
    ``LN(context)``, then ``x <- x + MLP(LN(x))``.
    """

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"`width` {width} is not a multiple of `num_heads` {num_heads}")
        self.num_heads = num_heads
        self.norm_query, self.norm_context = nn.LayerNorm(width), nn.LayerNorm(width)
        self.query, self.key_value = nn.Linear(width, width), nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        query = self._heads(self.query(self.norm_query(x)))
        key, value = self.key_value(self.norm_context(context)).chunk(2, dim=-1)
        attended = F.scaled_dot_product_attention(query, self._heads(key), self._heads(value))
        x = x + self.out(attended.transpose(1, 2).flatten(-2))
        return x + self.mlp(self.norm_mlp(x))


class ShapeAutoencoder(nn.Module):
    """The encoder and SDF decoder of the module docstring.

    Args:
        width, num_heads: transformer width and attention heads.
        num_latents: latent tokens ``M`` (queries picked from the surface points).
        latent_channels: channels ``C`` of each latent token.
        encoder_layers, decoder_layers: self-attention layers after the encoder's
            cross-attention and before the decoder's.
        num_frequencies: Fourier frequencies of the point embedding.
    """

    def __init__(
        self,
        width: int = 128,
        num_heads: int = 4,
        num_latents: int = 256,
        latent_channels: int = 16,
        encoder_layers: int = 2,
        decoder_layers: int = 2,
        num_frequencies: int = 8,
    ) -> None:
        super().__init__()
        self.num_latents = num_latents
        self.embedding = FourierEmbedding(num_frequencies)
        self.point_input = nn.Linear(self.embedding.out_dim + 3, width)
        self.encoder_cross = CrossAttentionBlock(width, num_heads)
        self.encoder_layers = nn.ModuleList(
            Block(width, num_heads, qkv_bias=True) for _ in range(encoder_layers)
        )
        self.to_posterior = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, 2 * latent_channels)
        )
        self.from_latents = nn.Linear(latent_channels, width)
        self.decoder_layers = nn.ModuleList(
            Block(width, num_heads, qkv_bias=True) for _ in range(decoder_layers)
        )
        self.query_input = nn.Linear(self.embedding.out_dim, width)
        self.decoder_cross = CrossAttentionBlock(width, num_heads)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1))

    def encode(self, surface: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, logvar)`` ``[B, M, C]`` of ``q(z | surface)``, surface ``[B, N, 6]``."""
        if surface.ndim != 3 or surface.shape[-1] != 6:
            raise ValueError(
                f"surface must be [B, N, 6] points and normals, got {list(surface.shape)}"
            )
        tokens = self.point_input(
            torch.cat([self.embedding(surface[..., :3]), surface[..., 3:]], dim=-1)
        )
        with torch.no_grad():
            chosen = farthest_point_sampling(surface[..., :3], self.num_latents)
        queries = torch.gather(tokens, 1, chosen[..., None].expand(-1, -1, tokens.shape[-1]))
        x = self.encoder_cross(queries, tokens)
        for layer in self.encoder_layers:
            x = layer(x)
        mean, logvar = self.to_posterior(x).chunk(2, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, latents: Tensor) -> Tensor:
        """Decoder features ``[B, M, width]`` of latents ``[B, M, C]``, which :meth:`query` reads."""
        x = self.from_latents(latents)
        for layer in self.decoder_layers:
            x = layer(x)
        return x

    def query(self, features: Tensor, points: Tensor) -> Tensor:
        """SDF ``[B, P]`` at ``points`` ``[B, P, 3]`` of the shapes ``features`` describe."""
        x = self.decoder_cross(self.query_input(self.embedding(points)), features)
        return self.head(x)[..., 0]


class ShapeVAE(LatentAutoencoderPart):
    """Trains and serves the :class:`ShapeAutoencoder` on :class:`MeshFolder` batches.

    Args:
        width, num_heads, num_latents, latent_channels, encoder_layers, decoder_layers,
            num_frequencies: the :class:`ShapeAutoencoder`.
        kl_weight, normal_weight, eikonal_weight: ``beta``, ``lambda_n``, ``lambda_e`` of the
            loss (module docstring).
        geometric_points: points and surface points per shape that the normal and eikonal
            terms use (the SDF terms use all).
        lr, weight_decay: AdamW; the rate decays along a cosine to 0 over ``decay_steps``
            (``None`` keeps it constant).
        latent_scale_batches: training batches that the end of fit measures ``latent_scale``
            on (0 keeps the current value).
        export_dir: folder the trained VAE is saved to at the end of fit.
    """

    creation_hint = "train it with `mmflow fit --config recipes/shape/shape_vae.yaml`"
    progress_bar: ClassVar[tuple[str, ...]] = ("sdf_l1",)

    def __init__(
        self,
        width: int = 128,
        num_heads: int = 4,
        num_latents: int = 256,
        latent_channels: int = 16,
        encoder_layers: int = 2,
        decoder_layers: int = 2,
        num_frequencies: int = 8,
        kl_weight: float = 1e-3,
        normal_weight: float = 1.0,
        eikonal_weight: float = 0.1,
        geometric_points: int = 256,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        decay_steps: int | None = None,
        latent_scale_batches: int = 8,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        for name in ("kl_weight", "normal_weight", "eikonal_weight"):
            if locals()[name] < 0:
                raise ValueError(f"`{name}` must be >= 0, got {locals()[name]}")
        self.save_hyperparameters()
        self.autoencoder = ShapeAutoencoder(
            width,
            num_heads,
            num_latents,
            latent_channels,
            encoder_layers,
            decoder_layers,
            num_frequencies,
        )
        self.register_buffer("latent_scale", torch.ones(()))

    def posterior(self, surface: Tensor) -> tuple[Tensor, Tensor]:
        """Unscaled ``(mean, logvar)`` ``[B, M, C]``."""
        return self.autoencoder.encode(surface)

    def encode(
        self, surface: Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Flow latents ``latent_scale * z`` ``[B, M, C]``, ``z = mu`` (or a posterior sample)."""
        mean, logvar = self.posterior(surface)
        latents = gaussian_sample(mean, logvar, generator) if sample else mean
        return latents * self.latent_scale

    def decode(self, latents: Tensor, points: Tensor) -> Tensor:
        """SDF ``[B, P]`` at ``points`` ``[B, P, 3]`` of flow latents ``[B, M, C]``."""
        features = self.autoencoder.decode(latents / self.latent_scale)
        return self.autoencoder.query(features, points)

    def sdf_function(self, latents: Tensor) -> Callable[[Tensor], Tensor]:
        """The SDF of one shape's flow latents ``[M, C]`` as points ``[N, 3]`` -> ``[N]``."""
        if latents.ndim != 2:
            raise ValueError(f"latents of one shape must be [M, C], got {list(latents.shape)}")
        with torch.no_grad():
            features = self.autoencoder.decode(latents[None] / self.latent_scale)

        def sdf(points: Tensor) -> Tensor:
            with torch.no_grad():
                points = points.to(features.device, features.dtype)
                return self.autoencoder.query(features, points[None])[0]

        return sdf

    def losses(self, batch: dict[str, Tensor], geometric: bool = True) -> dict[str, Tensor]:
        """The loss and its terms for a batch (module docstring); ``geometric=False`` leaves
        out the two gradient terms and adds the IoU at the uniform points.

        The SDF term uses every point of the batch. The surface, normal and eikonal terms use
        the first ``geometric_points`` of the surface points and of the points (random ones in
        training): the double backward of the gradient terms costs several forward passes.
        """
        surface, points, target = batch["surface"], batch["points"], batch["sdf"]
        mean, logvar = self.posterior(surface)
        latents = gaussian_sample(mean, logvar)
        features = self.autoencoder.decode(latents)
        predicted = self.autoencoder.query(features, points)
        kl = kl_to_standard_normal(mean, logvar).mean()
        losses = {"sdf_l1": (predicted - target).abs().mean(), "kl": kl}
        count = self.hparams.geometric_points
        if count > min(points.shape[1], surface.shape[1]):
            raise ValueError(
                f"ShapeVAE: geometric_points={count} exceeds the batch's {points.shape[1]} "
                f"points or {surface.shape[1]} surface points a shape (the datamodule's "
                "num_points / num_surface)"
            )
        on_surface = surface[:, :count]
        queries = torch.cat([points[:, :count], on_surface[..., :3]], dim=1)
        if geometric:
            values, gradient = self._sdf_and_gradient(features, queries)
            cosine = F.cosine_similarity(gradient[:, count:], on_surface[..., 3:], dim=-1)
            losses["normal"] = (1 - cosine).mean()
            losses["eikonal"] = (gradient[:, :count].norm(dim=-1) - 1).square().mean()
        else:
            values = self.autoencoder.query(features, queries)
            half = points.shape[1] // 2  # the dataset puts the near points first, uniform second
            losses["iou"] = inside_iou(predicted[:, half:], target[:, half:]).mean()
        losses["surface_l1"] = values[:, count:].abs().mean()
        loss = losses["sdf_l1"] + losses["surface_l1"] + self.hparams.kl_weight * kl
        if geometric:
            loss = loss + self.hparams.normal_weight * losses["normal"]
            loss = loss + self.hparams.eikonal_weight * losses["eikonal"]
        return {"loss": loss, **losses}

    def _sdf_and_gradient(self, features: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        """``f(x)`` ``[B, P]`` and ``grad_x f(x)`` ``[B, P, 3]``, the gradient differentiable in
        turn (``create_graph``, with the math attention kernel)."""
        points = points.detach().requires_grad_(True)
        with sdpa_kernel(SDPBackend.MATH):
            values = self.autoencoder.query(features, points)
            (gradient,) = torch.autograd.grad(values.sum(), points, create_graph=True)
        return values, gradient

    def batch_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return self.losses(batch, geometric=torch.is_grad_enabled())

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            self.autoencoder.parameters(),
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
        )
        if self.hparams.decay_steps is None:
            return optimizer
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=self.hparams.decay_steps
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def posterior_mean(self, batch: dict[str, Any]) -> Tensor:
        return self.posterior(batch["surface"].to(self.device))[0]
