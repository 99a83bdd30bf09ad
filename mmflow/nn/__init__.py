"""The MM-DiT backbone, its tokenizers, embedders and position encodings."""

from .blocks import FinalLayer, JointBlock, SingleBlock, StreamLayer
from .conditioning import ChannelConcat, EncodedContext
from .embedders import (
    ClassEmbedder,
    PooledEmbedder,
    StepSizeEmbedder,
    TimestepEmbedder,
    sinusoidal_embedding,
)
from .encoders import TimmEncoder
from .mmdit import ContextConfig, MMDiT
from .positions import PositionConfig, apply_rope, grid_position_ids, sincos_nd
from .sd3 import mmdit_from_sd3
from .tokenizers import Patchify1D, Patchify2D, Patchify3D, SetTokens, Tokenizer, Tokens

__all__ = [
    "ChannelConcat",
    "ClassEmbedder",
    "ContextConfig",
    "EncodedContext",
    "FinalLayer",
    "JointBlock",
    "MMDiT",
    "Patchify1D",
    "Patchify2D",
    "Patchify3D",
    "PooledEmbedder",
    "PositionConfig",
    "SetTokens",
    "SingleBlock",
    "StepSizeEmbedder",
    "StreamLayer",
    "TimestepEmbedder",
    "TimmEncoder",
    "Tokenizer",
    "Tokens",
    "apply_rope",
    "grid_position_ids",
    "mmdit_from_sd3",
    "sincos_nd",
    "sinusoidal_embedding",
]
