"""How do time and memory grow with sequence length for softmax attention, its efficient approximations and
Mamba's selective scan?

    python benchmarks/bench_sequence.py [--lengths 1024 2048 4096 8192 16384] [--dim 128] [--heads 4]
                                        [--repeats 3] [--threads 2] [--backward]

Every mechanism mixes the same (batch 1, L, dim) sequence: softmax attention through PyTorch's fused
`scaled_dot_product_attention` (SDPA, the baseline), the course's kernelised linear attention (elu+1),
FAVOR+ random features, MRA, multipole and wavelet-space attention (`course_lib.nn.efficient_attention`),
and Mamba's selective scan on its PyTorch path (`course_lib.models.mamba.mamba_scan`, sequential and
parallel). For each length it prints tokens/s (median of the repeats, forward only unless --backward) and
the peak bytes of the tensors the forward pass creates (`course_lib.measure.peak_memory`), each with its
ratio to SDPA at that length, then the exponent of a power law fitted to each column.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from course_lib.measure import loglog_slope, peak_memory
from course_lib.models.mamba import mamba_scan
from course_lib.nn.efficient_attention import (
    linear_attention,
    mra_attention,
    multipole_attention,
    orthogonal_gaussian,
    performer_attention,
    wavelet_space_attention,
)

STATE = 16  # Mamba's state size per channel


def attention_mixers(heads: int, head_dim: int) -> dict[str, Callable]:
    """Each attention mechanism as a function of (B, heads, L, head_dim) q, k, v."""
    omega = orthogonal_gaussian(2 * head_dim, head_dim, generator=torch.Generator().manual_seed(0))
    return {
        "softmax (SDPA)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        "linear (elu+1)": lambda q, k, v: linear_attention(q, k, v),
        "FAVOR+ (2d features)": lambda q, k, v: performer_attention(q, k, v, omega),
        "MRA (block 32, 4 refined)": lambda q, k, v: mra_attention(q, k, v, block_size=32, refined_blocks=4),
        "multipole (window 32)": lambda q, k, v: multipole_attention(q, k, v, window=32, levels=3),
        "wavelet + linear": lambda q, k, v: wavelet_space_attention(q, k, v, levels=3, attention=linear_attention),
    }


def scan_mixers(dim: int) -> dict[str, Callable]:
    """Mamba's selective scan, sequential and parallel, as a function of a (1, L, dim) input."""
    generator = torch.Generator().manual_seed(0)
    A = -torch.rand(dim, STATE, generator=generator) - 0.5
    D = torch.randn(dim, generator=generator)

    def scan(kind: str) -> Callable:
        def run(x: torch.Tensor) -> torch.Tensor:
            delta = F.softplus(x)
            B = C = x[..., :STATE]  # any (1, L, N) input-dependent tensors do for timing
            return mamba_scan(x, delta, A, B, C, D, scan=kind)[0]
        return run

    return {"Mamba scan (sequential)": scan("sequential"), "Mamba scan (parallel)": scan("parallel")}


def seconds(function: Callable, inputs: tuple[torch.Tensor, ...], backward: bool) -> float:
    started = time.perf_counter()
    if backward:
        function(*inputs).mean().backward()
    else:
        with torch.no_grad():
            function(*inputs)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backward", action="store_true", help="time forward+backward instead of forward")
    args = parser.parse_args()
    if args.dim % args.heads:
        raise SystemExit(f"--dim={args.dim} is not divisible by --heads={args.heads}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, batch 1, dim {args.dim}, {args.heads} heads, "
          f"{'forward+backward' if args.backward else 'forward'}, median of {args.repeats}")
    attention = attention_mixers(args.heads, args.dim // args.heads)
    scans = scan_mixers(args.dim)
    names = [*attention, *scans]
    speed: dict[str, list[float]] = {name: [] for name in names}
    memory: dict[str, list[float]] = {name: [] for name in names}
    for length in args.lengths:
        x = torch.randn(1, length, args.dim, generator=torch.Generator().manual_seed(length), requires_grad=args.backward)
        qkv = tuple(rearrange(x, "b l (h d) -> b h l d", h=args.heads) * scale for scale in (1.0, 0.5, 1.0))
        print(f"\nL = {length:,}")
        for name in names:
            function, inputs = (attention[name], qkv) if name in attention else (scans[name], (x,))
            seconds(function, inputs, args.backward)  # warm-up
            median = statistics.median(seconds(function, inputs, args.backward) for _ in range(args.repeats))
            speed[name].append(length / median)
            memory[name].append(peak_memory(function, *inputs))
            base = "softmax (SDPA)"
            print(f"  {name:<28} {speed[name][-1]:>12,.0f} tok/s  x{speed[name][-1] / speed[base][-1]:>6.2f}   "
                  f"peak {memory[name][-1] / 2**20:>9.1f} MiB  x{memory[name][-1] / memory[base][-1]:>6.2f}")
    if len(args.lengths) > 1:
        print("\nexponent of a power law in L (1: linear, 2: quadratic)   time per sequence   peak memory")
        for name in names:
            times = [length / s for length, s in zip(args.lengths, speed[name])]
            print(f"  {name:<28} {loglog_slope(args.lengths, times):>26.2f} {loglog_slope(args.lengths, memory[name]):>13.2f}")


if __name__ == "__main__":
    main()
