"""The cross-scale models against naive computations (there is no Hugging Face reference for them): MaxViT's
block and grid attention, CrossFormer's short- and long-distance attention, each equal to global attention over
all tokens under a boolean mask (1e-5 in float32); CrossViT's fusion equal to a class token attending over
[itself; the other branch's patches], written out by hand; the cross-scale embedding equal to separate
convolutions concatenated."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from conftest import randomised as randomised_parameters
from course_lib.models.cross_scale import (
    AxisAttentionLayer,
    ClassTokenCrossAttention,
    CrossFormer,
    CrossFormerConfig,
    CrossScaleEmbedding,
    CrossViT,
    CrossViTConfig,
    DistanceAttention,
    MaxViT,
    MaxViTBlock,
    MaxViTConfig,
    channel_split,
    grid_partition,
    grid_reverse,
    group_offsets,
    interval_partition,
    interval_reverse,
)
from course_lib.models.swin import global_attention_with_block_mask
from course_lib.models.vit import ViT

TOLERANCE = 1e-5


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The shared random draw, in eval mode (MaxViT's MBConv has a BatchNorm)."""
    return randomised_parameters(module, seed).eval()


def coords_of(height: int, width: int) -> Tensor:
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=1)  # (H*W, 2), row by row


def naive_attention(attn, tokens: Tensor, allowed: Tensor, bias: Tensor) -> Tensor:
    """Global attention over all (B, L, C) tokens with the module's projections, the (L, L) mask and the
    (heads, L, L) bias."""
    q, k, v = (rearrange(p(tokens), "b l (h d) -> b h l d", h=attn.heads) for p in (attn.to_q, attn.to_k, attn.to_v))
    out = global_attention_with_block_mask(q, k, v, allowed, bias)
    return attn.to_out(rearrange(out, "b h l d -> b l (h d)"))


def table_bias(attn, steps: Tensor) -> Tensor:
    """Swin's relative position bias of WindowAttention for (L, L, 2) offsets in window steps; offsets out of
    the table's range (only between tokens the mask hides) are clamped."""
    w = attn.window
    dy, dx = (steps[..., i].clamp(-(w - 1), w - 1) + w - 1 for i in (0, 1))
    return rearrange(attn.relative_position_bias_table[dy * (2 * w - 1) + dx], "i j h -> h i j")


def block_mask_and_steps(height: int, width: int, block: int) -> tuple[Tensor, Tensor]:
    """Same P x P block; the offset in tokens."""
    coords = coords_of(height, width)
    allowed = ((coords[:, None] // block) == (coords[None, :] // block)).all(-1)
    return allowed, coords[:, None] - coords[None, :]


def strided_mask_and_steps(height: int, width: int, stride_h: int, stride_w: int) -> tuple[Tensor, Tensor]:
    """Same row modulo stride_h and column modulo stride_w; the offset in strides (exact inside a group)."""
    coords = coords_of(height, width)
    stride = torch.tensor([stride_h, stride_w])
    allowed = ((coords[:, None] % stride) == (coords[None, :] % stride)).all(-1)
    return allowed, torch.div(coords[:, None] - coords[None, :], stride, rounding_mode="floor")


def flat(x: Tensor) -> Tensor:
    return rearrange(x, "b h w c -> b (h w) c")


# ----------------------------------------------------------------------------------------------
# Partitions.


def test_grid_partition_takes_tokens_spread_over_the_map():
    x = torch.arange(16.0).view(1, 4, 4, 1)  # token value = row * 4 + col
    groups = grid_partition(x, 2)  # 2 x 2 grid, tokens 2 apart: 4 groups of 4
    assert groups.shape == (4, 4, 1)
    assert groups[0, :, 0].tolist() == [0, 2, 8, 10]  # offset (0, 0)
    assert groups[1, :, 0].tolist() == [1, 3, 9, 11]  # offset (0, 1): groups go row by row by offset
    assert groups[2, :, 0].tolist() == [4, 6, 12, 14]
    x = torch.randn(2, 8, 12, 3)
    assert torch.equal(grid_reverse(grid_partition(x, 4), 4, 8, 12), x)


def test_interval_partition_is_grid_partition_on_square_maps_and_round_trips():
    x = torch.randn(2, 8, 8, 3)
    assert torch.equal(interval_partition(x, 2), grid_partition(x, 4))
    x = torch.randn(2, 6, 9, 3)
    groups = interval_partition(x, 3)  # 9 groups of 2 x 3 tokens
    assert groups.shape == (2 * 9, 6, 3)
    assert torch.equal(groups[1], rearrange(x[0, 0::3, 1::3], "h w c -> (h w) c"))
    assert torch.equal(interval_reverse(groups, 3, 6, 9), x)


def test_group_offsets():
    offsets = group_offsets(2, 3)
    assert offsets.shape == (6, 6, 2)
    assert offsets[5, 0].tolist() == [1, 2] and offsets[0, 5].tolist() == [-1, -2] and offsets[4, 4].tolist() == [0, 0]


# ----------------------------------------------------------------------------------------------
# MaxViT: block and grid attention are masked global attention.


@pytest.mark.parametrize("height, width, size", [(8, 8, 4), (8, 12, 2), (6, 6, 3)])
def test_block_attention_is_global_attention_under_a_block_mask(height, width, size):
    layer = randomised(AxisAttentionLayer(16, 2, "block", size))
    x = torch.randn(2, height, width, 16)
    allowed, steps = block_mask_and_steps(height, width, size)
    expected = naive_attention(layer.attn, flat(x), allowed, table_bias(layer.attn, steps))
    torch.testing.assert_close(flat(layer.attend(x)), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("height, width, grid", [(8, 8, 4), (8, 12, 2), (6, 6, 3), (4, 4, 4)])
def test_grid_attention_is_global_attention_under_a_dilated_grid_mask(height, width, grid):
    layer = randomised(AxisAttentionLayer(16, 2, "grid", grid))
    x = torch.randn(2, height, width, 16)
    allowed, steps = strided_mask_and_steps(height, width, height // grid, width // grid)
    expected = naive_attention(layer.attn, flat(x), allowed, table_bias(layer.attn, steps))
    torch.testing.assert_close(flat(layer.attend(x)), expected, atol=TOLERANCE, rtol=0)
    assert allowed.sum(1).eq(grid * grid).all()  # each token sees exactly its grid x grid group


def naive_layer(layer: AxisAttentionLayer, x: Tensor, allowed: Tensor, steps: Tensor) -> Tensor:
    """One axis layer on (B, L, C) tokens, its attention computed globally under a mask."""
    x = x + naive_attention(layer.attn, layer.attn_norm(x), allowed, table_bias(layer.attn, steps))
    return x + layer.ffn(layer.ffn_norm(x))


def test_multi_axis_attention_is_block_masked_then_grid_masked_global_attention():
    height, width, block, grid = 8, 8, 4, 2
    maxvit = randomised(MaxViTBlock(16, 2, block, grid))
    images = torch.randn(2, 16, height, width)
    with torch.no_grad():
        ours = maxvit(images)
        x = flat(rearrange(maxvit.mbconv(images), "b c h w -> b h w c"))
        x = naive_layer(maxvit.block_attn, x, *block_mask_and_steps(height, width, block))
        x = naive_layer(maxvit.grid_attn, x, *strided_mask_and_steps(height, width, height // grid, width // grid))
        torch.testing.assert_close(ours, rearrange(x, "b (h w) c -> b c h w", h=height), atol=TOLERANCE, rtol=0)

        # the comparison can fail: the grid mask in place of the block mask (or no mask) gives something else
        swapped = naive_layer(maxvit.block_attn, flat(rearrange(maxvit.mbconv(images), "b c h w -> b h w c")),
                              *strided_mask_and_steps(height, width, block, block))
        local = flat(maxvit.block_attn(rearrange(maxvit.mbconv(images), "b c h w -> b h w c")))
        assert (swapped - local).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------
# CrossFormer: short- and long-distance attention are masked global attention.


def dynamic_bias(attn: DistanceAttention, steps: Tensor) -> Tensor:
    return rearrange(attn.position_bias(steps.float()), "i j h -> h i j")


@pytest.mark.parametrize("height, width, group", [(8, 8, 4), (8, 12, 2), (6, 6, 3)])
def test_short_distance_attention_is_global_attention_under_a_block_mask(height, width, group):
    attn = randomised(DistanceAttention(16, 2, "short", group))
    x = torch.randn(2, height, width, 16)
    allowed, steps = block_mask_and_steps(height, width, group)
    expected = naive_attention(attn, flat(x), allowed, dynamic_bias(attn, steps))
    torch.testing.assert_close(flat(attn(x)), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("height, width, interval", [(8, 8, 2), (8, 12, 4), (6, 9, 3), (4, 4, 1)])
def test_long_distance_attention_is_global_attention_under_an_interval_mask(height, width, interval):
    attn = randomised(DistanceAttention(16, 2, "long", interval))
    x = torch.randn(2, height, width, 16)
    allowed, steps = strided_mask_and_steps(height, width, interval, interval)
    expected = naive_attention(attn, flat(x), allowed, dynamic_bias(attn, steps))
    torch.testing.assert_close(flat(attn(x)), expected, atol=TOLERANCE, rtol=0)
    # the comparison can fail: the bias must be measured in group steps, not in tokens
    if interval > 1:
        in_tokens = naive_attention(attn, flat(x), allowed, dynamic_bias(attn, steps * interval))
        assert (in_tokens - flat(attn(x))).abs().max() > 1e-3


def test_short_and_long_distance_attention_differ():
    torch.manual_seed(0)
    short, long = DistanceAttention(16, 2, "short", 2), DistanceAttention(16, 2, "long", 2)
    long.load_state_dict(short.state_dict())
    x = torch.randn(1, 4, 4, 16)
    assert (short(x) - long(x)).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------
# CrossFormer's cross-scale embedding.


def test_channel_split_halves_and_repeats_the_last():
    assert channel_split(64, 4) == (32, 16, 8, 8)
    assert channel_split(48, 2) == (24, 24)
    assert channel_split(12, 1) == (12,)
    with pytest.raises(ValueError, match="dim=20 is not divisible by 2\\*\\*\\(parts - 1\\)=8"):
        channel_split(20, 4)


@pytest.mark.parametrize("kernels, stride, size", [((4, 8, 16), 4, 32), ((2, 4), 2, 12), ((1, 3, 5), 1, 7)])
def test_cross_scale_embedding_is_separate_convolutions_concatenated(kernels, stride, size):
    embed = randomised(CrossScaleEmbedding(3, 16, kernels, stride))
    images = torch.randn(2, 3, size, size)
    tokens, resolution = embed(images)
    assert resolution == (size // stride, size // stride)
    parts = []
    for conv, kernel in zip(embed.convs, kernels):
        # pad the image by (kernel - stride) / 2 zeros on every side: each kernel is centred where the others are
        padded = F.pad(images, [(kernel - stride) // 2] * 4)
        parts.append(F.conv2d(padded, conv.weight, conv.bias, stride=stride))
    expected = F.layer_norm(rearrange(torch.cat(parts, dim=1), "b c h w -> b (h w) c"), (16,),
                            embed.norm.weight, embed.norm.bias, embed.norm.eps)
    torch.testing.assert_close(tokens, expected, atol=TOLERANCE, rtol=0)
    assert [conv.out_channels for conv in embed.convs] == list(channel_split(16, len(kernels)))


def test_cross_scale_embedding_sees_farther_with_larger_kernels():
    """A pixel far from a token's patch changes only the channels of the large kernels."""
    embed = randomised(CrossScaleEmbedding(1, 8, (4, 8, 16), 4))
    images = torch.zeros(1, 1, 32, 32)
    moved = images.clone()
    moved[0, 0, 0, 9] = 1.0  # 6 pixels right of the patch of token (0, 0), which covers columns 0..3
    grids = [torch.cat([conv(x) for conv in embed.convs], dim=1)[0, :, 0, 0] for x in (images, moved)]
    changed = (grids[0] - grids[1]).abs() > 0
    assert changed.tolist() == [False] * 4 + [False] * 2 + [True] * 2  # kernels 4 and 8 miss it, 16 sees it


# ----------------------------------------------------------------------------------------------
# CrossViT: the class token attends over [itself; the other branch's patches].


def naive_fusion(fusion: ClassTokenCrossAttention, cls: Tensor, patches: Tensor, *, own_token: bool = True) -> Tensor:
    """Written out: f, layer norm, one query per head over the keys, softmax, output projection, residual, g."""
    ln = lambda norm, x: F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps)  # noqa: E731
    f_norm, f_linear = fusion.to_other
    g_norm, g_linear = fusion.from_other
    query = f_linear(ln(f_norm, cls))  # (B, 1, D)
    keys = ln(fusion.norm, torch.cat([query, patches], dim=1) if own_token else patches)  # (B, T, D)
    attn, heads = fusion.attn, fusion.attn.heads
    head_dim = query.shape[-1] // heads
    out = []
    for h in range(heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        q = (ln(fusion.norm, query) @ attn.to_q.weight.T + attn.to_q.bias)[..., part]  # (B, 1, d)
        k = (keys @ attn.to_k.weight.T + attn.to_k.bias)[..., part]  # (B, T, d)
        v = (keys @ attn.to_v.weight.T + attn.to_v.bias)[..., part]
        weights = torch.softmax(q @ k.transpose(1, 2) / head_dim**0.5, dim=-1)  # (B, 1, T)
        out.append(weights @ v)
    attended = torch.cat(out, dim=-1) @ attn.to_out.weight.T + attn.to_out.bias
    return g_linear(ln(g_norm, query + attended))


def test_class_token_cross_attention_matches_the_written_out_computation():
    fusion = randomised(ClassTokenCrossAttention(12, 16, 4))
    cls, patches = torch.randn(3, 1, 12), torch.randn(3, 9, 16)
    with torch.no_grad():
        ours, weights = fusion(cls, patches, return_weights=True)
        torch.testing.assert_close(ours, naive_fusion(fusion, cls, patches), atol=TOLERANCE, rtol=0)
        assert weights.shape == (3, 4, 1, 10)  # the class token itself, then 9 patches
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 1))
        # the comparison can fail: without its own token among the keys, the result differs
        assert (naive_fusion(fusion, cls, patches, own_token=False) - ours).abs().max() > 1e-3


def small_crossvit(**options) -> CrossViT:
    defaults = dict(image_size=16, channels=3, small_patch=2, large_patch=8, small_dim=8, large_dim=12,
                    small_depth=1, large_depth=2, small_heads=2, large_heads=3, fusions=2, num_classes=5)
    return randomised(CrossViT(CrossViTConfig(**{**defaults, **options})))


def test_crossvit_is_its_branches_fused_by_the_written_out_cross_attention():
    """The whole two-branch forward, rebuilt from the packaged ViT branches' pieces and `naive_fusion`: both
    fusions read the other branch's tokens from before the fusion."""
    model = small_crossvit()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens = {}
        for name, branch in model.branches.items():
            x = branch.patch_embed(images)
            tokens[name] = torch.cat([branch.cls_token.expand(2, 1, -1), x], dim=1) + branch.pos_embedding
        for step in range(2):
            for name, depth in (("small", 1), ("large", 2)):
                for block in model.branches[name].blocks[step * depth:(step + 1) * depth]:
                    tokens[name] = block(tokens[name])
            cls = {name: naive_fusion(model.fusions[step][name], tokens[name][:, :1], tokens[other][:, 1:])
                   for name, other in (("small", "large"), ("large", "small"))}
            tokens = {name: torch.cat([cls[name], tokens[name][:, 1:]], dim=1) for name in tokens}
        logits = [model.branches[name].head(model.branches[name].final_norm(x)[:, 0]) for name, x in tokens.items()]
        torch.testing.assert_close(model(images), (logits[0] + logits[1]) / 2, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("branch", ["small", "large"])
def test_one_branch_is_exactly_a_vit(branch):
    model = small_crossvit(branches=(branch,))
    assert model.fusions is None and list(model.branches) == [branch]
    vit = ViT(model.config.branch_config(branch)).eval()
    vit.load_state_dict(model.branches[branch].state_dict())
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(images), vit(images), atol=TOLERANCE, rtol=0)


def test_each_head_learns_from_the_other_branch():
    """The fusion carries gradients across: a loss on the small branch's head reaches the large branch's patches."""
    model = small_crossvit().train()
    tokens = model.features(torch.randn(2, 3, 16, 16))
    model.branches["small"].head(tokens["small"][:, 0]).sum().backward()
    assert model.branches["large"].patch_embed.proj.weight.grad.abs().sum() > 0
    single = small_crossvit(branches=("small", "large"), fusions=1)
    single.fusions = None  # with the fusion removed, nothing flows across
    tokens = single.features(torch.randn(2, 3, 16, 16))
    single.branches["small"].head(tokens["small"][:, 0]).sum().backward()
    assert single.branches["large"].patch_embed.proj.weight.grad is None


def test_fusion_weights_are_returned_per_fusion():
    model = small_crossvit()
    _, weights = model.features(torch.randn(2, 3, 16, 16), return_weights=True)
    assert len(weights) == 2
    assert weights[0]["small"].shape == (2, 3, 1, 1 + 4)  # small's class token over 2 x 2 large patches
    assert weights[0]["large"].shape == (2, 2, 1, 1 + 64)  # large's class token over 8 x 8 small patches


# ----------------------------------------------------------------------------------------------
# Shapes, determinism, and the refusals.


@pytest.mark.parametrize("size", [16, 32, 48])
def test_crossvit_shapes(size):
    for branches in (("small", "large"), ("small",), ("large",)):
        model = CrossViT(CrossViTConfig(image_size=size, small_patch=4, large_patch=8 if size != 48 else 16,
                                        num_classes=3, branches=branches))
        assert model(torch.randn(2, 3, size, size)).shape == (2, 3)
    features = CrossViT(CrossViTConfig(image_size=size, small_patch=4, large_patch=16 if size == 48 else 8))
    assert features(torch.randn(1, 3, size, size)).shape == (1, 32 + 64)


@pytest.mark.parametrize("height, width", [(32, 32), (64, 64), (32, 64), (64, 32)])
def test_crossformer_and_maxvit_shapes(height, width):
    images = torch.randn(2, 3, height, width)
    crossformer = CrossFormer(CrossFormerConfig(num_classes=4))
    assert crossformer(images).shape == (2, 4)
    assert crossformer.forward_features(images).shape == (2, height // 8 * width // 8, 64)
    maxvit = MaxViT(MaxViTConfig(num_classes=4)).eval()
    assert maxvit(images).shape == (2, 4)
    assert maxvit.forward_features(images).shape == (2, 64, height // 4, width // 4)
    three = CrossFormer(CrossFormerConfig(image_size=64, dims=(16, 32, 64), depths=(2, 2, 2), heads=(1, 2, 4),
                                          group=2, intervals=(4, 2, 1), embed_kernels=(4, 8, 16, 32)))
    assert three(torch.randn(1, 3, 64, 64)).shape == (1, 64)


@pytest.mark.parametrize("make", [
    lambda: CrossViT(CrossViTConfig(num_classes=3)),
    lambda: CrossFormer(CrossFormerConfig(num_classes=3)),
    lambda: MaxViT(MaxViTConfig(num_classes=3)),
], ids=["crossvit", "crossformer", "maxvit"])
def test_determinism(make):
    torch.manual_seed(7)
    first = make().eval()
    torch.manual_seed(7)
    second = make().eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(first(images), second(images))
        assert torch.equal(first(images), first(images))
    torch.manual_seed(8)
    with torch.no_grad():
        assert not torch.equal(make().eval()(images), first(images))


@pytest.mark.parametrize("make, options, message", [
    (CrossViTConfig, dict(image_size=30), "image_size=30 is not divisible by small_patch=4"),
    (CrossViTConfig, dict(large_dim=30), "large_dim=30 is not divisible by large_heads=4"),
    (CrossViTConfig, dict(branches=("medium",)), "branches=\\('medium',\\); expected a non-empty selection"),
    (CrossViTConfig, dict(branches=()), "branches=\\(\\)"),
    (CrossViTConfig, dict(fusions=0), "fusions=0 must be a positive int"),
    (CrossFormerConfig, dict(dims=(30, 64), heads=(4, 4)), "dims\\[0\\]=30 is not divisible by heads\\[0\\]=4"),
    (CrossFormerConfig, dict(dims=(34, 64)), "stage 0: dims\\[0\\]=34 is not divisible by 2\\*\\*\\(kernels - 1\\)=4"),
    (CrossFormerConfig, dict(group=3), "stage 0: a 8x8 token map is not divisible by group=3"),
    (CrossFormerConfig, dict(intervals=(3, 1)), "not divisible by intervals\\[0\\]=3"),
    (CrossFormerConfig, dict(image_size=36), "a 36x36 image is not divisible by embed_stride"),
    (CrossFormerConfig, dict(embed_kernels=(4, 7)), "kernel 7 in embed_kernels=\\(4, 7\\)"),
    (CrossFormerConfig, dict(depths=(2,)), "same number of stages"),
    (MaxViTConfig, dict(grid=3), "stage 0: a 16x16 feature map is not divisible by grid=3"),
    (MaxViTConfig, dict(block=16), "stage 1: a 8x8 feature map is not divisible by block=16"),
    (MaxViTConfig, dict(heads=(3, 4)), "dims\\[0\\]=32 is not divisible by heads\\[0\\]=3"),
    (MaxViTConfig, dict(mlp_ratio=0), "mlp_ratio=0 must be positive"),
    (MaxViTConfig, dict(num_classes=-1), "num_classes=-1"),
])
def test_bad_configs_are_refused(make, options, message):
    with pytest.raises(ValueError, match=message):
        model = {CrossViTConfig: CrossViT, CrossFormerConfig: CrossFormer, MaxViTConfig: MaxViT}[make]
        model(make(**options))


def refuse_work(model: torch.nn.Module) -> torch.nn.Module:
    """Every convolution raises if called: a refusal must come before any work is done."""
    def no_work(*args, **kwargs):
        raise AssertionError("work was done before the input was refused")

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.forward = no_work
    return model


@pytest.mark.parametrize("make, shape, message", [
    (lambda: CrossViT(CrossViTConfig()), (1, 1, 32, 32), "channels=3"),
    (lambda: CrossViT(CrossViTConfig()), (1, 3, 24, 24), "images are 24x24; expected image_size=32"),
    (lambda: CrossViT(CrossViTConfig()), (3, 32, 32), "expected \\(batch, channels=3"),
    (lambda: CrossFormer(CrossFormerConfig()), (1, 3, 36, 32), "a 36x32 image is not divisible by embed_stride"),
    (lambda: CrossFormer(CrossFormerConfig(group=8, image_size=64)), (1, 3, 32, 32), "stage 1: a 4x4 token map"),
    (lambda: CrossFormer(CrossFormerConfig()), (1, 4, 32, 32), "channels=3"),
    (lambda: MaxViT(MaxViTConfig(grid=8, image_size=64)), (1, 3, 48, 48), "stage 1: a 12x12 feature map is not divisible by grid=8"),
    (lambda: MaxViT(MaxViTConfig()), (1, 3, 34, 34), "a 34x34 image is not divisible by stem_stride"),
])
def test_bad_images_are_refused_before_any_work(make, shape, message):
    model = refuse_work(make())
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))


def test_bad_module_arguments_are_refused():
    with pytest.raises(ValueError, match="height=6 and width=8 must be multiples of grid=4"):
        grid_partition(torch.randn(1, 6, 8, 2), 4)
    with pytest.raises(ValueError, match="must be multiples of interval=3"):
        interval_partition(torch.randn(1, 6, 8, 2), 3)
    with pytest.raises(ValueError, match="dim=10 is not divisible by heads=3"):
        DistanceAttention(10, 3, "short", 2)
    with pytest.raises(ValueError, match="kind='medium'"):
        DistanceAttention(8, 2, "medium", 2)
    with pytest.raises(ValueError, match="a 6x6 feature map is not divisible by the long-distance interval size=4"):
        DistanceAttention(8, 2, "long", 4)(torch.randn(1, 6, 6, 8))
    with pytest.raises(ValueError, match="dim=10 is not divisible by heads=4"):
        MaxViTBlock(10, 4, 2, 2)
    with pytest.raises(ValueError, match="a 6x6 feature map is not divisible by the grid size=4"):
        refuse_work(MaxViTBlock(8, 2, 2, 4))(torch.randn(1, 8, 6, 6))
    with pytest.raises(ValueError, match="kernels=\\(8, 4\\) must increase strictly"):
        CrossScaleEmbedding(3, 8, (8, 4), 4)
    with pytest.raises(ValueError, match="kernel 2 in kernels=\\(2, 4\\): each kernel must be at least stride=4"):
        CrossScaleEmbedding(3, 8, (2, 4), 4)
    with pytest.raises(ValueError, match="cls has shape"):
        ClassTokenCrossAttention(8, 8, 2)(torch.randn(1, 2, 8), torch.randn(1, 4, 8))
