"""course_lib.measure: FLOPs and peak memory equal what a hand count gives, and the fitted exponent recovers
power laws. Timing is never asserted on (a loaded machine would make such a test flaky); only its arguments are."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib.measure import count_flops, loglog_slope, peak_memory, time_call
from course_lib.models.swin import WindowAttention, window_partition
from course_lib.nn import MultiHeadAttention

# --- FLOPs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch, tokens, d_in, d_out", [(1, 1, 3, 5), (2, 7, 16, 8), (4, 3, 32, 64)])
def test_a_linear_layer_costs_two_flops_per_multiply_add(batch, tokens, d_in, d_out):
    layer = nn.Linear(d_in, d_out)
    assert count_flops(layer, torch.randn(batch, tokens, d_in)) == 2 * batch * tokens * d_in * d_out


def test_a_convolution_costs_two_flops_per_multiply_add():
    conv = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1)
    out = conv(torch.randn(2, 3, 9, 10))  # (2, 8, 5, 5)
    assert count_flops(conv, torch.randn(2, 3, 9, 10)) == 2 * out.numel() * 3 * 3 * 3


@pytest.mark.parametrize("masked", [False, True])
def test_fused_attention_is_counted_like_the_explicit_products(masked):
    """PyTorch's counter alone gives 0 for the fused CPU kernel; here it counts its two matrix products."""
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, 8)
    mask = torch.rand(10, 12) > 0.3 if masked else None
    expected = 2 * (2 * 3 * 10 * 12 * 8) * 2  # q kᵀ and weights v: 2 FLOPs per multiply-add each
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)) == expected
    assert count_flops(lambda: torch.softmax(q @ k.transpose(-2, -1), -1) @ v) == expected


def test_multi_head_attention_flops():
    dim, heads, tokens = 16, 4, 9
    expected = 4 * (2 * tokens * dim * dim) + 2 * (2 * tokens * tokens * dim)  # projections, then attention
    assert count_flops(MultiHeadAttention(dim, heads), torch.randn(1, tokens, dim)) == expected


def test_a_module_is_measured_in_eval_mode_and_left_in_its_mode():
    """BatchNorm in training mode would use (and update) batch statistics, and fails on one value per channel."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).train()
    x = torch.randn(1, 4)
    assert count_flops(model, x) == 2 * 4 * 4
    assert peak_memory(model, x) > 0
    assert model.training and model[1].num_batches_tracked.item() == 0
    model.eval()
    count_flops(model, x)
    assert not model.training


def test_window_attention_flops_are_linear_in_the_number_of_windows():
    attn = WindowAttention(8, 2, 4)
    one = count_flops(attn, window_partition(torch.randn(1, 4, 4, 8), 4))
    nine = count_flops(attn, window_partition(torch.randn(1, 12, 12, 8), 4))
    assert nine == 9 * one > 0


# --- peak memory -----------------------------------------------------------------------------------


def test_peak_memory_counts_what_is_created_and_alive_at_once():
    x = torch.randn(1000)  # 4,000 bytes, made before the call: not counted
    assert peak_memory(lambda: torch.ones(250)) == 1000
    assert peak_memory(lambda t: t * 2, x) == 4000
    assert peak_memory(lambda t: (t * 2) * 3, x) == 8000  # both products alive at once
    assert peak_memory(lambda t: t[10:].view(-1, 10), x) == 0  # views allocate nothing
    assert peak_memory(lambda t: t.mul_(1.0), x) == 0  # nor does an in-place op


def test_peak_memory_sees_a_temporary_freed_before_the_end():
    def chain(t):
        for _ in range(5):
            t = t * 2  # each step frees the previous temporary: at most two alive
        return t.sum()

    assert peak_memory(chain, torch.randn(1000)) == 8000


@pytest.mark.parametrize("tokens", [16, 64])
def test_explicit_attention_holds_its_score_matrices(tokens):
    """softmax(q kᵀ) v holds the scores and the weights at once, 2·L² floats per head; the scores are freed
    before the small output is made."""
    q = torch.randn(1, 2, tokens, 4)
    expected = 2 * (2 * tokens * tokens) * 4
    assert peak_memory(lambda: torch.softmax(q @ q.transpose(-2, -1), dim=-1) @ q) == expected


def test_peak_memory_of_explicit_attention_grows_quadratically():
    sizes = [64, 128, 256]
    memory = [peak_memory(lambda n=n: torch.softmax(torch.randn(1, n, 8) @ torch.randn(1, 8, n), -1)) for n in sizes]
    assert 1.9 < loglog_slope(sizes, memory) < 2.05


def test_bad_arguments():
    with pytest.raises(ValueError, match="function=3 is not callable"):
        count_flops(3)
    with pytest.raises(ValueError, match="is not callable"):
        peak_memory(None)
    with pytest.raises(ValueError, match="repeats=0 must be an int >= 1"):
        time_call(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="warmup=-1 must be an int >= 0"):
        time_call(lambda: None, warmup=-1)
    with pytest.raises(ValueError, match="threads=0 must be a positive int or None"):
        time_call(lambda: None, threads=0)


def test_time_call_restores_the_thread_setting_and_the_module_mode():
    """Not a timing test: only what time_call leaves behind is checked, never how long anything took."""
    threads = torch.get_num_threads()
    seen = []
    model = nn.Linear(2, 2).train()
    time_call(lambda: seen.append(torch.get_num_threads()), repeats=2, warmup=0, threads=1)
    assert seen == [1, 1] and torch.get_num_threads() == threads
    assert isinstance(time_call(model, torch.randn(1, 2), repeats=1), float) and model.training


# --- slopes ----------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(exponent=st.floats(-3, 3), scale=st.floats(1e-3, 1e3), start=st.floats(0.1, 10), points=st.integers(2, 8))
def test_loglog_slope_recovers_the_exponent_of_a_power_law(exponent, scale, start, points):
    xs = [start * 2**i for i in range(points)]
    ys = [scale * x**exponent for x in xs]
    assert math.isclose(loglog_slope(xs, ys), exponent, abs_tol=1e-9)


def test_loglog_slope_of_a_linear_plus_quadratic_cost_lies_between():
    xs = [2**i for i in range(4, 10)]
    slope = loglog_slope(xs, [100 * x + x * x for x in xs])
    assert 1.0 < slope < 2.0


@pytest.mark.parametrize("xs, ys, message", [
    ([1.0], [2.0], "at least 2 points"),
    ([1.0, 2.0], [1.0], "equally long"),
    ([0.0, 2.0], [1.0, 2.0], "positive"),
    ([2.0, 2.0], [1.0, 3.0], "two different values"),
])
def test_loglog_slope_rejects_bad_points(xs, ys, message):
    with pytest.raises(ValueError, match=message):
        loglog_slope(xs, ys)


def test_count_attention_flops_counts_the_attention_kernel_alone():
    from course_lib.measure import count_attention_flops

    layer = torch.nn.Linear(8, 8)
    tokens = torch.randn(2, 3, 5, 8)  # (batch, heads, tokens, head size)

    def block(x):
        return layer(F.scaled_dot_product_attention(x, x, x))

    assert count_attention_flops(block, tokens) == 4 * 2 * 3 * 5 * 5 * 8
    assert count_attention_flops(layer, torch.randn(4, 8)) == 0
