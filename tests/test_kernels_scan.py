"""The selective-scan kernel against its sequential reference, and the reference against a closed form."""

import itertools

import pytest
import torch

pytest.importorskip("triton")

from course_lib.kernels import interpreting  # noqa: E402
from course_lib.kernels.selective_scan import (  # noqa: E402
    BLOCK_D,
    selective_scan,
    selective_scan_reference,
)

if not (interpreting() or torch.cuda.is_available()):
    pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"
# Both sides read the same rounded inputs and accumulate in fp32; fp16 differs by the output rounding.
TOLERANCES = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=5e-3, rtol=5e-3)}


def make_inputs(batch, dim, n_state, length, dtype, *, seed=0, with_d=True, with_bias=False):
    """Mamba-like inputs: negative A so states decay, positive step sizes, unit-scale u, B, C."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, length, generator=g)
    delta = torch.rand(batch, dim, length, generator=g) * 0.5 + 0.01
    A = -torch.rand(dim, n_state, generator=g) * 2 - 0.1
    B = torch.randn(batch, n_state, length, generator=g)
    C = torch.randn(batch, n_state, length, generator=g)
    D = torch.randn(dim, generator=g) if with_d else None
    bias = torch.randn(dim, generator=g) * 0.5 if with_bias else None
    cast = lambda t: None if t is None else t.to(DEVICE, dtype)  # noqa: E731
    return [cast(t) for t in (u, delta, A, B, C, D)], cast(bias)


SHAPES = [  # (batch, dim, N, L): dim not a multiple of BLOCK_D, N not a power of two, L of 1
    (1, 1, 1, 1), (2, BLOCK_D + 4, 4, 7), (1, 2 * BLOCK_D, 16, 64), (2, 5, 5, 7),
    (1, BLOCK_D - 3, 5, 64), (2, BLOCK_D + 1, 1, 64), (1, 3, 16, 1), (2, 7, 4, 64),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_reference(shape, dtype):
    (u, delta, A, B, C, D), _ = make_inputs(*shape, dtype, with_d=True)
    got = selective_scan(u, delta, A, B, C, D)
    want = selective_scan_reference(u, delta, A, B, C, D)
    assert got.dtype == dtype and got.shape == u.shape
    torch.testing.assert_close(got, want, **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("with_d,with_bias,softplus", list(itertools.product([False, True], repeat=3)))
def test_kernel_options(with_d, with_bias, softplus, dtype):
    (u, delta, A, B, C, D), bias = make_inputs(2, BLOCK_D + 3, 5, 7, dtype, seed=1, with_d=with_d,
                                               with_bias=with_bias)
    if softplus:  # raw step sizes around zero, as a Mamba layer feeds them; include one above the threshold
        delta = (delta - 0.3) * 4
        delta[0, 0, 0] = 25.0
    kwargs = dict(delta_bias=bias, delta_softplus=softplus)
    got = selective_scan(u, delta, A, B, C, D, **kwargs)
    torch.testing.assert_close(got, selective_scan_reference(u, delta, A, B, C, D, **kwargs), **TOLERANCES[dtype])


def closed_form(u, delta, A, B, C, D):
    """h_t = sum_{s<=t} exp(A * (delta_{s+1} + ... + delta_t)) * delta_s * B_s * u_s: no recurrence at all."""
    cum = delta.cumsum(-1)                                          # (batch, dim, L)
    length = u.shape[-1]
    y = torch.zeros_like(u)
    for t in range(length):
        for s in range(t + 1):
            decay = torch.exp(A[None] * (cum[..., t] - cum[..., s])[..., None])   # (batch, dim, N)
            h_part = decay * (delta[..., s] * u[..., s])[..., None] * B[:, None, :, s]
            y[..., t] += (h_part * C[:, None, :, t]).sum(-1)
    return y + D[:, None] * u


def test_reference_matches_closed_form():
    (u, delta, A, B, C, D), _ = make_inputs(2, 3, 4, 3, torch.float64, seed=2)
    want = closed_form(u, delta, A, B, C, D)
    torch.testing.assert_close(selective_scan_reference(u, delta, A, B, C, D).double(), want,
                               atol=1e-5, rtol=1e-5)


def test_reference_single_state_by_hand():
    """One channel, one state, L=2: h1 = d1 b1 u1, h2 = e^{d2 a} h1 + d2 b2 u2, y = c h + D u."""
    u, delta, a, b, c, d = [1.0, 2.0], [0.5, 0.25], -1.0, [3.0, -1.0], [2.0, 0.5], 0.1
    h1 = delta[0] * b[0] * u[0]
    h2 = torch.exp(torch.tensor(delta[1] * a)).item() * h1 + delta[1] * b[1] * u[1]
    want = torch.tensor([[[c[0] * h1 + d * u[0], c[1] * h2 + d * u[1]]]])
    got = selective_scan_reference(torch.tensor([[u]]), torch.tensor([[delta]]), torch.tensor([[a]]),
                                   torch.tensor([[b]]), torch.tensor([[c]]), torch.tensor([d]))
    torch.testing.assert_close(got, want)


def test_softplus_and_bias_are_applied_to_delta():
    (u, delta, A, B, C, D), bias = make_inputs(1, 3, 2, 4, torch.float32, with_bias=True)
    direct = selective_scan_reference(u, torch.nn.functional.softplus(delta + bias[:, None]), A, B, C, D)
    torch.testing.assert_close(
        selective_scan_reference(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True), direct)


@pytest.mark.parametrize("fn", [selective_scan, selective_scan_reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("name,bad,pattern", [
    ("delta", torch.zeros(2, 5, 6), r"delta has shape \(2, 5, 6\); expected \(2, 5, 7\)"),
    ("A", torch.zeros(4, 3), r"A has shape \(4, 3\); expected \(5, 3\)"),
    ("B", torch.zeros(2, 4, 7), r"B has shape \(2, 4, 7\); expected \(2, 3, 7\)"),
    ("C", torch.zeros(2, 3), r"C has shape \(2, 3\); expected 3 dimensions"),
    ("D", torch.zeros(4), r"D has shape \(4,\); expected \(5,\)"),
    ("delta_bias", torch.zeros(5, 1), r"delta_bias has shape \(5, 1\); expected 1 dimensions"),
])
def test_shape_errors_name_the_argument(fn, name, bad, pattern):
    (u, delta, A, B, C, D), _ = make_inputs(2, 5, 3, 7, torch.float32)
    args = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=None)
    args[name] = bad.to(DEVICE)
    with pytest.raises(ValueError, match=pattern):
        fn(args["u"], args["delta"], args["A"], args["B"], args["C"], args["D"], delta_bias=args["delta_bias"])


def test_kernel_refuses_bad_dtype_and_layout():
    (u, delta, A, B, C, D), _ = make_inputs(1, 4, 2, 5, torch.float32)
    with pytest.raises(ValueError, match="u has dtype torch.int64"):
        selective_scan(u.long(), delta, A, B, C, D)
    with pytest.raises(ValueError, match="B .* is not contiguous"):
        selective_scan(u, delta, A, B.transpose(1, 2).contiguous().transpose(1, 2), C, D)
    with pytest.raises(TypeError, match="C must be a torch.Tensor"):
        selective_scan(u, delta, A, B, C.tolist(), D)
