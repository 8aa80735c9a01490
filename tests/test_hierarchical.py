"""SegFormer's encoder and CvT equal Hugging Face's SegformerModel and CvtModel given the same weights (1e-5 in
float32); SegFormer's spatial-reduction attention with ratio 1 is plain global attention, its Mix-FFN convolves
each channel alone, and CvT's attention without its convolutions is attention scaled by 1/√dim.

MViT, PiT and T2T-ViT have no Hugging Face model: pooling attention with strides 1 is plain multi-head attention
and with strides above 1 equals attention of naively pooled tokens (loops, both pooling modes); MViT's residual is
max-pooled; PiT's pooling is a per-channel convolution; T2T's soft split gathers overlapping patches; the default
configs have the papers' parameter counts (1e-5 in float32 throughout)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from conftest import randomised
from course_lib.models.hierarchical import (
    ConvAttention,
    CvT,
    CvTConfig,
    MixFFN,
    SegFormerConfig,
    SegFormerEncoder,
    SpatialReductionAttention,
    cvt_config_from_hf,
    cvt_state_dict_from_hf,
    segformer_config_from_hf,
    segformer_state_dict_from_hf,
)

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-5
SEGFORMER_CONFIGS = {
    # MiT-b0's layout shrunk: 4 stages, reduction 8/4/2/1 needs a 64 px image (16x16 map in stage 0)
    "img64-4stages": dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 2, 3, 4],
                          sr_ratios=[8, 4, 2, 1], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
                          mlp_ratios=[4, 4, 4, 4], image=(64, 64)),
    # two blocks per stage, odd map sides (the reduction conv floors), non-square image
    "img40x48-2stages": dict(depths=[2, 2], hidden_sizes=[16, 32], num_attention_heads=[2, 4], sr_ratios=[2, 1],
                             patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 4], image=(40, 52)),
    # ratio 1 everywhere and a stride-2 stem
    "img32-no-reduction": dict(depths=[1, 2, 1], hidden_sizes=[8, 16, 16], num_attention_heads=[2, 2, 4],
                               sr_ratios=[1, 1, 1], patch_sizes=[3, 3, 3], strides=[2, 2, 2],
                               mlp_ratios=[4, 2, 4], image=(32, 32)),
}


def randomise_hf(model: torch.nn.Module) -> torch.nn.Module:
    """Weights at unit gain (Hugging Face's std=0.02 makes every branch too small to be told from the residual)
    and norm scales and shifts away from 1 and 0, so that anything mapped to the wrong place fails the comparison."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                parameter.uniform_(0.5, 1.5)
            elif parameter.dim() >= 2 and "cls_token" not in name:
                parameter.normal_(0.0, (parameter[0].numel()) ** -0.5)  # std 1/√fan_in
            else:
                parameter.normal_(0.0, 0.1)
    return model


def hf_segformer(seed: int, options: dict):
    torch.manual_seed(seed)
    options = {k: v for k, v in options.items() if k != "image"}
    config = transformers.SegformerConfig(num_channels=3, num_encoder_blocks=len(options["depths"]),
                                          drop_path_rate=0.0, hidden_dropout_prob=0.0,
                                          attention_probs_dropout_prob=0.0, **options)
    return randomise_hf(transformers.SegformerModel(config).eval())


@pytest.mark.parametrize("name", list(SEGFORMER_CONFIGS))
def test_segformer_matches_hugging_face_at_every_stage(name):
    options = SEGFORMER_CONFIGS[name]
    reference = hf_segformer(0, options)
    ours = SegFormerEncoder.from_hf(reference).eval()
    images = torch.randn(2, 3, *options["image"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(images, output_hidden_states=True)
        features = ours(images)
    assert len(features) == len(expected.hidden_states) == len(options["depths"])
    for stage, (mine, theirs) in enumerate(zip(features, expected.hidden_states)):
        assert mine.shape == theirs.shape and mine.shape[1] == options["hidden_sizes"][stage]
        assert theirs.abs().max() > 0.1  # a real comparison, not of two near-zero tensors
        torch.testing.assert_close(mine, theirs, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(features[-1], expected.last_hidden_state, atol=TOLERANCE, rtol=0)


def test_segformer_from_a_model_with_a_head_takes_its_encoder():
    options = SEGFORMER_CONFIGS["img40x48-2stages"]
    reference = hf_segformer(0, options)
    head = transformers.SegformerForSemanticSegmentation(reference.config).eval()
    head.segformer.load_state_dict(reference.state_dict())
    images = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(SegFormerEncoder.from_hf(head)(images)[-1], reference(images).last_hidden_state,
                                   atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("change", ["reduction", "depthwise conv"])
def test_segformer_comparison_fails_when_the_model_is_off(change):
    options = SEGFORMER_CONFIGS["img64-4stages"]
    reference = hf_segformer(3, options)
    ours = SegFormerEncoder.from_hf(reference).eval()
    block = ours.stages[0].blocks[0]
    with torch.no_grad():
        if change == "reduction":
            block.attn.reduce_norm.bias += 0.5
        else:
            block.ffn.dwconv.weight[:, :, 1, 1] += 0.5
        images = torch.randn(1, 3, 64, 64)
        assert (ours(images)[-1] - reference(images).last_hidden_state).abs().max() > 1e-3


def test_segformer_key_map_refuses_a_missing_or_extra_weight():
    reference = hf_segformer(0, SEGFORMER_CONFIGS["img40x48-2stages"])
    model = SegFormerEncoder(segformer_config_from_hf(reference.config))
    reference.register_buffer("extra", torch.zeros(1))
    with pytest.raises(ValueError, match="left unmapped.*extra"):
        segformer_state_dict_from_hf(reference, model)
    del reference.extra
    smaller = SegFormerEncoder(SegFormerConfig(depths=(2, 1), hidden_sizes=(16, 32), heads=(2, 4), patch_sizes=(7, 3),
                                               strides=(4, 2), sr_ratios=(2, 1), mlp_ratios=(2, 4)))
    with pytest.raises(ValueError, match="left unmapped.*blocks.1"):
        segformer_state_dict_from_hf(reference, smaller)


def test_segformer_settings_the_model_lacks_are_refused():
    config = transformers.SegformerConfig(hidden_act="relu")
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        segformer_config_from_hf(config)
    with pytest.raises(ValueError, match="model_type"):
        segformer_config_from_hf(transformers.GPT2Config())


# ----------------------------------------------------------------------------------------------
# Naive computations.


def test_spatial_reduction_attention_with_ratio_1_is_plain_global_attention():
    dim, heads, height, width = 12, 3, 5, 7
    sra = randomised(SpatialReductionAttention(dim, heads, ratio=1))
    attn = sra.attn
    x = torch.randn(2, height * width, dim)
    q, k, v = (rearrange(proj(x), "b l (h d) -> b h l d", h=heads) for proj in (attn.to_q, attn.to_k, attn.to_v))
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // heads), dim=-1)  # (B, heads, L, L)
    expected = attn.to_out(rearrange(weights @ v, "b h l d -> b l (h d)"))
    torch.testing.assert_close(sra(x, (height, width)), expected, atol=1e-5, rtol=0)
    assert not hasattr(sra, "reduce")


def test_spatial_reduction_shrinks_the_keys():
    sra = randomised(SpatialReductionAttention(8, 2, ratio=2))
    x = torch.randn(1, 5 * 6, 8)
    assert sra.reduced(x, (5, 6)).shape == (1, 2 * 3, 8)  # the conv floors odd sides
    with pytest.raises(ValueError, match="1x6 feature map is smaller than the reduction ratio=2"):
        sra(torch.randn(1, 6, 8), (1, 6))


def test_mix_ffn_depthwise_conv_acts_on_each_channel_alone():
    dim, hidden, height, width = 4, 6, 5, 3
    ffn = randomised(MixFFN(dim, hidden))
    x = torch.randn(2, height * width, dim)
    grid = rearrange(ffn.fc_in(x), "b (h w) c -> b c h w", h=height)
    channels = [F.conv2d(grid[:, c : c + 1], ffn.dwconv.weight[c : c + 1], ffn.dwconv.bias[c : c + 1], padding=1)
                for c in range(hidden)]  # one 3x3 filter per channel, nothing mixed across channels
    mixed = rearrange(torch.cat(channels, dim=1), "b c h w -> b (h w) c")
    expected = ffn.fc_out(F.gelu(mixed))
    torch.testing.assert_close(ffn(x, (height, width)), expected, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# Bad inputs.


@pytest.mark.parametrize("options, message", [
    (dict(depths=(2, 2), hidden_sizes=(8,)), "same number of stages"),
    (dict(hidden_sizes=(32, 64, 160, 256), heads=(3, 2, 5, 8)), r"hidden_sizes\[0\]=32 is not divisible by heads\[0\]=3"),
    (dict(sr_ratios=(8, 4, 0, 1)), r"sr_ratios=\(8, 4, 0, 1\)"),
    (dict(depths=()), r"depths=\(\)"),
    (dict(channels=0), "channels=0"),
    (dict(norm_eps=0.0), "norm_eps=0.0"),
])
def test_segformer_config_rejects_bad_values(options, message):
    with pytest.raises(ValueError, match=message):
        SegFormerConfig(**options)


def test_segformer_rejects_bad_images():
    model = SegFormerEncoder(SegFormerConfig(depths=(1,), hidden_sizes=(8,), heads=(1,), patch_sizes=(7,),
                                             strides=(4,), sr_ratios=(2,), mlp_ratios=(2,)))
    with pytest.raises(ValueError, match=r"images has shape \(1, 1, 32, 32\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="smaller than the reduction ratio=2"):
        model(torch.randn(1, 3, 4, 4))  # a 1x1 map after the stride-4 stem
    with pytest.raises(ValueError, match="ratio=0"):
        SpatialReductionAttention(8, 2, ratio=0)


# ----------------------------------------------------------------------------------------------
# CvT.

# Hugging Face's CvtStage indexes its drop-path rates by stage number, so stage i needs depth > i there.
CVT_CONFIGS = {
    "img32-2stages": dict(depth=[1, 2], embed_dim=[8, 16], num_heads=[1, 2], patch_sizes=[7, 3], patch_stride=[4, 2],
                          patch_padding=[2, 1], mlp_ratio=[4.0, 2.0], kernel_qkv=[3, 3], stride_kv=[2, 2],
                          padding_kv=[1, 1], padding_q=[1, 1], stride_q=[1, 1], qkv_bias=[True, False],
                          cls_token=[False, True], image=(32, 32)),
    "img48x40-3stages": dict(depth=[1, 2, 3], embed_dim=[8, 12, 16], num_heads=[1, 3, 4], patch_sizes=[7, 3, 3],
                             patch_stride=[4, 2, 2], patch_padding=[2, 1, 1], mlp_ratio=[4.0, 4.0, 4.0],
                             kernel_qkv=[3, 3, 5], stride_kv=[2, 2, 1], padding_kv=[1, 1, 2], padding_q=[1, 1, 2],
                             stride_q=[1, 1, 1], qkv_bias=[True, True, True], cls_token=[False, False, True],
                             image=(48, 40)),
    "img32-no-cls": dict(depth=[2, 2], embed_dim=[8, 16], num_heads=[2, 2], patch_sizes=[3, 3], patch_stride=[2, 2],
                         patch_padding=[1, 1], mlp_ratio=[4.0, 4.0], kernel_qkv=[3, 3], stride_kv=[2, 2],
                         padding_kv=[1, 1], padding_q=[1, 1], stride_q=[1, 1], qkv_bias=[True, True],
                         cls_token=[False, False], image=(32, 32)),
}


def hf_cvt(seed: int, options: dict):
    """A random CvtModel in eval mode with random norms and BatchNorm running statistics too."""
    torch.manual_seed(seed)
    options = {k: v for k, v in options.items() if k != "image"}
    stages = len(options["depth"])
    config = transformers.CvtConfig(num_channels=3, qkv_projection_method=["dw_bn"] * stages,
                                    drop_path_rate=[0.0] * stages, drop_rate=[0.0] * stages,
                                    attention_drop_rate=[0.0] * stages, **options)
    model = randomise_hf(transformers.CvtModel(config, add_pooling_layer=False).eval())
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.5)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("name", list(CVT_CONFIGS))
def test_cvt_matches_hugging_face_at_every_stage(name):
    options = CVT_CONFIGS[name]
    reference = hf_cvt(0, options)
    ours = CvT.from_hf(reference).eval()
    images = torch.randn(2, 3, *options["image"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(images, output_hidden_states=True)
        features, cls = ours(images)
    assert len(features) == len(expected.hidden_states) == len(options["depth"])
    for mine, theirs in zip(features, expected.hidden_states):
        assert mine.shape == theirs.shape
        assert theirs.abs().max() > 0.1
        torch.testing.assert_close(mine, theirs, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(features[-1], expected.last_hidden_state, atol=TOLERANCE, rtol=0)
    if options["cls_token"][-1]:
        torch.testing.assert_close(cls, expected.cls_token_value[:, 0], atol=TOLERANCE, rtol=0)
    else:
        assert cls is None and expected.cls_token_value is None


@pytest.mark.parametrize("change", ["running var", "cls token", "scale"])
def test_cvt_comparison_fails_when_the_model_is_off(change):
    reference = hf_cvt(3, CVT_CONFIGS["img32-2stages"])
    ours = CvT.from_hf(reference).eval()
    attn = ours.stages[1].blocks[0].attn
    with torch.no_grad():
        if change == "running var":
            attn.conv_q.norm.running_var *= 2.0
        elif change == "cls token":
            ours.stages[1].cls_token[..., 0] += 1.0  # not every channel alike: LayerNorm would undo that
        else:
            attn.scale = (16 // 2) ** -0.5  # 1/√head_dim, the usual choice, is not what CvT does
        images = torch.randn(1, 3, 32, 32)
        assert (ours(images)[0][-1] - reference(images).last_hidden_state).abs().max() > 1e-3


def test_cvt_key_map_refuses_a_missing_or_extra_weight():
    reference = hf_cvt(0, CVT_CONFIGS["img32-2stages"])
    model = CvT(cvt_config_from_hf(reference.config))
    reference.register_buffer("extra", torch.zeros(1))
    with pytest.raises(ValueError, match="left unmapped.*extra"):
        cvt_state_dict_from_hf(reference, model)
    del reference.extra
    no_cls = CvT(replace(model.config, cls_token=False))
    with pytest.raises(ValueError, match="unexpected.*cls_token"):
        cvt_state_dict_from_hf(reference, no_cls)


def test_cvt_settings_the_model_lacks_are_refused():
    options = {k: v for k, v in CVT_CONFIGS["img32-2stages"].items() if k != "image"}
    options["qkv_projection_method"] = ["dw_bn", "dw_bn"]
    with pytest.raises(ValueError, match="qkv_projection_method=.*'avg'"):
        cvt_config_from_hf(transformers.CvtConfig(**{**options, "qkv_projection_method": ["dw_bn", "avg"]}))
    with pytest.raises(ValueError, match=r"cls_token=\[True, True\]"):
        cvt_config_from_hf(transformers.CvtConfig(**{**options, "cls_token": [True, True]}))
    with pytest.raises(ValueError, match=r"stride_q\[1\]=2"):
        cvt_config_from_hf(transformers.CvtConfig(**{**options, "stride_q": [1, 2]}))
    with pytest.raises(ValueError, match="model_type"):
        cvt_config_from_hf(transformers.SegformerConfig())


def test_conv_attention_with_identity_projections_is_plain_attention_scaled_by_the_full_width():
    """With 1x1 identity convolutions, BatchNorm at its identity statistics and stride 1, the convolutional
    projections vanish: what is left is multi-head attention with scores divided by √dim."""
    dim, heads, height, width = 8, 2, 3, 4
    attn = randomised(ConvAttention(dim, heads, kernel=1, stride_kv=1, padding_kv=0, with_cls=True)).eval()
    with torch.no_grad():
        for projection in (attn.conv_q, attn.conv_k, attn.conv_v):
            projection.conv.weight.fill_(1.0)
            projection.norm.reset_parameters()
            projection.norm.reset_running_stats()
            projection.norm.eps = 0.0
    x = torch.randn(2, 1 + height * width, dim)
    q, k, v = (rearrange(proj(x), "b l (h d) -> b h l d", h=heads) for proj in (attn.to_q, attn.to_k, attn.to_v))
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim), dim=-1)
    expected = attn.to_out(rearrange(weights @ v, "b h l d -> b l (h d)"))
    torch.testing.assert_close(attn(x, (height, width)), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("options, message", [
    (dict(dims=(64, 192)), "same number of stages"),
    (dict(heads=(1, 3, 5)), r"dims\[2\]=384 is not divisible by heads\[2\]=5"),
    (dict(kernel_qkv=(3, 4, 3)), r"kernel_qkv\[1\]=4 must be odd"),
    (dict(stride_kv=(2, 0, 2)), r"stride_kv=\(2, 0, 2\)"),
    (dict(padding_kv=(1, -1, 1)), r"padding_kv=\(1, -1, 1\)"),
    (dict(mlp_ratios=(4.0, 0.0, 4.0)), "mlp_ratios="),
    (dict(qkv_bias=(True, 1, True)), "qkv_bias="),
    (dict(bn_eps=-1.0), "bn_eps=-1.0"),
])
def test_cvt_config_rejects_bad_values(options, message):
    with pytest.raises(ValueError, match=message):
        CvTConfig(**options)


def test_cvt_rejects_bad_images_and_sizes():
    model = CvT(CvTConfig(depths=(1,), dims=(8,), heads=(2,), patch_sizes=(3,), patch_strides=(2,),
                          patch_paddings=(1,), mlp_ratios=(2.0,), qkv_bias=(True,), kernel_qkv=(3,), stride_kv=(2,),
                          padding_kv=(1,)))
    assert model(torch.randn(1, 3, 8, 8))[1].shape == (1, 8)
    with pytest.raises(ValueError, match=r"images has shape \(3, 8, 8\)"):
        model(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="dim=6 is not divisible by heads=4"):
        ConvAttention(6, 4)
    with pytest.raises(ValueError, match="kernel=2 must be odd"):
        ConvAttention(8, 2, kernel=2)


# ==============================================================================================
# MViT, PiT and T2T-ViT: no Hugging Face model to compare with, so each piece is checked against a naive
# computation written out here with loops, and the whole models against the sizes their papers give.

from course_lib.models.hierarchical import (  # noqa: E402
    GridPool,
    MViT,
    MViTBlock,
    MViTConfig,
    PiT,
    PiTConfig,
    PiTPooling,
    PoolingAttention,
    T2TConfig,
    T2TViT,
    TokenTransformer,
    soft_split,
)
from course_lib.nn import MultiHeadAttention  # noqa: E402

SMALL_MVIT = dict(patch_size=2, patch_kernel=3, depths=(1, 2, 1), dims=(8, 16, 32), heads=(1, 2, 4),
                  kv_strides=(2, 2, 1), num_classes=5)
SMALL_PIT = dict(patch_size=4, patch_stride=2, depths=(1, 2, 1), dims=(8, 16, 32), heads=(1, 2, 4), num_classes=5)
SMALL_T2T = dict(kernels=(5, 3, 3), strides=(2, 2, 1), paddings=(2, 1, 1), token_dim=8, dim=16, depth=2, heads=2,
                 num_classes=5)


def naive_pool(grid: torch.Tensor, kernel: int, stride: int, mode: str, weight: torch.Tensor | None = None):
    """(N, C, H, W) -> (N, C, h, w) by explicit loops over output positions and channels, padding kernel // 2:
    zeros for the depthwise convolution (weight (C, 1, k, k)), -inf for max pooling."""
    pad = kernel // 2
    n, channels, height, width = grid.shape
    padded = F.pad(grid, (pad, pad, pad, pad), value=float("-inf") if mode == "max" else 0.0)
    out_h, out_w = (height + 2 * pad - kernel) // stride + 1, (width + 2 * pad - kernel) // stride + 1
    out = torch.empty(n, channels, out_h, out_w)
    for i in range(out_h):
        for j in range(out_w):
            window = padded[:, :, i * stride : i * stride + kernel, j * stride : j * stride + kernel]  # (N, C, k, k)
            if mode == "max":
                out[:, :, i, j] = window.amax(dim=(-2, -1))
            else:
                out[:, :, i, j] = (window * weight[:, 0]).sum(dim=(-2, -1))
    return out


def naive_grid_pool(pool: GridPool, x: torch.Tensor, resolution, kernel: int, stride: int, mode: str):
    """(..., 1 + H*W, C) -> (..., 1 + h*w, C): the class token kept, the grid pooled naively, then the norm."""
    height, width = resolution
    leading, channels = x.shape[:-2], x.shape[-1]
    grid = x[..., 1:, :].reshape(-1, height, width, channels).permute(0, 3, 1, 2)
    pooled = naive_pool(grid, kernel, stride, mode, pool.pool.weight if mode == "conv" else None)
    tokens = pooled.permute(0, 2, 3, 1).reshape(*leading, -1, channels)
    out = torch.cat([x[..., :1, :], tokens], dim=-2)
    if mode == "conv":
        out = F.layer_norm(out, (channels,), pool.norm.weight, pool.norm.bias, pool.norm.eps)
    return out, tuple(pooled.shape[2:])


def naive_attention(q, k, v):
    """softmax(q kᵀ / √d) v written out, (..., L, d)."""
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


def test_pooling_attention_with_strides_1_is_plain_multi_head_attention():
    dim, heads, height, width = 12, 3, 4, 5
    pooling = randomised(PoolingAttention(dim, heads, q_stride=1, kv_stride=1))
    assert pooling.pool_q is None and pooling.pool_k is None and pooling.pool_v is None
    plain = MultiHeadAttention(dim, heads)
    plain.load_state_dict(pooling.state_dict())  # the same names: to_q, to_k, to_v, to_out
    x = torch.randn(2, 1 + height * width, dim)
    out, resolution = pooling(x, (height, width))
    assert resolution == (height, width)
    torch.testing.assert_close(out, plain(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["conv", "max"])
@pytest.mark.parametrize("q_stride, kv_stride, resolution", [(2, 1, (6, 6)), (1, 2, (5, 7)), (2, 3, (7, 5)),
                                                             (3, 2, (9, 4))])
def test_pooling_attention_equals_attention_of_naively_pooled_tokens(mode, q_stride, kv_stride, resolution):
    dim, heads, kernel = 8, 2, 3
    attn = randomised(PoolingAttention(dim, heads, q_stride=q_stride, kv_stride=kv_stride, kernel=kernel, mode=mode))
    x = torch.randn(2, 1 + resolution[0] * resolution[1], dim)
    out, q_resolution = attn(x, resolution)
    with torch.no_grad():
        pooled = []
        for proj, pool, stride in ((attn.to_q, attn.pool_q, q_stride), (attn.to_k, attn.pool_k, kv_stride),
                                   (attn.to_v, attn.pool_v, kv_stride)):
            tokens = rearrange(proj(x), "b l (h d) -> b h l d", h=heads)
            pooled.append(naive_grid_pool(pool, tokens, resolution, kernel, stride, mode) if stride > 1
                          else (tokens, resolution))
        (q, expected_resolution), (k, _), (v, _) = pooled
        expected = attn.to_out(rearrange(naive_attention(q, k, v), "b h l d -> b l (h d)"))
    sides = tuple((side - 1) // q_stride + 1 for side in resolution)
    assert q_resolution == expected_resolution == sides
    assert out.shape == (2, 1 + sides[0] * sides[1], dim)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_grid_pool_keeps_the_class_token_and_pools_each_row_of_the_batch_alone():
    pool = GridPool(4, 3, 2, mode="max")
    x = torch.randn(3, 2, 1 + 5 * 6, 4)
    out, resolution = pool(x, (5, 6))
    assert resolution == (3, 3) and out.shape == (3, 2, 1 + 9, 4)
    torch.testing.assert_close(out[..., 0, :], x[..., 0, :], atol=0, rtol=0)
    torch.testing.assert_close(out[1:2, 1:], pool(x[1:2, 1:], (5, 6))[0], atol=0, rtol=0)  # no leak across rows
    with pytest.raises(ValueError, match="31 tokens are not a class token and a 5x5 grid"):
        pool(x, (5, 5))
    with pytest.raises(ValueError, match="kernel=2 must be odd"):
        GridPool(4, 2, 2)
    with pytest.raises(ValueError, match="mode='avg'"):
        GridPool(4, 3, 2, mode="avg")


@pytest.mark.parametrize("dim_out", [8, 16])
def test_mvit_block_pools_its_residual_and_widens_through_the_mlp(dim_out):
    """With the attention's and the MLP's output layers zeroed, what is left is the residual path: the max-pooled
    input, then (when the block widens) a linear map of its normalised tokens."""
    dim, resolution = 8, (5, 4)
    block = randomised(MViTBlock(dim, dim_out, 2, q_stride=2, kv_stride=2, mode="conv"))
    with torch.no_grad():
        for layer in (block.attn.to_out, block.ffn.fc_out):
            layer.weight.zero_()
            layer.bias.zero_()
    x = torch.randn(2, 1 + 20, dim)
    out, new_resolution = block(x, resolution)
    skip, expected_resolution = naive_grid_pool(None, x, resolution, 3, 2, "max")
    assert new_resolution == expected_resolution == (3, 2)
    if dim_out != dim:
        skip = block.proj(F.layer_norm(skip, (dim,), block.ffn_norm.weight, block.ffn_norm.bias, block.ffn_norm.eps))
    assert out.shape == (2, 1 + 6, dim_out)
    torch.testing.assert_close(out, skip, atol=1e-5, rtol=0)


def test_pit_pooling_equals_a_naive_per_channel_convolution():
    dim, dim_out, stride, (height, width) = 3, 6, 2, (7, 6)
    pooling = randomised(PiTPooling(dim, dim_out, stride))
    tokens, cls = torch.randn(2, height * width, dim), torch.randn(2, 1, dim)
    out, out_cls, resolution = pooling(tokens, cls, (height, width))
    grid = rearrange(tokens, "b (h w) c -> b c h w", h=height)
    kernel, pad, multiplier = stride + 1, stride // 2, dim_out // dim
    padded = F.pad(grid, (pad, pad, pad, pad))
    out_h, out_w = (height + 2 * pad - kernel) // stride + 1, (width + 2 * pad - kernel) // stride + 1
    expected = torch.empty(2, dim_out, out_h, out_w)
    with torch.no_grad():
        for o in range(dim_out):
            source = o // multiplier  # output channel o reads input channel o // multiplier only
            for i in range(out_h):
                for j in range(out_w):
                    window = padded[:, source, i * stride : i * stride + kernel, j * stride : j * stride + kernel]
                    expected[:, o, i, j] = (window * pooling.conv.weight[o, 0]).sum(dim=(-2, -1)) + pooling.conv.bias[o]
    assert resolution == (out_h, out_w) == (4, 3)
    torch.testing.assert_close(out, rearrange(expected, "b c h w -> b (h w) c"), atol=1e-5, rtol=0)
    torch.testing.assert_close(out_cls, cls @ pooling.cls.weight.T + pooling.cls.bias, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="dim_out=5 is not a multiple of dim=3"):
        PiTPooling(3, 5)


@pytest.mark.parametrize("kernel, stride, padding, size", [(7, 4, 2, (16, 16)), (3, 2, 1, (7, 9)), (3, 1, 1, (5, 4)),
                                                           (4, 3, 0, (10, 11))])
def test_soft_split_gathers_overlapping_patches(kernel, stride, padding, size):
    grid = torch.randn(2, 3, *size)
    tokens, resolution = soft_split(grid, kernel, stride, padding)
    padded = F.pad(grid, (padding, padding, padding, padding))
    patches = [padded[:, :, i : i + kernel, j : j + kernel].reshape(2, -1)  # (channel, row, column) order
               for i in range(0, padded.shape[2] - kernel + 1, stride)
               for j in range(0, padded.shape[3] - kernel + 1, stride)]
    expected = torch.stack(patches, dim=1)  # (B, h*w, C*k*k), row by row
    assert resolution[0] * resolution[1] == expected.shape[1]
    assert resolution == tuple((side + 2 * padding - kernel) // stride + 1 for side in size)
    torch.testing.assert_close(tokens, expected, atol=0, rtol=0)


def test_token_transformer_is_its_formula():
    layer = randomised(TokenTransformer(12, 4, mlp_ratio=2.0))
    x = torch.randn(2, 9, 12)
    with torch.no_grad():
        h = F.layer_norm(x, (12,), layer.attn_norm.weight, layer.attn_norm.bias, layer.attn_norm.eps)
        q, k, v = h @ layer.to_q.weight.T, h @ layer.to_k.weight.T, h @ layer.to_v.weight.T
        y = v + layer.to_out(naive_attention(q, k, v))
        y = y + layer.ffn(F.layer_norm(y, (4,), layer.ffn_norm.weight, layer.ffn_norm.bias, layer.ffn_norm.eps))
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=0)


def test_t2t_module_is_soft_splits_and_token_transformers():
    torch.manual_seed(0)
    model = T2TViT(T2TConfig(image_size=16, **SMALL_T2T)).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        x, _ = soft_split(images, 5, 2, 2)  # (B, 8*8, 75)
        x = rearrange(model.token_layers[0](x), "b (h w) c -> b c h w", h=8)
        x, _ = soft_split(x, 3, 2, 1)  # (B, 4*4, 72)
        x = rearrange(model.token_layers[1](x), "b (h w) c -> b c h w", h=4)
        x, _ = soft_split(x, 3, 1, 1)  # (B, 4*4, 72)
        torch.testing.assert_close(model.tokens_to_token(images), model.project(x), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# Whole models: sizes, shapes, batch independence, determinism, bad arguments.


@pytest.mark.parametrize("model, millions", [(lambda: MViT(MViTConfig()), 37.0), (lambda: PiT(PiTConfig()), 23.5),
                                             (lambda: T2TViT(T2TConfig()), 21.5)], ids=["MViT-B", "PiT-S", "T2T-ViT-14"])
def test_default_configs_have_the_papers_parameter_counts(model, millions):
    """The papers' tables: MViT-B 37.0M, PiT-S 23.5M, T2T-ViT-14 21.5M parameters (ImageNet heads)."""
    count = sum(p.numel() for p in model().parameters()) / 1e6
    assert abs(count - millions) < 0.1, count


def small_models(image_size: int, **changes):
    return {
        "MViT": MViT(MViTConfig(image_size=image_size, **{**SMALL_MVIT, **changes})),
        "PiT": PiT(PiTConfig(image_size=image_size, **{**SMALL_PIT, **changes})),
        "T2T": T2TViT(T2TConfig(image_size=image_size, **{**SMALL_T2T, **changes})),
    }


@pytest.mark.parametrize("image_size", [16, 24, 32, 33])
def test_output_shapes_and_batch_independence(image_size):
    torch.manual_seed(image_size)
    images = torch.randn(3, 3, image_size, image_size)
    for name, model in small_models(image_size).items():
        model.eval()
        with torch.no_grad():
            logits = model(images)
            assert logits.shape == (3, 5), name
            torch.testing.assert_close(model(images[1:2]), logits[1:2], atol=1e-5, rtol=0)  # nothing leaks across images


def test_mvit_grids_are_the_feature_grids():
    for image_size in (16, 23, 32):
        config = MViTConfig(image_size=image_size, **SMALL_MVIT)
        model = MViT(config)
        sides: list[int] = []
        hooks = [block.register_forward_hook(lambda module, args, out, sides=sides: sides.append(out[1][0]))
                 for block in model.blocks]
        model(torch.randn(1, 3, image_size, image_size))
        for hook in hooks:
            hook.remove()
        # a stage's first block pools the queries down to the stage's grid: every block of stage s outputs grids[s]
        per_block = [config.grids[s] for s, depth in enumerate(config.depths) for _ in range(depth)]
        assert sides == per_block, (sides, config.grids)
        assert model.features(torch.randn(1, 3, image_size, image_size)).shape == (1, 1 + config.grids[-1] ** 2, 32)


def test_pit_and_t2t_grids_are_the_token_grids():
    pit = PiTConfig(image_size=32, **SMALL_PIT)
    assert pit.grids == (15, 8, 4)
    t2t = T2TConfig(image_size=32, **SMALL_T2T)
    assert t2t.grids == (16, 8, 8)
    assert T2TViT(t2t).tokens_to_token(torch.randn(1, 3, 32, 32)).shape == (1, 64, 16)


def test_features_without_a_head():
    for name, model in small_models(16, num_classes=0).items():
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 32 if name != "T2T" else 16), name


def test_every_parameter_is_used_and_training_is_deterministic():
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    for name in ("MViT", "PiT", "T2T"):
        runs = []
        for _ in range(2):
            torch.manual_seed(0)
            model = small_models(16)[name]
            loss = F.cross_entropy(model(images), labels)
            if name == "MViT":  # the last block's grid outputs reach the logits only through the features
                loss = loss + model.features(images).square().mean()
            loss.backward()
            unused = [key for key, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not unused, (name, unused)
            runs.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)


def test_max_pooling_mvit_runs_and_differs_from_conv_pooling():
    torch.manual_seed(0)
    conv = MViT(MViTConfig(image_size=16, **SMALL_MVIT)).eval()
    torch.manual_seed(0)
    maxed = MViT(MViTConfig(image_size=16, pool_mode="max", **SMALL_MVIT)).eval()
    assert sum(p.numel() for p in maxed.parameters()) < sum(p.numel() for p in conv.parameters())
    images = torch.randn(2, 3, 16, 16)
    assert maxed(images).shape == conv(images).shape == (2, 5)


@pytest.mark.parametrize("make, options, message", [
    (MViTConfig, dict(image_size=2, patch_size=4), "image_size=2 is smaller than patch_size=4"),
    (MViTConfig, dict(dims=(96, 192, 384, 770)), r"dims\[3\]=770 is not divisible by heads\[3\]=8"),
    (MViTConfig, dict(kv_strides=(8, 4, 2)), "same number of stages"),
    (MViTConfig, dict(pool_kernel=4), "pool_kernel=4 must be odd"),
    (MViTConfig, dict(pool_mode="avg"), "pool_mode='avg'"),
    (MViTConfig, dict(q_stride=0), "q_stride=0"),
    (MViTConfig, dict(num_classes=-1), "num_classes=-1"),
    (PiTConfig, dict(image_size=8, patch_size=16), "image_size=8 is smaller than patch_size=16"),
    (PiTConfig, dict(dims=(144, 288, 500), heads=(3, 6, 10)), r"dims\[2\]=500 is not a multiple of dims\[1\]=288"),
    (PiTConfig, dict(heads=(3, 5, 12)), r"dims\[1\]=288 is not divisible by heads\[1\]=5"),
    (PiTConfig, dict(depths=(2, 6)), "same number of stages"),
    (T2TConfig, dict(image_size=2), "image_size=2 is too small: soft split 0 sees a 2x2 map"),
    (T2TConfig, dict(image_size=4, kernels=(3, 3), strides=(2, 2), paddings=(0, 0)),
     "image_size=4 is too small: soft split 1 sees a 1x1 map padded by 0"),
    (T2TConfig, dict(dim=100), "dim=100 is not divisible by heads=6"),
    (T2TConfig, dict(strides=(4, 2)), "same number of soft splits"),
    (T2TConfig, dict(paddings=(2, -1, 1)), "paddings="),
])
def test_configs_reject_bad_values(make, options, message):
    with pytest.raises(ValueError, match=message):
        make(**options)


def test_models_reject_bad_images():
    for model in small_models(16).values():
        with pytest.raises(ValueError, match=r"images has shape \(1, 1, 16, 16\); expected \(batch, channels=3"):
            model(torch.randn(1, 1, 16, 16))
        with pytest.raises(ValueError, match="images are 24x24; expected image_size=16"):
            model(torch.randn(1, 3, 24, 24))
    with pytest.raises(ValueError, match="dim=10 is not divisible by heads=4"):
        PoolingAttention(10, 4)
    with pytest.raises(ValueError, match="kv_stride=0"):
        PoolingAttention(8, 2, kv_stride=0)
