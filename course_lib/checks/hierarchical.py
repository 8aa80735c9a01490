"""Checkers for the exercises of notebook 06_hierarchical_vit: cutting a feature map into windows, the mask of
shifted windows, and pooling tokens over their grid with the class token kept aside.

The references are the packaged models' own pieces: `course_lib.models.swin.window_partition` and
`shifted_window_mask`, and `course_lib.models.hierarchical.GridPool` (max pooling, the residual path of MViT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.models.hierarchical import GridPool
from course_lib.models.swin import shifted_window_mask as packaged_mask
from course_lib.models.swin import window_partition as packaged_partition

# --- window_partition(x, window) -------------------------------------------------------------------


def reference_window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B * H/window * W/window, window², C): windows row by row within each image, the tokens of
    a window row by row."""
    return packaged_partition(x, window)


def _partition_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(11)
    cases = []
    for batch, height, width, channels, window in [(1, 4, 4, 1, 2), (2, 8, 8, 3, 4), (1, 6, 9, 2, 3),
                                                   (3, 4, 8, 5, 2), (2, 8, 4, 1, 4), (1, 7, 7, 2, 7)]:
        x = torch.randn(batch, height, width, channels, generator=generator)
        cases.append(Case(f"x {tuple(x.shape)}, window={window}", (x, window)))
    return cases


def _partition_with(pattern: str):
    return lambda x, window: rearrange(x, pattern, p=window, q=window)


window_partition = FunctionChecker(
    "window_partition",
    reference_window_partition,
    _partition_cases,
    mistakes=[
        (_partition_with("b (h p) (w q) c -> (b w h) (p q) c"),
         "the windows come column by column; number them row by row, (b h w), as the mask and window_reverse do."),
        (_partition_with("b (h p) (w q) c -> (b h w) (q p) c"),
         "the tokens inside a window are read column by column; read them row by row, (p q)."),
        (_partition_with("b (p h) (q w) c -> (b h w) (p q) c"),
         "the 'windows' are strided samples spread over the whole map, not contiguous blocks: write (h p), the "
         "window index outside and the position inside a window inside."),
        (_partition_with("b (h p) (w q) c -> (h w b) (p q) c"),
         "the batch axis is innermost: keep each image's windows together, (b h w), so that one mask of nH * nW "
         "windows lines up with every image's windows."),
    ],
    hint="einops: rearrange(x, 'b (h p) (w q) c -> (b h w) (p q) c', p=window, q=window).",
)


# --- shifted_window_mask(height, width, window, shift) ---------------------------------------------


def reference_shifted_window_mask(height: int, width: int, window: int, shift: int) -> Tensor:
    """(nH * nW, window², window²) bool, True where a query may attend to a key, for a map rolled by -shift."""
    return packaged_mask(height, width, window, shift)


def _mask_cases() -> list[Case]:
    return [Case(f"height={h}, width={w}, window={win}, shift={s}", (h, w, win, s))
            for h, w, win, s in [(4, 4, 2, 1), (8, 8, 4, 2), (6, 9, 3, 1), (8, 4, 4, 2), (12, 8, 4, 1), (8, 8, 4, 0)]]


def _mask_with(regions_of, combine=lambda rows, cols: rows * 3 + cols, invert: bool = False):
    def mask(height: int, width: int, window: int, shift: int) -> Tensor:
        region = combine(regions_of(height, window, shift)[:, None], regions_of(width, window, shift)[None, :])
        region = rearrange(region, "(h p) (w q) -> (h w) (p q)", p=window, q=window)  # (windows, window²)
        allowed = region[:, :, None] == region[:, None, :]
        return ~allowed if invert else allowed
    return mask


def _regions(size: int, window: int, shift: int) -> Tensor:
    index = torch.arange(size)
    return (index >= size - window).long() + (index >= size - shift).long()


def _regions_at_the_start(size: int, window: int, shift: int) -> Tensor:
    index = torch.arange(size)
    return (index >= shift).long() + (index >= window).long()


shifted_window_mask = FunctionChecker(
    "shifted_window_mask",
    reference_shifted_window_mask,
    _mask_cases,
    mistakes=[
        (_mask_with(_regions, invert=True), "True marks the pairs that must NOT attend; the mask is True where a "
         "query may attend to a key (PyTorch's convention for boolean masks)."),
        (_mask_with(_regions, combine=lambda rows, cols: rows + cols), "row region + column region is not a unique "
         "label: (0, 1) and (1, 0) both give 1, so tokens from different corners of the last window may attend. "
         "Combine them as rows * 3 + cols."),
        (_mask_with(_regions, combine=lambda rows, cols: rows + 0 * cols), "only the rows are labelled; the roll "
         "wraps the columns round too, so label both axes (rows * 3 + cols)."),
        (_mask_with(_regions_at_the_start), "the regions are marked at the start of each axis; rolling by -shift "
         "moves the first `shift` rows and columns to the *end*, so the last window holds the wrapped tokens."),
        (lambda height, width, window, shift: torch.ones(height * width // window**2, window**2, window**2,
                                                         dtype=torch.bool),
         "every pair may attend; after the roll, the last row and column of windows mix tokens that were far "
         "apart in the image, and the mask must keep them apart."),
    ],
    hint="label each row 0, 1 or 2 (before the last window, the last window's own part, the part that wrapped "
    "round: index >= size - window, index >= size - shift), the same for columns, combine as rows * 3 + cols, cut "
    "the label map into windows, and compare every pair of labels in a window.",
)
shifted_window_mask.__doc__ = "Checks shifted_window_mask(height, width, window, shift) against the packaged Swin's."


# --- pool_tokens(x, resolution, kernel, stride) ----------------------------------------------------


def reference_pool_tokens(x: Tensor, resolution: tuple[int, int], kernel: int, stride: int) -> Tensor:
    """(B, 1 + H*W, C), class token first -> (B, 1 + h*w, C): the grid max-pooled (padding kernel // 2), the
    class token kept in front, unpooled."""
    return GridPool(x.shape[-1], kernel, stride, mode="max")(x, tuple(resolution))[0]


def _pool_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(12)
    cases = []
    for batch, (height, width), channels, kernel, stride in [(1, (4, 4), 2, 3, 2), (2, (6, 6), 3, 3, 2),
                                                             (1, (5, 7), 4, 3, 2), (2, (8, 4), 2, 1, 2),
                                                             (1, (9, 9), 3, 5, 3), (2, (4, 6), 2, 3, 1)]:
        x = torch.randn(batch, 1 + height * width, channels, generator=generator)
        cases.append(Case(f"x {tuple(x.shape)}, resolution=({height}, {width}), kernel={kernel}, stride={stride}",
                          (x, (height, width), kernel, stride)))
    return cases


def _pool_with(pool=F.max_pool2d, padding: bool = True, grid_pattern: str = "b (h w) c -> b c h w",
               cls: str = "front"):
    def pool_tokens(x, resolution, kernel, stride):
        height, width = resolution
        grid = rearrange(x[:, 1:], grid_pattern, h=height, w=width)
        pooled = pool(grid, kernel, stride, kernel // 2 if padding else 0)
        tokens = rearrange(pooled, "b c h w -> b (h w) c")
        if cls == "dropped":
            return tokens
        return torch.cat([x[:, :1], tokens] if cls == "front" else [tokens, x[:, :1]], dim=1)
    return pool_tokens


pool_tokens = FunctionChecker(
    "pool_tokens",
    reference_pool_tokens,
    _pool_cases,
    mistakes=[
        (_pool_with(pool=F.avg_pool2d), "average pooling; MViT's residual path (and this exercise) max-pools."),
        (_pool_with(padding=False), "no padding: pad by kernel // 2, so that the pooled grid has ceil(H / stride) "
         "rows, the size the pooled queries have."),
        (_pool_with(grid_pattern="b (w h) c -> b c h w"), "the tokens are put on the grid column by column; they "
         "were flattened row by row, (h w)."),
        (_pool_with(cls="dropped"), "the class token is gone; put it back in front of the pooled tokens."),
        (_pool_with(cls="back"), "the class token is at the end; it goes first, where the model reads it."),
    ],
    hint="cls, grid = x[:, :1], x[:, 1:]; rearrange the grid 'b (h w) c -> b c h w', F.max_pool2d(grid, kernel, "
    "stride, padding=kernel // 2), rearrange back 'b c h w -> b (h w) c' and concatenate [cls, pooled].",
)
