"""What does a mixture of experts cost per token, next to a dense layer with the same active parameters?

    python benchmarks/bench_moe.py [--tokens 4096] [--dim 64] [--hidden 128] [--experts 8] [--repeats 7] [--threads 2]

In one process, forward+backward passes over the same (tokens, dim) input are timed alternately for:
  dense     one SwiGLU feed-forward layer of `hidden` units (course_lib.nn.GLU);
  ours k=1  course_lib.nn.MoE, `experts` SwiGLU experts of `hidden` units, top-1 (Switch): the same active
            parameters per token as dense;
  ours k=2  the same with top-2 (Mixtral), twice the active parameters;
  Mixtral   transformers' MixtralSparseMoeBlock with our k=2 layer's weights (the reference we are tested against).
Prints tokens/s and each ratio to dense (median of the repeats). Notebook 18 quotes the k=1 ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import transformers
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from course_lib.nn import GLU, MoE


def seconds(step: Callable[[], torch.Tensor]) -> float:
    clock = time.perf_counter()
    step().sum().backward()
    return time.perf_counter() - clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, args.tokens, args.dim)
    top_2 = MoE(args.dim, args.hidden, args.experts, 2)
    config = transformers.MixtralConfig(hidden_size=args.dim, intermediate_size=args.hidden,
                                        num_local_experts=args.experts, num_experts_per_tok=2, router_jitter_noise=0.0)
    mixtral = MixtralSparseMoeBlock(config)
    with torch.no_grad():
        mixtral.gate.weight.copy_(top_2.router.weight)
        mixtral.experts.gate_up_proj.copy_(top_2.gate_up)
        mixtral.experts.down_proj.copy_(top_2.down)
    dense, top_1 = GLU(args.dim, args.hidden), MoE(args.dim, args.hidden, args.experts, 1)
    layers: dict[str, Callable[[], torch.Tensor]] = {
        "dense": lambda: dense(x),
        "ours k=1": lambda: top_1(x),
        "ours k=2": lambda: top_2(x),
        "Mixtral k=2": lambda: mixtral(x),
    }
    for step in layers.values():  # warm up
        seconds(step)
    times: dict[str, list[float]] = {name: [] for name in layers}
    for _ in range(args.repeats):
        for name, step in layers.items():
            times[name].append(seconds(step))
    baseline = statistics.median(times["dense"])
    print(f"{args.tokens} tokens of width {args.dim}, experts of {args.hidden} units, {args.threads} threads, "
          f"forward+backward, median of {args.repeats}")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"{name:12} {args.tokens / median:12,.0f} tokens/s   time / dense {median / baseline:5.2f}")


if __name__ == "__main__":
    main()
