"""Where a transformer looks, and what its decision rests on (notebook 19).

`AttentionRecorder` records, for any course model whose attention goes through
`course_lib.nn.scaled_dot_product_attention` (every one but Swin's windowed attention and the efficient-attention
approximations of notebook 11), each attention call's (..., heads, Lq, Lk) weights in the order they run, the name
of the module that made the call, and after a backward pass the weights' gradients: no change to the model's code.
From those:

- `attention_rollout` ("Quantifying Attention Flow in Transformers"): the head-averaged attention of every layer,
  with the residual connection as an identity, multiplied through the layers;
- `relevance_propagation` ("Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
  Transformers"): each layer's attention weighted by its gradient, negatives clipped, averaged over heads, and
  accumulated through the layers, with the rule for self-attention and the rule for co-attention (queries of one
  modality reading keys of another);
- `gradient_weighted`: Grad-CAM over tokens.

`pointing_game` and `mass_inside` score a relevance map against an object mask.
"""

from __future__ import annotations

from types import TracebackType

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from course_lib.nn.attention import WEIGHTS_RECORDER

__all__ = ["AttentionRecorder", "attention_rollout", "co_attention_update", "gradient_weighted", "mass_inside",
           "pointing_game", "relevance_propagation", "self_attention_update"]


class AttentionRecorder:
    """`with AttentionRecorder(model) as record:` makes every attention call inside `model` form its weights
    explicitly and keeps them (calls made by other models in the same block are left alone): `record.weights[i]` is the i-th call's weights, `record.names[i]` the innermost module
    of `model` that made it (e.g. "blocks.0.attn"), and, once a score has been back-propagated, `record.gradients[i]`
    their gradient. Outputs are the same as without the recorder (up to the fused kernel's rounding)."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.model = model
        self.weights: list[Tensor] = []
        self.names: list[str] = []
        self._running: list[str] = []  # names of the modules whose forward is under way, outermost first
        self._handles: list[RemovableHandle] = []
        self._token = None

    def __enter__(self) -> AttentionRecorder:
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._starts(name)))
            self._handles.append(module.register_forward_hook(self._ends))
        self._token = WEIGHTS_RECORDER.set(self._keep)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        WEIGHTS_RECORDER.reset(self._token)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._running.clear()

    def _starts(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self._running.append(name)
        return hook

    def _ends(self, module: nn.Module, args: tuple, output: object) -> None:
        self._running.pop()

    def _keep(self, weights: Tensor) -> None:
        if not self._running:  # attention computed in the block, but not by `model` (another model's)
            return
        if weights.requires_grad:
            weights.retain_grad()
        self.weights.append(weights)
        self.names.append(self._running[-1] if self._running else "")

    @property
    def gradients(self) -> list[Tensor]:
        if not self.weights:
            raise ValueError(f"no attention was recorded in {type(self.model).__name__}: run it inside the `with` block "
                             f"(its attention must go through course_lib.nn.scaled_dot_product_attention)")
        missing = [name for name, w in zip(self.names, self.weights) if w.grad is None]
        if missing:
            raise ValueError(f"no gradient recorded for {missing}: call backward() on a score of the recorded "
                             f"forward pass, with gradients enabled, first")
        return [w.grad for w in self.weights]


def _check_maps(weights: list[Tensor], gradients: list[Tensor] | None = None) -> None:
    if not weights or any(not isinstance(w, Tensor) or w.dim() != 4 or w.shape[-1] != w.shape[-2] for w in weights):
        raise ValueError(f"weights must be a non-empty list of (batch, heads, L, L) self-attention maps; got shapes "
                         f"{[tuple(getattr(w, 'shape', ())) for w in weights] if isinstance(weights, list) else weights!r}")
    if len({w.shape for w in weights}) != 1:
        raise ValueError(f"every map must have the same shape (one token sequence); got {[tuple(w.shape) for w in weights]}")
    if gradients is not None and [g.shape for g in gradients] != [w.shape for w in weights]:
        raise ValueError(f"gradients must match weights one to one; got {[tuple(g.shape) for g in gradients]} for "
                         f"{[tuple(w.shape) for w in weights]}")


def attention_rollout(weights: list[Tensor]) -> Tensor:
    """(B, L, L): how much each token's final state draws on each input token, by rolling the head-averaged
    attention out through the layers, the residual connection counted as half of every layer (A + I) / 2."""
    _check_maps(weights)
    identity = torch.eye(weights[0].shape[-1], device=weights[0].device)
    rollout = identity.expand(weights[0].shape[0], -1, -1)
    for layer in weights:
        mixed = (layer.mean(dim=1) + identity) / 2
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    return rollout


def _weighted_attention(weights: Tensor, gradient: Tensor) -> Tensor:
    """Ā = mean over heads of (∇A ⊙ A)⁺: the attention that raised the score."""
    return (gradient * weights).clamp(min=0).mean(dim=1)


def self_attention_update(relevance: Tensor, weights: Tensor, gradient: Tensor) -> Tensor:
    """One self-attention layer's step of the generic rule: R ← R + Ā · R, with R (B, L, L) or (B, L, L_other)
    the relevance of the layer's input tokens (rows) on the input of a modality (columns)."""
    return relevance + _weighted_attention(weights, gradient) @ relevance


def _normalised(relevance: Tensor) -> Tensor:
    """R̂ = (R − I), each row scaled to sum to one, plus I: a self-relevance map whose accumulated part does not
    grow with depth."""
    identity = torch.eye(relevance.shape[-1], device=relevance.device)
    accumulated = relevance - identity
    return accumulated / accumulated.sum(dim=-1, keepdim=True).clamp_min(1e-12) + identity


def co_attention_update(self_relevance: Tensor, cross_relevance: Tensor, other_to_self: Tensor,
                        other_relevance: Tensor, weights: Tensor, gradient: Tensor) -> tuple[Tensor, Tensor]:
    """One co-attention layer (queries of modality s read keys of modality q) in the generic rule:
    R^ss ← R^ss + Ā R^qs (what s reads from q brings q's relevance on s), and R^sq ← R^sq + R̂^ssᵀ Ā R̂^qq (with both
    self-relevance maps normalised, so the accumulated part of neither grows with depth). Arguments: R^ss
    (B, Ls, Ls), R^sq (B, Ls, Lq), R^qs (B, Lq, Ls), R^qq (B, Lq, Lq), and the (B, heads, Ls, Lq) weights with
    their gradient. Returns the new R^ss and R^sq."""
    read = _weighted_attention(weights, gradient)  # (B, Ls, Lq)
    through = _normalised(self_relevance).transpose(-1, -2) @ read @ _normalised(other_relevance)
    return self_relevance + read @ other_to_self, cross_relevance + through


def relevance_propagation(weights: list[Tensor], gradients: list[Tensor]) -> Tensor:
    """(B, L, L) relevance of a single-stream transformer (self-attention only, every modality in one sequence):
    R = I, then R ← R + Ā · R for every layer in order. The row of the token a score is read from gives each input
    token's relevance to that score."""
    _check_maps(weights, gradients)
    relevance = torch.eye(weights[0].shape[-1], device=weights[0].device).expand(weights[0].shape[0], -1, -1)
    for layer, gradient in zip(weights, gradients):
        relevance = self_attention_update(relevance, layer, gradient)
    return relevance


def gradient_weighted(tokens: Tensor, gradient: Tensor) -> Tensor:
    """(B, L) Grad-CAM on tokens: each feature weighted by the mean gradient of the score over the tokens, summed
    over features, negatives clipped. `tokens` (B, L, D) are a layer's output, `gradient` the score's gradient."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 3 or not isinstance(gradient, Tensor) \
            or gradient.shape != tokens.shape:
        raise ValueError(f"tokens and gradient must be (batch, tokens, dim) of one shape; got "
                         f"{tuple(getattr(tokens, 'shape', ()))} and {tuple(getattr(gradient, 'shape', ()))}")
    return (tokens * gradient.mean(dim=1, keepdim=True)).sum(dim=-1).clamp(min=0)


def _patch_masks(masks: Tensor, grid: int) -> Tensor:
    """(B, H, W) pixel masks -> (B, grid², ) share of each patch's pixels inside the mask."""
    if not isinstance(masks, Tensor) or masks.dim() != 3 or masks.shape[1] % grid or masks.shape[2] % grid:
        raise ValueError(f"masks must be (batch, H, W) with H and W divisible by grid={grid}; got "
                         f"{tuple(getattr(masks, 'shape', ()))}")
    return torch.nn.functional.avg_pool2d(masks[:, None].float(), masks.shape[1] // grid).flatten(1)


def _check_relevance(relevance: Tensor, masks: Tensor) -> int:
    if not isinstance(relevance, Tensor) or relevance.dim() != 2 or relevance.shape[0] != len(masks):
        raise ValueError(f"relevance must be (batch={len(masks)}, patches); got {tuple(getattr(relevance, 'shape', ()))}")
    grid = round(relevance.shape[1] ** 0.5)
    if grid * grid != relevance.shape[1]:
        raise ValueError(f"relevance has {relevance.shape[1]} patches; expected a square grid")
    return grid


def pointing_game(relevance: Tensor, masks: Tensor) -> Tensor:
    """(B,) bool: does the most relevant patch of a (B, grid²) map, in row-major order, touch the object's (B, H, W)
    mask? (Ties go to the first patch.)"""
    inside = _patch_masks(masks, _check_relevance(relevance, masks))
    return inside[torch.arange(len(masks)), relevance.argmax(dim=1)] > 0


def mass_inside(relevance: Tensor, masks: Tensor) -> Tensor:
    """(B,) share of a (B, grid²) non-negative relevance map that falls on the object's pixels, each patch's
    relevance spread evenly over its pixels."""
    inside = _patch_masks(masks, _check_relevance(relevance, masks))
    relevance = relevance.clamp(min=0)
    return (relevance * inside).sum(dim=1) / relevance.sum(dim=1).clamp_min(1e-12)
