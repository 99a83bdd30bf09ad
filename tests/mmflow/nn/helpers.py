"""Shared helpers for the nn tests."""

import torch
from torch import nn

from mmflow.nn import ContextConfig, MMDiT, Patchify2D, PositionConfig


def randomize_(model: nn.Module, std: float = 0.2, seed: int = 0) -> nn.Module:
    """Overwrite every parameter (zero-initialised ones included) with N(0, std^2) values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def image_text_model(**kwargs) -> MMDiT:
    """A tiny image (4x8x8, patch 2) + text (L x 12) model."""
    defaults = {
        "tokenizer": Patchify2D(in_channels=4, patch_size=2),
        "hidden_size": 32,
        "depth": 2,
        "num_heads": 4,
        "context": {"text": ContextConfig(dim=12, positions=PositionConfig("rope"))},
        "pooled_dim": 6,
    }
    return MMDiT(**{**defaults, **kwargs})


def image_text_inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=gen)
    t = torch.rand(batch, generator=gen)
    kwargs = {
        "context": {"text": torch.randn(batch, 5, 12, generator=gen)},
        "pooled": torch.randn(batch, 6, generator=gen),
    }
    return x, t, kwargs
