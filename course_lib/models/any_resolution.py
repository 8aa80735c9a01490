"""A ViT at any resolution: flexible patch sizes, random-resolution training, and native-resolution packing.

Three ways to let one set of ViT weights read images of many sizes:

- **Flexible patch embedding** (FlexiViT, "FlexiViT: One Model for All Patch Sizes"; the course's
  "MSPE: Multi-Scale Patch Embedding Prompts Vision Transformers to Any Resolution" builds on it): keep
  the token grid and change the patch size with the image. The kernel is resized by the pseudo-inverse
  resize (`pi_resize`), chosen so that a patch upsampled by the same resize gives the same token.
- **Multi-resolution training** ("ResFormer: Scaling ViTs with Multi-Resolution Training"): every batch
  at a resolution drawn at random (`RandomResolution`, an `augment` for `course_lib.train.loop.fit`), the
  position table resized to each grid.
- **Native-resolution packing** (NaViT, "Patch n' Pack"; "UniViTAR: Unified Vision Transformer with
  Native Resolution"): images of different sizes, each cut at the same patch size, share one sequence
  per row (`pack_images`); a block-diagonal mask keeps them apart, each gets its own resized positions,
  and each is pooled back to one vector (`packed_forward`). Running image by image gives the same
  outputs; packing only removes padding.

Everything runs on the packaged `ViT`'s weights: `FlexiViT.from_vit` and `packed_forward` take a trained
`ViT` as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

from course_lib.models._common import check_positive
from course_lib.models.vit import PatchEmbedding, ViT, ViTConfig

__all__ = [
    "FlexiPatchEmbedding", "FlexiViT", "PackedBatch", "RandomResolution", "pack_images", "pack_sequences",
    "packed_forward", "packing_mask", "pi_resize", "pool_packed", "resize_images", "resize_matrix",
]


def _as_pair(argument: str, size: int | Sequence[int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) and not isinstance(size, bool) else tuple(size)
    if len(pair) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in pair):
        raise ValueError(f"{argument}={size!r} must be a positive int or a (height, width) pair of them")
    return pair


# ----------------------------------------------------------------------------------------------
# The one resize of this module, and the pseudo-inverse resize of a patch-embedding kernel.


def resize_images(images: Tensor, size: int | Sequence[int]) -> Tensor:
    """(..., H, W) -> (..., h, w): bilinear, antialiased when shrinking (upsampling is plain bilinear)."""
    height, width = _as_pair("size", size)
    if images.dim() < 2:
        raise ValueError(f"images has shape {tuple(images.shape)}; expected (..., height, width)")
    if images.shape[-2:] == (height, width):
        return images
    flat = images.reshape(-1, 1, *images.shape[-2:])  # (N, 1, H, W): any leading axes
    out = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*images.shape[:-2], height, width)


def resize_matrix(old: int, new: int) -> Tensor:
    """The (new², old²) float64 matrix B of `resize_images` from old x old to new x new: for a patch x
    flattened row by row, B @ x is the resized patch, flattened the same way."""
    check_positive("old", old)
    check_positive("new", new)
    basis = torch.eye(old * old, dtype=torch.float64).view(old * old, old, old)  # one pixel lit per image
    return rearrange(resize_images(basis, new), "k h w -> (h w) k")


def pi_resize(weight: Tensor, new: int) -> Tensor:
    """(..., p, p) kernel -> (..., new, new), the pseudo-inverse resize of FlexiViT.

    The new kernel ŵ solves min ‖Bᵀŵ - w‖ (B = `resize_matrix(p, new)`), so <B x, ŵ> = <x, w> for every
    patch x when new >= p (exactly: Bᵀ has full row rank), and as nearly as least squares allows when
    new < p. Resizing the kernel itself (B w) would instead scale every token by about (new / p)².
    """
    if weight.dim() < 2 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; expected (..., p, p), a square kernel")
    check_positive("new", new)
    old = weight.shape[-1]
    if new == old:
        return weight
    project = torch.linalg.pinv(resize_matrix(old, new).T)  # (new², old²): w -> ŵ
    flat = rearrange(weight, "... p q -> ... (p q)")
    out = flat @ project.T.to(device=weight.device, dtype=weight.dtype)  # (..., new²)
    return rearrange(out, "... (p q) -> ... p q", p=new)


class FlexiPatchEmbedding(PatchEmbedding):
    """`PatchEmbedding` whose one kernel serves every patch size: PI-resized for the size of each call.

    The parameters are those of `PatchEmbedding` (`proj.weight` at the base patch size, `proj.bias`), so a
    trained ViT's patch embedding loads as it is.
    """

    def forward(self, images: Tensor, patch_size: int | None = None) -> Tensor:
        """(B, C, H, W) -> (B, (H/p)(W/p), dim) with p = `patch_size` (default: the base patch size)."""
        patch = self.patch_size if patch_size is None else patch_size
        check_positive("patch_size", patch)
        if images.dim() != 4 or images.shape[1] != self.channels:
            raise ValueError(f"images has shape {tuple(images.shape)}; expected (batch, {self.channels}, height, width)")
        if images.shape[-2] % patch or images.shape[-1] % patch:
            raise ValueError(f"images are {images.shape[-2]}x{images.shape[-1]}, not divisible by patch_size={patch}")
        weight = pi_resize(self.proj.weight, patch)  # (dim, C, p, p)
        return rearrange(F.conv2d(images, weight, self.proj.bias, stride=patch), "b d h w -> b (h w) d")


# ----------------------------------------------------------------------------------------------
# A ViT that runs at a chosen patch size and resolution.


class FlexiViT(ViT):
    """A `ViT` that runs at any resolution and patch size: the kernel PI-resized, the positions resized to the
    token grid. A call may name its `patch_size`; without one, `keep_grid=True` (FlexiViT) keeps the training
    grid, p = image side / grid side, and `keep_grid=False` (ViT, ResFormer) keeps the base patch size and
    lets the grid grow or shrink with the image.

    Same parameters (and names) as `ViT`; `FlexiViT.from_vit(vit)` wraps trained weights.
    """

    def __init__(self, config: ViTConfig, *, keep_grid: bool = True) -> None:
        super().__init__(config)
        if not isinstance(keep_grid, bool):
            raise ValueError(f"keep_grid={keep_grid!r} must be True or False")
        self.keep_grid = keep_grid
        fixed = self.patch_embed
        self.patch_embed = FlexiPatchEmbedding(config.patch_size, config.channels, config.dim)
        self.patch_embed.load_state_dict(fixed.state_dict())  # keep ViT's initialisation

    @classmethod
    def from_vit(cls, vit: ViT, *, keep_grid: bool = True) -> FlexiViT:
        """A FlexiViT with `vit`'s config and weights (copied): the same function at the base patch size."""
        if not isinstance(vit, ViT):
            raise ValueError(f"vit is a {type(vit).__name__}; expected a course_lib ViT")
        model = cls(vit.config, keep_grid=keep_grid).to(next(vit.parameters()).device)
        model.load_state_dict(vit.state_dict(), strict=True)
        return model.train(vit.training)

    def patch_size_for(self, height: int, width: int, patch_size: int | None = None) -> int:
        """The patch size a call uses: `patch_size`, else the one that keeps the training grid (`keep_grid`) or
        the base one; raises when the image cannot be cut into whole patches of it."""
        grid_h, grid_w = self.config.grid
        if patch_size is None and not self.keep_grid:
            patch_size = self.config.patch_size
        if patch_size is None:
            if height % grid_h or width % grid_w or height // grid_h != width // grid_w:
                raise ValueError(f"images are {height}x{width}: patch_size=None keeps the {grid_h}x{grid_w} grid, "
                                 f"so the sides must be equal multiples of {grid_h} and {grid_w}")
            return height // grid_h
        check_positive("patch_size", patch_size)
        if height % patch_size or width % patch_size:
            raise ValueError(f"images are {height}x{width}, not divisible by patch_size={patch_size}")
        return patch_size

    def features(self, images: Tensor, *, patch_size: int | None = None) -> Tensor:
        """All tokens after the final norm, (B, prefix + N, dim), at the chosen patch size."""
        c = self.config
        if images.dim() != 4 or images.shape[1] != c.channels:
            raise ValueError(f"images has shape {tuple(images.shape)}; expected (batch, {c.channels}, height, width)")
        height, width = images.shape[-2:]
        patch = self.patch_size_for(height, width, patch_size)
        x = self.patch_embed(images, patch)  # (B, N, dim)
        if self.cls_token is not None:
            x = torch.cat([repeat(self.cls_token, "d -> b 1 d", b=x.shape[0]), x], dim=1)  # (B, 1 + N, dim)
        x = self.embed_dropout(x + self.interpolate_positions((height // patch, width // patch)))
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def forward(self, images: Tensor, *, patch_size: int | None = None) -> Tensor:
        pooled = self.pool(self.features(images, patch_size=patch_size))
        return self.head(pooled) if self.head is not None else pooled


# ----------------------------------------------------------------------------------------------
# Multi-resolution training.


class RandomResolution:
    """`augment(images, generator) -> images` for `fit`: the whole batch resized to one side drawn uniformly
    from `sizes` (ResFormer trains on several resolutions at once; one per batch is the cheap version)."""

    def __init__(self, sizes: Sequence[int]) -> None:
        sizes = tuple(sizes)
        if not sizes:
            raise ValueError("sizes=() must name at least one image side")
        for size in sizes:
            check_positive("sizes[...]", size)
        self.sizes = sizes

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        size = self.sizes[int(torch.randint(len(self.sizes), (1,), generator=generator))]
        return resize_images(images, size)

    def __repr__(self) -> str:
        return f"RandomResolution(sizes={self.sizes})"


# ----------------------------------------------------------------------------------------------
# Native-resolution packing.


def pack_sequences(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    """Greedy first-fit packing: each item, in the given order, goes into the first sequence that still has
    room for it, else into a new one. Returns the item indices of each sequence."""
    check_positive("max_len", max_len)
    for i, length in enumerate(lengths):
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= max_len:
            raise ValueError(f"lengths[{i}]={length!r} must be an int in 1..max_len={max_len}")
    sequences: list[list[int]] = []
    room: list[int] = []
    for i, length in enumerate(lengths):
        row = next((r for r, free in enumerate(room) if free >= length), None)
        if row is None:
            sequences.append([])
            room.append(max_len)
            row = len(room) - 1
        sequences[row].append(i)
        room[row] -= length
    return sequences


@dataclass
class PackedBatch:
    """Images of different sizes packed into rows of `max_len` tokens.

    Each image takes `prefix` slots (its class token, filled by the model) and then its patches row by row;
    what is left of a row is padding.
    """

    patches: Tensor  # (B, L, C*p*p) patch vectors, flattened (channel, row, column); zero at prefix and padding
    segments: Tensor  # (B, L) long: 0 padding, k >= 1 the k-th image of its row
    image_ids: Tensor  # (B, L) long: index of the image in the packed list, -1 for padding
    is_prefix: Tensor  # (B, L) bool: True at each image's class-token slot
    spans: list[tuple[int, int, int]]  # per image: (row, first slot, number of slots)
    grids: list[tuple[int, int]]  # per image: its (rows, columns) of patches
    patch_size: int
    prefix: int

    @property
    def num_images(self) -> int:
        return len(self.spans)

    @property
    def mask(self) -> Tensor:
        """(B, 1, L, L) bool attention mask: True where query and key belong to the same image."""
        return packing_mask(self.segments)

    @property
    def padding(self) -> int:
        """Padding slots in the whole batch."""
        return int((self.segments == 0).sum())


def packing_mask(segments: Tensor) -> Tensor:
    """(B, L) segment ids (0 = padding) -> (B, 1, L, L) block-diagonal mask: a token attends to the tokens of
    its own image only; padding neither attends nor is attended to."""
    if segments.dim() != 2 or segments.dtype != torch.long:
        raise ValueError(f"segments has shape {tuple(segments.shape)} and dtype {segments.dtype}; expected (B, L) long")
    real = segments > 0
    same = rearrange(segments, "b q -> b q 1") == rearrange(segments, "b k -> b 1 k")  # (B, L, L)
    return rearrange(same & real[:, :, None] & real[:, None, :], "b q k -> b 1 q k")


def pack_images(images: Sequence[Tensor], *, patch_size: int, max_len: int, prefix: int = 0) -> PackedBatch:
    """Cut each (C, H, W) image into patches of `patch_size` and pack them greedily (`pack_sequences`) into
    rows of `max_len` tokens. `prefix`: slots reserved in front of each image (1 for a class token)."""
    check_positive("patch_size", patch_size)
    check_positive("max_len", max_len)
    if prefix not in (0, 1):
        raise ValueError(f"prefix={prefix!r}; expected 0 (mean pooling) or 1 (a class token per image)")
    if len(images) == 0:
        raise ValueError("images is empty; expected at least one (C, H, W) image")
    channels = images[0].shape[0] if images[0].dim() == 3 else "channels"
    grids = []
    for i, image in enumerate(images):
        if image.dim() != 3 or image.shape[0] != channels:
            raise ValueError(f"images[{i}] has shape {tuple(image.shape)}; expected ({channels}, height, width), "
                             "the channels of images[0]")
        height, width = image.shape[-2:]
        if height % patch_size or width % patch_size:
            raise ValueError(f"images[{i}] is {height}x{width}, not divisible by patch_size={patch_size}")
        grids.append((height // patch_size, width // patch_size))
    lengths = [prefix + h * w for h, w in grids]
    too_long = [(i, n) for i, n in enumerate(lengths) if n > max_len]
    if too_long:
        i, n = too_long[0]
        raise ValueError(f"images[{i}] needs {n} tokens at patch_size={patch_size}, more than max_len={max_len}")
    rows = pack_sequences(lengths, max_len)
    first = images[0]
    patches = first.new_zeros(len(rows), max_len, channels * patch_size**2)
    segments = torch.zeros(len(rows), max_len, dtype=torch.long, device=first.device)
    image_ids = torch.full_like(segments, -1)
    is_prefix = torch.zeros_like(segments, dtype=torch.bool)
    spans: list[tuple[int, int, int] | None] = [None] * len(images)
    for r, members in enumerate(rows):
        start = 0
        for k, i in enumerate(members, start=1):
            n = lengths[i]
            patches[r, start + prefix:start + n] = rearrange(images[i], "c (h p) (w q) -> (h w) (c p q)",
                                                             p=patch_size, q=patch_size)
            segments[r, start:start + n], image_ids[r, start:start + n] = k, i
            is_prefix[r, start:start + prefix] = True
            spans[i] = (r, start, n)
            start += n
    return PackedBatch(patches, segments, image_ids, is_prefix, spans, grids, patch_size, prefix)


def pool_packed(tokens: Tensor, batch: PackedBatch) -> Tensor:
    """(B, L, dim) -> (num_images, dim): each image's class-token slot when the batch has one, else the mean
    of its patch tokens (never padding)."""
    flat = rearrange(tokens, "b l d -> (b l) d")
    ids = batch.image_ids.flatten()
    keep = batch.is_prefix.flatten() if batch.prefix else (ids >= 0)
    sums = flat.new_zeros(batch.num_images, flat.shape[-1]).index_add(0, ids[keep], flat[keep])
    counts = torch.bincount(ids[keep], minlength=batch.num_images).to(flat.dtype)  # 1 per image with a class token
    return sums / counts[:, None]


def packed_forward(model: ViT, batch: PackedBatch) -> Tensor:
    """Run a packed batch through `model`'s weights: (num_images, num_classes), or (num_images, dim) without a
    head, in the order the images were packed. Equal to running each image alone at its own resolution.

    Positions: each image gets `model.interpolate_positions` of its own grid (the learned table resized, or
    the sine-cosine table of that grid). A patch size other than the model's needs a `FlexiViT`.
    """
    c = model.config
    if batch.prefix != model.prefix:
        raise ValueError(f"the batch was packed with prefix={batch.prefix}, but the model (pool={c.pool!r}) "
                         f"needs prefix={model.prefix}")
    if batch.patches.shape[-1] != c.channels * batch.patch_size**2:
        raise ValueError(f"the batch has patch vectors of {batch.patches.shape[-1]} numbers; expected "
                         f"channels * patch_size**2 = {c.channels * batch.patch_size**2}")
    weight = model.patch_embed.proj.weight  # (dim, C, p, p)
    if batch.patch_size != c.patch_size:
        if not isinstance(model.patch_embed, FlexiPatchEmbedding):
            raise ValueError(f"the batch was packed at patch_size={batch.patch_size}, the model's is "
                             f"{c.patch_size}; wrap it as FlexiViT.from_vit(model) to change patch size")
        weight = pi_resize(weight, batch.patch_size)
    x = batch.patches @ rearrange(weight, "d c p q -> (c p q) d") + model.patch_embed.proj.bias  # (B, L, dim)
    if model.cls_token is not None:
        x = torch.where(batch.is_prefix[..., None], model.cls_token, x)
    positions = torch.zeros_like(x)
    tables = {grid: model.interpolate_positions(grid) for grid in set(batch.grids)}  # (prefix + h*w, dim) each
    for (row, start, n), grid in zip(batch.spans, batch.grids):
        positions[row, start:start + n] = tables[grid]
    x = model.embed_dropout(x + positions)
    mask = batch.mask
    for block in model.blocks:
        x = block(x, mask)
    pooled = pool_packed(model.final_norm(x), batch)  # (num_images, dim)
    return model.head(pooled) if model.head is not None else pooled
