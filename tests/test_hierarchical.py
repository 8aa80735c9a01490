"""SegFormer's encoder and CvT equal Hugging Face's SegformerModel and CvtModel given the same weights (1e-5 in
float32); SegFormer's spatial-reduction attention with ratio 1 is plain global attention, its Mix-FFN convolves
each channel alone, and CvT's attention without its convolutions is attention scaled by 1/√dim."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

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


def randomised(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.5)
    return module


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
