"""Small numerical helpers shared by the core modules."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor


def invert_increasing(fn: Callable[[Tensor], Tensor], y: Tensor, steps: int = 64) -> Tensor:
    """Solve ``fn(t) = y`` for ``t`` in [0, 1] by bisection, elementwise, for increasing ``fn``.

    Each step halves the bracket, so ``steps = 64`` reaches float64 resolution. Values of ``y``
    below ``fn(0)`` or above ``fn(1)`` map to 0 or 1. Tensor code only: no host sync.
    """
    low = torch.zeros_like(y)
    high = torch.ones_like(y)
    for _ in range(steps):
        middle = 0.5 * (low + high)
        below = fn(middle) < y
        low = torch.where(below, middle, low)
        high = torch.where(below, high, middle)
    return 0.5 * (low + high)


def inverse_std(chunks: Iterable[Tensor], source: str = "chunks") -> float:
    """``1 / std`` over every element of ``chunks``, the scale that gives a flow unit-variance
    latents: ``std^2 = E[z^2] - E[z]^2``, accumulated in float64 one chunk at a time.

    Raises:
        ValueError: ``chunks`` is empty (``source`` names it).
    """
    total = total_square = torch.zeros((), dtype=torch.float64)
    count = 0
    for chunk in chunks:
        chunk = chunk.detach().double().cpu()
        total, total_square = total + chunk.sum(), total_square + chunk.square().sum()
        count += chunk.numel()
    if count == 0:
        raise ValueError(f"{source} yielded no values")
    variance = total_square / count - (total / count) ** 2
    return 1.0 / float(variance.clamp_min(1e-12).sqrt())


def gaussian_sample(
    mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """A sample of ``N(mean, diag(exp(logvar)))`` by reparameterisation,
    ``mean + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)`` drawn from ``generator``, so the
    gradient reaches ``mean`` and ``logvar`` (a KL auto-encoder's posterior sample)."""
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + (0.5 * logvar).exp() * noise


def first_non_finite(tensors: Mapping[str, Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, else None.

    The usual answer (all finite) costs one host sync however many tensors there are."""
    floating = {name: t for name, t in tensors.items() if t.is_floating_point()}
    if not floating:
        return None
    if bool(torch.stack([torch.isfinite(t).all() for t in floating.values()]).all()):
        return None
    return next(name for name, t in floating.items() if not bool(torch.isfinite(t).all()))


def keyed_seed(seed: int, *keys: int) -> int:
    """A 64-bit seed mixed from ``(seed, *keys)`` by NumPy's ``SeedSequence``: distinct keys
    give unrelated streams, and the same keys the same stream in any process."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0])


def keyed_generator(seed: int, *keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with :func:`keyed_seed`: how a stored shard, or a
    training step, redraws its noise without the global random state."""
    return torch.Generator(device=device).manual_seed(keyed_seed(seed, *keys))
