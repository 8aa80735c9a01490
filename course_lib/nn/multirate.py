"""Multi-rate structure on intermediate embeddings, as in "WaveletGPT: Wavelets Meet Large Language Models".

A channel of a decoder's hidden states is a signal over time. Replacing some channels by a causal
moving average (the approximation coefficients of a Haar wavelet, computed at every position) gives
each later layer the same sequence seen at several temporal resolutions, at no cost in parameters:

- the first `dim - dim // 2` channels are left as they are;
- the other `dim // 2` are cut into `levels` groups of consecutive channels; group j (j = 1..levels)
  is replaced, at position t, by the mean of its values at positions t - 2^j + 1 .. t (fewer at the
  start of the sequence). Only the past is used, so a causal model stays causal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_moving_average", "multirate_windows", "multirate_causal_average"]


def causal_moving_average(x: Tensor, window: int) -> Tensor:
    """(B, T, C) -> (B, T, C): the mean of x over positions max(0, t - window + 1)..t, by cumulative sums."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window={window!r}; expected a positive integer")
    if x.dim() != 3:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (batch, time, channels)")
    totals = F.pad(x.cumsum(dim=1), (0, 0, 1, 0))                     # (B, T+1, C): totals[t] = sum of x[:t]
    length = x.shape[1]
    end = torch.arange(1, length + 1, device=x.device)
    start = (end - window).clamp(min=0)
    counts = (end - start).to(x.dtype)[None, :, None]                  # window, or t+1 near the start
    return (totals[:, end] - totals[:, start]) / counts


def multirate_windows(dim: int, levels: int) -> list[int]:
    """The averaging window of each of `dim` channels: 1 (left alone) for the first half, 2^j for group j."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise ValueError(f"dim={dim!r}; expected an integer >= 2")
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= dim // 2:
        raise ValueError(f"levels={levels!r}; expected an integer in [1, dim // 2 = {dim // 2}]")
    structured = dim // 2
    group = [min(j * levels // structured, levels - 1) for j in range(structured)]   # 0..levels-1, equal groups
    return [1] * (dim - structured) + [2 ** (g + 1) for g in group]


def multirate_causal_average(x: Tensor, levels: int) -> Tensor:
    """(B, T, C) -> (B, T, C): half of the channels replaced by causal averages over 2, 4, ..., 2^levels tokens."""
    if x.dim() != 3:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (batch, time, channels)")
    windows = multirate_windows(x.shape[-1], levels)
    out = x.clone()
    for window in sorted(set(windows) - {1}):
        channels = [c for c, w in enumerate(windows) if w == window]
        out[..., channels] = causal_moving_average(x[..., channels], window)
    return out
