"""Checkers for the exercises of notebook 08_any_resolution: the pseudo-inverse resize of a patch-embedding
kernel, the block-diagonal mask of a packed sequence, greedy packing, and per-image mean pooling.

The references are the packaged pieces of `course_lib.models.any_resolution`: an answer that passes here
computes what `pi_resize`, `packing_mask`, `pack_sequences` and `pool_packed` compute.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from course_lib.checks.core import Case, FunctionChecker
from course_lib.models import any_resolution as library

# --- pi_resize(weight, new) ------------------------------------------------------------------------


def reference_pi_resize(weight: Tensor, new: int) -> Tensor:
    """(..., p, p) -> (..., new, new): ŵ = pinv(Bᵀ) w with B = resize_matrix(p, new)."""
    return library.pi_resize(weight, new)


def _pi_resize_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(8)
    cases = []
    for shape, new in [((4, 1, 2, 2), 4), ((8, 3, 4, 4), 8), ((6, 1, 4, 4), 6), ((5, 2, 3, 3), 7),
                       ((4, 1, 4, 4), 4), ((6, 1, 4, 4), 2), ((3, 2, 6, 6), 4)]:
        weight = torch.randn(*shape, generator=generator)
        cases.append(Case(f"weight {shape}, new={new}", (weight, new)))
    return cases


def _resize_kernel(weight: Tensor, new: int) -> Tensor:
    """The kernel resized as if it were an image: B w."""
    flat = rearrange(weight, "... p q -> ... (p q)")
    return rearrange(flat @ library.resize_matrix(weight.shape[-1], new).T.to(weight), "... (p q) -> ... p q", p=new)


def _pi_with_matrix(make_matrix: Callable[[int, int], Tensor]) -> Callable[[Tensor, int], Tensor]:
    def resize(weight: Tensor, new: int) -> Tensor:
        project = torch.linalg.pinv(make_matrix(weight.shape[-1], new).T).to(weight)
        out = rearrange(weight, "... p q -> ... (p q)") @ project.T
        return rearrange(out, "... (p q) -> ... p q", p=new)
    return resize


def _matrix_without_antialias(old: int, new: int) -> Tensor:
    basis = torch.eye(old * old, dtype=torch.float64).view(old * old, 1, old, old)
    resized = F.interpolate(basis, size=(new, new), mode="bilinear", align_corners=False)
    return rearrange(resized, "k 1 h w -> (h w) k")


def _matrix_align_corners(old: int, new: int) -> Tensor:
    basis = torch.eye(old * old, dtype=torch.float64).view(old * old, 1, old, old)
    resized = F.interpolate(basis, size=(new, new), mode="bilinear", align_corners=True, antialias=True)
    return rearrange(resized, "k 1 h w -> (h w) k")


pi_resize = FunctionChecker(
    "pi_resize",
    reference_pi_resize,
    _pi_resize_cases,
    mistakes=[
        (_resize_kernel, "the kernel is resized like an image (B w). Then <B x, B w> is about (new/p)² times "
         "<x, w>: every token grows. Solve Bᵀ ŵ = w instead: ŵ = pinv(Bᵀ) w."),
        (lambda weight, new: _resize_kernel(weight, new) * (weight.shape[-1] / new) ** 2,
         "the kernel is resized like an image and divided by the area ratio (new/p)². That keeps the mean of a "
         "token but not the token itself; the PI-resize keeps <resize(x), ŵ> = <x, w> exactly: ŵ = pinv(Bᵀ) w."),
        (lambda weight, new: reference_pi_resize(weight, new).transpose(-1, -2),
         "each new kernel comes out transposed: flatten and unflatten the patch in the same (row, column) order."),
        (_pi_with_matrix(_matrix_without_antialias), "the resize matrix shrinks without antialiasing; build B with "
         "the resize the images get, `resize_images` (bilinear, antialias=True), or use `resize_matrix`."),
        (_pi_with_matrix(_matrix_align_corners), "the resize matrix uses align_corners=True; the images are "
         "resized with align_corners=False, so B must be too (use `resize_matrix`)."),
    ],
    hint="B = resize_matrix(p, new) is (new², p²); flatten the kernel's last two axes to p², multiply by "
    "torch.linalg.pinv(B.T).T (as a row vector: w @ pinv(Bᵀ)ᵀ), unflatten to (new, new). Compute B and the "
    "pseudo-inverse in float64, then cast to the weight's dtype.",
)
pi_resize.__doc__ = "Checks pi_resize(weight, new) against course_lib.models.any_resolution.pi_resize."


# --- packing_mask(counts, length) ------------------------------------------------------------------


def segments_of(counts: list[int], length: int) -> Tensor:
    """(length,) long: 1 for the first image's tokens, 2 for the second's, ..., 0 for the padding after them."""
    ids = torch.repeat_interleave(torch.arange(1, len(counts) + 1), torch.tensor(counts, dtype=torch.long))
    return F.pad(ids, (0, length - len(ids)))


def reference_packing_mask(counts: list[int], length: int) -> Tensor:
    """(length, length) bool: True where query and key are tokens of the same image; padding is all False."""
    return library.packing_mask(segments_of(counts, length)[None])[0, 0]


def _mask_cases() -> list[Case]:
    cases = []
    for counts, length in [([2, 3], 5), ([2, 3], 8), ([4], 6), ([1, 1, 1], 4), ([5, 2, 4, 1], 16), ([3, 3], 6)]:
        cases.append(Case(f"counts={counts}, length={length}", (counts, length)))
    return cases


def _mask_with_padding_block(counts: list[int], length: int) -> Tensor:
    ids = segments_of(counts, length)
    return ids[:, None] == ids[None, :]


def _causal_blocks(counts: list[int], length: int) -> Tensor:
    return reference_packing_mask(counts, length) & torch.ones(length, length, dtype=torch.bool).tril()


def _blocks_without_padding(counts: list[int], length: int) -> Tensor:
    ids = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))
    return ids[:, None] == ids[None, :]


packing_mask = FunctionChecker(
    "packing_mask",
    reference_packing_mask,
    _mask_cases,
    mistakes=[
        (_mask_with_padding_block, "the padding forms one more block: padding tokens attend to each other. Padding "
         "is no image; keep its rows and columns all False (`ids > 0` on both sides)."),
        (_causal_blocks, "the blocks are causal (lower-triangular), a habit from GPT; the patches of an image have "
         "no order, so each sees all the others in its image."),
        (_blocks_without_padding, "the mask covers only the images' tokens, sum(counts), not the whole row of "
         "`length` slots: the padding after them is missing."),
        (lambda counts, length: torch.ones(length, length, dtype=torch.bool),
         "every token attends to every other: that mixes the images. Allow only pairs within one image."),
    ],
    hint="ids = torch.repeat_interleave(torch.arange(1, len(counts) + 1), torch.tensor(counts)), padded with "
    "zeros to `length`; then (ids[:, None] == ids[None, :]) & (ids[:, None] > 0) & (ids[None, :] > 0).",
)
packing_mask.__doc__ = "Checks packing_mask(counts, length) against course_lib.models.any_resolution.packing_mask."


# --- pack_greedy(lengths, max_len) -----------------------------------------------------------------


def reference_pack_greedy(lengths: list[int], max_len: int) -> list[list[int]]:
    """First fit: each item, in order, into the first row with room for it, else a new row."""
    return library.pack_sequences(lengths, max_len)


def _pack_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(9)
    cases = [Case("lengths=[3, 5, 4, 1, 3], max_len=8", ([3, 5, 4, 1, 3], 8)),
             Case("lengths=[6, 5, 2, 3], max_len=8", ([6, 5, 2, 3], 8)),
             Case("lengths=[4, 4, 4], max_len=4", ([4, 4, 4], 4))]
    for n, max_len in [(12, 16), (30, 64)]:
        lengths = torch.randint(1, max_len + 1, (n,), generator=generator).tolist()
        cases.append(Case(f"{n} random lengths, max_len={max_len}", (lengths, max_len)))
    return cases


def _next_fit(lengths: list[int], max_len: int) -> list[list[int]]:
    rows, used = [], 0
    for i, n in enumerate(lengths):
        if rows and used + n <= max_len:
            rows[-1].append(i)
            used += n
        else:
            rows.append([i])
            used = n
    return rows


def _first_fit_strict(lengths: list[int], max_len: int) -> list[list[int]]:
    rows, used = [], []
    for i, n in enumerate(lengths):
        row = next((r for r in range(len(rows)) if used[r] + n < max_len), None)
        if row is None:
            rows.append([]), used.append(0)
            row = len(rows) - 1
        rows[row].append(i)
        used[row] += n
    return rows


def _first_fit_decreasing(lengths: list[int], max_len: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows = library.pack_sequences([lengths[i] for i in order], max_len)
    return [[order[j] for j in row] for row in rows]


def _best_fit(lengths: list[int], max_len: int) -> list[list[int]]:
    rows, used = [], []
    for i, n in enumerate(lengths):
        fits = [r for r in range(len(rows)) if used[r] + n <= max_len]
        if fits:
            row = max(fits, key=lambda r: used[r])
        else:
            rows.append([]), used.append(0)
            row = len(rows) - 1
        rows[row].append(i)
        used[row] += n
    return rows


pack_greedy = FunctionChecker(
    "pack_greedy",
    reference_pack_greedy,
    _pack_cases,
    mistakes=[
        (_next_fit, "only the last row is tried (next fit); first fit goes back to every earlier row that still "
         "has room, which leaves less padding."),
        (_first_fit_strict, "a row that the item would fill exactly is refused: an item fits when used + length "
         "<= max_len, not < max_len."),
        (_first_fit_decreasing, "the items are sorted by length first (first-fit decreasing); take them in the "
         "order given, so that the rows keep the order of the data."),
        (_best_fit, "each item goes to the fullest row it fits (best fit); first fit takes the first row, in "
         "row order, that has room."),
    ],
    hint="keep `rows` (lists of indices) and `used` (tokens per row); for each item, the first r with "
    "used[r] + length <= max_len takes it, else append a new row.",
)
pack_greedy.__doc__ = "Checks pack_greedy(lengths, max_len) against course_lib.models.any_resolution.pack_sequences."


# --- mean_per_image(tokens, image_ids, num_images) ---------------------------------------------------


def reference_mean_per_image(tokens: Tensor, image_ids: Tensor, num_images: int) -> Tensor:
    """(B, L, dim) tokens, (B, L) image ids (-1 for padding) -> (num_images, dim): the mean of each image's
    tokens, what `pool_packed` computes without class tokens."""
    flat, ids = rearrange(tokens, "b l d -> (b l) d"), image_ids.flatten()
    keep = ids >= 0
    sums = flat.new_zeros(num_images, flat.shape[-1]).index_add(0, ids[keep], flat[keep])
    return sums / torch.bincount(ids[keep], minlength=num_images).to(flat.dtype)[:, None]


def _pool_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(10)
    cases = []
    for rows, num_images, dim in [([[0, 0, 1, 1, 1, -1]], 2, 3), ([[0, 0, 0, 1], [2, 2, -1, -1]], 3, 4),
                                  ([[1, 1, 0, 0, 0, 0, 2, -1], [3, 3, 3, -1, -1, -1, -1, -1]], 4, 5),
                                  ([[0, 1, 2]], 3, 2)]:
        image_ids = torch.tensor(rows)
        tokens = torch.randn(*image_ids.shape, dim, generator=generator) + 3 * (image_ids[..., None] == -1)
        cases.append(Case(f"image_ids={rows}, num_images={num_images}, dim={dim}", (tokens, image_ids, num_images)))
    return cases


def _mean_with_padding_in_image_zero(tokens: Tensor, image_ids: Tensor, num_images: int) -> Tensor:
    return reference_mean_per_image(tokens, image_ids.clamp(min=0), num_images)


def _mean_with_padding_in_last_image(tokens: Tensor, image_ids: Tensor, num_images: int) -> Tensor:
    return reference_mean_per_image(tokens, image_ids % num_images, num_images)


def _sum_per_image(tokens: Tensor, image_ids: Tensor, num_images: int) -> Tensor:
    flat, ids = rearrange(tokens, "b l d -> (b l) d"), image_ids.flatten()
    keep = ids >= 0
    return flat.new_zeros(num_images, flat.shape[-1]).index_add(0, ids[keep], flat[keep])


def _divided_by_row_length(tokens: Tensor, image_ids: Tensor, num_images: int) -> Tensor:
    return _sum_per_image(tokens, image_ids, num_images) / tokens.shape[1]


mean_per_image = FunctionChecker(
    "mean_per_image",
    reference_mean_per_image,
    _pool_cases,
    mistakes=[
        (_mean_with_padding_in_image_zero, "the padding (id -1) was counted as image 0, e.g. by clamping the ids; "
         "drop the padding tokens before pooling."),
        (_mean_with_padding_in_last_image, "the padding (id -1) was counted as the last image (a -1 index wraps "
         "around); drop the padding tokens before pooling."),
        (_sum_per_image, "this is each image's sum; divide by the number of tokens of that image."),
        (_divided_by_row_length, "each sum is divided by the row length; divide by that image's own token count "
         "(torch.bincount of the ids)."),
    ],
    hint="keep = image_ids >= 0; sums = zeros(num_images, dim).index_add(0, ids[keep], tokens[keep]); divide by "
    "torch.bincount(ids[keep], minlength=num_images).",
)
mean_per_image.__doc__ = "Checks mean_per_image(tokens, image_ids, num_images) against pool_packed's mean."
