"""Checkers for the exercises of notebook 05_vit: cutting images into patch vectors, and resizing a grid of
learned position embeddings.

The references are the packaged model's own pieces (`course_lib.models.vit`): a patchify that passes
here, multiplied by the flattened weight of `PatchEmbedding`'s convolution, gives its tokens, and a
resize that passes here gives what `ViT.interpolate_positions` gives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.models.vit import ViT, ViTConfig

# --- patchify(images, patch) -----------------------------------------------------------------------


def reference_patchify(images: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, N, C*patch*patch): patches in row-major order, each flattened as (channel, row,
    column), the order in which `PatchEmbedding`'s Conv2d weight (dim, C, patch, patch) flattens."""
    return rearrange(images, "b c (h p) (w q) -> b (h w) (c p q)", p=patch, q=patch)


def _patchify_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(5)
    cases = []
    for batch, channels, height, width, patch in [(1, 1, 4, 4, 2), (2, 3, 8, 8, 4), (2, 1, 16, 16, 4),
                                                  (1, 3, 6, 12, 3), (3, 2, 8, 4, 2), (1, 3, 8, 8, 8)]:
        images = torch.randn(batch, channels, height, width, generator=generator)
        cases.append(Case(f"images {tuple(images.shape)}, patch={patch}", (images, patch)))
    return cases


patchify = FunctionChecker(
    "patchify",
    reference_patchify,
    _patchify_cases,
    mistakes=[
        (lambda images, patch: rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=patch, q=patch),
         "each patch is flattened as (row, column, channel); flatten it as (channel, row, column), the order of "
         "the Conv2d weight (dim, C, patch, patch), so that one matrix product reproduces the convolution."),
        (lambda images, patch: rearrange(images, "b c (h p) (w q) -> b (w h) (c p q)", p=patch, q=patch),
         "the patches come column by column; number them row by row, (h w), as the position embeddings do."),
        (lambda images, patch: rearrange(images, "b c (p h) (q w) -> b (h w) (c p q)", p=patch, q=patch),
         "the 'patches' are strided samples of the whole image, not contiguous blocks: write (h p), the grid "
         "index outside and the position inside a patch inside."),
        (lambda images, patch: rearrange(images, "b c (h p) (w q) -> b (h w) (c q p)", p=patch, q=patch),
         "each patch is flattened column by column; flatten it row by row, (c p q)."),
    ],
    hint="einops: rearrange(images, 'b c (h p) (w q) -> b (h w) (c p q)', p=patch, q=patch).",
)


# --- resize_positions(table, grid, new_grid, prefix) -----------------------------------------------


def reference_resize_positions(table: Tensor, grid: tuple[int, int], new_grid: tuple[int, int],
                               prefix: int = 1) -> Tensor:
    """What `ViT.interpolate_positions` returns for a model whose learned table is `table`: the (prefix + h*w,
    dim) table of `new_grid`, the first `prefix` rows (the class token's) kept, the grid resized bicubically."""
    if grid[0] != grid[1]:
        raise ValueError(f"grid={grid}: the packaged ViT takes square images")
    dim = table.shape[-1]
    config = ViTConfig(image_size=grid[0], patch_size=1, channels=1, dim=dim, depth=1, heads=1, num_classes=0,
                       pool="cls" if prefix == 1 else "mean")
    model = ViT(config)
    with torch.no_grad():
        model.pos_embedding.copy_(table)
        return model.interpolate_positions(tuple(new_grid)).detach().clone()


def _resize_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(6)
    cases = []
    for side, new_grid, dim, prefix in [(2, (4, 4), 3, 1), (4, (6, 6), 8, 1), (4, (2, 2), 4, 1),
                                        (3, (5, 4), 6, 1), (4, (8, 8), 8, 0), (4, (4, 4), 4, 1)]:
        table = torch.randn(prefix + side * side, dim, generator=generator)
        cases.append(Case(f"table {tuple(table.shape)}, grid=({side}, {side}), new_grid={new_grid}, prefix={prefix}",
                          (table, (side, side), new_grid), {"prefix": prefix}))
    return cases


def _resize_with(mode: str = "bicubic", align_corners: bool = False, flat_reshape: bool = False,
                 drop_prefix: bool = False):
    def resize(table, grid, new_grid, prefix=1):
        head, patches = table[:prefix], table[prefix:]
        if flat_reshape:
            image = patches.reshape(1, table.shape[-1], *grid)
        else:
            image = rearrange(patches, "(h w) d -> 1 d h w", h=grid[0])
        image = F.interpolate(image, size=tuple(new_grid), mode=mode, align_corners=align_corners)
        patches = rearrange(image, "1 d h w -> (h w) d")
        return patches if drop_prefix else torch.cat([head, patches])
    return resize


def _resize_with_the_class_token(table, grid, new_grid, prefix=1):
    return _resize_with()(torch.cat([table[:prefix], table]), grid, new_grid, prefix)[prefix:]


resize_positions = FunctionChecker(
    "resize_positions",
    reference_resize_positions,
    _resize_cases,
    mistakes=[
        (_resize_with(flat_reshape=True), "the table is reshaped to (1, dim, h, w) without moving the feature axis; "
         "a row of the table is one position, so rearrange '(h w) d -> 1 d h w' (features become channels)."),
        (_resize_with(mode="bilinear"), "the grid is resized bilinearly; the packaged ViT (like the original "
         "ViT and DeiT) uses mode='bicubic'."),
        (_resize_with(align_corners=True), "align_corners=True; keep F.interpolate's default align_corners=False, "
         "as the packaged ViT does."),
        (_resize_with(drop_prefix=True), "the class token's row is dropped; put the first `prefix` rows back in "
         "front of the resized grid."),
    ],
    hint="keep table[:prefix]; rearrange table[prefix:] '(h w) d -> 1 d h w', F.interpolate(..., size=new_grid, "
    "mode='bicubic', align_corners=False), rearrange back '1 d h w -> (h w) d' and concatenate.",
)
resize_positions.__doc__ = "Checks resize_positions(table, grid, new_grid, prefix=1) against ViT.interpolate_positions."


# --- pool_tokens(tokens, has_cls) -------------------------------------------------------------------------


def reference_pool(tokens: Tensor, has_cls: bool) -> Tensor:
    """(B, T, dim) -> (B, dim): the class token (position 0) if the model has one, else the mean of all tokens."""
    return tokens[:, 0] if has_cls else tokens.mean(dim=1)


def _pool_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(7)
    cases = []
    for shape in [(2, 5, 8), (1, 17, 4), (3, 2, 6)]:
        tokens = torch.randn(*shape, generator=generator) + torch.arange(shape[1]).view(1, -1, 1)  # tokens differ
        for has_cls in (True, False):
            cases.append(Case(f"tokens {shape}, has_cls={has_cls}", (tokens, has_cls)))
    return cases


pool_tokens = FunctionChecker(
    "pool_tokens",
    reference_pool,
    _pool_cases,
    mistakes=[
        (lambda tokens, has_cls: tokens.mean(dim=1),
         "the mean of all tokens, also with a class token: then the class token alone (position 0) is the summary."),
        (lambda tokens, has_cls: tokens[:, 1:].mean(dim=1) if has_cls else tokens.mean(dim=1),
         "with a class token you averaged the patch tokens; the class token (position 0) is what the head reads."),
        (lambda tokens, has_cls: tokens[:, -1] if has_cls else tokens.mean(dim=1),
         "the last token is a patch; the class token was put in front, at position 0."),
    ],
    hint="tokens[:, 0] with a class token; tokens.mean(dim=1) without one.",
)
