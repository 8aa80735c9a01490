"""Tests for course_lib.models.mamba: scans against the plain recurrence, Mamba against Hugging Face,
step-by-step inference against the parallel pass, S4D's convolution against its recurrence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from course_lib.kernels.selective_scan import selective_scan_reference
from course_lib.models.mamba import (
    Mamba,
    Mamba2Mixer,
    MambaConfig,
    S4DMixer,
    linear_scan_parallel,
    linear_scan_sequential,
    mamba_scan,
    ssd_chunked,
    ssd_quadratic,
    ssd_recurrent,
)

RTOL, ATOL = 1e-5, 1e-5  # fp32


def naive_recurrence(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t written out with explicit indices, as independent of the library as possible."""
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0.clone()
    out = torch.empty_like(b)
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out[:, t] = h
    return out


# ----------------------------------------------------------------------------------------------
# Linear scans


@pytest.mark.parametrize("shape", [(1, 1), (2, 2, 3), (3, 7, 4), (2, 16, 5, 3), (1, 33, 2), (2, 100, 3)])
@pytest.mark.parametrize("with_h0", [False, True])
def test_scans_equal_naive_recurrence(shape: tuple[int, ...], with_h0: bool) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    a = torch.rand(shape, generator=gen) * 1.2 - 0.1       # some negative, some above 1
    b = torch.randn(shape, generator=gen)
    h0 = torch.randn(shape[0], *shape[2:], generator=gen) if with_h0 else None
    expected = naive_recurrence(a, b, h0)
    torch.testing.assert_close(linear_scan_sequential(a, b, h0), expected, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(linear_scan_parallel(a, b, h0), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("length", [1, 5, 16, 37])
def test_parallel_scan_gradients_equal_sequential(length: int) -> None:
    gen = torch.Generator().manual_seed(length)
    a0 = torch.rand(2, length, 3, generator=gen)
    b0 = torch.randn(2, length, 3, generator=gen)
    h00 = torch.randn(2, 3, generator=gen)
    weights = torch.randn(2, length, 3, generator=gen)
    grads = []
    for scan in (linear_scan_sequential, linear_scan_parallel):
        a, b, h0 = (t.clone().requires_grad_() for t in (a0, b0, h00))
        (scan(a, b, h0) * weights).sum().backward()
        grads.append((a.grad, b.grad, h0.grad))
    for g_seq, g_par in zip(*grads, strict=True):
        torch.testing.assert_close(g_par, g_seq, rtol=RTOL, atol=ATOL)


def test_parallel_scan_complex() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.polar(torch.rand(2, 19, 3, generator=gen), torch.randn(2, 19, 3, generator=gen))
    b = torch.randn(2, 19, 3, dtype=torch.cfloat, generator=gen)
    torch.testing.assert_close(linear_scan_parallel(a, b), naive_recurrence(a, b), rtol=RTOL, atol=ATOL)


def test_scan_errors() -> None:
    with pytest.raises(ValueError, match=r"a has shape \(2, 3\) and b has shape \(2, 4\)"):
        linear_scan_parallel(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        linear_scan_sequential(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match=r"h0 has shape \(2, 5\); expected \(2, 4\)"):
        linear_scan_parallel(torch.ones(2, 3, 4), torch.ones(2, 3, 4), torch.ones(2, 5))


# ----------------------------------------------------------------------------------------------
# Selective scan against the course's kernel reference


@pytest.mark.parametrize(("batch", "length", "dim", "n_state"), [(1, 1, 1, 1), (2, 9, 4, 3), (3, 24, 5, 8)])
@pytest.mark.parametrize("scan", ["sequential", "parallel"])
def test_selective_scan_equals_reference(batch: int, length: int, dim: int, n_state: int, scan: str) -> None:
    gen = torch.Generator().manual_seed(batch * 100 + length)
    u = torch.randn(batch, length, dim, generator=gen)
    delta = F.softplus(torch.randn(batch, length, dim, generator=gen))
    A = -torch.rand(dim, n_state, generator=gen) * 2
    B, C = torch.randn(2, batch, length, n_state, generator=gen)
    D = torch.randn(dim, generator=gen)
    y, last = mamba_scan(u, delta, A, B, C, D, scan=scan)
    expected = selective_scan_reference(*(rearrange(t, "b l c -> b c l") for t in (u, delta, B, C)[:2]), A,
                                        *(rearrange(t, "b l n -> b n l") for t in (B, C)), D)
    torch.testing.assert_close(y, rearrange(expected, "b c l -> b l c"), rtol=RTOL, atol=ATOL)
    # the last state continues the scan: running the two halves in turn equals running it whole
    if length > 1:
        half = length // 2
        _, h_mid = mamba_scan(u[:, :half], delta[:, :half], A, B[:, :half], C[:, :half], D, scan=scan)
        y_rest, last_rest = mamba_scan(u[:, half:], delta[:, half:], A, B[:, half:], C[:, half:], D,
                                           scan=scan, h0=h_mid)
        torch.testing.assert_close(y_rest, y[:, half:], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(last_rest, last, rtol=RTOL, atol=ATOL)


def test_selective_scan_errors() -> None:
    u = torch.ones(2, 5, 3)
    A, B = -torch.ones(3, 4), torch.ones(2, 5, 4)
    with pytest.raises(ValueError, match="scan='blelloch'"):
        mamba_scan(u, u, A, B, B, scan="blelloch")
    with pytest.raises(ValueError, match=r"A has shape \(4, 4\); expected \(dim, N\) with dim=3"):
        mamba_scan(u, u, -torch.ones(4, 4), B, B)
    with pytest.raises(ValueError, match=r"C has shape \(2, 5, 3\); expected \(2, 5, 4\)"):
        mamba_scan(u, u, A, B, torch.ones(2, 5, 3))
    with pytest.raises(ValueError, match="delta"):
        mamba_scan(u, torch.ones(2, 4, 3), A, B, B)
    with pytest.raises(ValueError, match=r"h0 has shape \(2, 3\); expected \(batch, dim, N\) = \(2, 3, 4\)"):
        mamba_scan(u, u, A, B, B, h0=torch.ones(2, 3))


# ----------------------------------------------------------------------------------------------
# Mamba against Hugging Face, and step-by-step inference


def hf_mamba(*, head: bool, tie: bool = True, bias: bool = False, seed: int = 0) -> torch.nn.Module:
    """A small Hugging Face Mamba with random weights (every parameter redrawn, A_log and D included)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.MambaConfig(vocab_size=61, hidden_size=24, state_size=6, num_hidden_layers=2,
                                      conv_kernel=3, expand=2, use_bias=bias, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    reference = (transformers.MambaForCausalLM if head else transformers.MambaModel)(config).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0, 0.3)
    return reference


@pytest.mark.parametrize(("head", "tie", "bias"), [(True, True, False), (True, False, True), (False, True, False)])
@pytest.mark.parametrize("scan", ["sequential", "parallel"])
def test_from_hf_matches_reference(head: bool, tie: bool, bias: bool, scan: str) -> None:
    reference = hf_mamba(head=head, tie=tie, bias=bias)
    model = Mamba.from_hf(reference).eval()
    assert (model.lm_head is not None) == head
    tokens = torch.randint(0, 61, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = reference(tokens, use_cache=False)
        expected = out.logits if head else out.last_hidden_state
        got = model(tokens, scan=scan)
    assert got.shape == expected.shape
    assert expected.abs().max() > 0.1  # a non-trivial output, so the comparison means something
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


def test_from_hf_untied_head_is_its_own_weight() -> None:
    reference = hf_mamba(head=True, tie=False)
    model = Mamba.from_hf(reference)
    assert model.lm_head.weight.data_ptr() != model.embedding.weight.data_ptr()
    torch.testing.assert_close(model.lm_head.weight, reference.lm_head.weight)


def test_from_hf_refuses_unmapped_weights() -> None:
    reference = hf_mamba(head=False)
    reference.register_parameter("extra", torch.nn.Parameter(torch.ones(1)))
    with pytest.raises(ValueError, match=r"left unmapped: \['extra'\]"):
        Mamba.from_hf(reference)


def test_from_hf_refuses_other_models() -> None:
    transformers = pytest.importorskip("transformers")
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10))
    with pytest.raises(ValueError, match="model_type='gpt2'; expected 'mamba' or 'mamba2'"):
        Mamba.from_hf(gpt2)


@pytest.mark.parametrize("lm_head", [True, False])
@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_step_by_step_equals_parallel_forward(lm_head: bool, mixer: str) -> None:
    torch.manual_seed(0)
    model = Mamba(MambaConfig(vocab_size=31, dim=16, depth=3, state_size=4, conv_kernel=4, lm_head=lm_head,
                              bias=True, mixer=mixer, head_dim=8, chunk=5)).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the initialisation, so every path carries signal
            p.add_(torch.randn_like(p) * 0.2)
        tokens = torch.randint(0, 31, (3, 14))
        expected = model(tokens)
        state = model.init_state(3)
        steps = []
        for token in tokens.unbind(1):
            out, state = model.step(token, state)
            steps.append(out)
    torch.testing.assert_close(torch.stack(steps, dim=1), expected, rtol=RTOL, atol=ATOL)


def test_sequential_and_parallel_training_gradients_agree() -> None:
    torch.manual_seed(0)
    model = Mamba(MambaConfig(vocab_size=17, dim=16, depth=2, state_size=4))
    tokens = torch.randint(0, 17, (2, 20))
    grads = []
    for scan in ("sequential", "parallel"):
        model.zero_grad()
        F.cross_entropy(model(tokens[:, :-1], scan=scan).flatten(0, 1), tokens[:, 1:].flatten()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g_seq, g_par in zip(*grads, strict=True):
        torch.testing.assert_close(g_par, g_seq, rtol=1e-4, atol=1e-6)


def test_model_is_deterministic() -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = Mamba(MambaConfig(vocab_size=17, dim=16, depth=2, state_size=4))
        outs.append(model(torch.arange(12).reshape(2, 6)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_causality(mixer: str) -> None:
    torch.manual_seed(0)
    model = Mamba(MambaConfig(vocab_size=17, dim=16, depth=2, state_size=4, mixer=mixer, head_dim=8, chunk=4)).eval()
    tokens = torch.randint(0, 17, (1, 12))
    changed = tokens.clone()
    changed[0, 7:] = (changed[0, 7:] + 1) % 17
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-4


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dim": 0}, "dim=0; expected a positive integer"),
    ({"conv_kernel": 2.5}, "conv_kernel=2.5; expected a positive integer"),
    ({"dt_rank": 0}, "dt_rank=0; expected a positive integer or None"),
    ({"scan": "fast"}, "scan='fast'; expected one of"),
    ({"mixer": "rwkv"}, "mixer='rwkv'; expected one of"),
    ({"mixer": "mamba2", "dim": 12, "head_dim": 5}, "expand \\* dim = 24 is not divisible by head_dim=5"),
    ({"chunk": 0}, "chunk=0; expected a positive integer"),
    ({"mixer": "s4d", "state_size": 5}, "state_size=5 is odd"),
])
def test_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MambaConfig(**kwargs)


def test_config_default_dt_rank() -> None:
    assert MambaConfig(dim=64).dt_rank == 4
    assert MambaConfig(dim=65).dt_rank == 5


def test_model_input_errors() -> None:
    model = Mamba(MambaConfig(vocab_size=10, dim=8, depth=1, state_size=2))
    with pytest.raises(ValueError, match=r"tokens has shape \(5,\); expected \(batch, L\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token has shape \(1, 5\); expected \(batch,\)"):
        model.step(torch.zeros(1, 5, dtype=torch.long), model.init_state(1))
    with pytest.raises(ValueError, match="state has 0 entries; expected one per block"):
        model.step(torch.zeros(1, dtype=torch.long), [])
    with pytest.raises(ValueError, match="step-by-step inference is written for 'mamba' and 'mamba2'"):
        Mamba(MambaConfig(vocab_size=10, dim=8, depth=1, state_size=2, mixer="s4d")).init_state(1)


# ----------------------------------------------------------------------------------------------
# S4D


@pytest.mark.parametrize(("batch", "length", "dim", "n_state"), [(1, 1, 1, 2), (2, 17, 4, 4), (3, 64, 6, 16)])
def test_s4d_convolution_equals_recurrence(batch: int, length: int, dim: int, n_state: int) -> None:
    torch.manual_seed(length)
    mixer = S4DMixer(MambaConfig(dim=dim, state_size=n_state, mixer="s4d"))
    with torch.no_grad():
        mixer.log_dt.uniform_(-3, 0)  # larger steps than at init, so the kernel has structure along L
    x = torch.randn(batch, length, dim)
    conv = mixer.ssm(x, mode="conv")
    torch.testing.assert_close(conv, mixer.ssm(x, mode="recurrent"), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(mixer(x), mixer(x, mode="recurrent"), rtol=RTOL, atol=ATOL)


def test_s4d_kernel_equals_direct_convolution() -> None:
    torch.manual_seed(0)
    mixer = S4DMixer(MambaConfig(dim=3, state_size=6, mixer="s4d"))
    x = torch.randn(2, 10, 3)
    k = mixer.kernel(10)                                                    # (d, l)
    direct = torch.stack([sum(k[:, s] * x[:, t - s] for s in range(t + 1)) for t in range(10)], dim=1)
    torch.testing.assert_close(mixer.ssm(x), direct + x * mixer.D, rtol=RTOL, atol=ATOL)


def test_s4d_model_runs_and_trains() -> None:
    torch.manual_seed(0)
    model = Mamba(MambaConfig(vocab_size=11, dim=8, depth=2, state_size=4, mixer="s4d"))
    tokens = torch.randint(0, 11, (2, 9))
    logits = model(tokens)
    assert logits.shape == (2, 9, 11)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    torch.testing.assert_close(model(tokens, mode="recurrent"), logits, rtol=RTOL, atol=ATOL)


def test_s4d_mode_error() -> None:
    mixer = S4DMixer(MambaConfig(dim=2, state_size=2, mixer="s4d"))
    with pytest.raises(ValueError, match="mode='fft'; expected 'conv' or 'recurrent'"):
        mixer(torch.ones(1, 3, 2), mode="fft")


# ----------------------------------------------------------------------------------------------
# Mamba-2's state-space duality


def ssd_inputs(batch: int, length: int, heads: int, head_dim: int, n_state: int, seed: int = 0) -> list[torch.Tensor]:
    """x, dt, A, B, C, h0 for the SSD functions."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, length, heads, head_dim, generator=gen),
            F.softplus(torch.randn(batch, length, heads, generator=gen)),
            -torch.rand(heads, generator=gen) * 2 - 0.1,
            torch.randn(batch, length, n_state, generator=gen),
            torch.randn(batch, length, n_state, generator=gen),
            torch.randn(batch, heads, head_dim, n_state, generator=gen)]


def naive_ssd(x, dt, A, B, C, h0):  # noqa: ANN001, ANN202
    """The SSD recurrence with explicit loops over time, heads and channels."""
    batch, length, heads, head_dim = x.shape
    h = h0.clone()
    y = torch.empty_like(x)
    for t in range(length):
        for k in range(heads):
            h[:, k] = torch.exp(dt[:, t, k] * A[k])[:, None, None] * h[:, k] \
                + (dt[:, t, k, None] * x[:, t, k])[:, :, None] * B[:, t, None, :]
            y[:, t, k] = (h[:, k] * C[:, t, None, :]).sum(-1)
    return y, h


@pytest.mark.parametrize(("batch", "length", "heads", "head_dim", "n_state"),
                         [(1, 1, 1, 1, 1), (2, 13, 3, 4, 5), (1, 32, 2, 8, 16)])
def test_ssd_recurrent_equals_naive(batch: int, length: int, heads: int, head_dim: int, n_state: int) -> None:
    x, dt, A, B, C, h0 = ssd_inputs(batch, length, heads, head_dim, n_state)
    y, last = ssd_recurrent(x, dt, A, B, C, h0)
    y_naive, last_naive = naive_ssd(x, dt, A, B, C, h0)
    torch.testing.assert_close(y, y_naive, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(last, last_naive, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("batch", "length", "heads", "head_dim", "n_state"),
                         [(1, 1, 1, 1, 1), (2, 13, 3, 4, 5), (1, 32, 2, 8, 16)])
def test_ssd_quadratic_equals_recurrent(batch: int, length: int, heads: int, head_dim: int, n_state: int) -> None:
    x, dt, A, B, C, _ = ssd_inputs(batch, length, heads, head_dim, n_state)
    torch.testing.assert_close(ssd_quadratic(x, dt, A, B, C), ssd_recurrent(x, dt, A, B, C)[0],
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("chunk", [1, 3, 4, 8, 13, 40])
@pytest.mark.parametrize("with_h0", [False, True])
def test_ssd_chunked_equals_recurrent(chunk: int, with_h0: bool) -> None:
    x, dt, A, B, C, h0 = ssd_inputs(2, 13, 3, 4, 5, seed=chunk)
    h0 = h0 if with_h0 else None
    y, last = ssd_chunked(x, dt, A, B, C, chunk=chunk, h0=h0)
    y_rec, last_rec = ssd_recurrent(x, dt, A, B, C, h0)
    torch.testing.assert_close(y, y_rec, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(last, last_rec, rtol=RTOL, atol=ATOL)


def test_ssd_chunked_gradients_equal_recurrent() -> None:
    inputs = ssd_inputs(2, 11, 2, 3, 4, seed=5)
    weights = torch.randn(2, 11, 2, 3, generator=torch.Generator().manual_seed(6))
    grads = []
    for run in (lambda *t: ssd_recurrent(*t)[0], lambda *t: ssd_chunked(*t, chunk=4)[0]):
        leaves = [t.clone().requires_grad_() for t in inputs]
        (run(*leaves[:5]) * weights).sum().backward()
        grads.append([t.grad for t in leaves[:5]])
    for g_rec, g_chunk in zip(*grads, strict=True):
        assert torch.isfinite(g_chunk).all()
        torch.testing.assert_close(g_chunk, g_rec, rtol=1e-4, atol=1e-5)


def test_ssd_errors() -> None:
    x, dt, A, B, C, h0 = ssd_inputs(2, 6, 3, 4, 5)
    with pytest.raises(ValueError, match="chunk=0; expected a positive integer"):
        ssd_chunked(x, dt, A, B, C, chunk=0)
    with pytest.raises(ValueError, match=r"A has shape \(2,\); expected \(3,\)"):
        ssd_recurrent(x, dt, A[:2], B, C)
    with pytest.raises(ValueError, match=r"h0 has shape \(2, 3, 4, 4\); expected \(2, 3, 4, 5\)"):
        ssd_chunked(x, dt, A, B, C, chunk=2, h0=h0[..., :4])
    with pytest.raises(ValueError, match=r"x has shape \(2, 6, 12\); expected \(batch, L, heads, head_dim\)"):
        ssd_quadratic(x.flatten(2), dt, A, B, C)


# ----------------------------------------------------------------------------------------------
# The Mamba-2 block: against Hugging Face's Mamba2, chunk sizes, step-by-step inference


def hf_mamba2(*, head: bool, tie: bool = False, bias: bool = False, chunk: int = 8, **options) -> torch.nn.Module:
    """A small Hugging Face Mamba-2 with random weights (every parameter redrawn, A_log, D and dt_bias included)."""
    transformers = pytest.importorskip("transformers")
    settings = dict(vocab_size=53, hidden_size=16, num_heads=4, head_dim=8, state_size=6, num_hidden_layers=2,
                    conv_kernel=3, expand=2, n_groups=1, use_bias=bias, chunk_size=chunk, tie_word_embeddings=tie)
    config = transformers.Mamba2Config(**{**settings, **options})
    torch.manual_seed(0)
    reference = (transformers.Mamba2ForCausalLM if head else transformers.Mamba2Model)(config).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.normal_(0, 0.3)
            if name.endswith("A_log"):        # decays exp(dt A) that neither vanish nor stay at 1
                p.uniform_(-1.0, 1.0)
    return reference


@pytest.mark.parametrize(("head", "tie", "bias"), [(True, False, False), (True, True, True), (False, False, False)])
@pytest.mark.parametrize("length", [5, 8, 19])
def test_mamba2_from_hf_matches_reference(head: bool, tie: bool, bias: bool, length: int) -> None:
    reference = hf_mamba2(head=head, tie=tie, bias=bias)
    model = Mamba.from_hf(reference).eval()
    assert model.config.mixer == "mamba2" and model.config.heads == 4 and (model.lm_head is not None) == head
    tokens = torch.randint(0, 53, (2, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        out = reference(tokens, use_cache=False)
        expected = out.logits if head else out.last_hidden_state
        got = model(tokens)
        other_chunks = [model(tokens, chunk=chunk) for chunk in (1, 3, 64)]
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
    for result in other_chunks:                    # the chunk size changes the schedule, never the result
        torch.testing.assert_close(result, expected, rtol=RTOL, atol=ATOL)


def test_mamba2_mixer_equals_its_recurrent_scan() -> None:
    """The block computed with the step-by-step SSD recurrence instead of the chunked form gives the same output."""
    torch.manual_seed(1)
    config = MambaConfig(vocab_size=11, dim=8, depth=1, state_size=5, head_dim=4, mixer="mamba2", chunk=4)
    mixer = Mamba2Mixer(config).eval()
    x = torch.randn(2, 10, 8)
    with torch.no_grad():
        z, xBC, dt = mixer._split(mixer.in_proj(x))
        xBC = F.silu(mixer.conv1d(xBC.transpose(1, 2))[..., :10]).transpose(1, 2)
        heads_x, dt, A, B, C = mixer._ssm_inputs(xBC, dt)
        y, _ = ssd_recurrent(heads_x, dt, A, B, C)
        torch.testing.assert_close(mixer(x), mixer._output(y, heads_x, z), rtol=RTOL, atol=ATOL)


def test_mamba2_refuses_what_it_does_not_implement() -> None:
    with pytest.raises(ValueError, match="n_groups=2; this Mamba-2 shares B and C"):
        Mamba.from_hf(hf_mamba2(head=False, n_groups=2))
    with pytest.raises(ValueError, match="time_step_limit"):
        Mamba.from_hf(hf_mamba2(head=False, time_step_limit=(0.0, 0.5)))


def test_mamba2_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = Mamba(MambaConfig(vocab_size=17, dim=16, depth=2, state_size=4, mixer="mamba2", head_dim=8, chunk=4))
    tokens = torch.randint(0, 17, (1, 12))
    F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
