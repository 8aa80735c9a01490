"""How fast are the course's Triton kernels next to the PyTorch operations they stand in for?

    python benchmarks/bench_kernels.py [--peak-gbps 3350] [--rows 8192] [--plot benchmarks/bench_kernels.png]

On one CUDA GPU, in one process, each kernel of course_lib.kernels is timed with triton.testing.do_bench
(median) right after its PyTorch baseline at the same size, in fp16:
  softmax, layer_norm, rms_norm   vs torch.softmax, F.layer_norm, F.rms_norm over row widths (GB/s);
  flash_attention                 vs F.scaled_dot_product_attention, head dim 64, up to T=4096 (TFLOP/s);
  selective_scan                  vs its sequential PyTorch reference, over sequence lengths (GB/s).
Bandwidth-bound kernels are also given as % of the device's peak memory bandwidth (computed from the
device properties where PyTorch exposes them, else from --peak-gbps). Prints ours/theirs ratios and
writes a plot. Without a CUDA GPU it says so and exits: the CPU interpreter's timings mean nothing.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

Timer = Callable[[Callable[[], object]], float]  # runs a function, returns milliseconds


@dataclass
class Row:
    kernel: str
    size: int          # the swept size: row width, sequence length
    ours: float        # throughput, in `unit`
    theirs: float
    unit: str          # "GB/s" or "TFLOP/s"

    @property
    def ratio(self) -> float:
        return self.ours / self.theirs


def cuda_timer(fn: Callable[[], object]) -> float:
    """Median milliseconds of `fn` on the GPU (do_bench warms up, flushes L2 and synchronises)."""
    import triton.testing
    return triton.testing.do_bench(fn, return_mode="median")


def peak_gbps(override: float | None) -> float | None:
    """Peak DRAM bandwidth in GB/s: --peak-gbps, else 2 (double data rate) x memory clock x bus width."""
    if override:
        return override
    props = torch.cuda.get_device_properties(0)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9


def measure(kernel: str, size: int, ours, theirs, work: float, unit: str, timer: Timer) -> Row:
    """Time the baseline and ours back to back; `work` is bytes (GB/s) or FLOPs (TFLOP/s) per call."""
    scale = 1e9 if unit == "GB/s" else 1e12
    theirs_ms, ours_ms = timer(theirs), timer(ours)
    return Row(kernel, size, work / (ours_ms * 1e-3) / scale, work / (theirs_ms * 1e-3) / scale, unit)


# Each row kernel as (call ours given the kernel, call PyTorch's), both on x (rows, width), weight w, bias b.
ROW_CASES = {
    "softmax": (lambda kernel, x, w, b: kernel(x), lambda x, w, b: torch.softmax(x, dim=-1)),
    "layer_norm": (lambda kernel, x, w, b: kernel(x, w, b, 1e-5),
                   lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b, 1e-5)),
    "rms_norm": (lambda kernel, x, w, b: kernel(x, w, 1e-6), lambda x, w, b: F.rms_norm(x, x.shape[-1:], w, 1e-6)),
}


def row_kernels(rows: int, widths: list[int], device: str, timer: Timer, kernels: dict) -> list[Row]:
    """Softmax and the norms on (rows, width) fp16 inputs: one read and one write of x per call."""
    results = []
    for width in widths:
        x = torch.randn(rows, width, device=device, dtype=torch.float16)
        w, b = torch.randn(width, device=device, dtype=x.dtype), torch.randn(width, device=device, dtype=x.dtype)
        for name, (call_ours, call_theirs) in ROW_CASES.items():
            if name in kernels:
                results.append(measure(name, width, partial(call_ours, kernels[name], x, w, b),
                                       partial(call_theirs, x, w, b), 2 * x.numel() * x.element_size(),
                                       "GB/s", timer))
    return results


def attention(lengths: list[int], batch: int, heads: int, device: str, timer: Timer, flash) -> list[Row]:
    """Flash attention vs SDPA at head dim 64; causal attention does half the work."""
    results = []
    for causal in (False, True):
        for length in lengths:
            q, k, v = (torch.randn(batch, heads, length, 64, device=device, dtype=torch.float16) for _ in range(3))
            flops = 4 * batch * heads * length * length * 64 / (2 if causal else 1)
            results.append(measure("flash_attention" + (" causal" if causal else ""), length,
                                   partial(flash, q, k, v, causal=causal),
                                   partial(F.scaled_dot_product_attention, q, k, v, is_causal=causal),
                                   flops, "TFLOP/s", timer))
    return results


def scan(lengths: list[int], batch: int, dim: int, n_state: int, device: str, timer: Timer,
         ours, reference) -> list[Row]:
    """Selective scan vs its sequential reference at Mamba-130M sizes (dim 1536, N 16); bytes of u, delta, B, C, y."""
    results = []
    for length in lengths:
        u, delta = (torch.randn(batch, dim, length, device=device, dtype=torch.float16) for _ in range(2))
        A = -torch.rand(dim, n_state, device=device)
        B, C = (torch.randn(batch, n_state, length, device=device, dtype=torch.float16) for _ in range(2))
        args = (u, delta, A, B, C, torch.randn(dim, device=device))
        work = (3 * u.numel() + 2 * B.numel()) * u.element_size()
        results.append(measure("selective_scan", length, partial(ours, *args, delta_softplus=True),
                               partial(reference, *args, delta_softplus=True), work, "GB/s", timer))
    return results


def load_kernels() -> dict:
    """Every kernel that imports; a missing or broken module is reported and skipped, not fatal."""
    names = {"softmax": "softmax", "layer_norm": "norms", "rms_norm": "norms",
             "flash_attention": "flash_attention", "selective_scan": "selective_scan",
             "selective_scan_reference": "selective_scan"}
    kernels = {}
    for name, module in names.items():
        try:
            kernels[name] = getattr(importlib.import_module(f"course_lib.kernels.{module}"), name)
        except (ImportError, AttributeError) as error:
            print(f"skipping {name}: {error}")
    return kernels


def report(rows: list[Row], peak: float | None) -> None:
    for row in rows:
        of_peak = f" ({100 * row.ours / peak:4.1f}% of peak, torch {100 * row.theirs / peak:4.1f}%)" \
            if peak and row.unit == "GB/s" else ""
        print(f"{row.kernel:>22} {row.size:>6}: ours {row.ours:8.1f} {row.unit}, torch {row.theirs:8.1f} "
              f"{row.unit}, ratio {row.ratio:5.2f}{of_peak}")


def plot(rows: list[Row], peak: float | None, path: str) -> None:
    """One panel per kernel: ours and PyTorch's throughput against the swept size, peak bandwidth dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(row.kernel for row in rows))
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.5 * nrows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        mine = [row for row in rows if row.kernel == name]
        sizes = [row.size for row in mine]
        ax.plot(sizes, [row.ours for row in mine], "o-", label="course_lib (Triton)")
        ax.plot(sizes, [row.theirs for row in mine], "s--", label="PyTorch")
        if peak and mine[0].unit == "GB/s":
            ax.axhline(peak, color="grey", linestyle=":", label="peak bandwidth")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.set(xlabel="sequence length" if "attention" in name or "scan" in name else "row width",
               ylabel=mine[0].unit, title=name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peak-gbps", type=float, default=None, help="peak memory bandwidth, if not computable")
    parser.add_argument("--rows", type=int, default=8192, help="rows of the softmax and norm inputs")
    parser.add_argument("--plot", default="benchmarks/bench_kernels.png")
    args = parser.parse_args()
    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("Kernel timings need a CUDA GPU (with TRITON_INTERPRET unset): Triton's CPU interpreter measures "
              "nothing useful. Nothing was timed.")
        return
    torch.manual_seed(0)
    peak = peak_gbps(args.peak_gbps)
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, fp16, median of do_bench; peak bandwidth "
          + (f"{peak:.0f} GB/s" if peak else "unknown (pass --peak-gbps)"))
    kernels = load_kernels()
    rows = row_kernels(args.rows, [256, 512, 1024, 2048, 4096, 8192], "cuda", cuda_timer, kernels)
    if "flash_attention" in kernels:
        rows += attention([256, 512, 1024, 2048, 4096], 4, 16, "cuda", cuda_timer, kernels["flash_attention"])
    if "selective_scan" in kernels:
        rows += scan([128, 512, 2048], 2, 1536, 16, "cuda", cuda_timer, kernels["selective_scan"],
                     kernels["selective_scan_reference"])
    report(rows, peak)
    if rows:
        plot(rows, peak, args.plot)


if __name__ == "__main__":
    main()
