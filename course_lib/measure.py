"""Measuring what a forward pass costs: FLOPs, peak memory of the tensors it creates, wall-clock time, and the
exponent of a power law fitted to such measurements.

- `count_flops` counts with PyTorch's `FlopCounterMode`, 2 FLOPs per multiply-add of matrix products,
  convolutions and attention. Norms, softmax, pooling and element-wise operations are not counted (they are
  a small share in transformers). PyTorch's counter gives 0 for the fused attention kernel it runs on the CPU;
  here that kernel is counted like the GPU kernels, 4·L_q·L_k·d per head, the two matrix products inside it.
  `count_attention_flops` counts those attention kernels alone (not the projections around them, and not
  attention written out as matrix products), to compare how models spend their attention.
- `peak_memory` watches every tensor the call creates (a `TorchDispatchMode`) and frees it when its storage is
  freed: the most bytes alive at once. It counts tensors, not the allocator's caches or Python objects, and
  works the same on CPU and GPU, which is what comparing two algorithms needs.
- `time_call` is the fastest of a few timed calls after warm-up: other jobs on a shared machine only ever add
  time, so the minimum is the least noisy estimate of what the call itself costs.
- `loglog_slope` fits log(y) = a + b·log(x) and returns b: 1 for linear growth, 2 for quadratic.

The first three measure inference: no gradients, and a module passed as `function` runs in eval mode (so that
BatchNorm uses its running statistics and dropout is off) and is put back in its former mode afterwards.
"""

from __future__ import annotations

import math
import statistics
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["count_attention_flops", "count_flops", "loglog_slope", "peak_memory", "peak_training_memory", "time_call"]


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_formulas() -> dict:
    """FLOP formulas PyTorch's counter lacks: its fused CPU attention kernel, where this PyTorch has one."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _cpu_attention_flops} if op is not None else {}


@contextmanager
def _inference(function: Callable) -> Iterator[None]:
    """No gradients; a module in eval mode for the duration, then back in the mode it was in."""
    if not callable(function):
        raise ValueError(f"function={function!r} is not callable")
    modules = [function] if isinstance(function, nn.Module) else []
    modes = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


def _flops_per_op(function: Callable, *args: Any, **kwargs: Any) -> dict[str, int]:
    """FLOPs of one call in inference, by the name of the operator that spent them."""
    with _inference(function), FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
        function(*args, **kwargs)
    return {str(op): int(flops) for op, flops in counter.get_flop_counts()["Global"].items()}


def count_flops(function: Callable, *args: Any, **kwargs: Any) -> int:
    """FLOPs of one call `function(*args, **kwargs)` in inference: 2 per multiply-add of matrix products,
    convolutions and attention (see the module docstring for what is not counted)."""
    return sum(_flops_per_op(function, *args, **kwargs).values())


def count_attention_flops(function: Callable, *args: Any, **kwargs: Any) -> int:
    """FLOPs of the scaled-dot-product attention kernels alone in one call (scores and the weighted sum of values,
    4·L_q·L_k·d per head), whatever implementation PyTorch picked."""
    return sum(flops for op, flops in _flops_per_op(function, *args, **kwargs).items() if "scaled_dot_product" in op)


class _TensorMemory(TorchDispatchMode):
    """Adds up the bytes of the storages that operations create, and subtracts them when the storage is freed."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.tracked: set[int] = set()  # data pointers of the storages created under this mode and still alive

    def _free(self, pointer: int, nbytes: int) -> None:
        self.tracked.discard(pointer)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, Tensor):
                continue
            storage = tensor.untyped_storage()
            pointer, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or pointer in inputs or pointer in self.tracked:  # a view, an in-place op, or known
                continue
            self.tracked.add(pointer)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, pointer, nbytes)
        return out


def _tracked_peak(function: Callable, *args: Any, **kwargs: Any) -> int:
    """The most bytes of tensors that `function(*args, **kwargs)` creates alive at one moment."""
    tracker = _TensorMemory()
    with tracker:
        result = function(*args, **kwargs)
    del result
    return tracker.peak


def peak_memory(function: Callable, *args: Any, **kwargs: Any) -> int:
    """The most bytes of tensors created by `function(*args, **kwargs)` (run in inference) that are alive at the
    same moment; the inputs, and tensors that existed before the call, are not counted."""
    with _inference(function):
        return _tracked_peak(function, *args, **kwargs)


def peak_training_memory(function: Callable, *args: Any, **kwargs: Any) -> int:
    """Like `peak_memory`, with gradients on and modules left in their mode: for a training step (forward and
    backward), whose peak is set by the activations the forward pass saves for the backward one."""
    if not callable(function):
        raise ValueError(f"function={function!r} is not callable")
    with torch.enable_grad():
        return _tracked_peak(function, *args, **kwargs)


def time_call(function: Callable, *args: Any, repeats: int = 5, warmup: int = 1, threads: int | None = None,
              **kwargs: Any) -> float:
    """Wall-clock seconds of the fastest of `repeats` calls `function(*args, **kwargs)` in inference, after
    `warmup` untimed ones. `threads` sets PyTorch's CPU threads for the timing (then restores them): one thread
    keeps a machine shared with other jobs from stalling the timed call between threads. On a GPU it waits for
    the device before reading the clock."""
    if not callable(function):
        raise ValueError(f"function={function!r} is not callable")
    for argument, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{argument}={value!r} must be an int >= {low}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads={threads!r} must be a positive int or None (PyTorch's current setting)")
    synchronise = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    previous = torch.get_num_threads()
    times = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with _inference(function):
            for i in range(warmup + repeats):
                synchronise()
                start = time.perf_counter()
                function(*args, **kwargs)
                synchronise()
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return min(times)


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The exponent b of the least-squares fit log(y) = a + b·log(x): how y grows with x."""
    xs, ys = [float(x) for x in xs], [float(y) for y in ys]
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"xs and ys must be equally long with at least 2 points; got {len(xs)} and {len(ys)}")
    if min(xs) <= 0 or min(ys) <= 0:
        raise ValueError("xs and ys must be positive to take logarithms")
    if len(set(xs)) < 2:
        raise ValueError(f"xs={xs} must hold at least two different values")
    log_x, log_y = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mean_x, mean_y = statistics.fmean(log_x), statistics.fmean(log_y)
    covariance = sum((a - mean_x) * (b - mean_y) for a, b in zip(log_x, log_y))
    return covariance / sum((a - mean_x) ** 2 for a in log_x)
