"""The shared vocabulary of every model in the course: attention, positions, norms, feed-forward, blocks."""

from course_lib.nn.attention import (
    MultiHeadAttention,
    block_mask,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
)
from course_lib.nn.block import TransformerBlock, TransformerEncoder, deepnet_scales
from course_lib.nn.feedforward import GLU, MLP, glu_hidden, make_feedforward
from course_lib.nn.norms import LayerNorm, NormedLinear, RMSNorm, make_norm
from course_lib.nn.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    SinusoidalPositionalEncoding2D,
    angle_between_positions,
    rotate_half,
    sinusoidal_table,
    sinusoidal_table_2d,
)

__all__ = [
    "GLU", "MLP", "LayerNorm", "LearnedPositionalEmbedding", "MultiHeadAttention", "NormedLinear", "RMSNorm",
    "RotaryEmbedding", "SinusoidalPositionalEncoding", "SinusoidalPositionalEncoding2D",
    "TransformerBlock", "TransformerEncoder", "angle_between_positions", "block_mask", "causal_mask",
    "deepnet_scales", "glu_hidden", "make_feedforward", "make_norm", "padding_mask", "rotate_half", "scaled_dot_product_attention",
    "sinusoidal_table", "sinusoidal_table_2d",
]
