"""Wrappers that feed a condition to a backbone in ways other than a token stream."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class ChannelConcat(nn.Module):
    """Condition on a tensor aligned with ``x`` by concatenating it along the channel axis.

    ``u(x, t | c) = network([x, c], t)[:, :C_x]``: the condition ``c`` (keyword ``key``) is
    stacked after the ``C_x`` channels of ``x``, the backbone sees ``C_x + C_c`` channels, and
    only the first ``C_x`` output channels are the velocity. This is how FlowSep feeds the
    mixture latent to its network, and how super-resolution or inpainting flows take a
    low-resolution or masked image. The backbone's tokenizer must take ``C_x + C_c`` channels.

    Args:
        network: the backbone, e.g. :class:`mmflow.nn.MMDiT` with ``Patchify2D(C_x + C_c)``.
        key: the keyword argument holding the condition.
        channel_dim: the channel axis of ``x`` (1 for ``[B, C, H, W]``, -1 for ``[B, L, C]``).
    """

    def __init__(self, network: nn.Module, key: str = "concat", channel_dim: int = 1) -> None:
        super().__init__()
        self.network = network
        self.key = key
        self.channel_dim = channel_dim

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        if self.key not in kwargs:
            raise ValueError(
                f"ChannelConcat: the condition `{self.key}` is missing from the inputs"
            )
        condition = kwargs.pop(self.key)
        dim = self.channel_dim % x.ndim
        if (
            condition.shape[:dim] != x.shape[:dim]
            or condition.shape[dim + 1 :] != x.shape[dim + 1 :]
        ):
            raise ValueError(
                f"ChannelConcat: `{self.key}` {tuple(condition.shape)} does not match x "
                f"{tuple(x.shape)} outside channel axis {self.channel_dim}"
            )
        output = self.network(torch.cat([x, condition.to(x.dtype)], dim=dim), t, **kwargs)
        return output.narrow(dim, 0, x.shape[dim])
