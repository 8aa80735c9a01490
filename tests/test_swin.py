"""The packaged Swin: equal to Hugging Face's SwinModel given the same weights (1e-5 in float32), and its
window attention equal to naive global attention under the masks the paper describes."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import Tensor

from conftest import randomised
from course_lib.models.swin import (
    Swin,
    SwinBlock,
    SwinConfig,
    WindowAttention,
    config_from_hf,
    global_attention_with_block_mask,
    relative_position_index,
    shifted_window_mask,
    state_dict_from_hf,
    window_partition,
    window_reverse,
)

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-5
HF_CONFIGS = {
    "img32-patch2-win4": dict(image_size=32, patch_size=2, window_size=4, depths=[2, 2], num_heads=[2, 4]),
    # stage 1 is 7x7, as large as the window: one window, no shift
    "img56-patch4-win7": dict(image_size=56, patch_size=4, window_size=7, depths=[2, 2], num_heads=[2, 4]),
    # 9x9 and 5x5 feature maps: padded to whole windows, and an odd side before patch merging
    "img36-patch4-win4-padded": dict(image_size=36, patch_size=4, window_size=4, depths=[2, 2], num_heads=[2, 4]),
}


def hf_swin(seed: int, **options):
    """A random SwinModel whose norms and relative position tables are random too, so that a wrong map fails."""
    torch.manual_seed(seed)
    config = transformers.SwinConfig(num_channels=3, embed_dim=16, drop_path_rate=0.0, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, **options)
    model = transformers.SwinModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                parameter.uniform_(0.5, 1.5)
            elif "norm" in name:
                parameter.normal_(0.0, 0.1)
            elif "relative_position_bias_table" in name:
                parameter.normal_(0.0, 1.0)
    return model


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_matches_hugging_face(name):
    reference = hf_swin(0, **HF_CONFIGS[name])
    ours = Swin.from_hf(reference).eval()
    size = HF_CONFIGS[name]["image_size"]
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(images)
        assert expected.last_hidden_state.abs().max() > 0.1  # a real comparison, not of two near-zero tensors
        torch.testing.assert_close(ours.forward_features(images), expected.last_hidden_state, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(ours(images), expected.pooler_output, atol=TOLERANCE, rtol=0)


def test_matches_hugging_face_on_a_non_square_image_that_needs_patch_padding():
    reference = hf_swin(2, **HF_CONFIGS["img32-patch2-win4"])
    ours = Swin.from_hf(reference).eval()
    images = torch.randn(1, 3, 39, 26, generator=torch.Generator().manual_seed(2))  # 20x13 patches
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images).pooler_output, atol=TOLERANCE, rtol=0)


def test_matches_hugging_face_image_classification():
    config = transformers.SwinConfig(num_channels=3, embed_dim=16, drop_path_rate=0.0, num_labels=7,
                                     **HF_CONFIGS["img36-patch4-win4-padded"])
    torch.manual_seed(4)
    reference = transformers.SwinForImageClassification(config).eval()
    ours = Swin.from_hf(reference).eval()
    assert ours.config.num_classes == 7
    images = torch.randn(2, 3, 36, 36)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images).logits, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("change", ["bias table", "no shift", "no mask"])
def test_the_comparison_fails_when_the_model_is_off(change):
    """The HF tests can fail: the relative position biases, the shift and the shift's mask all matter."""
    reference = hf_swin(3, **HF_CONFIGS["img32-patch2-win4"])
    ours = Swin.from_hf(reference).eval()
    block = ours.stages[0].blocks[1]
    with torch.no_grad():
        if change == "bias table":
            block.attn.relative_position_bias_table[:, 0] += torch.randn(49)
        elif change == "no shift":
            block.shift = 0
        else:
            block.attn.forward = lambda windows, mask=None: WindowAttention.forward(block.attn, windows, None)
        images = torch.randn(1, 3, 32, 32)
        assert (ours.forward_features(images) - reference(images).last_hidden_state).abs().max() > 1e-3


def test_key_map_refuses_a_missing_or_extra_weight():
    reference = hf_swin(0, **HF_CONFIGS["img32-patch2-win4"])
    model = Swin(config_from_hf(reference.config))
    reference.register_buffer("extra", torch.zeros(1))
    with pytest.raises(ValueError, match="left unmapped.*extra"):
        state_dict_from_hf(reference, model)
    smaller = Swin(SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=(2, 1), heads=(2, 4), window_size=4))
    del reference.extra
    with pytest.raises(ValueError, match="left unmapped.*blocks.1"):
        state_dict_from_hf(reference, smaller)


def test_settings_the_model_lacks_are_refused():
    config = transformers.SwinConfig(embed_dim=16, depths=[2], num_heads=[2], use_absolute_embeddings=True)
    with pytest.raises(ValueError, match="use_absolute_embeddings=True"):
        config_from_hf(config)
    with pytest.raises(ValueError, match="model_type"):
        config_from_hf(transformers.GPT2Config())


# ----------------------------------------------------------------------------------------------
# Naive computations: window attention is global attention under a mask.


def naive_attention(attn: WindowAttention, tokens: Tensor, coords: Tensor, allowed: Tensor) -> Tensor:
    """Global attention over all (B, L, C) tokens of a feature map: every pair gets the bias of its offset,
    looked up from the (dy, dx) of the token coordinates (L, 2), and `allowed` (L, L) hides the rest."""
    w = attn.window
    q, k, v = (rearrange(proj(tokens), "b l (h d) -> b h l d", h=attn.heads) for proj in (attn.to_q, attn.to_k, attn.to_v))
    dy = (coords[:, None, 0] - coords[None, :, 0]).clamp(-(w - 1), w - 1) + w - 1  # clamped pairs are masked
    dx = (coords[:, None, 1] - coords[None, :, 1]).clamp(-(w - 1), w - 1) + w - 1
    bias = rearrange(attn.relative_position_bias_table[dy * (2 * w - 1) + dx], "i j h -> h i j")
    out = global_attention_with_block_mask(q, k, v, allowed, bias)
    return attn.to_out(rearrange(out, "b h l d -> b l (h d)"))


def grid_coords(height: int, width: int) -> Tensor:
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=1)  # (H*W, 2), row by row


def test_window_attention_is_global_attention_under_a_block_diagonal_mask():
    window, height, width = 4, 8, 12
    attn = randomised(WindowAttention(16, 2, window))
    x = torch.randn(2, height, width, 16)
    ours = window_reverse(attn(window_partition(x, window)), window, height, width)

    coords = grid_coords(height, width)
    same_window = ((coords[:, None] // window) == (coords[None, :] // window)).all(dim=-1)  # (L, L)
    expected = naive_attention(attn, rearrange(x, "b h w c -> b (h w) c"), coords, same_window)
    torch.testing.assert_close(ours, rearrange(expected, "b (h w) c -> b h w c", h=height), atol=1e-5, rtol=0)


def test_shifted_window_attention_is_global_attention_on_the_rolled_image():
    """Roll by -shift; then a token sees the tokens of its window of the rolled image that the roll did not
    bring round from the opposite edge (their offset is the same before and after the roll); roll back."""
    window, shift, height, width = 4, 2, 8, 12
    block = randomised(SwinBlock(16, 2, window, shift))
    x = torch.randn(2, height, width, 16)
    ours = block.attend(x)

    rolled = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    coords = grid_coords(height, width)  # coordinates in the rolled image
    source = (coords + shift) % torch.tensor([height, width])  # where each token was before the roll
    same_window = ((coords[:, None] // window) == (coords[None, :] // window)).all(dim=-1)
    were_neighbours = ((source[:, None] - source[None, :]) == (coords[:, None] - coords[None, :])).all(dim=-1)
    expected = naive_attention(block.attn, rearrange(rolled, "b h w c -> b (h w) c"), coords,
                               same_window & were_neighbours)
    expected = torch.roll(rearrange(expected, "b (h w) c -> b h w c", h=height), shifts=(shift, shift), dims=(1, 2))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert (same_window & ~were_neighbours).any()  # the mask did hide something


def test_shifted_window_mask_of_a_tiny_map():
    # a 4x4 map, window 2, shift 1: the last row and column of the rolled map came round from the start
    mask = shifted_window_mask(4, 4, 2, 1)
    assert mask.shape == (4, 4, 4)
    assert mask[0].all()  # the top-left window never wrapped
    # bottom-right window: tokens (2,2), (2,3), (3,2), (3,3) lie in four different regions
    assert torch.equal(mask[3], torch.eye(4, dtype=torch.bool))
    # top-right window: columns 2 and 3 differ, rows agree
    assert torch.equal(mask[1], torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool))
    assert shifted_window_mask(4, 4, 2, 0).all()


def test_relative_position_index_is_the_offset_in_the_table():
    assert torch.equal(relative_position_index(2), torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]))
    # a smaller window reads the central entries of a larger table: offset (0, 0) is entry 12 of 5x5
    small = relative_position_index(2, table_window=3)
    assert small[0, 0] == 12 and small[3, 0] == 18 and small[0, 3] == 6


def test_window_partition_round_trip_and_order():
    x = torch.randn(2, 8, 12, 5)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 3, 16, 5)
    assert torch.equal(windows[1], rearrange(x[0, :4, 4:8], "p q c -> (p q) c"))  # windows go row by row
    assert torch.equal(windows[3], rearrange(x[0, 4:, :4], "p q c -> (p q) c"))
    assert torch.equal(window_reverse(windows, 4, 8, 12), x)


def test_a_feature_map_smaller_than_the_window_uses_one_window_and_the_central_biases():
    block = randomised(SwinBlock(8, 2, window=7, shift=3))
    assert block.window_and_shift(5, 9) == (5, 0) and block.window_and_shift(9, 9) == (7, 3)
    x = torch.randn(1, 5, 5, 8)
    coords = grid_coords(5, 5)
    expected = naive_attention(block.attn, rearrange(x, "b h w c -> b (h w) c"), coords, torch.ones(25, 25, dtype=torch.bool))
    torch.testing.assert_close(block.attend(x), rearrange(expected, "b (h w) c -> b h w c", h=5), atol=1e-5, rtol=0)
    model = Swin(SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=(1, 1, 1), heads=(1, 2, 2), window_size=7))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 32)  # stages at 8x8, 4x4 and 2x2


def test_head_gives_logits():
    model = Swin(SwinConfig(image_size=16, patch_size=4, embed_dim=8, depths=(2,), heads=(2,), window_size=2,
                            num_classes=5))
    assert model(torch.randn(3, 3, 16, 16)).shape == (3, 5)


@pytest.mark.parametrize("options, message", [
    (dict(embed_dim=10, depths=(1,), heads=(3,)), "not divisible by heads=3"),
    (dict(depths=(2, 2), heads=(2,)), "same number of stages"),
    (dict(depths=(), heads=()), "depths=()"),
    (dict(window_size=0), "window_size=0"),
    (dict(mlp_ratio=0), "mlp_ratio=0"),
    (dict(num_classes=-1), "num_classes=-1"),
])
def test_bad_configs_are_refused(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SwinConfig(**{"embed_dim": 8, "depths": (1,), "heads": (1,), **options})


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="height=6 and width=8 must be multiples of window=4"):
        window_partition(torch.randn(1, 6, 8, 3), 4)
    with pytest.raises(ValueError, match="expected \\(batch, height, width, channels\\)"):
        window_partition(torch.randn(6, 8, 3), 2)
    with pytest.raises(ValueError, match="shift=4 must lie in"):
        shifted_window_mask(8, 8, 4, 4)
    with pytest.raises(ValueError, match="shift=7 must lie in"):
        SwinBlock(8, 2, window=7, shift=7)
    with pytest.raises(ValueError, match="window=3 is larger"):
        relative_position_index(3, table_window=2)
    model = Swin(SwinConfig(image_size=16, patch_size=4, embed_dim=8, depths=(1,), heads=(1,), window_size=2))
    with pytest.raises(ValueError, match="channels=3"):
        model(torch.randn(1, 1, 16, 16))
