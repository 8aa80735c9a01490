"""The checkers of notebook 07_cross_scale: right answers pass, plausible wrong ones fail with a message naming
the mistake.

Each correct answer is written here the way a learner would, independently of the references in
`course_lib.checks.cross_scale`; each wrong one is a mistake a learner is likely to make.
"""

from __future__ import annotations

import math

import pytest
import torch
from checking import fails, passes
from einops import rearrange

from course_lib.checks import cross_scale as check
from course_lib.models.cross_scale import AxisAttentionLayer, DistanceAttention
from course_lib.models.swin import global_attention_with_block_mask

# --- grid_partition ---------------------------------------------------------------------------------


def grid_partition(x, grid):
    batch, height, width, channels = x.shape
    step_h, step_w = height // grid, width // grid
    groups = []
    for b in range(batch):
        for i in range(step_h):
            for j in range(step_w):
                groups.append(x[b, i::step_h, j::step_w].reshape(grid * grid, channels))  # every step-th token
    return torch.stack(groups)


def test_grid_partition_right(capsys):
    passes(check.grid_partition, grid_partition, capsys)


def test_grid_partition_is_what_the_grid_layer_attends_over():
    layer = AxisAttentionLayer(8, 2, "grid", 2).eval()
    x = torch.randn(1, 4, 6, 8)
    with torch.no_grad():
        groups = layer.attn(grid_partition(x, 2))  # (6, 4, 8)
        back = rearrange(groups, "(b h w) (g1 g2) c -> b (g1 h) (g2 w) c", b=1, h=2, w=3, g1=2)
        torch.testing.assert_close(layer.attend(x), back)


@pytest.mark.parametrize("pattern, explanation", [
    ("b (g1 h) (g2 w) c -> (b h w) (g2 g1) c", "column by column; keep them row by row"),
    ("b (g1 h) (g2 w) c -> (b w h) (g1 g2) c", "groups come column by column"),
    ("b (h g1) (w g2) c -> (b h w) (g1 g2) c", "blocks of adjacent tokens"),
], ids=["inner-order", "group-order", "blocks"])
def test_grid_partition_mistakes_are_named(pattern, explanation, capsys):
    message = fails(check.grid_partition, lambda x, grid: rearrange(x, pattern, g1=grid, g2=grid), capsys,
                    r"output\[.*\] is .* \(on x")
    assert explanation in message


def test_grid_partition_with_grid_as_the_spacing(capsys):
    def spacing(x, grid):
        return rearrange(x, "b (g1 i) (g2 j) c -> (b i j) (g1 g2) c", i=grid, j=grid)

    message = fails(check.grid_partition, spacing, capsys, r"has shape \(.*\), expected \(.*\) \(on x")
    assert "CrossFormer's interval" in message


def test_grid_partition_not_implemented(capsys):
    def exercise(x, grid):
        raise NotImplementedError

    fails(check.grid_partition, exercise, capsys, "not implemented yet")


# --- long_distance_mask -----------------------------------------------------------------------------


def long_distance_mask(height, width, interval):
    mask = torch.zeros(height * width, height * width, dtype=torch.bool)
    for a in range(height * width):
        for b in range(height * width):
            ra, ca, rb, cb = a // width, a % width, b // width, b % width
            mask[a, b] = (ra - rb) % interval == 0 and (ca - cb) % interval == 0
    return mask


def test_long_distance_mask_right(capsys):
    passes(check.long_distance_mask, long_distance_mask, capsys)


def test_long_distance_mask_gives_the_packaged_long_distance_attention():
    torch.manual_seed(0)
    attn = DistanceAttention(8, 2, "long", 2).eval()
    height, width = 4, 6
    x = torch.randn(1, height, width, 8)
    tokens = rearrange(x, "b h w c -> b (h w) c")
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()], -1)
    steps = torch.div(coords[:, None] - coords[None, :], 2, rounding_mode="floor").float()  # in group steps
    q, k, v = (rearrange(p(tokens), "b l (h d) -> b h l d", h=2) for p in (attn.to_q, attn.to_k, attn.to_v))
    with torch.no_grad():
        bias = rearrange(attn.position_bias(steps), "i j h -> h i j")
        out = global_attention_with_block_mask(q, k, v, long_distance_mask(height, width, 2), bias)
        expected = attn.to_out(rearrange(out, "b h l d -> b l (h d)"))
        torch.testing.assert_close(rearrange(attn(x), "b h w c -> b (h w) c"), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("wrong, explanation", [
    (lambda h, w, i: block(h, w, i), "short-distance mask"),
    (lambda h, w, i: rows_only(h, w, i), "only the rows are compared"),
    (lambda h, w, i: column_major(h, w, i), "numbered column by column"),
    (lambda h, w, i: grid_semantics(h, w, i), "MaxViT's grid"),
], ids=["short-distance", "rows-only", "column-major", "grid-semantics"])
def test_long_distance_mask_mistakes_are_named(wrong, explanation, capsys):
    message = fails(check.long_distance_mask, wrong, capsys, r"\(on height=")
    assert explanation in message


def block(h, w, i):
    index = torch.arange(h * w)
    key = (index // w) // i * w + (index % w) // i
    return key[:, None] == key[None, :]


def rows_only(h, w, i):
    row = torch.arange(h * w) // w
    return (row[:, None] - row[None, :]) % i == 0


def column_major(h, w, i):
    index = torch.arange(h * w)
    row, col = index % h, index // h
    return ((row[:, None] - row[None, :]) % i == 0) & ((col[:, None] - col[None, :]) % i == 0)


def grid_semantics(h, w, i):
    """Groups of i x i tokens spread over the map: the spacing is h / i down and w / i across."""
    index = torch.arange(h * w)
    row, col = index // w, index % w
    return ((row[:, None] - row[None, :]) % (h // i) == 0) & ((col[:, None] - col[None, :]) % (w // i) == 0)


def test_long_distance_mask_wrong_dtype(capsys):
    fails(check.long_distance_mask, lambda h, w, i: long_distance_mask(h, w, i).float(), capsys,
          "dtype torch.float32, expected torch.bool")


# --- cross_attend -----------------------------------------------------------------------------------


def cross_attend(cls, patches, w_q, w_k, w_v):
    keys = torch.cat([cls.unsqueeze(1), patches], dim=1)
    scores = (keys @ w_k) @ (cls @ w_q).unsqueeze(-1) / math.sqrt(cls.shape[-1])  # (B, 1 + N, 1)
    return (torch.softmax(scores, dim=1) * (keys @ w_v)).sum(dim=1)


def test_cross_attend_right(capsys):
    passes(check.cross_attend, cross_attend, capsys)


def test_cross_attend_is_one_head_of_the_packaged_multi_head_attention():
    from course_lib.nn import MultiHeadAttention

    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 1, bias=False).eval()
    cls, patches = torch.randn(2, 8), torch.randn(2, 5, 8)
    tokens = torch.cat([cls[:, None], patches], dim=1)
    with torch.no_grad():
        expected = attn(tokens[:, :1], tokens)[:, 0]
        ours = cross_attend(cls, patches, attn.to_q.weight.T, attn.to_k.weight.T, attn.to_v.weight.T) @ attn.to_out.weight.T
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def _patches_only(cls, patches, w_q, w_k, w_v):
    scores = (patches @ w_k) @ (cls @ w_q).unsqueeze(-1) / math.sqrt(cls.shape[-1])
    return (torch.softmax(scores, dim=1) * (patches @ w_v)).sum(dim=1)


def _no_scale(cls, patches, w_q, w_k, w_v):
    keys = torch.cat([cls.unsqueeze(1), patches], dim=1)
    scores = (keys @ w_k) @ (cls @ w_q).unsqueeze(-1)
    return (torch.softmax(scores, dim=1) * (keys @ w_v)).sum(dim=1)


@pytest.mark.parametrize("wrong, explanation", [
    (_patches_only, "the other branch's patches only"),
    (_no_scale, "not divided by sqrt(D)"),
], ids=["patches-only", "no-scale"])
def test_cross_attend_mistakes_are_named(wrong, explanation, capsys):
    message = fails(check.cross_attend, wrong, capsys, r"output\[.*\] is .* \(on cls")
    assert explanation in message


def test_cross_attend_every_token_a_query(capsys):
    def every(cls, patches, w_q, w_k, w_v):
        keys = torch.cat([cls.unsqueeze(1), patches], dim=1)
        weights = torch.softmax((keys @ w_q) @ (keys @ w_k).transpose(1, 2) / math.sqrt(cls.shape[-1]), dim=-1)
        return weights @ (keys @ w_v)

    message = fails(check.cross_attend, every, capsys, r"has shape \(1, 4, 4\), expected \(1, 4\)")
    assert "only the class token asks" in message


def test_cross_attend_not_implemented(capsys):
    def exercise(cls, patches, w_q, w_k, w_v):
        raise NotImplementedError

    fails(check.cross_attend, exercise, capsys, "not implemented yet")
