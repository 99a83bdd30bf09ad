"""Small numerical helpers shared by the core modules."""

from __future__ import annotations

from collections.abc import Callable

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
