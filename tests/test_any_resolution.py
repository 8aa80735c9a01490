"""A ViT at any resolution: the PI-resize keeps every token of an upsampled patch, the flexible ViT is the packaged
ViT at its base patch size, and a packed batch gives each image what running it alone gives.

Tolerances: 1e-10 in float64 for the resize algebra, 1e-5 in float32 for model outputs.
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from course_lib.models.any_resolution import (
    FlexiPatchEmbedding,
    FlexiViT,
    RandomResolution,
    pack_images,
    pack_sequences,
    packed_forward,
    packing_mask,
    pi_resize,
    pool_packed,
    resize_images,
    resize_matrix,
)
from course_lib.models.vit import PatchEmbedding, ViT, ViTConfig

TOLERANCE = 1e-5


def tiny(**options) -> ViTConfig:
    return ViTConfig(**{"image_size": 16, "patch_size": 4, "channels": 2, "dim": 32, "depth": 2, "heads": 4,
                        "num_classes": 5, **options})


def model(seed: int = 0, **options) -> ViT:
    torch.manual_seed(seed)
    vit = ViT(tiny(**options)).eval()
    with torch.no_grad():  # weights of a trained scale: at the init's std 0.02 every image gets almost the same logits
        for name, parameter in vit.named_parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0, parameter[0].numel() ** -0.5)
            elif name in ("pos_embedding", "cls_token"):
                parameter.normal_(0, 1)
    return vit


def images(batch: int, height: int, width: int | None = None, channels: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, height, height if width is None else width, generator=generator)


def upsample_patchwise(images: torch.Tensor, patch: int, new: int) -> torch.Tensor:
    """Every patch resized on its own (`resize_images`), the patches laid back on the same grid."""
    tiles = rearrange(images, "b c (h p) (w q) -> b h w c p q", p=patch, q=patch)
    return rearrange(resize_images(tiles, new), "b h w c p q -> b c (h p) (w q)")


# --- resize_images and resize_matrix ---------------------------------------------------------------


@pytest.mark.parametrize("old, new", [(2, 4), (4, 6), (3, 8), (4, 4), (6, 3), (8, 2), (5, 7)])
def test_resize_matrix_is_the_resize(old, new):
    x = torch.randn(3, old, old, dtype=torch.float64, generator=torch.Generator().manual_seed(old * 10 + new))
    expected = rearrange(resize_images(x, new), "n h w -> n (h w)")
    actual = rearrange(x, "n h w -> n (h w)") @ resize_matrix(old, new).T
    torch.testing.assert_close(actual, expected, atol=1e-12, rtol=0)
    assert resize_matrix(old, new).shape == (new * new, old * old)


def test_resize_images_keeps_leading_axes_and_the_same_size():
    x = images(2, 8, 12, channels=3)
    assert resize_images(x, (16, 6)).shape == (2, 3, 16, 6)
    assert resize_images(x, (8, 12)) is x


def test_resize_images_upsampling_is_bilinear():
    x = images(2, 8)
    expected = torch.nn.functional.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize_images(x, 20), expected, atol=1e-6, rtol=0)


# --- pi_resize -------------------------------------------------------------------------------------


@pytest.mark.parametrize("old, new", [(2, 3), (2, 4), (4, 6), (4, 8), (3, 7), (4, 12)])
def test_pi_resize_keeps_the_inner_product_with_an_upsampled_patch(old, new):
    """<resize(x), ŵ> = <x, w> for every patch x: the defining property of the PI-resize."""
    generator = torch.Generator().manual_seed(old * 100 + new)
    weight = torch.randn(6, 3, old, old, dtype=torch.float64, generator=generator)  # (dim, C, p, p)
    patches = torch.randn(10, 3, old, old, dtype=torch.float64, generator=generator)
    before = torch.einsum("ncpq,dcpq->nd", patches, weight)
    after = torch.einsum("ncpq,dcpq->nd", resize_images(patches, new), pi_resize(weight, new))
    torch.testing.assert_close(after, before, atol=1e-10, rtol=0)
    # not a vacuous test: resizing the kernel as an image breaks it (tokens grow about (new / old)² times)
    naive = torch.einsum("ncpq,dcpq->nd", resize_images(patches, new), resize_images(weight, new))
    assert (naive - before).abs().max() > 0.1


@pytest.mark.parametrize("size", [1, 3, 4, 8])
def test_pi_resize_to_the_same_size_is_the_identity(size):
    weight = torch.randn(4, 2, size, size)
    assert torch.equal(pi_resize(weight, size), weight)


@pytest.mark.parametrize("old, new", [(4, 2), (6, 4), (8, 3)])
def test_pi_resize_down_is_the_least_squares_solution(old, new):
    """Shrinking cannot keep every inner product; ŵ then solves min ‖Bᵀŵ - w‖: the normal equations hold."""
    weight = torch.randn(5, old, old, dtype=torch.float64, generator=torch.Generator().manual_seed(old + new))
    resize = resize_matrix(old, new)  # B: (new², old²)
    w = rearrange(weight, "d p q -> (p q) d")
    w_new = rearrange(pi_resize(weight, new), "d p q -> (p q) d")
    torch.testing.assert_close(resize @ (resize.T @ w_new - w), torch.zeros_like(w_new), atol=1e-10, rtol=0)


def test_pi_resize_is_differentiable_and_keeps_dtype_and_device():
    weight = torch.randn(3, 1, 4, 4, requires_grad=True)
    resized = pi_resize(weight, 6)
    assert resized.dtype == torch.float32 and resized.device == weight.device
    resized.sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


@pytest.mark.parametrize("weight, new, message", [
    (torch.zeros(3, 4, 5), 4, r"weight has shape \(3, 4, 5\); expected \(\.\.\., p, p\)"),
    (torch.zeros(3, 4, 4), 0, "new=0 must be a positive int"),
    (torch.zeros(3, 4, 4), 2.5, "new=2.5 must be a positive int"),
])
def test_pi_resize_rejects_bad_arguments(weight, new, message):
    with pytest.raises(ValueError, match=message):
        pi_resize(weight, new)


# --- FlexiPatchEmbedding and FlexiViT -------------------------------------------------------------


def test_flexi_patch_embedding_at_the_base_size_is_the_patch_embedding():
    torch.manual_seed(0)
    fixed = PatchEmbedding(4, 2, 16)
    flexi = FlexiPatchEmbedding(4, 2, 16)
    flexi.load_state_dict(fixed.state_dict())
    x = images(3, 8, 12)
    torch.testing.assert_close(flexi(x), fixed(x), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("new", [6, 8, 12])
def test_flexi_patch_embedding_gives_the_same_tokens_for_patchwise_upsampled_images(new):
    torch.manual_seed(1)
    embed = FlexiPatchEmbedding(4, 2, 16)
    x = images(2, 8, 16)
    torch.testing.assert_close(embed(upsample_patchwise(x, 4, new), new), embed(x), atol=TOLERANCE, rtol=0)


def test_flexi_vit_starts_as_the_vit_and_wraps_trained_weights():
    torch.manual_seed(3)
    vit = ViT(tiny()).eval()
    torch.manual_seed(3)
    fresh = FlexiViT(tiny()).eval()
    x = images(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), vit(x), atol=TOLERANCE, rtol=0)  # same initialisation
        torch.testing.assert_close(FlexiViT.from_vit(vit)(x), vit(x), atol=TOLERANCE, rtol=0)
    assert FlexiViT.from_vit(vit).state_dict().keys() == vit.state_dict().keys()


@pytest.mark.parametrize("options", [dict(), dict(pool="mean"), dict(positional="sincos2d", qk_norm=True)])
@pytest.mark.parametrize("size", [8, 12, 24, 32])
def test_flexi_vit_without_keep_grid_is_the_vit_with_resized_positions(options, size):
    vit = model(**options)
    flexi = FlexiViT.from_vit(vit, keep_grid=False).eval()
    x = images(2, size)
    with torch.no_grad():
        torch.testing.assert_close(flexi(x), vit(x, interpolate=True), atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(FlexiViT.from_vit(vit)(x, patch_size=4), vit(x, interpolate=True),
                                   atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("new", [6, 8])
def test_flexi_vit_keeping_the_grid_classifies_a_patchwise_upsampled_image_as_the_original(new):
    """Same grid, same tokens: the positions need no resize, and the logits are those at the base size."""
    vit = model(2)
    flexi = FlexiViT.from_vit(vit).eval()
    x = images(3, 16)
    big = upsample_patchwise(x, 4, new)
    with torch.no_grad():
        torch.testing.assert_close(flexi(big), vit(x), atol=TOLERANCE, rtol=0)
        assert (vit(big, interpolate=True) - vit(x)).abs().max() > 1e-2  # the fixed patch size changes them


def test_flexi_vit_trains_its_kernel_at_another_patch_size():
    flexi = FlexiViT(tiny()).train()
    flexi(images(2, 24)).sum().backward()  # patch 6
    assert flexi.patch_embed.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("size, patch, message", [
    ((16, 24), None, r"images are 16x24: patch_size=None keeps the 4x4 grid"),
    ((18, 18), None, r"images are 18x18: patch_size=None keeps the 4x4 grid"),
    ((16, 16), 3, "images are 16x16, not divisible by patch_size=3"),
    ((16, 16), 0, "patch_size=0 must be a positive int"),
])
def test_flexi_vit_rejects_images_it_cannot_cut(size, patch, message):
    flexi = FlexiViT(tiny())
    with pytest.raises(ValueError, match=message):
        flexi(images(1, *size), patch_size=patch)


def test_flexi_vit_rejects_wrong_channels_and_keep_grid():
    with pytest.raises(ValueError, match=r"images has shape \(1, 3, 16, 16\); expected \(batch, 2, height, width\)"):
        FlexiViT(tiny())(images(1, 16, channels=3))
    with pytest.raises(ValueError, match="keep_grid='yes' must be True or False"):
        FlexiViT(tiny(), keep_grid="yes")
    with pytest.raises(ValueError, match="vit is a Linear; expected a course_lib ViT"):
        FlexiViT.from_vit(torch.nn.Linear(2, 2))


# --- RandomResolution ------------------------------------------------------------------------------


def test_random_resolution_draws_each_size_from_the_generator():
    augment = RandomResolution((8, 12, 24))
    x = images(4, 16)
    seen = [augment(x, torch.Generator().manual_seed(seed)).shape[-1] for seed in range(30)]
    assert set(seen) == {8, 12, 24}
    again = [augment(x, torch.Generator().manual_seed(seed)).shape[-1] for seed in range(30)]
    assert seen == again  # the generator alone decides
    out = augment(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, resize_images(x, out.shape[-1]))


def test_random_resolution_works_with_fit():
    from course_lib.train.loop import fit

    x, y = images(16, 16), torch.arange(16) % 5
    fit(FlexiViT(tiny(), keep_grid=False), x, y, steps=2, lr=1e-3, batch=4, augment=RandomResolution((12, 20)))


@pytest.mark.parametrize("sizes, message", [((), r"sizes=\(\) must name at least one"),
                                            ((8, 0), r"sizes\[\.\.\.\]=0 must be a positive int")])
def test_random_resolution_rejects_bad_sizes(sizes, message):
    with pytest.raises(ValueError, match=message):
        RandomResolution(sizes)


# --- pack_sequences --------------------------------------------------------------------------------


def first_fit(lengths, max_len):
    """The same greedy rule written as a scan over rows, for comparison."""
    rows, used = [], []
    for i, n in enumerate(lengths):
        for r in range(len(rows)):
            if used[r] + n <= max_len:
                rows[r].append(i)
                used[r] += n
                break
        else:
            rows.append([i])
            used.append(n)
    return rows


@pytest.mark.parametrize("seed", range(5))
def test_pack_sequences_is_first_fit(seed):
    generator = torch.Generator().manual_seed(seed)
    max_len = 64
    lengths = torch.randint(1, max_len + 1, (40,), generator=generator).tolist()
    rows = pack_sequences(lengths, max_len)
    assert rows == first_fit(lengths, max_len)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= max_len for row in rows)


def test_pack_sequences_fills_a_row_exactly_and_goes_back_to_earlier_rows():
    assert pack_sequences([3, 5, 4, 1, 3], 8) == [[0, 1], [2, 3, 4]]
    assert pack_sequences([6, 5, 2, 3], 8) == [[0, 2], [1, 3]]  # the 2 goes back to the first row


@pytest.mark.parametrize("lengths, max_len, message", [
    ([3, 9], 8, r"lengths\[1\]=9 must be an int in 1..max_len=8"),
    ([0], 8, r"lengths\[0\]=0 must be an int in 1..max_len=8"),
    ([2], 0, "max_len=0 must be a positive int"),
])
def test_pack_sequences_rejects_bad_arguments(lengths, max_len, message):
    with pytest.raises(ValueError, match=message):
        pack_sequences(lengths, max_len)


# --- pack_images, the mask, pooling, packed_forward -------------------------------------------------

SIZES = [(8, 8), (16, 16), (12, 20), (32, 24), (24, 16), (4, 4), (20, 12), (16, 8)]


def image_list(sizes=SIZES, channels: int = 2, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(channels, h, w, generator=generator) for h, w in sizes]


def test_pack_images_lays_out_prefix_patches_and_padding():
    x = image_list([(8, 8), (4, 8), (8, 4)])
    batch = pack_images(x, patch_size=4, max_len=8, prefix=1)  # 5, 3, 3 tokens -> rows [0, 1] and [2]
    assert batch.segments.tolist() == [[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 0, 0, 0, 0, 0]]
    assert batch.image_ids.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1], [2, 2, 2, -1, -1, -1, -1, -1]]
    assert batch.is_prefix.tolist()[0] == [True, False, False, False, False, True, False, False]
    assert batch.spans == [(0, 0, 5), (0, 5, 3), (1, 0, 3)]
    assert batch.grids == [(2, 2), (1, 2), (2, 1)] and batch.padding == 5 and batch.num_images == 3
    torch.testing.assert_close(batch.patches[0, 1:5], rearrange(x[0], "c (h p) (w q) -> (h w) (c p q)", p=4, q=4))
    assert not batch.patches[0, 0].any() and not batch.patches[1, 3:].any()


@pytest.mark.parametrize("prefix", [0, 1])
def test_packing_mask_blocks_every_cross_image_pair(prefix):
    """Naive check, slot by slot: allowed iff both slots hold tokens of the same image."""
    batch = pack_images(image_list(), patch_size=4, max_len=64, prefix=prefix)
    mask = batch.mask
    assert mask.shape == (batch.segments.shape[0], 1, 64, 64) and mask.dtype == torch.bool
    ids = batch.image_ids.tolist()
    for b, row in enumerate(ids):
        for q, image_q in enumerate(row):
            for k, image_k in enumerate(row):
                assert bool(mask[b, 0, q, k]) == (image_q >= 0 and image_q == image_k), (b, q, k)


def test_packing_mask_rejects_bad_segments():
    with pytest.raises(ValueError, match=r"segments has shape \(4,\) and dtype torch.int64; expected \(B, L\) long"):
        packing_mask(torch.ones(4, dtype=torch.long))


def test_pool_packed_is_the_mean_of_each_images_tokens():
    batch = pack_images(image_list(), patch_size=4, max_len=64)
    tokens = torch.randn(*batch.segments.shape, 3)
    expected = torch.stack([tokens[row, start:start + n].mean(0) for row, start, n in batch.spans])
    torch.testing.assert_close(pool_packed(tokens, batch), expected)
    with_cls = pack_images(image_list(), patch_size=4, max_len=64, prefix=1)
    tokens = torch.randn(*with_cls.segments.shape, 3)
    torch.testing.assert_close(pool_packed(tokens, with_cls), torch.stack([tokens[r, s] for r, s, _ in with_cls.spans]))


@pytest.mark.parametrize("parallel", [False, True])
def test_a_block_with_a_full_mask_is_the_block_without_one(parallel):
    vit = model(parallel_blocks=parallel, qk_norm=parallel)
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit.blocks[0](x, torch.ones(7, 7, dtype=torch.bool)),
                                   vit.blocks[0](x), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("options", [dict(), dict(pool="mean"), dict(positional="sincos2d"),
                                     dict(qk_norm=True, parallel_blocks=True, pool="mean"), dict(num_classes=0)])
@pytest.mark.parametrize("max_len", [65, 100])
def test_packed_forward_equals_each_image_alone(options, max_len):
    vit = model(4, **options)
    x = image_list()
    batch = pack_images(x, patch_size=4, max_len=max_len, prefix=vit.prefix)
    assert batch.segments.shape[0] < len(x)  # images really share rows
    with torch.no_grad():
        packed = packed_forward(vit, batch)
        alone = torch.cat([vit(image[None], interpolate=True) for image in x])
    assert packed.shape == alone.shape and alone.abs().max() > 0.1
    torch.testing.assert_close(packed, alone, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("patch", [2, 4])
def test_packed_forward_of_a_flexi_vit_at_another_patch_size(patch):
    flexi = FlexiViT.from_vit(model(5, pool="mean")).eval()
    x = image_list([(8, 8), (16, 12), (12, 20), (4, 8)])
    batch = pack_images(x, patch_size=patch, max_len=64)
    with torch.no_grad():
        alone = torch.cat([flexi(image[None], patch_size=patch) for image in x])
        torch.testing.assert_close(packed_forward(flexi, batch), alone, atol=TOLERANCE, rtol=0)


def test_padding_never_affects_the_outputs():
    vit = model(6)
    batch = pack_images(image_list(), patch_size=4, max_len=80, prefix=1)
    assert batch.padding > 0
    with torch.no_grad():
        clean = packed_forward(vit, batch)
        batch.patches[batch.segments == 0] = 1e3 * torch.randn_like(batch.patches[batch.segments == 0])
        torch.testing.assert_close(packed_forward(vit, batch), clean, atol=TOLERANCE, rtol=0)


def test_packed_gradients_are_the_sum_of_the_per_image_gradients():
    vit = model(7, pool="mean")
    x = image_list()
    labels = torch.arange(len(x)) % 5
    loss = torch.nn.functional.cross_entropy(packed_forward(vit, pack_images(x, patch_size=4, max_len=64)), labels,
                                             reduction="sum")
    packed_grads = torch.autograd.grad(loss, list(vit.parameters()))
    loss = sum(torch.nn.functional.cross_entropy(vit(image[None], interpolate=True), label[None], reduction="sum")
               for image, label in zip(x, labels))
    for packed, alone in zip(packed_grads, torch.autograd.grad(loss, list(vit.parameters()))):
        torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("call, message", [
    (lambda: pack_images([torch.rand(2, 8, 8), torch.rand(2, 10, 8)], patch_size=4, max_len=64),
     r"images\[1\] is 10x8, not divisible by patch_size=4"),
    (lambda: pack_images([torch.rand(2, 8, 8), torch.rand(3, 8, 8)], patch_size=4, max_len=64),
     r"images\[1\] has shape \(3, 8, 8\); expected \(2, height, width\), the channels"),
    (lambda: pack_images([torch.rand(2, 40, 40)], patch_size=4, max_len=64),
     r"images\[0\] needs 100 tokens at patch_size=4, more than max_len=64"),
    (lambda: pack_images([], patch_size=4, max_len=64), "images is empty"),
    (lambda: pack_images([torch.rand(2, 8, 8)], patch_size=4, max_len=64, prefix=2), "prefix=2; expected 0"),
    (lambda: pack_images([torch.rand(2, 8, 8)], patch_size=0, max_len=64), "patch_size=0 must be a positive int"),
])
def test_pack_images_rejects_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_packed_forward_rejects_a_mismatched_batch():
    vit = model()  # class token: prefix 1
    with pytest.raises(ValueError, match=r"packed with prefix=0, but the model \(pool='cls'\) needs prefix=1"):
        packed_forward(vit, pack_images(image_list(), patch_size=4, max_len=64))
    with pytest.raises(ValueError, match="packed at patch_size=2, the model's is 4; wrap it as FlexiViT"):
        packed_forward(vit, pack_images(image_list(), patch_size=2, max_len=300, prefix=1))
    with pytest.raises(ValueError, match="patch vectors of 48 numbers; expected channels"):
        packed_forward(vit, pack_images(image_list(channels=3), patch_size=4, max_len=64, prefix=1))


def test_pack_images_names_a_first_image_without_channels():
    with pytest.raises(ValueError, match=r"images\[0\] has shape \(8, 8\); expected \(channels, height, width\)"):
        pack_images([torch.rand(8, 8)], patch_size=4, max_len=64)
