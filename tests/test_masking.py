"""Random masks hide exactly round(ratio * N) tokens per row, independently and uniformly; the gathers keep each
row's visible tokens in order (checked against Python loops)."""

from __future__ import annotations

import pytest
import torch

from course_lib.nn.masking import gather_tokens, masked_count, random_masking, visible_indices


@pytest.mark.parametrize("batch, tokens, ratio", [(1, 1, 0.0), (3, 16, 0.75), (4, 49, 0.75), (2, 10, 0.5), (5, 7, 0.9)])
def test_every_row_hides_exactly_its_share(batch, tokens, ratio):
    mask = random_masking(batch, tokens, ratio, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (batch, tokens) and mask.dtype == torch.bool
    assert (mask.sum(dim=1) == masked_count(tokens, ratio)).all()
    assert masked_count(tokens, ratio) == min(round(ratio * tokens), tokens - 1)


def test_masks_are_uniform_over_positions_and_differ_between_rows():
    mask = random_masking(4000, 8, 0.75, generator=torch.Generator().manual_seed(1))
    frequency = mask.float().mean(dim=0)
    assert torch.allclose(frequency, torch.full((8,), 0.75), atol=0.03), frequency
    wide = random_masking(50, 16, 0.75, generator=torch.Generator().manual_seed(1))  # 1820 possible rows
    assert len({tuple(row.tolist()) for row in wide}) > 45  # rows are drawn independently


def test_the_same_generator_seed_gives_the_same_mask():
    one = random_masking(3, 20, 0.6, generator=torch.Generator().manual_seed(5))
    two = random_masking(3, 20, 0.6, generator=torch.Generator().manual_seed(5))
    other = random_masking(3, 20, 0.6, generator=torch.Generator().manual_seed(6))
    assert torch.equal(one, two) and not torch.equal(one, other)


def test_visible_indices_and_gather_equal_a_loop():
    mask = random_masking(3, 12, 0.75, generator=torch.Generator().manual_seed(2))
    x = torch.randn(3, 12, 5)
    index = visible_indices(mask)
    for b in range(3):
        expected = [i for i in range(12) if not mask[b, i]]
        assert index[b].tolist() == expected
        assert torch.equal(gather_tokens(x, index)[b], x[b, expected])


@pytest.mark.parametrize("call, message", [
    (lambda: random_masking(0, 4, 0.5), "batch=0"),
    (lambda: random_masking(2, 0, 0.5), "tokens=0"),
    (lambda: random_masking(2, 4, 1.0), "ratio=1.0"),
    (lambda: visible_indices(torch.tensor([[True, False], [True, True]])), "as many tokens"),
    (lambda: visible_indices(torch.zeros(2, 3)), "bool"),
    (lambda: gather_tokens(torch.randn(2, 3), torch.zeros(2, 1, dtype=torch.long)), "batch, tokens, dim"),
])
def test_bad_input_is_refused_by_name(call, message):
    with pytest.raises(ValueError, match=message):
        call()
