"""Making a trained transformer smaller and cheaper after training: post-training quantisation, structured pruning
of heads and channels, and token merging. Notebook 25 builds each step; parameter-efficient fine-tuning lives in
`course_lib.nn.peft`.

Quantisation here is *simulated* ("fake quantisation"): a tensor is rounded to the grid of a b-bit integer format and
stored back in float, so the arithmetic is float but every value is one an integer kernel could hold. The grids:
- uniform, asymmetric: q = clamp(round(x / scale) + zero_point, 0, 2^b - 1), x ≈ (q - zero_point) * scale;
- uniform, symmetric (weights): q = clamp(round(w / scale), -(2^(b-1) - 1), 2^(b-1) - 1), w ≈ q * scale;
- log2 (softmax probabilities): q = round(-log2 p), p ≈ 2^-q, with one code for 0; and log-√2 (RepQuant's),
  q = round(-2 log2 p), p ≈ 2^(-q/2), which inference runs as a log2 shift plus a parity bit.

Scale reparameterisation (RepQuant): per-channel quantisation of a LayerNorm's output is accurate but needs one
scale per channel at inference. Dividing the LayerNorm's affine by r_c = scale_c / scale and multiplying the next
linear layers' input columns by r_c gives a model whose one per-tensor quantiser rounds exactly as the per-channel
ones did (`reparameterize_layernorm`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from course_lib.models.vit import ViT, ViTAttention
from course_lib.nn import LayerNorm, transform_attention_weights
from course_lib.nn.feedforward import MLP


def _check_bits(bits: object, low: int = 2) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= 16:
        raise ValueError(f"bits={bits!r} must be an int in {low}..16")


# ----------------------------------------------------------------------------------------------
# Quantisers


def quantize_weight(weight: Tensor, bits: int, *, per_channel: bool = True) -> Tensor:
    """`weight` (out, ...) rounded to a symmetric b-bit grid: one scale per output channel (row), or one for the
    whole tensor. The scale maps the largest magnitude to the largest level, 2^(b-1) - 1."""
    _check_bits(bits)
    levels = 2 ** (bits - 1) - 1
    magnitude = weight.abs().flatten(1).amax(dim=1) if per_channel else weight.abs().amax().expand(weight.shape[0])
    scale = (magnitude / levels).clamp_min(1e-12).view(-1, *([1] * (weight.dim() - 1)))  # (out, 1, ...)
    return (weight / scale).round().clamp(-levels, levels) * scale


def minmax_parameters(low: Tensor, high: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Scale and integer zero point of the asymmetric b-bit grid that spans [low, high] (elementwise: per tensor
    for scalars, per channel for vectors). The range is widened to hold 0, so that 0 is exactly representable."""
    _check_bits(bits)
    low, high = low.clamp(max=0.0), high.clamp(min=0.0)
    scale = ((high - low) / (2**bits - 1)).clamp_min(1e-8)
    return scale, (-low / scale).round()


def uniform_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """`x` rounded to the asymmetric grid (q - zero_point) * scale, q in 0..2^b - 1; scale and zero point broadcast
    against x (a scalar, or one per channel of the last axis)."""
    _check_bits(bits)
    q = (x / scale).round().add(zero_point).clamp(0, 2**bits - 1)
    return (q - zero_point) * scale


def log2_quantize(probabilities: Tensor, bits: int) -> Tensor:
    """Probabilities rounded to powers of two: 2^-q for q in 0..2^b - 2, and 0 (the last code) below that. Fine
    steps near 0, where most attention weights lie (a uniform grid of b bits rounds every weight below 2^-(b+1) to
    0), and an exact 1; multiplying by 2^-q is a bit shift."""
    _check_bits(bits, low=1)
    exponent = (-torch.log2(probabilities.clamp_min(1e-30))).round().clamp_min(0)
    return torch.where(exponent <= 2**bits - 2, torch.exp2(-exponent), torch.zeros_like(probabilities))


def log_sqrt2_quantize(probabilities: Tensor, bits: int) -> Tensor:
    """Probabilities rounded to powers of √2, 2^(-q/2) for q in 0..2^b - 2, and 0 below: RepQuant's softmax
    quantiser, twice as fine as log2 (relative error up to 2^(1/4) instead of √2). At inference it is a log2 code
    and one parity bit: 2^(-q/2) = 2^(-floor(q/2)) · (1/√2 if q is odd), a shift and at most one fixed multiply
    (`log_sqrt2_as_shifts`)."""
    _check_bits(bits, low=1)
    exponent = (-2 * torch.log2(probabilities.clamp_min(1e-30))).round().clamp_min(0)
    return torch.where(exponent <= 2**bits - 2, torch.exp2(-exponent / 2), torch.zeros_like(probabilities))


def log_sqrt2_as_shifts(codes: Tensor) -> Tensor:
    """The value of log-√2 codes q computed as a log2 shift and a parity correction: 2^-(q // 2) · 2^(-1/2)^(q % 2)."""
    return torch.exp2(-(codes // 2).to(torch.float32)) * torch.where(codes % 2 == 1, 2**-0.5, 1.0)


def uniform_probability_quantize(probabilities: Tensor, bits: int) -> Tensor:
    """Probabilities rounded to the uniform b-bit grid on [0, 1], the baseline `log2_quantize` is compared with."""
    _check_bits(bits, low=1)
    steps = 2**bits - 1
    return (probabilities * steps).round() / steps


SOFTMAX_QUANTIZERS = {"log2": log2_quantize, "log_sqrt2": log_sqrt2_quantize, "uniform": uniform_probability_quantize}


# ----------------------------------------------------------------------------------------------
# Scale reparameterisation: per-channel LayerNorm quantisation, run with one per-tensor quantiser


def reparameterize_layernorm(norm: LayerNorm | nn.LayerNorm, consumers: Sequence[nn.Linear], scale: Tensor,
                             zero_point: Tensor) -> tuple[Tensor, Tensor]:
    """Fold per-channel quantiser parameters (`scale`, `zero_point`, one per channel of `norm`) into `norm`'s affine
    and the `consumers` that read its output, in place; return the one (scale, zero_point) of the per-tensor
    quantiser that now rounds exactly as the per-channel ones did.

    With r_c = scale_c / s and the integer shift d_c = zero_point_c - z: the norm's output becomes
    (y_c + d_c scale_c) / r_c, so y'_c / s + z = y_c / scale_c + zero_point_c (the same integer after rounding),
    and each consumer's weight column c is multiplied by r_c, its bias gains -W (d * scale), so that it computes
    the same function of the dequantised values.
    """
    channels = norm.weight.shape[0]
    if scale.shape != (channels,) or zero_point.shape != (channels,):
        raise ValueError(f"scale {tuple(scale.shape)} and zero_point {tuple(zero_point.shape)} must both have shape "
                         f"({channels},), one per channel of the norm")
    if not consumers or any(layer.in_features != channels for layer in consumers):
        raise ValueError(f"consumers must be Linear layers that read the norm's {channels} channels")
    layer_scale, layer_zero = scale.mean(), zero_point.mean().round()
    ratio, shift = scale / layer_scale, (zero_point - layer_zero) * scale  # r_c, and d_c * scale_c
    if norm.bias is None or any(layer.bias is None for layer in consumers):
        raise ValueError("the norm and every consumer need a bias to absorb the zero-point shift")
    with torch.no_grad():
        norm.weight.div_(ratio)
        norm.bias.add_(shift).div_(ratio)
        for layer in consumers:
            layer.bias.sub_(layer.weight @ shift)
            layer.weight.mul_(ratio)
    return layer_scale, layer_zero


class Quantized(nn.Module):
    """Applies `module`, then fake-quantises its output with the asymmetric grid (scale, zero_point): the
    activation quantiser after a LayerNorm."""

    def __init__(self, module: nn.Module, scale: Tensor, zero_point: Tensor, bits: int) -> None:
        super().__init__()
        _check_bits(bits)
        self.module, self.bits = module, bits
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("zero_point", zero_point.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return uniform_quantize(self.module(x), self.scale, self.zero_point, self.bits)


class SoftmaxQuantized(nn.Module):
    """Runs `model` with every attention weight tensor passed through `quantizer` (see `transform_attention_weights`)."""

    def __init__(self, model: nn.Module, quantizer: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.model, self.quantizer = model, quantizer

    def forward(self, *args, **kwargs):
        with transform_attention_weights(self.quantizer):
            return self.model(*args, **kwargs)


def norms_and_consumers(model: ViT) -> list[tuple[str, nn.Module, list[nn.Linear]]]:
    """Every LayerNorm of a (sequential-block) ViT with the Linear layers that read its output."""
    if model.config.parallel_blocks:
        raise ValueError("parallel_blocks=True: quantising the shared norm is not supported; use sequential blocks")
    found = []
    for i, block in enumerate(model.blocks):
        found.append((f"blocks.{i}.attn_norm", block.attn_norm, [block.attn.to_q, block.attn.to_k, block.attn.to_v]))
        found.append((f"blocks.{i}.ffn_norm", block.ffn_norm, [block.ffn.fc_in]))
    if model.head is not None:
        found.append(("final_norm", model.final_norm, [model.head]))
    return found


@torch.no_grad()
def norm_output_ranges(model: ViT, images: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-channel (min, max) of every LayerNorm's output over the calibration `images`, by name."""
    ranges, handles = {}, []
    for name, norm, _ in norms_and_consumers(model):
        def keep(module, inputs, output, name=name):
            flat = output.flatten(0, -2)
            low, high = flat.amin(dim=0), flat.amax(dim=0)
            if name in ranges:
                low, high = torch.minimum(low, ranges[name][0]), torch.maximum(high, ranges[name][1])
            ranges[name] = (low, high)
        handles.append(norm.register_forward_hook(keep))
    try:
        model.eval()(images)
    finally:
        for handle in handles:
            handle.remove()
    return ranges


def quantize_vit(model: ViT, calibration: Tensor, *, weight_bits: int | None = None, weight_per_channel: bool = True,
                 norm_bits: int | None = None, norm_granularity: str = "channel", softmax_bits: int | None = None,
                 softmax: str = "log2") -> nn.Module:
    """A fake-quantised copy of `model` (the original is untouched); None leaves that part in float.

    - weights of every Linear and of the patch embedding: symmetric, per output channel or per tensor;
    - every LayerNorm's output: asymmetric, calibrated on `calibration` images by min/max, with one quantiser per
      tensor ("tensor"), per channel ("channel"), or per channel folded into one per-tensor quantiser by scale
      reparameterisation ("reparameterized": the same rounding as "channel", the hardware cost of "tensor");
    - attention weights: "log2", "log_sqrt2" or "uniform" grids.
    """
    if norm_granularity not in ("tensor", "channel", "reparameterized"):
        raise ValueError(f"norm_granularity={norm_granularity!r}; expected 'tensor', 'channel' or 'reparameterized'")
    if softmax not in SOFTMAX_QUANTIZERS:
        raise ValueError(f"softmax={softmax!r}; expected one of {sorted(SOFTMAX_QUANTIZERS)}")
    quantized = copy.deepcopy(model).eval()
    if norm_bits is not None:
        ranges = norm_output_ranges(quantized, calibration)
        for name, norm, consumers in norms_and_consumers(quantized):
            low, high = ranges[name]
            if norm_granularity == "tensor":
                scale, zero = minmax_parameters(low.min(), high.max(), norm_bits)
            else:
                scale, zero = minmax_parameters(low, high, norm_bits)
                if norm_granularity == "reparameterized":
                    scale, zero = reparameterize_layernorm(norm, consumers, scale, zero)
            quantized.set_submodule(name, Quantized(norm, scale, zero, norm_bits))
    if weight_bits is not None:  # after reparameterisation, which rescales the consumers' columns
        with torch.no_grad():
            for module in quantized.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    module.weight.copy_(quantize_weight(module.weight, weight_bits, per_channel=weight_per_channel))
    if softmax_bits is not None:
        _check_bits(softmax_bits, low=1)
        rounding = SOFTMAX_QUANTIZERS[softmax]
        return SoftmaxQuantized(quantized, lambda weights: rounding(weights, softmax_bits))
    return quantized


def model_bytes(model: nn.Module, weight_bits: int = 32) -> int:
    """Bytes to store `model`'s parameters with every weight matrix at `weight_bits` and the rest (biases, norms,
    positions, class token) in float32, plus one float32 scale per output channel of each quantised matrix."""
    total = 0
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if name == "weight" and isinstance(module, (nn.Linear, nn.Conv2d)) and weight_bits < 32:
                total += math.ceil(parameter.numel() * weight_bits / 8) + 4 * parameter.shape[0]
            else:
                total += 4 * parameter.numel()
    return total


# ----------------------------------------------------------------------------------------------
# Structured pruning: remove whole heads and hidden channels, so the model really gets smaller


def _check_keep(keep: Tensor, size: int, argument: str) -> Tensor:
    keep = torch.as_tensor(keep).flatten()
    if keep.dtype == torch.bool or keep.is_floating_point() or keep.numel() == 0 \
            or keep.min() < 0 or keep.max() >= size or keep.unique().numel() != keep.numel():
        raise ValueError(f"{argument}={keep.tolist()} must be distinct indices in 0..{size - 1}, at least one")
    return keep.sort().values


def _rows(layer: nn.Linear, keep: Tensor) -> nn.Linear:
    """A Linear that computes only the output features `keep` of `layer`."""
    smaller = nn.Linear(layer.in_features, len(keep), bias=layer.bias is not None)
    with torch.no_grad():
        smaller.weight.copy_(layer.weight[keep])
        if layer.bias is not None:
            smaller.bias.copy_(layer.bias[keep])
    return smaller.to(layer.weight)


def _columns(layer: nn.Linear, keep: Tensor) -> nn.Linear:
    """A Linear that reads only the input features `keep` of `layer`."""
    smaller = nn.Linear(len(keep), layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        smaller.weight.copy_(layer.weight[:, keep])
        if layer.bias is not None:
            smaller.bias.copy_(layer.bias)
    return smaller.to(layer.weight)


def prune_heads_(attention: ViTAttention, keep: Tensor) -> None:
    """Keep only the heads `keep` of `attention`, in place: their rows of q, k, v and their columns of the output
    projection. The remaining heads compute exactly what they computed before."""
    head_dim = attention.to_q.out_features // attention.heads
    keep = _check_keep(keep, attention.heads, "keep")
    features = rearrange(keep[:, None] * head_dim + torch.arange(head_dim), "h d -> (h d)")
    for name in ("to_q", "to_k", "to_v"):
        setattr(attention, name, _rows(getattr(attention, name), features))
    attention.to_out = _columns(attention.to_out, features)
    if not isinstance(attention.q_norm, nn.Identity):
        raise ValueError("pruning heads of a qk_norm attention is not supported")
    attention.heads = len(keep)


def prune_channels_(mlp: MLP, keep: Tensor) -> None:
    """Keep only the hidden channels `keep` of `mlp`, in place (rows of fc_in, columns of fc_out)."""
    keep = _check_keep(keep, mlp.fc_in.out_features, "keep")
    mlp.fc_in, mlp.fc_out = _rows(mlp.fc_in, keep), _columns(mlp.fc_out, keep)


def _zero_head_hook(head: int, head_dim: int):
    def hook(module, inputs):
        x = inputs[0].clone()
        x[..., head * head_dim:(head + 1) * head_dim] = 0
        return (x,)
    return hook


@torch.no_grad()
def head_importance(model: ViT, images: Tensor, labels: Tensor) -> Tensor:
    """(depth, heads): how much the cross-entropy on (`images`, `labels`) rises when that head's output is zeroed,
    one head at a time. The costly but direct score: a head that nothing depends on scores 0."""
    model.eval()
    base = F.cross_entropy(model(images), labels)
    scores = torch.zeros(len(model.blocks), model.config.heads)
    for i, block in enumerate(model.blocks):
        head_dim = block.attn.to_q.out_features // block.attn.heads
        for h in range(block.attn.heads):
            handle = block.attn.to_out.register_forward_pre_hook(_zero_head_hook(h, head_dim))
            try:
                scores[i, h] = F.cross_entropy(model(images), labels) - base
            finally:
                handle.remove()
    return scores


def channel_importance(model: ViT, images: Tensor, labels: Tensor) -> Tensor:
    """(depth, hidden): the first-order (Taylor) estimate of the loss change when a hidden channel of each MLP is
    removed, |sum over tokens of activation * gradient|, from one backward pass."""
    model.eval()
    hidden = []

    def keep(module, inputs):
        inputs[0].retain_grad()
        hidden.append(inputs[0])

    handles = [block.ffn.fc_out.register_forward_pre_hook(keep) for block in model.blocks]
    try:
        F.cross_entropy(model(images), labels).backward()
    finally:
        for handle in handles:
            handle.remove()
    model.zero_grad(set_to_none=True)
    return torch.stack([(h * h.grad).sum(dim=(0, 1)).abs().detach() for h in hidden])


def _keep_top(scores: Tensor, fraction: float) -> list[Tensor]:
    """For each row, the indices (ascending) left after removing the lowest `fraction` of all entries, ranked
    together across rows; each row's best entry is never removed, so no layer is emptied."""
    rows, columns = scores.shape
    remove = min(int(round(fraction * rows * columns)), rows * (columns - 1))
    protected = torch.zeros(rows, columns, dtype=torch.bool)
    protected[torch.arange(rows), scores.argmax(dim=1)] = True
    ranked = scores.masked_fill(protected, float("inf")).flatten().argsort()  # lowest first, the protected last
    removed = torch.zeros(rows * columns, dtype=torch.bool)
    removed[ranked[:remove]] = True
    return [(~row).nonzero().flatten() for row in removed.view(rows, columns)]


def prune_vit(model: ViT, *, head_scores: Tensor | None = None, head_fraction: float = 0.0,
              channel_scores: Tensor | None = None, channel_fraction: float = 0.0) -> ViT:
    """A smaller copy of `model` without the lowest-scoring `head_fraction` of its heads and `channel_fraction` of
    its MLP channels, ranked across all layers (so layers lose different amounts, as UPop's search allows)."""
    for argument, value in (("head_fraction", head_fraction), ("channel_fraction", channel_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{argument}={value!r} must lie in [0, 1)")
    pruned = copy.deepcopy(model)
    if head_fraction > 0:
        if head_scores is None:
            raise ValueError("head_fraction > 0 needs head_scores")
        for block, keep in zip(pruned.blocks, _keep_top(head_scores, head_fraction)):
            prune_heads_(block.attn, keep)
    if channel_fraction > 0:
        if channel_scores is None:
            raise ValueError("channel_fraction > 0 needs channel_scores")
        for block, keep in zip(pruned.blocks, _keep_top(channel_scores, channel_fraction)):
            prune_channels_(block.ffn, keep)
    return pruned


# ----------------------------------------------------------------------------------------------
# Token merging: fewer tokens in the later blocks


def class_attention(block: nn.Module, tokens: Tensor) -> Tensor:
    """(B, N) how much `block`'s class token (position 0) will attend to each of the other tokens, averaged over
    heads: the importance score of token pruning and merging."""
    attention, x = block.attn, block.attn_norm(tokens)
    q = rearrange(attention.to_q(x[:, :1]), "b t (h d) -> b h t d", h=attention.heads)  # (B, h, 1, d)
    k = rearrange(attention.to_k(x), "b t (h d) -> b h t d", h=attention.heads)  # (B, h, T, d)
    weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)  # (B, h, 1, T)
    return weights[:, :, 0, 1:].mean(dim=1)


def merge_plan(tokens: Tensor, importance: Tensor, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """Which tokens stay and where the others go: the indices (B, keep) of the `keep` most important tokens in their
    original order, the indices (B, N - keep) of the others, and for each other token the position (0..keep-1) of
    the kept token of highest cosine similarity, which it joins."""
    count = tokens.shape[1]
    if not 1 <= keep <= count:
        raise ValueError(f"keep={keep} must lie in 1..{count} (the tokens there are)")
    order = importance.argsort(dim=1, descending=True)
    kept_index, other_index = order[:, :keep].sort(dim=1).values, order[:, keep:]
    kept, others = (tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))
                    for index in (kept_index, other_index))
    similarity = F.normalize(others, dim=-1) @ F.normalize(kept, dim=-1).transpose(1, 2)  # (B, N - keep, keep)
    return kept_index, other_index, similarity.argmax(dim=-1)


def merge_tokens(tokens: Tensor, sizes: Tensor, importance: Tensor, keep: int, *, merge: bool = True
                 ) -> tuple[Tensor, Tensor]:
    """Reduce (B, N, dim) `tokens` that stand for `sizes` (B, N) patches each to the `keep` most important.

    With `merge`, every other token is averaged into the kept token it is most similar to (`merge_plan`), weighted
    by the patches each stands for, so its information stays in the sequence; without, it is dropped.
    Returns the (B, keep, dim) tokens and their (B, keep) sizes, kept tokens in their original order.
    """
    dim = tokens.shape[-1]
    kept_index, other_index, target = merge_plan(tokens, importance, keep)
    kept = tokens.gather(1, kept_index[..., None].expand(-1, -1, dim))
    kept_sizes = sizes.gather(1, kept_index)
    if not merge or keep == tokens.shape[1]:
        return kept, kept_sizes
    others = tokens.gather(1, other_index[..., None].expand(-1, -1, dim))
    other_sizes = sizes.gather(1, other_index)
    total = (kept * kept_sizes[..., None]).scatter_add(1, target[..., None].expand(-1, -1, dim),
                                                      others * other_sizes[..., None])
    merged_sizes = kept_sizes.scatter_add(1, target, other_sizes)
    return total / merged_sizes[..., None], merged_sizes


class TokenReduced(nn.Module):
    """A classifier ViT run with `reduced_logits` (fewer tokens in later blocks), usable wherever a model is."""

    def __init__(self, model: ViT, keep: Sequence[int], *, merge: bool = True) -> None:
        super().__init__()
        self.model, self.keep, self.merge = model, list(keep), merge

    def forward(self, images: Tensor) -> Tensor:
        return reduced_logits(self.model, images, self.keep, merge=self.merge)


def reduced_logits(model: ViT, images: Tensor, keep: Sequence[int], *, merge: bool = True) -> Tensor:
    """`model`'s logits when the patch tokens entering block i are reduced to keep[i] (non-increasing, one entry
    per block) by `merge_tokens`, ranked by the class token's attention in that block. Needs pool='cls'."""
    if model.config.pool != "cls" or model.head is None:
        raise ValueError("reduced_logits needs a classifier ViT with pool='cls' (the class token ranks the tokens)")
    if len(keep) != len(model.blocks) or any(b > a for a, b in zip(keep, keep[1:])) or keep[0] > model.config.num_patches:
        raise ValueError(f"keep={list(keep)} must give a non-increasing count per block ({len(model.blocks)} blocks), "
                         f"at most {model.config.num_patches} patches")
    x = model.embed(images)
    sizes = torch.ones(x.shape[0], x.shape[1] - 1, device=x.device)
    for block, count in zip(model.blocks, keep):
        if count < x.shape[1] - 1:
            patches, sizes = merge_tokens(x[:, 1:], sizes, class_attention(block, x), count, merge=merge)
            x = torch.cat([x[:, :1], patches], dim=1)
        x = block(x)
    return model.head(model.final_norm(x)[:, 0])
