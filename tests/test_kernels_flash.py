"""FlashAttention kernel: forward and gradients against plain PyTorch attention, input checks, dispatch.

Without a GPU the kernels run in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1), so shapes
stay small; bfloat16 is not tested there because the interpreter's bfloat16 arithmetic is wrong.
"""

import importlib

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import course_lib.nn.attention as attention_module  # noqa: E402
from course_lib.kernels import attention_reference, flash_attention, interpreting  # noqa: E402
from course_lib.nn import MultiHeadAttention, scaled_dot_product_attention  # noqa: E402

flash_module = importlib.import_module("course_lib.kernels.flash_attention")  # the package re-export hides it
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(not (interpreting() or torch.cuda.is_available()),
                                reason="Triton kernels need a CUDA device or TRITON_INTERPRET=1")

DTYPES = (torch.float32, torch.float16)
# outputs and gradients against an fp32 reference computed from the same (already rounded) inputs
FORWARD_TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3)}
BACKWARD_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=1e-2, rtol=1e-2)}

# (batch, heads, Tq, Tk, D, causal): ragged lengths (the interpreter's blocks are 16 wide), Tq != Tk, head dims
FORWARD_CASES = [
    *[(1, 2, t, t, 32, causal) for t in (1, 17, 63, 130) for causal in (False, True)],
    (1, 2, 17, 63, 32, False), (1, 2, 130, 1, 32, False), (2, 3, 63, 17, 32, False),
    (1, 2, 17, 40, 32, True), (1, 2, 40, 17, 32, True),
    *[(1, 1, 33, 33, d, True) for d in (16, 24, 48, 64, 80, 96, 128)],
]
BACKWARD_CASES = [
    (1, 2, 17, 17, 32, False), (1, 2, 63, 63, 32, True), (2, 1, 40, 17, 16, True),
    (1, 1, 17, 50, 64, False), (1, 1, 33, 33, 24, True), (1, 1, 20, 20, 128, True),
]


def _inputs(batch: int, heads: int, tq: int, tk: int, d: int, dtype: torch.dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, t, d, generator=generator).to(DEVICE, dtype) for t in (tq, tk, tk))
    return q, k, v


def _case_id(case) -> str:
    batch, heads, tq, tk, d, causal = case
    return f"B{batch}H{heads}-Tq{tq}-Tk{tk}-D{d}{'-causal' if causal else ''}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", FORWARD_CASES, ids=_case_id)
def test_forward_matches_reference(case, dtype):
    batch, heads, tq, tk, d, causal = case
    q, k, v = _inputs(batch, heads, tq, tk, d, dtype)
    out = flash_attention(q, k, v, causal=causal)
    assert out.shape == q.shape and out.dtype == dtype
    expected = attention_reference(q.float(), k.float(), v.float(), causal=causal)
    torch.testing.assert_close(out.float(), expected, **FORWARD_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", BACKWARD_CASES, ids=_case_id)
def test_gradients_match_reference_autograd(case, dtype):
    batch, heads, tq, tk, d, causal = case
    inputs = [t.requires_grad_() for t in _inputs(batch, heads, tq, tk, d, dtype, seed=1)]
    grad_out = torch.randn(batch, heads, tq, d, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)
    flash_attention(*inputs, causal=causal).backward(grad_out)
    reference_inputs = [t.detach().float().requires_grad_() for t in inputs]
    attention_reference(*reference_inputs, causal=causal).backward(grad_out.float())
    for name, actual, expected in zip("qkv", inputs, reference_inputs):
        assert actual.grad.dtype == dtype, name
        torch.testing.assert_close(actual.grad.float(), expected.grad, **BACKWARD_TOL[dtype], msg=f"d{name}")


@pytest.mark.parametrize("blocks", [(16, 32), (32, 16)], ids=["M16-N32", "M32-N16"])
def test_unequal_query_and_key_blocks_keep_the_causal_skip_right(monkeypatch, blocks):
    """On a GPU the query and key blocks may differ in size: the diagonal-block skips must still be exact."""
    monkeypatch.setattr(flash_module, "_blocks", lambda head_dim, backward=False: (*blocks, 32))
    inputs = [t.requires_grad_() for t in _inputs(1, 1, 50, 50, 32, torch.float32, seed=3)]
    out = flash_attention(*inputs, causal=True)
    out.sum().backward()
    reference_inputs = [t.detach().requires_grad_() for t in inputs]
    expected = attention_reference(*reference_inputs, causal=True)
    expected.sum().backward()
    torch.testing.assert_close(out, expected, **FORWARD_TOL[torch.float32])
    for actual, reference in zip(inputs, reference_inputs):
        torch.testing.assert_close(actual.grad, reference.grad, **BACKWARD_TOL[torch.float32])


def test_custom_scale():
    q, k, v = _inputs(1, 2, 17, 17, 16, torch.float32)
    out = flash_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(out, attention_reference(q, k, v, scale=0.3), **FORWARD_TOL[torch.float32])


@pytest.mark.parametrize("tq, tk", [(5, 9), (9, 5), (7, 7)])
def test_reference_causal_is_top_left_like_pytorch(tq, tk):
    """The causal convention is PyTorch's is_causal: query i sees keys 0..i whatever the lengths."""
    q, k, v = (torch.randn(1, 2, t, 16) for t in (tq, tk, tk))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(attention_reference(q, k, v, causal=True), expected, atol=1e-5, rtol=1e-5)


def _tensor(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(DEVICE, dtype)


@pytest.mark.parametrize(
    "q, k, v, message",
    [
        (_tensor(1, 2, 4, 8), _tensor(1, 2, 4, 8), _tensor(1, 2, 4, 8), r"head dim D=8 must lie in \[16, 128\]"),
        (_tensor(1, 1, 4, 256), _tensor(1, 1, 4, 256), _tensor(1, 1, 4, 256), "head dim D=256"),
        (_tensor(2, 4, 16), _tensor(1, 2, 4, 16), _tensor(1, 2, 4, 16), r"q has shape \(2, 4, 16\); expected 4"),
        (_tensor(1, 2, 4, 16), _tensor(1, 2, 5, 16), _tensor(1, 2, 4, 16), r"k \(1, 2, 5, 16\) and v \(1, 2, 4, 16\)"),
        (_tensor(2, 2, 4, 16), _tensor(1, 2, 4, 16), _tensor(1, 2, 4, 16), "must share batch, heads and head dim"),
        (_tensor(1, 2, 4, 16), _tensor(1, 3, 4, 16), _tensor(1, 3, 4, 16), "must share batch, heads"),
        (_tensor(1, 2, 4, 16), _tensor(1, 2, 4, 16, dtype=torch.float16), _tensor(1, 2, 4, 16),
         "dtypes torch.float32, torch.float16, torch.float32; they must match"),
        (_tensor(1, 2, 4, 16), _tensor(1, 2, 0, 16), _tensor(1, 2, 0, 16), "at least one query and one key"),
        (_tensor(1, 2, 4, 16).to(torch.float64), _tensor(1, 2, 4, 16), _tensor(1, 2, 4, 16),
         "q has dtype torch.float64"),
        (_tensor(1, 2, 16, 4).transpose(-2, -1), _tensor(1, 2, 4, 16), _tensor(1, 2, 4, 16), "q .* is not contiguous"),
    ],
    ids=["D-too-small", "D-too-large", "ndim", "k-v-shapes", "batch", "heads", "dtypes", "empty", "float64",
         "non-contiguous"],
)
def test_invalid_inputs_are_refused_with_clear_messages(q, k, v, message):
    with pytest.raises(ValueError, match=message):
        flash_attention(q, k, v)


@pytest.fixture
def kernel_spy(monkeypatch):
    """Make nn.attention believe the kernels apply (as on CUDA) and record each flash_attention call."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return flash_attention(*args, **kwargs)

    monkeypatch.setattr(attention_module, "use_kernels", lambda *tensors: True)
    monkeypatch.setattr(flash_module, "flash_attention", spy)  # nn.attention imports it on use
    return calls


@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_dispatches_to_the_kernel(kernel_spy, causal):
    q, k, v = (torch.randn(2, 2, 21, 32) for _ in range(3))
    out = scaled_dot_product_attention(q, k, v, causal=causal, impl="fused")
    assert kernel_spy == [{"causal": causal}]
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(out, expected, **FORWARD_TOL[torch.float32])


@pytest.mark.parametrize(
    "options",
    [{"impl": "explicit"}, {"impl": "fused", "mask": torch.ones(21, 21, dtype=torch.bool).tril()},
     {"impl": "fused", "dropout": 0.1}, {"impl": "fused", "grouped": True},
     {"impl": "fused", "head_dim": 8}, {"impl": "fused", "causal": True, "keys": 30}],
    ids=["explicit", "mask", "dropout", "grouped", "small-head", "causal-unequal-lengths"],
)
def test_calls_the_kernel_cannot_take_keep_the_pytorch_path(kernel_spy, options):
    options = dict(options)
    kv_heads = 1 if options.pop("grouped", False) else 2
    head_dim, keys = options.pop("head_dim", 32), options.pop("keys", 21)
    q = torch.randn(1, 2, 21, head_dim)
    k, v = (torch.randn(1, kv_heads, keys, head_dim) for _ in range(2))
    scaled_dot_product_attention(q, k, v, **options)
    assert kernel_spy == []


def test_multi_head_attention_trains_through_the_kernel(kernel_spy):
    torch.manual_seed(0)
    layer = MultiHeadAttention(64, 4)
    x = torch.randn(2, 19, 64)
    out = layer(x, causal=True)
    assert len(kernel_spy) == 1
    out.square().mean().backward()
    kernel_grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    layer.impl = "explicit"
    expected = layer(x, causal=True)
    expected.square().mean().backward()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for actual, reference in zip(kernel_grads, (p.grad for p in layer.parameters())):
        torch.testing.assert_close(actual, reference, atol=1e-5, rtol=1e-5)
