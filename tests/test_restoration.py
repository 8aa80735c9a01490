"""Restoration blocks and nets against naive computations: channel attention channel pair by channel pair,
LeWin window attention window by window, the GDFN by hand; the nets start as their baselines."""

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from conftest import randomised
from course_lib.data.photos import bicubic_upsample
from course_lib.models.restoration import (
    ChannelAttention,
    GatedDconvFeedForward,
    HierarchicalWindows,
    LeWinBlock,
    RestorationConfig,
    RestorationNet,
    RestormerBlock,
    SpatialAttention,
    channel_attention,
    denoiser,
    super_resolver,
)
from course_lib.models.swin import SwinBlock


def naive_channel_attention(q, k, v, temperature, heads):
    """Loops over images, heads and channel pairs: score(i, j) = <q_i, k_j> / (|q_i| |k_j|) * t_head."""
    batch, channels, height, width = q.shape
    per = channels // heads
    out = torch.zeros_like(v)
    for b in range(batch):
        for h in range(heads):
            rows = range(h * per, (h + 1) * per)
            scores = torch.zeros(per, per)
            for i, ci in enumerate(rows):
                for j, cj in enumerate(rows):
                    qi, kj = q[b, ci].flatten(), k[b, cj].flatten()
                    scores[i, j] = (qi @ kj) / (qi.norm().clamp(min=1e-12) * kj.norm().clamp(min=1e-12)) * temperature[h]
            weights = scores.softmax(dim=-1)
            for i, ci in enumerate(rows):
                out[b, ci] = sum(weights[i, j] * v[b, cj] for j, cj in enumerate(rows))
    return out


@pytest.mark.parametrize("batch, channels, heads, height, width", [
    (1, 4, 1, 3, 5), (2, 8, 2, 4, 4), (1, 12, 3, 6, 2), (2, 6, 6, 5, 5),
])
def test_channel_attention_matches_loops(batch, channels, heads, height, width):
    g = torch.Generator().manual_seed(channels)
    q, k, v = (torch.randn(batch, channels, height, width, generator=g) for _ in range(3))
    temperature = torch.rand(heads, generator=g) * 3 + 0.5
    torch.testing.assert_close(channel_attention(q, k, v, temperature, heads),
                               naive_channel_attention(q, k, v, temperature, heads), atol=1e-5, rtol=1e-5)


def test_channel_attention_module_is_convs_around_the_function():
    attn = randomised(ChannelAttention(8, 2, bias=True)).eval()
    x = torch.randn(2, 8, 5, 6)
    with torch.no_grad():
        qkv = F.conv2d(x, attn.to_qkv.weight, attn.to_qkv.bias)
        qkv = F.conv2d(qkv, attn.qkv_dwconv.weight, attn.qkv_dwconv.bias, padding=1, groups=24)
        q, k, v = qkv[:, :8], qkv[:, 8:16], qkv[:, 16:]
        expected = F.conv2d(naive_channel_attention(q, k, v, attn.temperature, 2), attn.to_out.weight, attn.to_out.bias)
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_channel_attention_map_does_not_grow_with_the_pixels():
    """The (heads, C/h, C/h) map is the same size at any resolution: count the entries softmax sees."""
    attn = ChannelAttention(8, 2).eval()
    seen = []
    original = torch.Tensor.softmax

    def spy(self, *args, **kwargs):
        seen.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    torch.Tensor.softmax = spy
    try:
        with torch.no_grad():
            attn(torch.randn(1, 8, 4, 4)), attn(torch.randn(1, 8, 16, 16))
    finally:
        torch.Tensor.softmax = original
    assert seen == [(1, 2, 4, 4), (1, 2, 4, 4)]


def test_channel_attention_is_translation_equivariant_inside():
    """Channel attention mixes channels with weights from global statistics; a circular shift of the pixels
    changes nothing in those weights, so without the convs' borders it commutes with the shift."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 6, 5, 5, generator=g) for _ in range(3))
    t = torch.tensor([1.5, 0.7])
    roll = lambda x: torch.roll(x, shifts=(2, 1), dims=(2, 3))  # noqa: E731
    torch.testing.assert_close(channel_attention(roll(q), roll(k), roll(v), t, 2), roll(channel_attention(q, k, v, t, 2)))


def test_gdfn_by_hand():
    ffn = randomised(GatedDconvFeedForward(4, 6, bias=True)).eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        hidden = F.conv2d(F.conv2d(x, ffn.fc_in.weight, ffn.fc_in.bias), ffn.dwconv.weight, ffn.dwconv.bias,
                          padding=1, groups=12)
        expected = F.conv2d(F.gelu(hidden[:, :6]) * hidden[:, 6:], ffn.fc_out.weight, ffn.fc_out.bias)
        torch.testing.assert_close(ffn(x), expected, atol=1e-5, rtol=1e-5)


def test_restormer_block_is_two_residual_branches():
    block = randomised(RestormerBlock(8, 2)).eval()
    x = torch.randn(1, 8, 6, 6)

    def norm(layer, y):  # LayerNorm over the channels of each pixel, by hand
        mean, var = y.mean(1, keepdim=True), y.var(1, unbiased=False, keepdim=True)
        return (y - mean) / torch.sqrt(var + 1e-5) * layer.weight[:, None, None] + layer.bias[:, None, None]

    with torch.no_grad():
        y = x + block.attn(norm(block.attn_norm, x))
        torch.testing.assert_close(block(x), y + block.ffn(norm(block.ffn_norm, y)), atol=1e-5, rtol=1e-5)


def test_spatial_attention_is_multi_head_attention_over_pixels():
    attn = randomised(SpatialAttention(8, 2)).eval()
    x = torch.randn(2, 8, 3, 4)
    tokens = rearrange(x, "b c h w -> b (h w) c")
    m = attn.attn
    with torch.no_grad():
        q, k, v = (rearrange(p(tokens), "b l (h d) -> b h l d", h=2) for p in (m.to_q, m.to_k, m.to_v))
        out = (q @ k.transpose(-2, -1) / math.sqrt(4)).softmax(-1) @ v
        expected = m.to_out(rearrange(out, "b h l d -> b l (h d)"))
        torch.testing.assert_close(attn(x), rearrange(expected, "b (h w) c -> b c h w", h=3), atol=1e-5, rtol=1e-5)


def naive_window_attention(attn, grid, window):
    """Cut the (1, H, W, C) map into windows by slicing, attend in each with the block's weights and bias."""
    _, height, width, channels = grid.shape
    heads = attn.heads
    out = torch.zeros_like(grid)
    bias = attn.position_bias(window)  # (heads, t, t)
    for top in range(0, height, window):
        for left in range(0, width, window):
            tokens = grid[0, top:top + window, left:left + window].reshape(window * window, channels)
            q, k, v = (p(tokens).reshape(-1, heads, channels // heads).transpose(0, 1)
                       for p in (attn.to_q, attn.to_k, attn.to_v))
            weights = (q @ k.transpose(-2, -1) / math.sqrt(channels // heads) + bias).softmax(-1)
            mixed = attn.to_out((weights @ v).transpose(0, 1).reshape(window * window, channels))
            out[0, top:top + window, left:left + window] = mixed.reshape(window, window, channels)
    return out


@pytest.mark.parametrize("height, width, window", [(8, 8, 4), (4, 8, 2), (6, 6, 3), (8, 4, 4)])
def test_lewin_window_attention_matches_windows_one_by_one(height, width, window):
    block = randomised(LeWinBlock(8, 2, window)).eval()
    grid = torch.randn(1, height, width, 8)
    with torch.no_grad():
        torch.testing.assert_close(block.attend(grid), naive_window_attention(block.attn, grid, window),
                                   atol=1e-5, rtol=1e-5)


def test_lewin_block_is_window_attention_then_leff():
    block = randomised(LeWinBlock(8, 2, 4)).eval()
    x = torch.randn(1, 8 * 8, 8)
    with torch.no_grad():
        grid = rearrange(block.attn_norm(x), "b (h w) c -> b h w c", h=8)
        y = x + rearrange(naive_window_attention(block.attn, grid, 4), "b h w c -> b (h w) c")
        hidden = block.ffn.fc_in(block.ffn_norm(y))  # LeFF: linear, 3x3 depthwise conv on the grid, GELU, linear
        hidden = rearrange(hidden, "b (h w) c -> b c h w", h=8)
        hidden = F.conv2d(hidden, block.ffn.dwconv.weight, block.ffn.dwconv.bias, padding=1, groups=hidden.shape[1])
        expected = y + block.ffn.fc_out(F.gelu(rearrange(hidden, "b c h w -> b (h w) c")))
        torch.testing.assert_close(block(x, (8, 8)), expected, atol=1e-5, rtol=1e-5)
    assert isinstance(block, SwinBlock)


def test_hierarchical_windows_grow_and_run_blocks_in_order():
    stack = randomised(HierarchicalWindows(8, 2, (2, 4, 8), shift=True)).eval()
    assert [b.window for b in stack.blocks] == [2, 4, 8] and [b.shift for b in stack.blocks] == [0, 2, 0]
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        tokens = rearrange(x, "b c h w -> b (h w) c")
        for block in stack.blocks:
            tokens = block(tokens, (8, 8))
        torch.testing.assert_close(stack(x), rearrange(tokens, "b (h w) c -> b c h w", h=8))


@pytest.mark.parametrize("block", ["channel", "window"])
def test_untrained_denoiser_is_the_identity(block):
    net = denoiser(dim=8, heads=2, block=block, depth=2, windows=(2, 4)).eval()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x), x)


@pytest.mark.parametrize("block", ["channel", "window"])
def test_untrained_super_resolver_is_bicubic(block):
    net = super_resolver(dim=8, heads=2, block=block, depth=2, windows=(2, 4)).eval()
    x = torch.rand(2, 3, 6, 8)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 3, 12, 16)
    torch.testing.assert_close(out, bicubic_upsample(x, 2), atol=0, rtol=0)


def test_super_resolver_residual_goes_through_pixel_shuffle():
    net = randomised(super_resolver(dim=8, heads=2, depth=1)).eval()
    x = torch.rand(1, 3, 4, 4)
    with torch.no_grad():
        low = net.out(net.body(net.embed(x)))  # (1, 12, 4, 4): channel c*4 + 2*i + j is offset (i, j) of colour c
        residual = torch.zeros(1, 3, 8, 8)
        for c in range(3):
            for i in range(2):
                for j in range(2):
                    residual[0, c, i::2, j::2] = low[0, c * 4 + 2 * i + j]
        torch.testing.assert_close(net(x), bicubic_upsample(x, 2) + residual)


def test_nets_train_deterministically():
    from course_lib.train.loop import fit

    def trained():
        torch.manual_seed(0)
        net = denoiser(dim=8, heads=2, depth=1)
        x = torch.rand(8, 3, 8, 8)
        return fit(net, x + 0.1, x, steps=3, lr=1e-3, batch=4, loss=F.mse_loss)(x)

    torch.testing.assert_close(trained(), trained(), atol=0, rtol=0)


@pytest.mark.parametrize("options, name", [
    (dict(dim=10, heads=3), "dim=10"), (dict(block="conv"), "block="), (dict(depth=0), "depth="),
    (dict(block="window", depth=2, windows=(4, 8, 16)), "windows="), (dict(windows=(4, 0, 2)), "windows="),
    (dict(scale=3), "scale="), (dict(ffn_ratio=0), "ffn_ratio="),
])
def test_bad_config_is_refused_by_name(options, name):
    with pytest.raises(ValueError, match=name):
        RestorationConfig(**options)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="dim=6 is not divisible by heads=4"):
        ChannelAttention(6, 4)
    with pytest.raises(ValueError, match="x has shape"):
        ChannelAttention(8, 2)(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match="images has shape"):
        RestorationNet(RestorationConfig(dim=8, heads=2, depth=1))(torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match="windows="):
        HierarchicalWindows(8, 2, ())
