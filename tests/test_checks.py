"""The exercise checkers: right answers pass with a ✓, wrong ones fail with a message that says what is wrong.

Each checker in `course_lib.checks.attention` is run on a correct implementation written here (the
way a learner would) and on plausible mistakes.
"""

from __future__ import annotations

import math

import torch
from checking import fails, passes
from einops import rearrange
from torch import nn

from course_lib.checks import Case, FunctionChecker, ModuleChecker, first_mismatch
from course_lib.checks import attention as check

# --- answers a learner might write ---------------------------------------------------------------


def causal_mask(length):
    return torch.ones(length, length).tril().bool()


def attention(q, k, v, mask=None, *, scale=True, fill=float("-inf")):
    scores = q @ k.transpose(-2, -1)
    if scale:
        scores = scores / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, fill)
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def sinusoidal_table(max_len, dim, *, swap=False, frequency_step=2):
    table = torch.zeros(max_len, dim)
    for i in range(dim // 2):
        angle = torch.arange(max_len) / 10000 ** (frequency_step * i / dim)
        first, second = (angle.cos(), angle.sin()) if swap else (angle.sin(), angle.cos())
        table[:, 2 * i], table[:, 2 * i + 1] = first, second
    return table


class MultiHead(nn.Module):
    """The notebook's exercise, solved."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(dim, dim) for _ in range(4))

    def attend(self, q, k, v):
        return attention(q, k, v)[0]

    def forward(self, x):
        q, k, v = (rearrange(f(x), "b l (h d) -> b h l d", h=self.heads) for f in (self.to_q, self.to_k, self.to_v))
        return self.to_out(rearrange(self.attend(q, k, v), "b h l d -> b l (h d)"))


class OneBigHead(MultiHead):
    """Forgets to split into heads: one softmax over all features."""

    def forward(self, x):
        return self.to_out(attention(self.to_q(x), self.to_k(x), self.to_v(x))[0])


class OtherNames(nn.Module):
    """Right computation, but the projections are called query/key/value/out."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.query, self.to_k, self.to_v, self.to_out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        raise AssertionError("never called: the names are checked first")


class NoBias(MultiHead):
    def __init__(self, dim, heads):
        super().__init__(dim, heads)
        self.to_out = nn.Linear(dim, dim, bias=False)


# --- causal_mask ----------------------------------------------------------------------------------


def test_causal_mask_right(capsys):
    passes(check.causal_mask, causal_mask, capsys)


def test_causal_mask_with_triu_names_the_first_wrong_entry(capsys):
    """triu agrees for length 1, so the first miss is entry [0, 1] of the length-2 case."""
    message = fails(check.causal_mask, lambda n: torch.ones(n, n, dtype=torch.bool).triu(), capsys,
                    r"output\[0, 1\] is True, expected False")
    assert "(on length=2)" in message


def test_causal_mask_wrong_dtype(capsys):
    fails(check.causal_mask, lambda n: torch.ones(n, n).tril(), capsys,
          r"output has dtype torch.float32, expected torch.bool \(on length=1\)")


def test_causal_mask_wrong_shape(capsys):
    fails(check.causal_mask, lambda n: torch.ones(n, n + 1, dtype=torch.bool).tril(), capsys,
          r"output has shape \(1, 2\), expected \(1, 1\)")


def test_causal_mask_not_a_tensor(capsys):
    fails(check.causal_mask, lambda n: [[True]], capsys, r"output should be a torch.Tensor, got list")


def test_not_implemented_yet(capsys):
    def exercise(length):
        raise NotImplementedError

    fails(check.causal_mask, exercise, capsys, r"not implemented yet")


def test_a_crash_is_reported_with_the_case(capsys):
    def crashes(length):
        return torch.ones(length, length).tril().bool()[length]  # off by one

    fails(check.causal_mask, crashes, capsys, r"raised IndexError: .* \(on length=1\)")


# --- scaled_dot_product_attention ---------------------------------------------------------------


def test_attention_right(capsys):
    passes(check.scaled_dot_product_attention, attention, capsys)


def test_attention_without_scale(capsys):
    """Forgetting 1/√d changes the output values: the message points at an entry of output[0]."""
    fails(check.scaled_dot_product_attention, lambda q, k, v, mask=None: attention(q, k, v, mask, scale=False),
          capsys, r"output\[0\]\[0, \d+, \d+\] is -?[\d.]+, expected -?[\d.]+ \(\d+% of the entries differ; "
          r"tolerance atol=1e-05, rtol=0.0001\) \(on q \(1, 4, 8\), k \(1, 4, 8\), no mask\)")


def test_attention_ignoring_the_mask(capsys):
    """Passes the unmasked cases, fails the first masked one."""
    fails(check.scaled_dot_product_attention, lambda q, k, v, mask=None: attention(q, k, v), capsys,
          r"output\[0\].*\(on q \(1, 4, 8\), k \(1, 4, 8\), random boolean mask\)")


def test_attention_masking_with_zero_instead_of_minus_infinity(capsys):
    fails(check.scaled_dot_product_attention, lambda q, k, v, mask=None: attention(q, k, v, mask, fill=0.0),
          capsys, r"random boolean mask")


def test_attention_softmax_over_the_queries(capsys):
    def wrong_axis(q, k, v, mask=None):
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-2)
        return weights @ v, weights

    fails(check.scaled_dot_product_attention, wrong_axis, capsys, r"output\[0\]\[0, \d+, \d+\]")


def test_attention_returning_only_the_output(capsys):
    fails(check.scaled_dot_product_attention, lambda q, k, v, mask=None: attention(q, k, v, mask)[0],
          capsys, r"output should be a tuple of 2 items, got a tensor of shape \(1, 4, 8\)")


# --- MultiHeadAttention --------------------------------------------------------------------------


def test_multi_head_right(capsys):
    passes(check.multi_head_attention, MultiHead, capsys)


def test_multi_head_one_big_head(capsys):
    fails(check.multi_head_attention, OneBigHead, capsys,
          r"output\[0, \d+, \d+\] is .*\(built with dim=16, heads=4, run on x \(2, 5, 16\)\)")


def test_multi_head_without_scale(capsys):
    class NoScale(MultiHead):
        def attend(self, q, k, v):
            return attention(q, k, v, scale=False)[0]

    fails(check.multi_head_attention, NoScale, capsys, r"output\[0, \d+, \d+\]")


def test_multi_head_wrong_parameter_names(capsys):
    message = fails(check.multi_head_attention, OtherNames, capsys, r"the parameters differ")
    assert "missing ['to_q.bias (16,)', 'to_q.weight (16, 16)']" in message
    assert "unexpected ['query.bias (16,)', 'query.weight (16, 16)']" in message


def test_multi_head_missing_bias(capsys):
    fails(check.multi_head_attention, NoBias, capsys, r"missing \['to_out.bias \(16,\)'\], unexpected \[\]")


def test_multi_head_not_implemented(capsys):
    class Exercise(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            raise NotImplementedError

    fails(check.multi_head_attention, Exercise, capsys, r"not implemented yet")


def test_multi_head_builds_something_else(capsys):
    fails(check.multi_head_attention, lambda dim, heads: "a string", capsys, r"not an nn.Module")


# --- sinusoidal_table ----------------------------------------------------------------------------


def test_sinusoidal_table_right(capsys):
    passes(check.sinusoidal_table, sinusoidal_table, capsys)


def test_sinusoidal_table_sin_and_cos_swapped(capsys):
    fails(check.sinusoidal_table, lambda n, d: sinusoidal_table(n, d, swap=True), capsys,
          r"output\[0, 0\] is 1, expected 0 .*\(on max_len=1, dim=2\)")


def test_sinusoidal_table_frequency_without_the_two(capsys):
    """10000^(i/dim) instead of 10000^(2i/dim): feature 0 is right, the first miss is [1, 2] with dim=4."""
    fails(check.sinusoidal_table, lambda n, d: sinusoidal_table(n, d, frequency_step=1), capsys,
          r"output\[1, 2\] is .* \(on max_len=8, dim=4\)")


def test_sinusoidal_table_float64(capsys):
    fails(check.sinusoidal_table, lambda n, d: sinusoidal_table(n, d).double(), capsys,
          r"dtype torch.float64, expected torch.float32")


# --- the framework itself ------------------------------------------------------------------------


def test_first_mismatch_rules():
    """Tolerances for floats, exact for ints and bools, NaN equals NaN, nested tuples named by index."""
    x = torch.tensor([1.0, 2.0, float("nan")])
    assert first_mismatch(x, x + 1e-7, atol=1e-6, rtol=0) is None
    assert first_mismatch(x, x + 1e-5, atol=1e-6, rtol=0) == (
        "output[0] is 1.00001, expected 1 (67% of the entries differ; tolerance atol=1e-06, rtol=0)"
    )
    ints = torch.tensor([[1, 2], [3, 4]])
    assert first_mismatch(ints, torch.tensor([[1, 2], [3, 5]]), atol=10, rtol=10) == (
        "output[1, 1] is 5, expected 4 (25% of the entries differ)"
    )
    nested = (ints, (x, 3))
    assert first_mismatch(nested, (ints, (x, 4)), atol=0, rtol=0) == "output[1][1] is 4, expected 3"
    assert first_mismatch(nested, (ints,), atol=0, rtol=0).startswith("output should be a tuple of 2 items")
    assert first_mismatch(nested, (ints, (x, 3)), atol=0, rtol=0) is None


def test_custom_function_checker(capsys):
    """A checker built from Case objects passes kwargs through and names the failing case."""
    checker = FunctionChecker("double", lambda x, *, times=2: x * times,
                              lambda: [Case("x=1", (torch.tensor(1.0),)), Case("x=3, times=3", (torch.tensor(3.0),), {"times": 3})])
    passes(checker, lambda x, times=2: x * times, capsys)
    fails(checker, lambda x, times=2: x * 2, capsys, r"output\[\] is 6, expected 9 .*\(on x=3, times=3\)")


def test_custom_module_checker_gives_the_learner_the_reference_weights(capsys):
    """Random initialisation cannot make a right module fail: the reference's weights are loaded first."""
    checker = ModuleChecker("Linear", nn.Linear, lambda: [(Case("3 -> 2", (3, 2)), Case("x", (torch.randn(4, 3),)))])
    torch.manual_seed(123)
    passes(checker, nn.Linear, capsys)

    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    fails(checker, Doubled, capsys, r"built with 3 -> 2, run on x")
