"""Source distributions: what a flow starts from at ``t = 0``.

Flow matching transports any source density to the data; the standard choice is Gaussian
noise. Stochastic interpolants with data-dependent couplings (Albergo et al., 2023) start
instead from a density centred on the *condition*, so that the flow only has to carry a
degraded input (a mixture, a low-resolution image) to its clean version:

    x0 = c + s * eps,    eps ~ N(0, I),    c = center(cond) (or 0),    s = noise_scale,

and the path ``x_t = alpha(t) x1 + sigma(t) x0`` and its velocity target are unchanged. With
``c = 0, s = 1`` this is the Gaussian source. Every deterministic sampler integrates the
learnt velocity from such an ``x0`` as from noise; samplers that turn the velocity into a
score (stochastic samplers, search) assume ``x0 ~ N(0, I)`` and refuse other sources
(:func:`mmflow.generation.generate`).

A modality adapter owns its source (:attr:`mmflow.modality.ModalityAdapter.source`), so a
checkpoint or pretrained folder rebuilds it with the adapter, and training, validation and
``mmflow evaluate`` all draw from the same one.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["ConditionSource", "GaussianSource", "Source"]


class Source:
    """``x0 = center(cond) + noise_scale * eps`` with ``eps ~ N(0, I)`` (module docs)."""

    noise_scale: float = 1.0

    @property
    def standard_gaussian(self) -> bool:
        """Whether ``x0 ~ N(0, I)``, as the score conversions of the paths assume."""
        return False

    def center(self, x1: Tensor, cond: dict[str, Any]) -> Tensor | None:
        """The mean of ``x0`` for each example (``None``: zero)."""
        return None

    def from_noise(self, eps: Tensor, cond: dict[str, Any]) -> Tensor:
        """``x0`` from standard Gaussian ``eps`` of ``x1``'s shape."""
        center = self.center(eps, cond)
        scaled = self.noise_scale * eps if self.noise_scale != 1.0 else eps
        return scaled if center is None else center + scaled


class GaussianSource(Source):
    """The standard Gaussian ``x0 ~ N(0, I)`` (the default of every adapter)."""

    @property
    def standard_gaussian(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "GaussianSource()"


class ConditionSource(Source):
    """``x0 = cond[key] + noise_scale * eps``: the flow starts at the condition, e.g. a
    mixture's latent for a separator, plus Gaussian noise of a chosen scale.

    Args:
        key: the condition entry to start from; it must have the shape of ``x1``.
        noise_scale: the standard deviation of the added noise (0 gives a deterministic
            start, which makes every sample of one condition the same).
    """

    def __init__(self, key: str, noise_scale: float = 1.0) -> None:
        if noise_scale < 0:
            raise ValueError(f"ConditionSource: `noise_scale` must be >= 0, got {noise_scale}")
        self.key = key
        self.noise_scale = float(noise_scale)

    def center(self, x1: Tensor, cond: dict[str, Any]) -> Tensor:
        if self.key not in cond:
            raise KeyError(
                f"ConditionSource: the condition has no `{self.key}` to start from; "
                f"it has {sorted(cond)}"
            )
        center = cond[self.key]
        if not isinstance(center, Tensor) or center.shape != x1.shape:
            shape = tuple(center.shape) if isinstance(center, Tensor) else type(center).__name__
            raise ValueError(
                f"ConditionSource: condition `{self.key}` is {shape}, but the flow transports "
                f"{tuple(x1.shape)}; a source must live in the space of x1"
            )
        return center.to(dtype=x1.dtype, device=x1.device)

    def __repr__(self) -> str:
        return f"ConditionSource(key={self.key!r}, noise_scale={self.noise_scale})"
