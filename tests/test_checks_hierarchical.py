"""The checkers of notebook 06_hierarchical_vit: right answers pass, plausible wrong ones fail with a message naming
the mistake.

Each correct answer is written here the way a learner might, independently of the references in
`course_lib.checks.hierarchical`; each wrong one is a mistake a learner is likely to make.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from checking import fails, passes
from einops import rearrange

from course_lib.checks import hierarchical as check
from course_lib.models.swin import SwinBlock, window_reverse

# --- window_partition ------------------------------------------------------------------------------


def window_partition(x, window):
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def test_window_partition_right(capsys):
    passes(check.window_partition, window_partition, capsys)


def test_window_partition_is_undone_by_window_reverse():
    x = torch.randn(2, 8, 12, 3)
    torch.testing.assert_close(window_reverse(window_partition(x, 4), 4, 8, 12), x, atol=0, rtol=0)


@pytest.mark.parametrize("pattern, explanation", [
    ("b (h p) (w q) c -> (b w h) (p q) c", "column by column; number them row by row"),
    ("b (h p) (w q) c -> (b h w) (q p) c", "inside a window are read column by column"),
    ("b (p h) (q w) c -> (b h w) (p q) c", "strided samples"),
    ("b (h p) (w q) c -> (h w b) (p q) c", "batch axis is innermost"),
], ids=["windows-column-major", "tokens-column-major", "strided", "batch-inside"])
def test_window_partition_mistakes_are_named(pattern, explanation, capsys):
    message = fails(check.window_partition, lambda x, window: rearrange(x, pattern, p=window, q=window), capsys,
                    r"output\[.*\] is .* \(on x")
    assert explanation in message


def test_window_partition_wrong_shape(capsys):
    fails(check.window_partition, lambda x, window: x.flatten(1, 2), capsys, r"has shape \(1, 16, 1\), expected \(4, 4, 1\)")


def test_window_partition_not_implemented(capsys):
    def exercise(x, window):
        raise NotImplementedError

    fails(check.window_partition, exercise, capsys, "not implemented yet")


# --- shifted_window_mask ---------------------------------------------------------------------------


def shifted_window_mask(height, width, window, shift):
    """After rolling by -shift, a token at (i, j) came from ((i + shift) % H, (j + shift) % W): it wrapped round
    along rows if i >= H - shift. Two tokens of one window were neighbours iff they wrapped alike on both axes."""
    rows = torch.arange(height)[:, None].expand(height, width) >= height - shift
    cols = torch.arange(width)[None, :].expand(height, width) >= width - shift
    wrapped = torch.stack([rows, cols], dim=-1)  # (H, W, 2)
    windows = window_partition(wrapped[None], window)  # (nW, window², 2)
    return (windows[:, :, None, :] == windows[:, None, :, :]).all(dim=-1)


def test_shifted_window_mask_right(capsys):
    passes(check.shifted_window_mask, shifted_window_mask, capsys)


def test_shifted_window_mask_is_what_the_swin_block_uses():
    block = SwinBlock(8, 2, 4, shift=2)
    x = torch.randn(1, 8, 8, 8)
    rolled = torch.roll(x, shifts=(-2, -2), dims=(1, 2))
    with torch.no_grad():
        out = window_reverse(block.attn(window_partition(rolled, 4), shifted_window_mask(8, 8, 4, 2)), 4, 8, 8)
        torch.testing.assert_close(block.attend(x), torch.roll(out, shifts=(2, 2), dims=(1, 2)), atol=1e-6, rtol=0)


def _mask_from_labels(label_rows, label_cols, combine):
    def mask(height, width, window, shift):
        labels = combine(label_rows(height, window, shift)[:, None], label_cols(width, window, shift)[None, :])
        windows = window_partition(labels[None, :, :, None], window)[..., 0]  # (nW, window²)
        return windows[:, :, None] == windows[:, None, :]
    return mask


def _regions(size, window, shift):
    index = torch.arange(size)
    return (index >= size - window).long() + (index >= size - shift).long()


@pytest.mark.parametrize("wrong, explanation", [
    (lambda h, w, win, s: ~shifted_window_mask(h, w, win, s), "must NOT attend"),
    (_mask_from_labels(_regions, _regions, lambda r, c: r + c), "not a unique label"),
    (_mask_from_labels(_regions, _regions, lambda r, c: r + 0 * c), "only the rows are labelled"),
    (_mask_from_labels(lambda size, window, shift: (torch.arange(size) >= shift).long()
                       + (torch.arange(size) >= window).long(), lambda size, window, shift:
                       (torch.arange(size) >= shift).long() + (torch.arange(size) >= window).long(),
                       lambda r, c: 3 * r + c), "marked at the start"),
    (lambda h, w, win, s: torch.ones(h * w // win**2, win**2, win**2, dtype=torch.bool), "every pair may attend"),
], ids=["inverted", "sum-of-labels", "rows-only", "regions-at-start", "no-mask"])
def test_shifted_window_mask_mistakes_are_named(wrong, explanation, capsys):
    message = fails(check.shifted_window_mask, wrong, capsys, r"\(on height=")
    assert explanation in message


def test_shifted_window_mask_wrong_dtype(capsys):
    fails(check.shifted_window_mask, lambda *args: shifted_window_mask(*args).float(), capsys, "dtype torch.float32")


# --- pool_tokens -----------------------------------------------------------------------------------


def pool_tokens(x, resolution, kernel, stride):
    height, width = resolution
    batch, _, channels = x.shape
    grid = x[:, 1:].transpose(1, 2).reshape(batch, channels, height, width)
    pad = kernel // 2
    padded = F.pad(grid, (pad, pad, pad, pad), value=float("-inf"))
    patches = F.unfold(padded, kernel_size=kernel, stride=stride)  # (B, C*k*k, h*w)
    pooled = patches.reshape(batch, channels, kernel * kernel, -1).amax(dim=2)  # (B, C, h*w)
    return torch.cat([x[:, :1], pooled.transpose(1, 2)], dim=1)


def test_pool_tokens_right(capsys):
    passes(check.pool_tokens, pool_tokens, capsys)


def _pool(pool=F.max_pool2d, padding=True, pattern="b (h w) c -> b c h w", cls="front"):
    def wrong(x, resolution, kernel, stride):
        grid = rearrange(x[:, 1:], pattern, h=resolution[0], w=resolution[1])
        tokens = rearrange(pool(grid, kernel, stride, kernel // 2 if padding else 0), "b c h w -> b (h w) c")
        if cls == "dropped":
            return tokens
        return torch.cat([x[:, :1], tokens] if cls == "front" else [tokens, x[:, :1]], dim=1)
    return wrong


@pytest.mark.parametrize("wrong, pattern", [
    (_pool(pool=F.avg_pool2d), "average pooling"),
    (_pool(padding=False), "no padding"),
    (_pool(pattern="b (w h) c -> b c h w"), "column by column"),
    (_pool(cls="dropped"), "class token is gone"),
    (_pool(cls="back"), "class token is at the end"),
], ids=["average", "no-padding", "column-major", "no-cls", "cls-last"])
def test_pool_tokens_mistakes_are_named(wrong, pattern, capsys):
    message = fails(check.pool_tokens, wrong, capsys, r"\(on x")
    assert pattern in message


def test_pool_tokens_not_implemented(capsys):
    def exercise(x, resolution, kernel, stride):
        raise NotImplementedError

    fails(check.pool_tokens, exercise, capsys, "not implemented yet")
