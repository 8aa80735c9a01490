"""A short loop for the small language models that Part III compares, and their score in bits per token.

Windows of `length` tokens are cut from a long 1-D stream (text as bytes) or are the rows of a 2-D
tensor (one clip of codec tokens per row). Every model is scored on the same targets, tokens 1..L-1
of each window given the tokens before them, whatever its convention:

- a GPT-style model maps tokens to logits for the *next* token, so it reads window[:, :-1];
- a model with `predicts_current_token = True` (the hierarchical `MBLM`, which shifts inside itself)
  maps a window to logits for each token *of* it, so it reads the whole window and its first logits
  (those for token 0, predicted from nothing) are dropped.

Training is AdamW with a one-cycle schedule on random windows drawn from `seed`, so two models trained
with the same seed see the same windows in the same order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from course_lib.train.loop import _check_positive, one_cycle

__all__ = ["bits_per_token", "fit_language_model", "next_token_logits", "windows_loss"]


def next_token_logits(model: nn.Module, windows: Tensor) -> Tensor:
    """(B, L) token windows -> (B, L - 1, vocab) logits for windows[:, 1:], each from the tokens before it."""
    if getattr(model, "predicts_current_token", False):
        return model(windows)[:, 1:]
    return model(windows[:, :-1])


def windows_loss(model: nn.Module, windows: Tensor) -> Tensor:
    """Mean cross-entropy, in nats, of tokens 1..L-1 of each window given the tokens before them."""
    logits = next_token_logits(model, windows)
    return F.cross_entropy(rearrange(logits, "b l v -> (b l) v"), rearrange(windows[:, 1:], "b l -> (b l)"))


def _check_data(data: Tensor, length: int) -> None:
    if not isinstance(data, Tensor) or data.dim() not in (1, 2) or data.dtype.is_floating_point:
        raise ValueError(f"data must be a 1-D stream or 2-D rows of integer tokens; got "
                         f"{getattr(data, 'dtype', type(data).__name__)} of shape {tuple(getattr(data, 'shape', ()))}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"length={length!r}; expected an integer >= 2 (one context token and one target)")
    available = data.shape[-1]
    if (data.dim() == 1 and available < length) or (data.dim() == 2 and available != length):
        raise ValueError(f"length={length} does not fit data of shape {tuple(data.shape)}: a stream needs at "
                         f"least `length` tokens, rows must be exactly `length` long")


def _random_windows(data: Tensor, length: int, batch: int, generator: torch.Generator) -> Tensor:
    """`batch` windows: random rows of 2-D data, or random slices of a 1-D stream."""
    if data.dim() == 2:
        return data[torch.randint(len(data), (batch,), generator=generator)]
    starts = torch.randint(len(data) - length + 1, (batch,), generator=generator)
    return data[starts[:, None] + torch.arange(length)]


def _scored_windows(data: Tensor, length: int) -> Tensor:
    """Windows whose targets (all but each window's first token) cover every token of a stream once but the first."""
    if data.dim() == 2:
        return data
    starts = torch.arange(0, len(data) - length + 1, length - 1)
    return data[starts[:, None] + torch.arange(length)]


@torch.no_grad()
def bits_per_token(model: nn.Module, data: Tensor, *, length: int, batch: int = 64,
                   device: torch.device | str | None = None) -> float:
    """Mean bits per target token over `data` (a stream cut into windows overlapping by one token, or rows)."""
    _check_data(data, length)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for chunk in _scored_windows(data, length).split(batch):
        chunk = chunk.long().to(device)
        total += windows_loss(model, chunk).item() * chunk[:, 1:].numel()
        count += chunk[:, 1:].numel()
    model.train(was_training)
    return total / count / math.log(2)


def fit_language_model(model: nn.Module, data: Tensor, *, length: int, steps: int, lr: float, batch: int = 32,
                       seed: int = 0, weight_decay: float = 0.1, device: torch.device | str | None = None,
                       val_data: Tensor | None = None, every: int = 0,
                       extra_loss: Callable[[], Tensor] | None = None,
                       autocast: torch.dtype | None = None) -> dict[str, list]:
    """Train `model` in place on random windows; returns {"train": nats per step, "seconds": wall-clock seconds
    of training (held-out scoring excluded) at the end of each step, "val": [(step, bits per token)]}.

    With `val_data` and `every` > 0, the held-out score is taken every `every` steps and after the last one.
    `extra_loss()`, called after each forward pass, is added to the loss that trains (not to the one recorded):
    an auxiliary loss the model computes on the way, such as a mixture of experts' balancing loss.
    `autocast` (torch.bfloat16 or torch.float16) runs each forward pass in mixed precision: matrix products in that
    type, the weights, their gradients and the optimiser in float32.
    """
    _check_data(data, length)
    if val_data is not None:
        _check_data(val_data, length)
    _check_positive("steps", steps)
    _check_positive("batch", batch)
    _check_positive("lr", lr, float)
    if extra_loss is not None and not callable(extra_loss):
        raise ValueError(f"extra_loss={extra_loss!r} is not callable; expected a function of no arguments -> scalar")
    if autocast not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"autocast={autocast!r}; expected None, torch.bfloat16 or torch.float16")
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ValueError(f"every={every!r}; expected an integer >= 0 (0: no held-out curve)")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = one_cycle(optimizer, lr, steps)
    history: dict[str, list] = {"train": [], "seconds": [], "val": []}
    model.to(device).train()
    started = time.perf_counter()  # moved forward by the time held-out scoring takes, which is not training
    for step in range(1, steps + 1):
        with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = windows_loss(model, _random_windows(data, length, batch, generator).long().to(device))
        optimizer.zero_grad(set_to_none=True)
        (loss if extra_loss is None else loss + extra_loss()).backward()
        optimizer.step()
        schedule.step()
        history["train"].append(loss.item())
        history["seconds"].append(time.perf_counter() - started)
        if val_data is not None and every and (step % every == 0 or step == steps):
            scoring = time.perf_counter()
            history["val"].append((step, bits_per_token(model, val_data, length=length, device=device)))
            started += time.perf_counter() - scoring
    model.eval()
    return history
