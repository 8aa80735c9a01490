"""The packaged ViT: equal to Hugging Face's ViTModel and ViTForImageClassification given the same weights,
its resized positions equal a bicubic resize of the grid, and its ViT-22B options compute what they say.
Tolerance: 1e-5 in float32."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from course_lib.models.vit import PatchEmbedding, ViT, ViTConfig, config_from_hf, state_dict_from_hf

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-5
HF_CONFIGS = {  # (image_size, patch_size, hidden_size, layers, heads, intermediate_size, qkv_bias)
    "p8-d1-h4": (32, 8, 32, 1, 4, 64, True),
    "p4-d3-h2": (24, 4, 48, 3, 2, 96, True),
    "p16-d2-h6": (48, 16, 96, 2, 6, 200, True),
    "p2-d2-h8-no-qkv-bias": (16, 2, 64, 2, 8, 72, False),
}


def tiny(**options) -> ViTConfig:
    return ViTConfig(**{"image_size": 16, "patch_size": 4, "channels": 3, "dim": 32, "depth": 2, "heads": 4,
                        "num_classes": 7, **options})


def images(batch: int, size: int | tuple[int, int], channels: int = 3, seed: int = 0) -> torch.Tensor:
    height, width = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


def hf_config(image, patch, width, layers, heads, hidden, qkv_bias, num_labels=5, attention="sdpa"):
    return transformers.ViTConfig(image_size=image, patch_size=patch, hidden_size=width, num_hidden_layers=layers,
                                  num_attention_heads=heads, intermediate_size=hidden, qkv_bias=qkv_bias,
                                  num_labels=num_labels, attn_implementation=attention)


def randomise_norms(model: torch.nn.Module) -> torch.nn.Module:
    """HF initialises norms to one and zero; random scales and shifts make the comparison stricter."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layernorm" in name:
                parameter.uniform_(0.5, 1.5) if name.endswith("weight") else parameter.uniform_(-0.2, 0.2)
    return model.eval()


def hf_vit(seed: int, *sizes, classify: bool = False, attention: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(seed)
    config = hf_config(*sizes, attention=attention)
    model = transformers.ViTForImageClassification(config) if classify \
        else transformers.ViTModel(config, add_pooling_layer=False)
    return randomise_norms(model)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("name", HF_CONFIGS)
def test_matches_hugging_face_vit_model(name, attention):
    """Against both of HF's attention paths: its fused one, and the eager one that spells softmax(q kᵀ/√d) v out."""
    sizes = HF_CONFIGS[name]
    reference = hf_vit(0, *sizes, attention=attention)
    ours = ViT.from_hf(reference).eval()
    assert ours.config.num_classes == 0 and ours.config.norm_eps == 1e-12
    x = images(3, sizes[0])
    with torch.no_grad():
        expected = reference(x).last_hidden_state
        assert expected.abs().max() > 0.1  # a real comparison, not of two near-zero tensors
        torch.testing.assert_close(ours.features(x), expected, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(ours(x), expected[:, 0], atol=TOLERANCE, rtol=0)  # no head: the class token


@pytest.mark.parametrize("name", ["p8-d1-h4", "p2-d2-h8-no-qkv-bias"])
def test_matches_hugging_face_classifier(name):
    sizes = HF_CONFIGS[name]
    reference = hf_vit(1, *sizes, classify=True)
    ours = ViT.from_hf(reference).eval()
    assert ours.config.num_classes == 5
    x = images(2, sizes[0], seed=1)
    with torch.no_grad():
        expected = reference(x).logits
        assert expected.abs().max() > 0.01
        torch.testing.assert_close(ours(x), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("size", [(48, 48), (40, 24)])
def test_matches_hugging_face_at_another_resolution(size):
    """HF's interpolate_pos_encoding resizes the same way: bicubic, the class-token position kept."""
    reference = hf_vit(2, *HF_CONFIGS["p8-d1-h4"])
    ours = ViT.from_hf(reference).eval()
    x = images(2, size, seed=2)
    with torch.no_grad():
        expected = reference(x, interpolate_pos_encoding=True).last_hidden_state
        torch.testing.assert_close(ours.features(x, interpolate=True), expected, atol=TOLERANCE, rtol=0)


def test_key_map_refuses_a_model_with_a_missing_or_extra_weight():
    reference = hf_vit(0, *HF_CONFIGS["p8-d1-h4"])
    model = ViT(config_from_hf(reference.config))
    reference.layers[0].attention.register_parameter("extra", torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(ValueError, match="left unmapped.*extra"):
        state_dict_from_hf(reference, model)
    wrong = ViT(tiny(num_classes=0, image_size=32, patch_size=8, depth=1, mlp_hidden=32))
    with pytest.raises(ValueError, match="wrong shapes.*fc_in"):
        state_dict_from_hf(hf_vit(0, *HF_CONFIGS["p8-d1-h4"]), wrong)


def test_settings_the_model_lacks_are_refused():
    with pytest.raises(ValueError, match="pooler"):
        ViT.from_hf(transformers.ViTModel(hf_config(*HF_CONFIGS["p8-d1-h4"])))
    config = hf_config(*HF_CONFIGS["p8-d1-h4"])
    config.hidden_act = "gelu_new"
    with pytest.raises(ValueError, match="hidden_act='gelu_new'"):
        config_from_hf(config)
    with pytest.raises(ValueError, match="model_type"):
        config_from_hf(transformers.BertConfig())


# ----------------------------------------------------------------------------------------------
# Positions at another resolution


def test_interpolation_at_the_training_resolution_is_the_identity():
    model = ViT(tiny())
    assert model.interpolate_positions(model.config.grid) is model.pos_embedding
    grid = rearrange(model.pos_embedding[1:], "(h w) d -> 1 d h w", h=4)  # the resize itself changes nothing
    same = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
    torch.testing.assert_close(same, grid, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_interpolated_grid_is_a_bicubic_resize_of_the_learned_grid(pool):
    model = ViT(tiny(pool=pool)).eval()
    prefix = 1 if pool == "cls" else 0
    table = model.interpolate_positions((6, 3))
    assert table.shape == (prefix + 18, 32)
    torch.testing.assert_close(table[:prefix], model.pos_embedding[:prefix], atol=0, rtol=0)  # class token kept
    grid = rearrange(model.pos_embedding[prefix:], "(h w) d -> 1 d h w", h=4, w=4)
    expected = F.interpolate(grid, size=(6, 3), mode="bicubic", align_corners=False)
    torch.testing.assert_close(rearrange(table[prefix:], "(h w) d -> 1 d h w", h=6), expected, atol=0, rtol=0)
    with torch.no_grad():
        assert model(images(2, (24, 12)), interpolate=True).shape == (2, 7)
        assert model.features(images(2, (24, 12)), interpolate=True).shape == (2, prefix + 18, 32)


def test_sincos_positions_are_the_fixed_table_of_each_grid():
    model = ViT(tiny(positional="sincos2d")).eval()
    assert model.pos_embedding is None and not any("sincos" in key for key in model.state_dict())
    from course_lib.nn import sinusoidal_table_2d

    torch.testing.assert_close(model.interpolate_positions((5, 2))[1:], sinusoidal_table_2d(5, 2, 32))
    torch.testing.assert_close(model.interpolate_positions((5, 2))[0], torch.zeros(32))
    with torch.no_grad():
        assert model(images(2, (20, 8)), interpolate=True).shape == (2, 7)


# ----------------------------------------------------------------------------------------------
# Pooling and the ViT-22B options


def test_mean_pool_has_no_class_token_and_averages_the_patches():
    model = ViT(tiny(pool="mean")).eval()
    assert model.cls_token is None and model.pos_embedding.shape == (16, 32)
    x = images(2, 16)
    with torch.no_grad():
        tokens = model.features(x)
        assert tokens.shape == (2, 16, 32)
        torch.testing.assert_close(model(x), model.head(tokens.mean(dim=1)), atol=TOLERANCE, rtol=0)
    cls_model = ViT(tiny(pool="cls")).eval()
    with torch.no_grad():
        tokens = cls_model.features(x)
        assert tokens.shape == (2, 17, 32)
        torch.testing.assert_close(cls_model(x), cls_model.head(tokens[:, 0]), atol=TOLERANCE, rtol=0)


def naive_block(block, x: torch.Tensor, *, heads: int, qk_norm: bool, parallel: bool) -> torch.Tensor:
    """One encoder block written out with loops over heads and plain torch ops, from the block's weights."""
    def layer_norm(t, norm):
        mean = t.mean(-1, keepdim=True)
        var = ((t - mean) ** 2).mean(-1, keepdim=True)
        return (t - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias

    def attention(h):
        a = block.attn
        q, k, v = a.to_q(h), a.to_k(h), a.to_v(h)  # (B, T, dim)
        size = q.shape[-1] // heads
        outs = []
        for i in range(heads):
            qi, ki, vi = (t[..., i * size:(i + 1) * size] for t in (q, k, v))
            if qk_norm:
                qi, ki = layer_norm(qi, a.q_norm), layer_norm(ki, a.k_norm)
            weights = torch.softmax(qi @ ki.transpose(-1, -2) / math.sqrt(size), dim=-1)
            outs.append(weights @ vi)
        return a.to_out(torch.cat(outs, dim=-1))

    def mlp(h):
        return block.ffn.fc_out(F.gelu(block.ffn.fc_in(h)))

    if parallel:
        h = layer_norm(x, block.attn_norm)
        return x + attention(h) + mlp(h)
    x = x + attention(layer_norm(x, block.attn_norm))
    return x + mlp(layer_norm(x, block.ffn_norm))


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("parallel", [False, True])
def test_block_matches_a_naive_recomputation(qk_norm, parallel):
    torch.manual_seed(3)
    model = ViT(tiny(qk_norm=qk_norm, parallel_blocks=parallel, heads=4)).eval()
    with torch.no_grad():  # norms away from one and zero, so that a missing or misplaced norm shows
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5) if name.endswith("weight") else parameter.uniform_(-0.3, 0.3)
    block = model.blocks[0]
    assert (block.ffn_norm is None) == parallel
    assert hasattr(block.attn.q_norm, "weight") == qk_norm
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        expected = naive_block(block, x, heads=4, qk_norm=qk_norm, parallel=parallel)
        torch.testing.assert_close(block(x), expected, atol=TOLERANCE, rtol=0)
        assert model(images(2, 16)).shape == (2, 7)


# ----------------------------------------------------------------------------------------------
# Shapes, errors, determinism


def test_patch_embedding_is_a_linear_map_of_each_patch():
    embed = PatchEmbedding(4, 3, 32)
    x = images(2, (8, 12))
    patches = rearrange(x, "b c (h p) (w q) -> b (h w) (c p q)", p=4, q=4)
    expected = patches @ rearrange(embed.proj.weight, "d c p q -> (c p q) d") + embed.proj.bias
    torch.testing.assert_close(embed(x), expected, atol=TOLERANCE, rtol=0)
    assert embed(x).shape == (2, 6, 32)


def test_no_head_returns_pooled_features():
    model = ViT(tiny(num_classes=0)).eval()
    assert model.head is None
    with torch.no_grad():
        assert model(images(3, 16)).shape == (3, 32)


@pytest.mark.parametrize("options, message", [
    (dict(image_size=30, patch_size=4), "image_size=30 is not divisible by patch_size=4"),
    (dict(dim=30, heads=4), "dim=30 is not divisible by heads=4"),
    (dict(pool="max"), "pool='max'"),
    (dict(positional="rope"), "positional='rope'"),
    (dict(positional="sincos2d", dim=30, heads=6), "dim=30 must be divisible by 4"),
    (dict(num_classes=-1), "num_classes=-1"),
    (dict(depth=0), "depth=0"),
    (dict(dropout=1.0), "dropout=1.0"),
    (dict(mlp_ratio=0), "mlp_ratio=0"),
    (dict(norm_eps=0.0), "norm_eps=0.0"),
])
def test_bad_configs_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        tiny(**options)


def test_bad_images_are_refused():
    model = ViT(tiny())
    with pytest.raises(ValueError, match=r"images has 1 channels.*expected channels=3"):
        model(images(2, 16, channels=1))
    with pytest.raises(ValueError, match=r"images are 24x24; expected image_size=16.*interpolate=True"):
        model(images(2, 24))
    with pytest.raises(ValueError, match=r"images are 18x16, not divisible by patch_size=4"):
        model(images(2, (18, 16)), interpolate=True)
    with pytest.raises(ValueError, match=r"images has shape \(3, 16, 16\)"):
        model(torch.randn(3, 16, 16))


def test_same_seed_same_outputs():
    def build_and_run(seed):
        torch.manual_seed(seed)
        model = ViT(tiny(qk_norm=True)).eval()
        with torch.no_grad():
            return model(images(2, 16))
    torch.testing.assert_close(build_and_run(5), build_and_run(5), atol=0, rtol=0)
    assert not torch.allclose(build_and_run(5), build_and_run(6))
