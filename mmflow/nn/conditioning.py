"""Wrappers that feed a condition to a backbone in ways other than a token stream."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .tokenizers import Tokenizer


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


class EncodedContext(nn.Module):
    """Condition on a raw input (an image) through an encoder that trains with the backbone.

    ``u(x, t | c) = network(x, t, context={stream: E(c)}, context_mask={stream: m})``: the
    condition ``c`` (keyword ``key``, e.g. images ``[B, C, H, W]``) is encoded by ``E`` into
    tokens ``[B, L, D]`` that join the backbone's context stream ``stream``. The optional
    keyword ``<key>_mask`` ``[B]`` (bool, ``True`` for a real condition) is the null condition
    of classifier-free guidance: a sample with ``False`` has its ``L`` tokens masked out of
    the joint attention, so its velocity does not depend on ``c`` at all (exactly the
    unconditional estimate, with no learned null input). Holding ``E`` inside the network puts
    it in the optimizer, the EMA copy, the checkpoints and the exports with the backbone.

    The encoder may also be a :class:`mmflow.nn.Tokenizer` (``Patchify2D`` ...): the condition
    is then cut into patches whose grid coordinates are passed as the stream's position ids.
    A condition aligned with ``x`` (FlowSep's mixture latent, a low-resolution image) patched
    like ``x`` and given the same ``sincos`` or ``rope`` positions becomes a second token
    stream whose token ``i`` sits where ``x``'s token ``i`` sits, the alternative to
    :class:`ChannelConcat` in which the two meet in joint attention instead of in one token.

    Args:
        network: the backbone, e.g. :class:`mmflow.nn.MMDiT` with a context stream ``stream``
            of ``dim = encoder.dim`` (a tokenizer's ``token_dim``).
        encoder: maps the condition to tokens ``[B, L, D]``, e.g. :class:`mmflow.nn.TimmEncoder`,
            or a tokenizer whose position ids go with its tokens.
        key: the keyword argument holding the condition.
        stream: the backbone's context stream the tokens join.
    """

    def __init__(
        self, network: nn.Module, encoder: nn.Module, key: str = "image", stream: str = "image"
    ) -> None:
        super().__init__()
        self.network, self.encoder = network, encoder
        self.key, self.stream = key, stream

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        if self.key not in kwargs:
            raise ValueError(
                f"EncodedContext: the condition `{self.key}` is missing from the inputs"
            )
        condition = kwargs.pop(self.key)
        present = kwargs.pop(f"{self.key}_mask", None)
        tokens, ids = self._encode(condition.to(x.dtype))
        if tokens.dim() != 3 or tokens.shape[0] != x.shape[0]:
            raise ValueError(
                f"EncodedContext: the encoder gave {tuple(tokens.shape)} for `{self.key}`; "
                f"expected tokens [B={x.shape[0]}, L, D]"
            )
        context = dict(kwargs.pop("context", None) or {})
        context_mask = dict(kwargs.pop("context_mask", None) or {})
        context[self.stream] = tokens
        if ids is not None:
            kwargs["positions"] = {**(kwargs.get("positions") or {}), self.stream: ids}
        if present is not None:
            if present.shape != (x.shape[0],):
                raise ValueError(
                    f"EncodedContext: `{self.key}_mask` must be [B={x.shape[0]}], "
                    f"got {tuple(present.shape)}"
                )
            context_mask[self.stream] = present.bool()[:, None].expand(-1, tokens.shape[1])
        return self.network(x, t, context=context, context_mask=context_mask, **kwargs)

    def _encode(self, condition: Tensor) -> tuple[Tensor, Tensor | None]:
        """Tokens of the condition and their position ids (``None`` from a plain encoder)."""
        if isinstance(self.encoder, Tokenizer):
            layout = self.encoder.encode(condition)
            return layout.tokens, layout.positions
        return self.encoder(condition), None
