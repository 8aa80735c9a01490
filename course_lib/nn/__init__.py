"""The shared vocabulary of every model in the course: attention, positions, norms, feed-forward, blocks."""

from course_lib.nn.attention import (
    MultiHeadAttention,
    block_mask,
    causal_mask,
    mixed_modal_mask,
    padding_mask,
    scaled_dot_product_attention,
    transform_attention_weights,
)
from course_lib.nn.block import TransformerBlock, TransformerEncoder, deepnet_scales
from course_lib.nn.efficient_attention import (
    LearnedKernelAttention,
    haar_transform,
    inverse_haar_transform,
    linear_attention,
    mra_attention,
    multipole_attention,
    performer_attention,
    wavelet_space_attention,
)
from course_lib.nn.feedforward import GLU, MLP, glu_hidden, make_feedforward
from course_lib.nn.masking import gather_tokens, masked_count, random_masking, visible_indices
from course_lib.nn.moe import MoE
from course_lib.nn.multirate import (
    causal_moving_average,
    multirate_causal_average,
    multirate_windows,
)
from course_lib.nn.multiscale_attention import MultiScaleAttention, multiscale_mask, scale_schedule
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
from course_lib.nn.quantize import MultiScaleVQ, ResidualVQ, VectorQuantizer

__all__ = [
    "GLU", "LayerNorm", "LearnedKernelAttention", "LearnedPositionalEmbedding", "MLP", "MoE", "MultiHeadAttention",
    "MultiScaleAttention", "MultiScaleVQ", "ResidualVQ", "VectorQuantizer", "NormedLinear", "RMSNorm", "RotaryEmbedding", "SinusoidalPositionalEncoding",
    "SinusoidalPositionalEncoding2D", "TransformerBlock", "TransformerEncoder", "angle_between_positions",
    "block_mask", "causal_moving_average", "causal_mask", "mixed_modal_mask", "deepnet_scales", "gather_tokens", "glu_hidden", "haar_transform", "inverse_haar_transform",
    "linear_attention", "make_feedforward", "make_norm", "masked_count", "mra_attention", "multipole_attention",
    "multirate_causal_average", "multirate_windows", "multiscale_mask", "padding_mask", "performer_attention", "random_masking", "rotate_half", "scale_schedule", "transform_attention_weights",
    "scaled_dot_product_attention", "sinusoidal_table", "sinusoidal_table_2d", "visible_indices", "wavelet_space_attention",
]
