"""Flow-matching losses: velocity MSE, pseudo-Huber, per-t weights, masks for padding.

Shapes: ``pred`` and ``target`` are ``[B, ...]``. A ``mask`` covers the leading dimensions of
``pred`` (e.g. ``[B, L]`` for tokens ``[B, L, C]``, or the full shape) and is broadcast over the
rest; ``True`` / 1 marks real elements, ``False`` / 0 padding. A float mask acts as element
weights. Losses are computed per sample over its real elements and then averaged over the
samples that have at least one real element (samples that are all padding give 0).

Time convention: ``t`` in [0, 1], ``t = 0`` noise, ``t = 1`` data.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

Reduction = Literal["mean", "none"]
WeightingKind = Literal["none", "cosmap", "min_snr", "inverse_t"]
WEIGHTINGS: tuple[str, ...] = ("none", "cosmap", "min_snr", "inverse_t")
HUBER_C_FACTOR = 0.00054


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"`pred` {tuple(pred.shape)} and `target` {tuple(target.shape)} must match"
        )
    if pred.ndim < 1:
        raise ValueError("`pred` must have a batch dimension")


def _element_mask(mask: Tensor | None, pred: Tensor) -> Tensor:
    """Mask as ``pred``'s dtype, broadcast to ``pred``'s shape (trailing dims appended)."""
    if mask is None:
        return torch.ones_like(pred)
    if mask.ndim > pred.ndim or tuple(mask.shape) != tuple(pred.shape[: mask.ndim]):
        raise ValueError(
            f"`mask` shape {tuple(mask.shape)} must equal the leading dims of "
            f"pred {tuple(pred.shape)}"
        )
    mask = mask.to(pred.dtype).reshape(*mask.shape, *([1] * (pred.ndim - mask.ndim)))
    return mask.expand_as(pred)


def _squared_error_sums(pred: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-sample ``sum(mask * (pred - target)^2)`` and ``sum(mask)``, both ``[B]``."""
    _check_pair(pred, target)
    elements = _element_mask(mask, pred)
    batch = pred.shape[0]
    squared = (elements * (pred - target) ** 2).reshape(batch, -1).sum(1)
    return squared, elements.reshape(batch, -1).sum(1)


def _reduce(
    per_sample: Tensor, counts: Tensor, weight: Tensor | None, reduction: Reduction
) -> Tensor:
    if weight is not None:
        weight = torch.as_tensor(weight, dtype=per_sample.dtype, device=per_sample.device)
        if weight.shape != per_sample.shape:
            raise ValueError(
                f"`weight` must have shape [B] = {tuple(per_sample.shape)}, "
                f"got {tuple(weight.shape)}"
            )
        per_sample = per_sample * weight
    if reduction == "none":
        return per_sample
    if reduction != "mean":
        raise ValueError(f"`reduction` must be 'mean' or 'none', got {reduction!r}")
    present = (counts > 0).to(per_sample.dtype)
    return (per_sample * present).sum() / present.sum().clamp_min(1)


def velocity_mse(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Masked, per-sample mean squared error.

        l_i = sum_j m_ij (pred_ij - target_ij)^2 / sum_j m_ij,     loss = mean_i w_i l_i,

    the mean taken over samples with ``sum_j m_ij > 0``. ``weight`` is a per-sample ``[B]``
    weight (e.g. :func:`loss_weight`); ``reduction="none"`` returns ``w_i l_i`` of shape ``[B]``.
    """
    squared, counts = _squared_error_sums(pred, target, mask)
    per_sample = squared / counts.clamp_min(torch.finfo(squared.dtype).tiny)
    per_sample = torch.where(counts > 0, per_sample, torch.zeros_like(per_sample))
    return _reduce(per_sample, counts, weight, reduction)


def default_huber_c(num_elements: Tensor | int) -> Tensor:
    """``c = 0.00054 sqrt(d)`` with ``d`` the number of (real) elements per sample.

    This is the choice of Song & Dhariwal 2023 (improved consistency training) that RF++
    (Lee et al. 2024, sec. 4.2) follows: ``c`` grows like the norm of a residual of fixed
    per-element size, so the loss switches from quadratic to linear at a fixed per-element error.
    """
    return HUBER_C_FACTOR * torch.sqrt(
        torch.as_tensor(num_elements, dtype=torch.get_default_dtype())
    )


def pseudo_huber(
    pred: Tensor,
    target: Tensor,
    c: float | None = None,
    mask: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Per-sample pseudo-Huber loss on the residual norm.

        l_i = sqrt(||pred_i - target_i||^2 + c^2) - c,

    with ``||.||^2`` summed over the sample's real elements (``mask``) and ``c`` defaulting to
    :func:`default_huber_c` of that element count. For ``||d|| << c`` it is ``||d||^2 / (2c)``;
    for ``||d|| >> c`` it is ``||d|| - c``. Reduction and ``weight`` as in :func:`velocity_mse`.
    """
    squared, counts = _squared_error_sums(pred, target, mask)
    if c is None:
        scale = default_huber_c(counts).to(squared)
    elif c <= 0:
        raise ValueError(f"`c` must be > 0, got {c}")
    else:
        scale = torch.full_like(squared, float(c))
    per_sample = torch.sqrt(squared + scale**2) - scale
    per_sample = torch.where(counts > 0, per_sample, torch.zeros_like(per_sample))
    return _reduce(per_sample, counts, weight, reduction)


def loss_weight(
    t: Tensor,
    kind: WeightingKind = "none",
    min_snr_gamma: float = 5.0,
    eps: float = 1e-3,
) -> Tensor:
    """Per-sample loss weights ``w(t)`` for a velocity loss on the linear path (shape of ``t``).

    - ``"none"``: ``w = 1``.
    - ``"cosmap"``: SD3's CosMap weight ``w = 2 / (pi (1 - 2t + 2t^2))`` (diffusers
      ``compute_loss_weighting_for_sd3``); symmetric in ``t <-> 1 - t``, so convention-free.
    - ``"min_snr"``: Min-SNR-gamma (Hang et al. 2023) moved to velocity: for the linear path
      ``||u_hat - u||^2 = ||x1_hat - x1||^2 / (1 - t)^2``, so weighting the data error by
      ``min(SNR, gamma)`` with ``SNR = t^2 / (1 - t)^2`` gives ``w = min(t^2, gamma (1 - t)^2)``.
    - ``"inverse_t"``: ``w = 1 / max(t, eps)`` (the "/t" weighting of GestureLSM, our time).
    """
    t = torch.as_tensor(t)
    if kind == "none":
        return torch.ones_like(t)
    if kind == "cosmap":
        return 2 / (math.pi * (1 - 2 * t + 2 * t**2))
    if kind == "min_snr":
        if min_snr_gamma <= 0:
            raise ValueError(f"`min_snr_gamma` must be > 0, got {min_snr_gamma}")
        return torch.minimum(t**2, min_snr_gamma * (1 - t) ** 2)
    if kind == "inverse_t":
        if eps <= 0:
            raise ValueError(f"`eps` must be > 0, got {eps}")
        return 1 / t.clamp_min(eps)
    raise ValueError(f"`kind` must be one of {WEIGHTINGS}, got {kind!r}")


class VelocityLoss(nn.Module):
    """The training loss the flow-matching module takes from YAML.

    ``loss = mean_i w(t_i) l_i`` with ``l_i`` from :func:`velocity_mse` (``kind="mse"``) or
    :func:`pseudo_huber` (``kind="pseudo_huber"``, ``c = huber_c`` or the default) and ``w``
    from :func:`loss_weight` (``weighting``).
    """

    def __init__(
        self,
        kind: Literal["mse", "pseudo_huber"] = "mse",
        weighting: WeightingKind = "none",
        huber_c: float | None = None,
        min_snr_gamma: float = 5.0,
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if kind not in ("mse", "pseudo_huber"):
            raise ValueError(f"`kind` must be 'mse' or 'pseudo_huber', got {kind!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"`weighting` must be one of {WEIGHTINGS}, got {weighting!r}")
        if huber_c is not None and huber_c <= 0:
            raise ValueError(f"`huber_c` must be > 0, got {huber_c}")
        self.kind = kind
        self.weighting = weighting
        self.huber_c = huber_c
        self.min_snr_gamma = float(min_snr_gamma)
        self.eps = float(eps)

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        t: Tensor,
        mask: Tensor | None = None,
        reduction: Reduction = "mean",
    ) -> Tensor:
        """Weighted loss; ``t`` has shape ``[B]``."""
        t = torch.as_tensor(t, dtype=pred.dtype, device=pred.device)
        if t.shape != pred.shape[:1]:
            raise ValueError(
                f"`t` must have shape [B] = {tuple(pred.shape[:1])}, got {tuple(t.shape)}"
            )
        weight = None
        if self.weighting != "none":
            weight = loss_weight(t, self.weighting, self.min_snr_gamma, self.eps)
        if self.kind == "mse":
            return velocity_mse(pred, target, mask=mask, weight=weight, reduction=reduction)
        return pseudo_huber(
            pred, target, c=self.huber_c, mask=mask, weight=weight, reduction=reduction
        )

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, weighting={self.weighting!r}, huber_c={self.huber_c!r}"


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise ``KL(N(mu, sigma^2) || N(0, 1)) = 0.5 (mu^2 + sigma^2 - 1 - log sigma^2)``.

    The regulariser of every KL auto-encoder whose latents a flow transports.
    """
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)


__all__ = [
    "HUBER_C_FACTOR",
    "WEIGHTINGS",
    "VelocityLoss",
    "default_huber_c",
    "kl_to_standard_normal",
    "loss_weight",
    "pseudo_huber",
    "velocity_mse",
]
