"""Writers of images a person can look at."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from torch import Tensor

__all__ = ["save_image_grid"]


def save_image_grid(
    images: Tensor,
    path: str | Path,
    nrow: int | None = None,
    padding: int = 2,
    min_image_size: int = 96,
) -> Path:
    """Write ``images`` ``[B, C, H, W]`` in [0, 1] (C = 1 or 3) as one PNG grid.

    ``nrow`` images per row (default ``ceil(sqrt(B))``), ``padding`` white pixels between them.
    Small images are upscaled by an integer factor with nearest neighbour (pixels stay sharp)
    so that each is at least ``min_image_size`` pixels on its longer side.
    """
    from PIL import Image

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"save_image_grid: expected [B, 1 or 3, H, W] images, got {tuple(images.shape)}"
        )
    batch, channels, height, width = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(batch)))
    scale = max(1, math.ceil(min_image_size / max(height, width)))
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to("cpu").numpy().astype(np.uint8)
    pixels = pixels.repeat(scale, axis=2).repeat(scale, axis=3)
    rows = math.ceil(batch / nrow)
    tiles = np.pad(
        pixels,
        ((0, rows * nrow - batch), (0, 0), (padding, 0), (padding, 0)),
        constant_values=255,
    )
    tile_h, tile_w = tiles.shape[2:]
    canvas = tiles.reshape(rows, nrow, channels, tile_h, tile_w).transpose(2, 0, 3, 1, 4)
    canvas = canvas.reshape(channels, rows * tile_h, nrow * tile_w)
    canvas = np.pad(canvas, ((0, 0), (0, padding), (0, padding)), constant_values=255)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    planes = canvas[0] if channels == 1 else canvas.transpose(1, 2, 0)
    image = Image.fromarray(np.ascontiguousarray(planes))
    image.save(path, format="PNG")
    return path
