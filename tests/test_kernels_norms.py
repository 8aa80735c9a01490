"""The softmax, LayerNorm and RMSNorm kernels match their PyTorch references, forward and backward,
on ragged widths, several leading shapes and both dtypes the interpreter gets right (fp32, fp16)."""

import pytest
import torch

from course_lib import kernels  # importable without Triton; the skips below say when it cannot run
from course_lib.kernels import _triton
from course_lib.kernels import norms as kernel_norms
from course_lib.nn import norms as nn_norms

pytest.importorskip("triton")
if not (kernels.interpreting() or torch.cuda.is_available()):
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() and not kernels.interpreting() else "cpu"
DTYPES = [torch.float32, torch.float16]
DTYPE_IDS = ["fp32", "fp16"]
# (atol, rtol): fp32 differs from the references only in summation order; fp16 by an output rounding step
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3)}
# gradients pass through more arithmetic (row sums of products), and fp16 rounds dx once more
GRAD_TOLERANCES = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2)}
WIDTHS = [1, 7, 33, 100, 257, 1000, 4097]
LEADING = [(), (1,), (5,), (2, 3)]


def _close(actual, expected, tolerances, what):
    atol, rtol = tolerances[expected.dtype if expected.dtype in tolerances else torch.float32]
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _data(shape, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * 2).to(device=DEVICE, dtype=dtype)


def _params(dim, *, seed=1):
    generator = torch.Generator().manual_seed(seed)
    weight = 1 + 0.2 * torch.randn(dim, generator=generator)
    bias = 0.1 * torch.randn(dim, generator=generator)
    return weight.to(DEVICE).requires_grad_(), bias.to(DEVICE).requires_grad_()


# ---- softmax ----

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("width", WIDTHS)
def test_softmax_matches_reference_on_ragged_widths(width, dtype):
    x = _data((3, width), dtype)
    y = kernels.softmax(x)
    assert y.dtype == dtype and y.shape == x.shape
    _close(y, kernels.softmax_reference(x), TOLERANCES, f"softmax width {width}")


@pytest.mark.parametrize("leading", LEADING)
def test_softmax_flattens_leading_dimensions(leading):
    x = _data((*leading, 33), torch.float32)
    _close(kernels.softmax(x), kernels.softmax_reference(x), TOLERANCES, f"softmax {leading}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("width", [7, 33, 100, 257])
def test_softmax_two_pass_loop_for_rows_wider_than_a_block(width, dtype):
    """max_block=16 makes every row wider than 16 take the online max/sum loop (as 16384-wide rows would)."""
    x = _data((2, width), dtype) * 4
    _close(kernels.softmax(x, max_block=16), kernels.softmax_reference(x), TOLERANCES, f"loop width {width}")


def test_softmax_handles_minus_infinity_as_masking_does():
    x = torch.full((2, 40), float("-inf"), device=DEVICE)
    x[:, 3] = 1.0
    x[:, 30] = 1.0
    expected = kernels.softmax_reference(x)
    _close(kernels.softmax(x), expected, TOLERANCES, "one block")
    _close(kernels.softmax(x, max_block=8), expected, TOLERANCES, "loop")


# ---- layer norm and RMS norm: forward and backward against reference autograd ----

def _norm_case(kind, x, weight, bias):
    if kind == "layer":
        return (kernel_norms.layer_norm, kernel_norms.layer_norm_reference, (x, weight, bias, 1e-5))
    return (kernel_norms.rms_norm, kernel_norms.rms_norm_reference, (x, weight, 1e-6))


def _check_norm(kind, shape, dtype, *, with_bias=True):
    """Kernel output and gradients (for x, weight and bias) against the reference run through autograd."""
    x = _data(shape, dtype).requires_grad_()
    weight, bias = _params(shape[-1])
    kernel, reference, args = _norm_case(kind, x, weight, bias if with_bias else None)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    y, y_ref = kernel(*args), reference(*args)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    _close(y, y_ref, TOLERANCES, f"{kind} forward {shape}")
    dy = _data(y_ref.shape, y_ref.dtype, seed=2)
    grads = torch.autograd.grad(y, tensors, dy)
    ref_grads = torch.autograd.grad(y_ref, tensors, dy)
    for name, grad, ref_grad in zip(["x", "weight", "bias"], grads, ref_grads):
        assert grad.dtype == ref_grad.dtype, name
        _close(grad, ref_grad, GRAD_TOLERANCES, f"{kind} d{name} {shape} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_norm_matches_reference_on_ragged_widths(kind, width, dtype):
    _check_norm(kind, (5, width), dtype)


@pytest.mark.parametrize("leading", LEADING)
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_norm_flattens_leading_dimensions(kind, leading):
    _check_norm(kind, (*leading, 33), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_layer_norm_without_bias(dtype):
    _check_norm("layer", (4, 100), dtype, with_bias=False)


def test_norm_backward_sums_weight_grads_over_many_programs():
    """More rows than the backward has programs: each program accumulates a run of rows."""
    _check_norm("layer", (37, 20), torch.float32)
    _check_norm("rms", (37, 20), torch.float32)


def test_rms_norm_keeps_the_course_rounding_order():
    """fp16 x, fp32 weight: normalised in fp32, rounded to fp16, scaled in fp32 (as course_lib.nn.RMSNorm).

    The backward rounds dy * weight to fp16 where autograd's cast does, so nearly all of dx is bit-equal."""
    x = _data((4, 257), torch.float16).requires_grad_()
    weight, _ = _params(257)
    module = nn_norms.RMSNorm(257).to(DEVICE)
    with torch.no_grad():
        module.weight.copy_(weight)
    expected, actual = module(x), kernel_norms.rms_norm(x, weight, module.eps)
    assert actual.dtype == expected.dtype == torch.float32
    _close(actual, expected, {torch.float32: (1e-6, 1e-6)}, "rms order")
    dy = _data(expected.shape, torch.float32, seed=2)
    (dx_expected,) = torch.autograd.grad(expected, [x], dy)
    (dx_actual,) = torch.autograd.grad(actual, [x], dy)
    _close(dx_actual, dx_expected, GRAD_TOLERANCES, "rms dx")
    differ = (dx_actual != dx_expected).float().mean().item()
    assert differ < 0.02, f"{differ:.1%} of dx differs from autograd's (a missed rounding makes about 25%)"


def test_softmax_takes_16384_wide_rows():
    x = _data((2, 16384), torch.float32)
    _close(kernels.softmax(x), kernels.softmax_reference(x), TOLERANCES, "softmax 16384")


def test_empty_inputs_give_empty_outputs():
    x = torch.ones(0, 8, device=DEVICE)
    weight = torch.ones(8, device=DEVICE)
    assert kernels.softmax(x).shape == (0, 8)
    assert kernels.layer_norm(x, weight).shape == (0, 8)
    assert kernels.rms_norm(x, weight).shape == (0, 8)


# ---- validation ----

@pytest.mark.parametrize("call", [
    lambda x, w: kernels.softmax(x),
    lambda x, w: kernels.layer_norm(x, w, None),
    lambda x, w: kernels.rms_norm(x, w),
], ids=["softmax", "layer_norm", "rms_norm"])
def test_kernels_refuse_bad_dtype_and_layout(call):
    weight = torch.ones(8, device=DEVICE)
    with pytest.raises(ValueError, match="x has dtype torch.int64"):
        call(torch.ones(4, 8, dtype=torch.int64, device=DEVICE), weight)
    with pytest.raises(ValueError, match="x .* is not contiguous"):
        call(torch.ones(8, 4, device=DEVICE).t(), weight)


@pytest.mark.parametrize("kernel", [kernels.layer_norm, kernels.rms_norm], ids=["layer_norm", "rms_norm"])
def test_norms_refuse_bad_weight_and_eps(kernel):
    x = torch.ones(4, 8, device=DEVICE)
    with pytest.raises(ValueError, match=r"weight has shape \(7,\); expected \(8,\)"):
        kernel(x, torch.ones(7, device=DEVICE))
    with pytest.raises(ValueError, match="weight has shape .*; expected 1 dimensions"):
        kernel(x, torch.ones(1, 8, device=DEVICE))
    with pytest.raises(ValueError, match="eps=0.0 must be a positive number"):
        kernel(x, torch.ones(8, device=DEVICE), eps=0.0)
    with pytest.raises(ValueError, match="eps=-1 must be a positive number"):
        kernel(x, torch.ones(8, device=DEVICE), eps=-1)


def test_layer_norm_refuses_bad_bias():
    x = torch.ones(4, 8, device=DEVICE)
    with pytest.raises(ValueError, match=r"bias has shape \(9,\); expected \(8,\)"):
        kernels.layer_norm(x, torch.ones(8, device=DEVICE), torch.zeros(9, device=DEVICE))


def test_norms_refuse_rows_wider_than_one_block():
    dim = kernel_norms.MAX_DIM + 1
    with pytest.raises(ValueError, match=f"x has last dimension {dim}"):
        kernels.rms_norm(torch.ones(1, dim, device=DEVICE), torch.ones(dim, device=DEVICE))


def test_softmax_refuses_a_bad_block():
    with pytest.raises(ValueError, match="max_block=12 must be a positive power of two"):
        kernels.softmax(torch.ones(2, 8, device=DEVICE), max_block=12)


# ---- dispatch from course_lib.nn ----

@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_nn_norms_dispatch_to_the_kernels(kind, monkeypatch):
    """With the dispatch rule forced to True, the modules call the kernels and still match PyTorch."""
    x = _data((2, 3, 33), torch.float32)
    module = nn_norms.make_norm(kind, 33).to(DEVICE)
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
    monkeypatch.setattr(_triton, "use_kernels", lambda *tensors: False)
    expected = module(x)  # the PyTorch path
    name = "layer_norm" if kind == "layer" else "rms_norm"
    calls = []
    real = getattr(kernel_norms, name)

    def spy(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(_triton, "use_kernels", lambda *tensors: True)
    monkeypatch.setattr(kernel_norms, name, spy)
    actual = module(x)
    assert calls == [name]
    _close(actual, expected, TOLERANCES, f"nn {kind}")
    actual.sum().backward()
    assert module.weight.grad is not None and module.weight.grad.shape == (33,)
