"""The checkers of notebook 05_vit: right answers pass, plausible wrong ones fail with a message naming the mistake.

Each correct answer is written here the way a learner would, independently of the references in
`course_lib.checks.vit`; each wrong one is a mistake a learner is likely to make.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from checking import fails, passes

from course_lib.checks import vit as check
from course_lib.models import ViT, ViTConfig
from course_lib.models.vit import PatchEmbedding

# --- patchify --------------------------------------------------------------------------------------


def patchify(images, patch):
    batch, channels, height, width = images.shape
    blocks = F.unfold(images, kernel_size=patch, stride=patch)  # (B, C*p*p, N), channel-major
    return blocks.transpose(1, 2)


def test_patchify_right(capsys):
    passes(check.patchify, patchify, capsys)


def test_patchify_times_the_conv_weight_is_the_patch_embedding():
    torch.manual_seed(0)
    embed = PatchEmbedding(4, 3, 16)
    images = torch.randn(2, 3, 8, 12)
    tokens = patchify(images, 4) @ embed.proj.weight.flatten(1).T + embed.proj.bias
    torch.testing.assert_close(tokens, embed(images))


@pytest.mark.parametrize("pattern, explanation", [
    ("b c (h p) (w q) -> b (h w) (p q c)", "(row, column, channel)"),
    ("b c (h p) (w q) -> b (w h) (c p q)", "column by column; number them row by row"),
    ("b c (p h) (q w) -> b (h w) (c p q)", "strided samples"),
], ids=["channels-last", "column-major", "strided"])
def test_patchify_mistakes_are_named(pattern, explanation, capsys):
    from einops import rearrange

    message = fails(check.patchify, lambda images, patch: rearrange(images, pattern, p=patch, q=patch), capsys,
                    r"output\[.*\] is .* \(on images")
    assert explanation in message


def test_patchify_wrong_shape(capsys):
    fails(check.patchify, lambda images, patch: images.flatten(2), capsys, r"has shape \(1, 1, 16\), expected \(1, 4, 4\)")


def test_patchify_not_implemented(capsys):
    def exercise(images, patch):
        raise NotImplementedError

    fails(check.patchify, exercise, capsys, "not implemented yet")


# --- resize_positions ------------------------------------------------------------------------------


def resize_positions(table, grid, new_grid, prefix=1):
    dim = table.shape[1]
    patches = table[prefix:].reshape(grid[0], grid[1], dim).permute(2, 0, 1)[None]  # (1, dim, h, w)
    patches = F.interpolate(patches, size=new_grid, mode="bicubic")
    return torch.cat([table[:prefix], patches[0].permute(1, 2, 0).reshape(-1, dim)])


def test_resize_positions_right(capsys):
    passes(check.resize_positions, resize_positions, capsys)


def test_resize_positions_is_what_the_vit_uses():
    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=16, patch_size=4, channels=1, dim=8, depth=1, heads=2, num_classes=3))
    with torch.no_grad():
        torch.testing.assert_close(model.interpolate_positions((6, 5)),
                                   resize_positions(model.pos_embedding, (4, 4), (6, 5)))


def test_resize_positions_flat_reshape(capsys):
    def flat(table, grid, new_grid, prefix=1):
        patches = table[prefix:].reshape(1, table.shape[1], *grid)
        patches = F.interpolate(patches, size=new_grid, mode="bicubic")
        return torch.cat([table[:prefix], patches.reshape(table.shape[1], -1).T])

    message = fails(check.resize_positions, flat, capsys, r"output\[.*\] is .* \(on table")
    assert "without moving the feature axis" in message


def test_resize_positions_bilinear(capsys):
    def bilinear(table, grid, new_grid, prefix=1):
        dim = table.shape[1]
        patches = table[prefix:].reshape(*grid, dim).permute(2, 0, 1)[None]
        patches = F.interpolate(patches, size=new_grid, mode="bilinear")
        return torch.cat([table[:prefix], patches[0].permute(1, 2, 0).reshape(-1, dim)])

    message = fails(check.resize_positions, bilinear, capsys, r"\(on table")
    assert "bicubic" in message


def test_resize_positions_drops_the_class_token(capsys):
    message = fails(check.resize_positions, lambda t, g, n, prefix=1: resize_positions(t, g, n, prefix)[prefix:],
                    capsys, r"has shape \(16, 3\), expected \(17, 3\)")
    assert "class token's row is dropped" in message


def test_resize_positions_not_implemented(capsys):
    def exercise(table, grid, new_grid, prefix=1):
        raise NotImplementedError

    fails(check.resize_positions, exercise, capsys, "not implemented yet")


# --- pool ------------------------------------------------------------------------------------------


def test_pool_tokens_right(capsys):
    passes(check.pool_tokens, lambda tokens, has_cls: tokens.select(1, 0) if has_cls else tokens.sum(1) / tokens.shape[1], capsys)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda tokens, has_cls: tokens.mean(dim=1), "also with a class token"),
        (lambda tokens, has_cls: tokens[:, 1:].mean(dim=1) if has_cls else tokens.mean(dim=1), "averaged the patch"),
        (lambda tokens, has_cls: tokens[:, 0] if has_cls else tokens.mean(dim=2), "shape"),
    ],
)
def test_pool_tokens_wrong(capsys, wrong, message):
    fails(check.pool_tokens, wrong, capsys, message)
