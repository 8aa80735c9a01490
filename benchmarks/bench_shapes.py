"""How fast does the shapes world render? Budget: 10,000 scenes of 32x32 in under 10 s on one CPU core.

    python benchmarks/bench_shapes.py [--n 10000] [--size 32] [--threads 1] [--repeats 3]

Times `load("shapes", n=N)` (batched rendering) and, as the baseline in the same run, the same
scenes rendered one call per scene, then prints scenes/s, the ratio batched/one-by-one and the time
against the budget (best of the repeats: other programs can only slow a run down).
"""

from __future__ import annotations

import argparse
import time

import torch

from course_lib.data import load
from course_lib.data.shapes import render_batch

BUDGET_SECONDS_PER_10K = 10.0


def best_seconds(function, repeats: int) -> float:
    """The fastest of `repeats` runs of `function()`."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="scenes to render in the batched run")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    one_by_one_n = min(args.n, 500)  # the slow baseline on a sample, scaled to scenes/s
    batched = best_seconds(lambda: load("shapes", n=args.n, size=args.size), args.repeats)
    single = best_seconds(lambda: [render_batch([i], size=args.size) for i in range(one_by_one_n)], args.repeats)
    batched_rate, single_rate = args.n / batched, one_by_one_n / single
    budget = BUDGET_SECONDS_PER_10K * args.n / 10_000
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.size}x{args.size}, best of {args.repeats}")
    print(f"batched    : {args.n:,} scenes in {batched:.2f} s ({batched_rate:,.0f} scenes/s)")
    print(f"one by one : {one_by_one_n:,} scenes in {single:.2f} s ({single_rate:,.0f} scenes/s)")
    print(f"batched / one by one: {batched_rate / single_rate:.1f}x; time / budget ({budget:.0f} s): {batched / budget:.2f}")


if __name__ == "__main__":
    main()
