"""State-space models: linear recurrences, their parallel (associative) scan, S4D and Mamba.

Everything here computes the same kind of recurrence, per channel and state,

    h_t = a_t * h_{t-1} + b_t,

either one step after another (`linear_scan_sequential`) or in log2(L) parallel steps
(`linear_scan_parallel`), because the step h -> a * h + b composes associatively. S4D makes a_t
independent of the input (so the whole layer is a convolution with a precomputed kernel); Mamba makes
it depend on the input (the "selective" scan). `Mamba.from_hf` copies the weights of a Hugging Face
`MambaModel` or `MambaForCausalLM` through an explicit key map. Mamba-2's state-space duality is here
as three equal computations of its scan: `ssd_recurrent`, `ssd_quadratic` (attention-like) and
`ssd_chunked` (both, by chunks); `MambaConfig(mixer="mamba2")` builds the Mamba-2 block around the
chunked form (one scalar decay per head, B and C shared by the heads), and `Mamba.from_hf` also copies
a Hugging Face `Mamba2Model` or `Mamba2ForCausalLM`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, repeat
from torch import Tensor, nn

from course_lib.models._weights import checked_state_dict, move_module
from course_lib.nn import RMSNorm

__all__ = [
    "Mamba",
    "MambaConfig",
    "MambaLayer",
    "Mamba2Mixer",
    "MambaMixer",
    "S4DMixer",
    "config_from_hf",
    "linear_scan_parallel",
    "linear_scan_sequential",
    "mamba_scan",
    "ssd_chunked",
    "ssd_quadratic",
    "ssd_recurrent",
    "state_dict_from_hf",
]

SCANS = ("sequential", "parallel")
MIXERS = ("mamba", "mamba2", "s4d")


def _check_scan_inputs(a: Tensor, b: Tensor, h0: Tensor | None) -> None:
    """Refuse shapes the scans cannot take, before any work."""
    if a.shape != b.shape:
        raise ValueError(f"a has shape {tuple(a.shape)} and b has shape {tuple(b.shape)}; expected equal shapes")
    if a.ndim < 2:
        raise ValueError(f"a has shape {tuple(a.shape)}; expected (batch, L, ...) with at least 2 dimensions")
    if h0 is not None and (h0.shape[0], *h0.shape[1:]) != (a.shape[0], *a.shape[2:]):
        raise ValueError(f"h0 has shape {tuple(h0.shape)}; expected {(a.shape[0], *a.shape[2:])} "
                         f"(a without its time axis)")


# ----------------------------------------------------------------------------------------------
# The linear recurrence h_t = a_t * h_{t-1} + b_t, over axis 1 (time) of (batch, L, ...) tensors.


def linear_scan_sequential(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """All states h_t = a_t * h_{t-1} + b_t (h_{-1} = h0 or 0), one step after another: (batch, L, ...)."""
    _check_scan_inputs(a, b, h0)
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    states = []
    # unbind once: indexing a[:, t] inside the loop makes the backward pass quadratic in L
    for a_t, b_t in zip(a.unbind(1), b.unbind(1), strict=True):
        h = a_t * h + b_t
        states.append(h)
    return torch.stack(states, dim=1)


def linear_scan_parallel(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """The same states as `linear_scan_sequential`, by a Hillis-Steele scan in ceil(log2 L) steps.

    Each element holds the map h -> a * h + b. After the step with offset k, element t holds the
    composition of the maps t-2k+1..t (fewer at the start); composing with the element k back doubles
    the span, (a, b) after (a', b') = (a * a', a * b' + b), so after log2(L) steps element t holds
    the map from h_{-1} to h_t, and its b is h_t. O(L log L) work, log-depth, exact up to rounding.
    """
    _check_scan_inputs(a, b, h0)
    if h0 is not None:  # fold the initial state into the first step: h_0 = a_0 * h0 + b_0
        b = torch.cat([(a[:, :1] * h0.unsqueeze(1) + b[:, :1]), b[:, 1:]], dim=1)
    length = a.shape[1]
    offset = 1
    while offset < length:
        # compose each element with the one `offset` steps back; the first `offset` have none (identity)
        a_now, a_back, b_back = a[:, offset:], a[:, :-offset], b[:, :-offset]
        b = torch.cat([b[:, :offset], a_now * b_back + b[:, offset:]], dim=1)
        a = torch.cat([a[:, :offset], a_now * a_back], dim=1)
        offset *= 2
    return b


def mamba_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
               *, scan: str = "sequential", h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mamba's selective scan, (batch, L, ...) layout: returns y (batch, L, dim) and the last state (batch, dim, N).

    u, delta (batch, L, dim); A (dim, N); B, C (batch, L, N); D (dim,). delta is used as given (no bias,
    no softplus). h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = C_t . h_t + D u_t.
    'parallel' has log depth but holds every state, (batch, L, dim, N), several times over: on a 2-core
    CPU a small model's training step was several times slower than with 'sequential', which keeps one.
    """
    if scan not in SCANS:
        raise ValueError(f"scan={scan!r}; expected one of {SCANS}")
    if u.ndim != 3 or delta.shape != u.shape:
        raise ValueError(f"u has shape {tuple(u.shape)} and delta {tuple(delta.shape)}; expected equal (batch, L, dim)")
    batch, length, dim = u.shape
    if A.ndim != 2 or A.shape[0] != dim:
        raise ValueError(f"A has shape {tuple(A.shape)}; expected (dim, N) with dim={dim}")
    n_state = A.shape[1]
    for name, tensor in (("B", B), ("C", C)):
        if tuple(tensor.shape) != (batch, length, n_state):
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected {(batch, length, n_state)}")
    if h0 is not None and tuple(h0.shape) != (batch, dim, n_state):
        raise ValueError(f"h0 has shape {tuple(h0.shape)}; expected (batch, dim, N) = {(batch, dim, n_state)}")
    if scan == "parallel":  # every state at once, (b, l, d, n): memory for log-depth
        decay = torch.exp(einsum(delta, A, "b l d, d n -> b l d n"))
        drive = einsum(delta * u, B, "b l d, b l n -> b l d n")
        states = linear_scan_parallel(decay, drive, h0)
        y, last = einsum(states, C, "b l d n, b l n -> b l d"), states[:, -1]
    else:  # one (b, d, n) state at a time, read out at once: small tensors, cache-friendly on a CPU
        h = u.new_zeros(batch, dim, n_state) if h0 is None else h0
        ys = []
        # unbind once: indexing [:, t] inside the loop makes the backward pass quadratic in L
        for u_t, delta_t, B_t, C_t in zip(u.unbind(1), delta.unbind(1), B.unbind(1), C.unbind(1), strict=True):
            h = torch.exp(delta_t[:, :, None] * A) * h + (delta_t * u_t)[:, :, None] * B_t[:, None, :]
            ys.append(einsum(h, C_t, "b d n, b n -> b d"))
        y, last = torch.stack(ys, dim=1), h
    if D is not None:
        y = y + u * D
    return y, last


# ----------------------------------------------------------------------------------------------
# Mamba-2's state-space duality: with a scalar decay per head, the scan is also a masked attention.
# x (batch, L, heads, P); dt (batch, L, heads) already positive; A (heads,) negative; B, C (batch, L, N)
# shared by the heads (one group). h_t = exp(dt_t A) h_t-1 + dt_t x_t B_t^T (P, N); y_t = h_t C_t.


def _check_ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None) -> None:
    """Refuse inconsistent SSD shapes before any work."""
    if x.ndim != 4:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (batch, L, heads, head_dim)")
    batch, length, heads, head_dim = x.shape
    n_state = B.shape[-1]
    expected = {"dt": (dt, (batch, length, heads)), "A": (A, (heads,)), "B": (B, (batch, length, n_state)),
                "C": (C, (batch, length, n_state)), "h0": (h0, (batch, heads, head_dim, n_state))}
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected {shape}")


def ssd_recurrent(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The SSD recurrence step by step: y (batch, L, heads, P) and the last state (batch, heads, P, N)."""
    _check_ssd(x, dt, A, B, C, h0)
    decay = repeat(torch.exp(dt * A), "b l h -> b l h p n", p=x.shape[-1], n=B.shape[-1])
    drive = einsum(dt[..., None] * x, B, "b l h p, b l n -> b l h p n")
    states = linear_scan_sequential(decay, drive, h0)
    return einsum(states, C, "b l h p n, b l n -> b l h p"), states[:, -1]


def _segment_sums(log_decay: Tensor) -> Tensor:
    """(..., L) -> (..., L, L): entry [t, s] = sum of log_decay over s+1..t for s <= t, -inf above the diagonal."""
    cumulative = log_decay.cumsum(-1)
    sums = cumulative[..., :, None] - cumulative[..., None, :]
    causal = torch.ones(sums.shape[-2:], dtype=torch.bool, device=sums.device).tril()
    return sums.masked_fill(~causal, float("-inf"))


def ssd_quadratic(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """The attention dual of the scan: y = (mask * C B^T) (dt x) with mask[t, s] = prod_{s<r<=t} exp(dt_r A)."""
    _check_ssd(x, dt, A, B, C, None)
    mask = torch.exp(_segment_sums(rearrange(dt * A, "b l h -> b h l")))           # (b, h, t, s)
    scores = einsum(C, B, "b t n, b s n -> b t s")
    return einsum(scores, mask, dt[..., None] * x, "b t s, b h t s, b s h p -> b t h p")


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, chunk: int,
                h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mamba-2's chunked SSD: attention form inside chunks of `chunk` steps, the recurrence between them.

    Work O(L * chunk) for the quadratic parts and O(L / chunk) sequential steps; returns what
    `ssd_recurrent` returns. A length that is not a multiple of `chunk` is padded with dt = 0 (decay 1,
    no input), which leaves the state unchanged.
    """
    _check_ssd(x, dt, A, B, C, h0)
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk={chunk!r}; expected a positive integer")
    batch, length, heads, head_dim = x.shape
    pad = -length % chunk
    if pad:
        x, dt, B, C = (F.pad(t, (0, 0) * (t.ndim - 2) + (0, pad)) for t in (x, dt, B, C))
    x, B, C = (rearrange(t, "b (c l) ... -> b c l ...", l=chunk) for t in (x, B, C))
    dt = rearrange(dt, "b (c l) h -> b c l h", l=chunk)
    log_decay = rearrange(dt * A, "b c l h -> b h c l")
    cumulative = log_decay.cumsum(-1)                                               # (b, h, c, l)
    dtx = dt[..., None] * x                                                         # (b, c, l, h, p)
    # 1. inside each chunk, the attention form
    mask = torch.exp(_segment_sums(log_decay))                                      # (b, h, c, t, s)
    y_inside = einsum(C, B, mask, dtx, "b c t n, b c s n, b h c t s, b c s h p -> b c t h p")
    # 2. the state each chunk adds by its end, from a zero start
    to_end = torch.exp(cumulative[..., -1:] - cumulative)                           # (b, h, c, l)
    added = einsum(B, to_end, dtx, "b c l n, b h c l, b c l h p -> b c h p n")
    # 3. between chunks, the recurrence: end_c = exp(sum of chunk c's log decay) * end_{c-1} + added_c
    chunk_decay = repeat(torch.exp(cumulative[..., -1]), "b h c -> b c h p n", p=head_dim, n=B.shape[-1])
    ends = linear_scan_sequential(chunk_decay, added, h0)                           # (b, c, h, p, n)
    start = torch.zeros_like(ends[:, :1]) if h0 is None else h0[:, None]
    starts = torch.cat([start, ends[:, :-1]], dim=1)                                # state entering each chunk
    # 4. the entering state, decayed to each step and read out by C
    y_carried = einsum(C, starts, torch.exp(cumulative), "b c l n, b c h p n, b h c l -> b c l h p")
    y = rearrange(y_inside + y_carried, "b c l h p -> b (c l) h p")[:, :length]
    return y, ends[:, -1]


# ----------------------------------------------------------------------------------------------
# Config and blocks


@dataclass
class MambaConfig:
    """Everything that describes a Mamba, Mamba-2 or S4D language model."""

    vocab_size: int = 256
    dim: int = 64
    depth: int = 2
    state_size: int = 16
    expand: int = 2
    conv_kernel: int = 4
    dt_rank: int | None = None       # None: ceil(dim / 16), as in the paper
    bias: bool = False               # on in_proj and out_proj
    conv_bias: bool = True
    norm_eps: float = 1e-5
    mixer: Literal["mamba", "mamba2", "s4d"] = "mamba"
    scan: Literal["sequential", "parallel"] = "sequential"  # the faster on a CPU; see `mamba_scan`
    head_dim: int = 16               # Mamba-2: channels per head (heads = expand * dim / head_dim)
    chunk: int = 64                  # Mamba-2: steps per chunk of the chunked scan
    lm_head: bool = True
    tie_weights: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "depth", "state_size", "expand", "conv_kernel", "head_dim", "chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}; expected a positive integer")
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.dim / 16)
        elif not isinstance(self.dt_rank, int) or self.dt_rank < 1:
            raise ValueError(f"dt_rank={self.dt_rank!r}; expected a positive integer or None")
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer={self.mixer!r}; expected one of {MIXERS}")
        if self.mixer == "mamba2" and self.inner % self.head_dim:
            raise ValueError(f"expand * dim = {self.inner} is not divisible by head_dim={self.head_dim}")
        if self.scan not in SCANS:
            raise ValueError(f"scan={self.scan!r}; expected one of {SCANS}")
        if self.mixer == "s4d" and self.state_size % 2:
            raise ValueError(f"state_size={self.state_size} is odd; S4D keeps complex-conjugate pairs, expected even")

    @property
    def inner(self) -> int:
        """Width of the mixer's inner channels."""
        return self.expand * self.dim

    @property
    def heads(self) -> int:
        """Mamba-2's heads: groups of head_dim channels that share one decay per step."""
        return self.inner // self.head_dim


class MambaMixer(nn.Module):
    """The selective SSM block: in_proj -> causal depthwise conv -> SiLU -> selective scan -> gate -> out_proj."""

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        inner, n_state, rank = config.inner, config.state_size, config.dt_rank
        self.config = config
        self.in_proj = nn.Linear(config.dim, 2 * inner, bias=config.bias)
        self.conv1d = nn.Conv1d(inner, inner, config.conv_kernel, groups=inner, padding=config.conv_kernel - 1,
                                bias=config.conv_bias)
        self.x_proj = nn.Linear(inner, rank + 2 * n_state, bias=False)   # -> (dt, B, C)
        self.dt_proj = nn.Linear(rank, inner, bias=True)
        # S4D-real initialisation: A = -(1, 2, ..., N) for every channel, stored as log(-A)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n_state + 1).float()).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, config.dim, bias=config.bias)
        with torch.no_grad():  # step sizes between 1e-3 and 1e-1 at init, as in the paper
            dt = torch.exp(torch.empty(inner).uniform_(math.log(1e-3), math.log(1e-1)))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def _ssm_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(..., inner) conv output after SiLU -> delta (..., inner), A (inner, N), B and C (..., N)."""
        dt, B, C = self.x_proj(x).split([self.config.dt_rank, self.config.state_size, self.config.state_size], -1)
        return F.softplus(self.dt_proj(dt)), -torch.exp(self.A_log.float()), B, C

    def forward(self, x: Tensor, *, scan: str | None = None) -> Tensor:
        """(batch, L, dim) -> (batch, L, dim); scan 'sequential' or 'parallel' (default: the config's)."""
        x, z = self.in_proj(x).chunk(2, dim=-1)                            # (b, l, inner) each
        length = x.shape[1]
        x = rearrange(x, "b l c -> b c l")
        x = F.silu(self.conv1d(x)[..., :length])                           # causal: drop the right padding
        x = rearrange(x, "b c l -> b l c")
        delta, A, B, C = self._ssm_inputs(x)
        y, _ = mamba_scan(x, delta, A, B, C, self.D, scan=scan or self.config.scan)
        return self.out_proj(y * F.silu(z))

    def init_state(self, batch: int, *, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Zero state for `step`: conv window (batch, inner, kernel) and SSM state (batch, inner, N)."""
        conv = torch.zeros(batch, self.config.inner, self.config.conv_kernel, device=device, dtype=dtype)
        ssm = torch.zeros(batch, self.config.inner, self.config.state_size, device=device, dtype=dtype)
        return conv, ssm

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One token (batch, dim) and the state -> output (batch, dim) and the next state; O(1) in length."""
        conv, h = state
        x, z = self.in_proj(x).chunk(2, dim=-1)                            # (b, inner)
        conv = torch.cat([conv[:, :, 1:], x[:, :, None]], dim=-1)         # (b, inner, kernel): last inputs
        x = einsum(conv, self.conv1d.weight[:, 0], "b c k, c k -> b c")
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        delta, A, B, C = self._ssm_inputs(x)
        decay = torch.exp(einsum(delta, A, "b c, c n -> b c n"))
        h = decay * h + einsum(delta * x, B, "b c, b n -> b c n")
        y = einsum(h, C, "b c n, b n -> b c") + self.D * x
        return self.out_proj(y * F.silu(z)), (conv, h)


class Mamba2Mixer(nn.Module):
    """The Mamba-2 block: one in_proj for (gate z, x, B, C, dt) -> causal depthwise conv of (x, B, C) -> SiLU ->
    chunked SSD with a scalar decay per head -> + D x -> RMSNorm(y * SiLU(z)) -> out_proj.

    Unlike Mamba, dt comes straight from in_proj (one per head, no low-rank projection), A is one number per
    head, and B and C are shared by all heads (one group), which is what makes the attention dual possible.
    """

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.config = c = config
        self.conv_dim = c.inner + 2 * c.state_size                          # x, B, C go through the conv
        self.in_proj = nn.Linear(c.dim, c.inner + self.conv_dim + c.heads, bias=c.bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, c.conv_kernel, groups=self.conv_dim,
                                padding=c.conv_kernel - 1, bias=c.conv_bias)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, c.heads + 1).float()))   # A = -(1, ..., heads)
        self.D = nn.Parameter(torch.ones(c.heads))
        self.dt_bias = nn.Parameter(torch.empty(c.heads))
        self.norm = RMSNorm(c.inner, eps=c.norm_eps)
        self.out_proj = nn.Linear(c.inner, c.dim, bias=c.bias)
        with torch.no_grad():  # step sizes between 1e-3 and 1e-1 at init, as for Mamba
            dt = torch.exp(torch.empty(c.heads).uniform_(math.log(1e-3), math.log(1e-1)))
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def _split(self, projected: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """in_proj's output (..., width) -> gate z (..., inner), conv input xBC (..., conv_dim), raw dt (..., heads)."""
        return projected.split([self.config.inner, self.conv_dim, self.config.heads], dim=-1)

    def _ssm_inputs(self, xBC: Tensor, dt: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Conv output after SiLU and raw dt -> x (..., heads, head_dim), positive dt, A (heads,), B, C (..., N)."""
        c = self.config
        x, B, C = xBC.split([c.inner, c.state_size, c.state_size], dim=-1)
        x = rearrange(x, "... (h p) -> ... h p", p=c.head_dim)
        return x, F.softplus(dt + self.dt_bias), -torch.exp(self.A_log.float()), B, C

    def _output(self, y: Tensor, x: Tensor, z: Tensor) -> Tensor:
        """Skip connection D x, gated RMSNorm and the output projection."""
        y = rearrange(y + x * self.D[:, None], "... h p -> ... (h p)")
        return self.out_proj(self.norm(y * F.silu(z)))

    def forward(self, x: Tensor, *, chunk: int | None = None) -> Tensor:
        """(batch, L, dim) -> (batch, L, dim); the scan runs by chunks of `chunk` steps (default: the config's)."""
        z, xBC, dt = self._split(self.in_proj(x))
        length = x.shape[1]
        xBC = F.silu(self.conv1d(rearrange(xBC, "b l c -> b c l"))[..., :length])    # causal: drop the right pad
        x, dt, A, B, C = self._ssm_inputs(rearrange(xBC, "b c l -> b l c"), dt)
        y, _ = ssd_chunked(x, dt, A, B, C, chunk=chunk or self.config.chunk)
        return self._output(y, x, z)

    def init_state(self, batch: int, *, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Zero state for `step`: conv window (batch, conv_dim, kernel) and SSM state (batch, heads, head_dim, N)."""
        c = self.config
        conv = torch.zeros(batch, self.conv_dim, c.conv_kernel, device=device, dtype=dtype)
        ssm = torch.zeros(batch, c.heads, c.head_dim, c.state_size, device=device, dtype=dtype)
        return conv, ssm

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One token (batch, dim) and the state -> output (batch, dim) and the next state; O(1) in length."""
        conv, h = state
        z, xBC, dt = self._split(self.in_proj(x))
        conv = torch.cat([conv[:, :, 1:], xBC[:, :, None]], dim=-1)        # (b, conv_dim, kernel): last inputs
        xBC = einsum(conv, self.conv1d.weight[:, 0], "b c k, c k -> b c")
        if self.conv1d.bias is not None:
            xBC = xBC + self.conv1d.bias
        x, dt, A, B, C = self._ssm_inputs(F.silu(xBC), dt)
        decay = torch.exp(dt * A)[:, :, None, None]                          # (b, h, 1, 1)
        h = decay * h + einsum(dt[..., None] * x, B, "b h p, b n -> b h p n")
        y = einsum(h, C, "b h p n, b n -> b h p")
        return self._output(y, x, z), (conv, h)


class S4DMixer(nn.Module):
    """S4D: a diagonal, time-invariant SSM per channel, applied as a long convolution, then GELU and a projection.

    Complex diagonal A = -exp(log_A_real) + i A_imag (S4D-Lin init), zero-order-hold discretisation with
    a learned step per channel; N/2 complex states stand for N real ones (conjugate pairs).
    """

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        dim, half = config.dim, config.state_size // 2
        self.config = config
        self.log_dt = nn.Parameter(torch.empty(dim).uniform_(math.log(1e-3), math.log(1e-1)))
        self.log_A_real = nn.Parameter(torch.full((dim, half), math.log(0.5)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(half).float().repeat(dim, 1))
        self.C = nn.Parameter(torch.randn(dim, half, 2) * 0.5 ** 0.5)   # real and imaginary parts
        self.D = nn.Parameter(torch.randn(dim))
        self.out_proj = nn.Linear(dim, dim)

    def _discrete(self) -> tuple[Tensor, Tensor]:
        """dt A and the input weight C (exp(dt A) - 1) / A, each (dim, N/2) complex (B = 1, folded into C)."""
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        dtA = A * torch.exp(self.log_dt)[:, None]
        return dtA, torch.view_as_complex(self.C) * torch.expm1(dtA) / A

    def kernel(self, length: int) -> Tensor:
        """The convolution kernel K[d, l] = 2 Re(sum_n Cbar_n decay_n^l), (dim, length)."""
        dtA, c_bar = self._discrete()
        powers = torch.exp(dtA[:, :, None] * torch.arange(length, device=dtA.device))  # decay**l, (d, n, l)
        return 2 * einsum(c_bar, powers, "d n, d n l -> d l").real

    def ssm(self, x: Tensor, *, mode: str = "conv") -> Tensor:
        """The SSM alone, (batch, L, dim) -> (batch, L, dim): 'conv' by FFT with the kernel, or 'recurrent'."""
        if mode not in ("conv", "recurrent"):
            raise ValueError(f"mode={mode!r}; expected 'conv' or 'recurrent'")
        length = x.shape[1]
        if mode == "conv":
            k = self.kernel(length)                                         # (d, l)
            u = rearrange(x, "b l d -> b d l")
            n = 2 * length  # zero-pad to 2L so the circular FFT convolution is the causal linear one
            y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :length]
            y = rearrange(y, "b d l -> b l d")
        else:
            dtA, c_bar = self._discrete()
            decay = torch.exp(dtA)
            a = decay.expand(x.shape[0], length, *decay.shape)              # (b, l, d, n)
            states = linear_scan_sequential(a, x[..., None].to(decay.dtype).expand_as(a))
            y = 2 * einsum(states, c_bar, "b l d n, d n -> b l d").real
        return y + x * self.D

    def forward(self, x: Tensor, *, mode: str = "conv") -> Tensor:
        """(batch, L, dim) -> (batch, L, dim)."""
        return self.out_proj(F.gelu(self.ssm(x, mode=mode)))


class MambaLayer(nn.Module):
    """Pre-norm residual block: x + mixer(RMSNorm(x))."""

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(config.dim, eps=config.norm_eps)
        mixers = {"mamba": MambaMixer, "mamba2": Mamba2Mixer, "s4d": S4DMixer}
        self.mixer = mixers[config.mixer](config)

    def forward(self, x: Tensor, **kwargs: str) -> Tensor:
        return x + self.mixer(self.norm(x), **kwargs)


# ----------------------------------------------------------------------------------------------
# The model


class Mamba(nn.Module):
    """A stack of SSM blocks on token embeddings: embedding -> blocks -> RMSNorm -> (LM head)."""

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(MambaLayer(config) for _ in range(config.depth))
        self.norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False) if config.lm_head else None
        if self.lm_head is not None and config.tie_weights:
            self.lm_head.weight = self.embedding.weight

    def forward(self, tokens: Tensor, **kwargs: str) -> Tensor:
        """(batch, L) tokens -> (batch, L, vocab) logits, or (batch, L, dim) features without an LM head.

        Keyword arguments go to every mixer: `scan=` for Mamba, `chunk=` for Mamba-2, `mode=` for S4D.
        """
        if tokens.ndim != 2:
            raise ValueError(f"tokens has shape {tuple(tokens.shape)}; expected (batch, L)")
        x = self.embedding(tokens)
        for block in self.blocks:
            x = block(x, **kwargs)
        x = self.norm(x)
        return x if self.lm_head is None else self.lm_head(x)

    def init_state(self, batch: int) -> list[tuple[Tensor, Tensor]]:
        """Zero recurrent state of every block, for `step`."""
        if self.config.mixer == "s4d":
            raise ValueError("mixer='s4d'; step-by-step inference is written for 'mamba' and 'mamba2'")
        p = self.embedding.weight
        return [block.mixer.init_state(batch, device=p.device, dtype=p.dtype) for block in self.blocks]

    def step(self, token: Tensor, state: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """One token per sequence, (batch,), and the state -> logits (batch, vocab) (or features) and the next state."""
        if token.ndim != 1:
            raise ValueError(f"token has shape {tuple(token.shape)}; expected (batch,)")
        if len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} entries; expected one per block ({len(self.blocks)})")
        x = self.embedding(token)
        new_state = []
        for block, block_state in zip(self.blocks, state, strict=True):
            y, block_state = block.mixer.step(block.norm(x), block_state)
            x = x + y
            new_state.append(block_state)
        x = self.norm(x)
        return (x if self.lm_head is None else self.lm_head(x)), new_state

    @classmethod
    def from_hf(cls, reference: nn.Module) -> Mamba:
        """A Mamba with the weights of a Hugging Face MambaModel, MambaForCausalLM, Mamba2Model or
        Mamba2ForCausalLM (same outputs)."""
        model = cls(config_from_hf(reference))
        model.load_state_dict(state_dict_from_hf(reference, model), strict=True)
        return model


# ----------------------------------------------------------------------------------------------
# Weights from Hugging Face: an explicit key map, and every key and shape must line up.


def config_from_hf(reference: nn.Module) -> MambaConfig:
    """The MambaConfig of a Hugging Face Mamba(2)Model / Mamba(2)ForCausalLM; refuses settings this model lacks."""
    hf = reference.config
    model_type = getattr(hf, "model_type", None)
    if model_type not in ("mamba", "mamba2"):
        raise ValueError(f"model_type={model_type!r}; expected 'mamba' or 'mamba2'")
    if hf.hidden_act != "silu":
        raise ValueError(f"hidden_act={hf.hidden_act!r}; expected 'silu'")
    has_head = hasattr(reference, "lm_head")
    shared = dict(vocab_size=hf.vocab_size, dim=hf.hidden_size, depth=hf.num_hidden_layers, state_size=hf.state_size,
                  expand=hf.expand, conv_kernel=hf.conv_kernel, bias=hf.use_bias, conv_bias=hf.use_conv_bias,
                  norm_eps=hf.layer_norm_epsilon, lm_head=has_head, tie_weights=has_head and bool(hf.tie_word_embeddings))
    if model_type == "mamba2":
        if hf.n_groups != 1:
            raise ValueError(f"n_groups={hf.n_groups}; this Mamba-2 shares B and C across all heads: expected 1")
        if tuple(hf.time_step_limit) != (0.0, float("inf")):
            raise ValueError(f"time_step_limit={tuple(hf.time_step_limit)}; expected no clamp, (0.0, inf)")
        if hf.num_heads * hf.head_dim != hf.expand * hf.hidden_size:
            raise ValueError(f"num_heads * head_dim = {hf.num_heads * hf.head_dim}; expected expand * hidden_size = "
                             f"{hf.expand * hf.hidden_size}")
        return MambaConfig(**shared, mixer="mamba2", head_dim=hf.head_dim, chunk=hf.chunk_size)
    if hf.intermediate_size != hf.expand * hf.hidden_size:
        raise ValueError(f"intermediate_size={hf.intermediate_size}; expected expand * hidden_size = "
                         f"{hf.expand * hf.hidden_size}")
    return MambaConfig(**shared, dt_rank=int(hf.time_step_rank))


def state_dict_from_hf(reference: nn.Module, model: Mamba) -> dict[str, Tensor]:
    """The reference's weights under our names, checked key by key and shape by shape."""
    theirs = dict(reference.state_dict())
    has_head = hasattr(reference, "lm_head")
    prefix = "backbone." if has_head else ""
    ours: dict[str, Tensor] = {}
    ours["embedding.weight"] = theirs.pop(f"{prefix}embeddings.weight")
    if model.config.mixer == "mamba2":
        modules, parameters = ("in_proj", "conv1d", "norm", "out_proj"), ("A_log", "D", "dt_bias")
    else:
        modules, parameters = ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj"), ("A_log", "D")
    for i in range(model.config.depth):
        old, new = f"{prefix}layers.{i}", f"blocks.{i}"
        move_module(theirs, ours, f"{old}.norm", f"{new}.norm")
        for part in modules:
            move_module(theirs, ours, f"{old}.mixer.{part}", f"{new}.mixer.{part}")
        for part in parameters:
            ours[f"{new}.mixer.{part}"] = theirs.pop(f"{old}.mixer.{part}")
    move_module(theirs, ours, f"{prefix}norm_f", "norm")
    if has_head:
        head = theirs.pop("lm_head.weight")
        if model.lm_head is not None:
            ours["lm_head.weight"] = head
    return checked_state_dict(theirs, ours, model)
