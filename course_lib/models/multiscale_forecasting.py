"""Forecasters that look at a series at several scales, a channel-attention forecaster, and an embedding for numbers
of any magnitude.

- `AdaptivePathways` ("Pathformer: Multi-scale Transformers with Adaptive Pathways for Time Series Forecasting"):
  one patch encoder per patch size and a router that reads the context's spectrum and keeps the `top_k` patch
  sizes that suit this series, weighting their forecasts.
- `MultiResolution` ("Multi-resolution Time-Series Transformer for Long-term Forecasting"): the same branches,
  all kept, with relative (rotary) positions; one linear head reads all their tokens.
- `CoarseToFine` ("Scaleformer: Iterative Multi-scale Refining Transformers for Time Series Forecasting"): one
  encoder, shared by every scale, forecasts the series averaged over 2^k steps, then refines that forecast at
  each finer scale, normalising every scale's input by its own mean.
- `SAMformer` ("SAMformer: Unlocking the Potential of Transformers in Time Series Forecasting with
  Sharpness-Aware Minimization and Channel-Wise Attention"): tokens are the channels of a multivariate series,
  one attention layer mixes them, a linear layer forecasts. Train it with `fit(..., sam_rho=...)`.
- `MultiScaledEmbedding` ("NuTime: Numerically Multi-Scaled Embedding for Large-Scale Time Series
  Pretraining"): a vector for a scalar of any magnitude, blended from one linear embedding per power of ten.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from course_lib.models._common import check_heads, check_positive, check_positive_ints
from course_lib.models.forecasting import PatchEncoder, as_channels, standardise

__all__ = ["AdaptivePathways", "CoarseToFine", "CoarseToFineConfig", "MultiResolution",
           "MultiScaleConfig", "MultiScaledEmbedding", "SAMformer", "top_k_weights"]


@dataclass(frozen=True)
class MultiScaleConfig:
    """Branches that cut the same `context` into non-overlapping patches of each size in `patch_sizes`; `top_k` of
    them are used per series by `AdaptivePathways` (all of them by `MultiResolution`)."""

    context: int
    horizon: int
    patch_sizes: tuple[int, ...] = (4, 8, 16, 32)
    top_k: int = 2
    dim: int = 32
    depth: int = 1
    heads: int = 4
    mlp_ratio: float = 2.0

    def __post_init__(self) -> None:
        for name in ("context", "horizon", "top_k", "dim", "depth", "heads"):
            check_positive(name, getattr(self, name))
        sizes = check_positive_ints("patch_sizes", self.patch_sizes)
        object.__setattr__(self, "patch_sizes", sizes)
        if any(self.context % size for size in sizes):
            raise ValueError(f"every patch size {sizes} must divide context={self.context}")
        if self.top_k > len(sizes):
            raise ValueError(f"top_k={self.top_k} is more than the {len(sizes)} patch sizes")
        check_heads(self.dim, self.heads, rotary=True)  # the multi-resolution branches are rotary


def _branch(config: MultiScaleConfig, size: int, positions: str) -> PatchEncoder:
    return PatchEncoder(patch=size, stride=size, dim=config.dim, depth=config.depth, heads=config.heads,
                        mlp_ratio=config.mlp_ratio, num_patches=config.context // size, positions=positions)


def top_k_weights(logits: Tensor, k: int) -> Tensor:
    """(B, E) -> (B, E): softmax over the k largest logits of each row, exact zeros elsewhere."""
    kept = logits.topk(k, dim=-1).indices
    masked = torch.full_like(logits, float("-inf")).scatter(-1, kept, logits.gather(-1, kept))
    return masked.softmax(dim=-1)


def _standardised_channels(contexts: Tensor, length: int) -> tuple[Tensor, Tensor, Tensor, bool, int]:
    """(B, L[, C]) -> (series (B·C, L) standardised, loc, scale, univariate, C), after checking the length."""
    x, univariate = as_channels(contexts)
    if x.shape[1] != length:
        raise ValueError(f"contexts has length {x.shape[1]}; this model reads context={length}")
    x, loc, scale = standardise(x)
    return rearrange(x, "b l c -> (b c) l"), loc, scale, univariate, x.shape[2]


def _to_units(forecast: Tensor, loc: Tensor, scale: Tensor, univariate: bool, channels: int) -> Tensor:
    """(B·C, H) standardised -> (B, H[, C]) in the input's units."""
    forecast = rearrange(forecast, "(b c) h -> b h c", c=channels) * scale + loc
    return forecast[..., 0] if univariate else forecast


class AdaptivePathways(nn.Module):
    """A forecaster per patch size (patch encoder + flattening head) and a router over them: the router reads the
    amplitude spectrum of the standardised context and keeps the `top_k` branches with the largest logits,
    weighted by a softmax over those. The routing weights of the last call are kept in `last_weights`.
    Pathformer's noise on the router and its load-balancing loss are left out: a branch outside every window's
    top_k gets no gradient, so the router can settle on the same branches for all windows (notebook 14's does)."""

    def __init__(self, config: MultiScaleConfig, *, seed: int | None = None) -> None:
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        self.config = config
        self.branches = nn.ModuleList(_branch(config, size, "learned") for size in config.patch_sizes)
        self.heads = nn.ModuleList(nn.Linear(config.context // size * config.dim, config.horizon)
                                   for size in config.patch_sizes)
        self.router = nn.Linear(config.context // 2, len(config.patch_sizes))
        nn.init.zeros_(self.router.weight)  # start from an even split among the branches the bias picks
        self.last_weights: Tensor | None = None

    def route(self, series: Tensor) -> Tensor:
        """(B, L) standardised -> (B, branches) weights, zero outside each row's top_k."""
        spectrum = torch.fft.rfft(series, dim=-1).abs()[:, 1 : self.config.context // 2 + 1]  # no mean term
        return top_k_weights(self.router(spectrum / series.shape[-1] ** 0.5), self.config.top_k)

    def forward(self, contexts: Tensor) -> Tensor:
        """(B, context[, C]) -> (B, horizon[, C]) in the input's units."""
        series, loc, scale, univariate, channels = _standardised_channels(contexts, self.config.context)
        weights = self.route(series)  # (B·C, E)
        forecasts = torch.stack([head(rearrange(branch(series), "b n d -> b (n d)"))
                                 for branch, head in zip(self.branches, self.heads)], dim=1)  # (B·C, E, H)
        self.last_weights = weights.detach()
        return _to_units((weights[..., None] * forecasts).sum(dim=1), loc, scale, univariate, channels)


class MultiResolution(nn.Module):
    """Every patch size's branch, with rotary (relative) positions, all kept: one linear head reads the flattened
    tokens of all branches together."""

    def __init__(self, config: MultiScaleConfig, *, seed: int | None = None) -> None:
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        self.config = config
        self.branches = nn.ModuleList(_branch(config, size, "rope") for size in config.patch_sizes)
        tokens = sum(config.context // size for size in config.patch_sizes)
        self.head = nn.Linear(tokens * config.dim, config.horizon)

    def forward(self, contexts: Tensor) -> Tensor:
        """(B, context[, C]) -> (B, horizon[, C]) in the input's units."""
        series, loc, scale, univariate, channels = _standardised_channels(contexts, self.config.context)
        tokens = torch.cat([branch(series) for branch in self.branches], dim=1)  # (B·C, ΣN, dim)
        return _to_units(self.head(rearrange(tokens, "b n d -> b (n d)")), loc, scale, univariate, channels)


@dataclass(frozen=True)
class CoarseToFineConfig:
    """Scales (average-pooling factors, coarsest first, ending at 1); at scale s the encoder reads context/s values
    and the previous forecast upsampled to horizon/s values, cut into patches of `patch`."""

    context: int
    horizon: int
    scales: tuple[int, ...] = (4, 2, 1)
    patch: int = 4
    dim: int = 32
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0

    def __post_init__(self) -> None:
        for name in ("context", "horizon", "patch", "dim", "depth", "heads"):
            check_positive(name, getattr(self, name))
        scales = check_positive_ints("scales", self.scales)
        object.__setattr__(self, "scales", scales)
        if scales[-1] != 1 or list(scales) != sorted(scales, reverse=True) or len(set(scales)) != len(scales):
            raise ValueError(f"scales={scales} must decrease strictly and end at 1")
        for scale in scales:
            if self.context % (scale * self.patch) or self.horizon % (scale * self.patch):
                raise ValueError(f"context={self.context} and horizon={self.horizon} must be multiples of "
                                 f"scale·patch = {scale}·{self.patch} for every scale")
        check_heads(self.dim, self.heads, rotary=True)


class CoarseToFine(nn.Module):
    """Scaleformer's iterative refinement around one shared patch encoder.

    At each scale s (coarsest first): the context averaged over s steps and the previous scale's forecast
    linearly upsampled to horizon/s values (zeros at the first scale) form one sequence; it is normalised by its
    own mean (cross-scale normalisation), patched, encoded with a learned embedding of the scale added; a linear
    head of that scale reads all the tokens, flattened, and gives a correction added to the upsampled forecast.
    The encoder is shared by all scales; only the small heads are not (their input and output sizes differ).
    `forward` returns every scale's forecast (what `loss` trains, `fit(model, x, y, loss=model.loss)`); `forecast`
    returns the finest."""

    def __init__(self, config: CoarseToFineConfig, *, seed: int | None = None) -> None:
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        self.config = config
        longest = (config.context + config.horizon) // config.patch
        self.encoder = PatchEncoder(patch=config.patch, stride=config.patch, dim=config.dim, depth=config.depth,
                                    heads=config.heads, mlp_ratio=config.mlp_ratio, num_patches=longest,
                                    positions="rope")
        self.scale_embedding = nn.Parameter(torch.zeros(len(config.scales), config.dim))
        self.heads = nn.ModuleList(nn.Linear((config.context + config.horizon) // (factor * config.patch) * config.dim,
                                             config.horizon // factor) for factor in config.scales)

    def forward(self, contexts: Tensor) -> list[Tensor]:
        """(B, context[, C]) -> one forecast per scale, coarsest first: (B, horizon/s[, C]) in the input's units."""
        series, loc, scale, univariate, channels = _standardised_channels(contexts, self.config.context)
        previous = series.new_zeros(len(series), self.config.horizon // self.config.scales[0])
        outputs = []
        for index, factor in enumerate(self.config.scales):
            coarse = F.avg_pool1d(series[:, None], factor)[:, 0]  # (B·C, context/s)
            prior = F.interpolate(previous[:, None], size=self.config.horizon // factor, mode="linear",
                                  align_corners=False)[:, 0] if index else previous
            sequence = torch.cat([coarse, prior], dim=1)
            tokens = self.encoder(sequence - sequence.mean(dim=1, keepdim=True), self.scale_embedding[index])
            previous = prior + self.heads[index](rearrange(tokens, "b n d -> b (n d)"))
            outputs.append(_to_units(previous, loc, scale, univariate, channels))
        return outputs

    def forecast(self, contexts: Tensor) -> Tensor:
        """(B, context[, C]) -> (B, horizon[, C]): the finest scale's forecast."""
        return self(contexts)[-1]

    def loss(self, forecasts: list[Tensor], targets: Tensor) -> Tensor:
        """Mean over scales of the squared error between each scale's forecast and the targets averaged over s steps:
        Scaleformer trains every scale, so that each coarse forecast is a forecast in its own right."""
        y, _ = as_channels(targets)
        total = 0.0
        for factor, forecast in zip(self.config.scales, forecasts):
            pooled = rearrange(F.avg_pool1d(rearrange(y, "b h c -> b c h"), factor), "b c h -> b h c")
            total = total + F.mse_loss(forecast, pooled[..., 0] if targets.dim() == 2 else pooled)
        return total / len(self.config.scales)


class SAMformer(nn.Module):
    """SAMformer: standardise each channel of the window, let the channels (tokens of `context` values each)
    attend to each other once, add the result back, and forecast every channel with one shared linear map.
    Queries and keys are `key_dim`-wide projections of whole channel windows; values keep the window length."""

    def __init__(self, context: int, horizon: int, *, key_dim: int = 16, seed: int | None = None) -> None:
        super().__init__()
        for name, value in (("context", context), ("horizon", horizon), ("key_dim", key_dim)):
            check_positive(name, value)
        if seed is not None:
            torch.manual_seed(seed)
        self.context, self.horizon = context, horizon
        self.to_q = nn.Linear(context, key_dim, bias=False)
        self.to_k = nn.Linear(context, key_dim, bias=False)
        self.to_v = nn.Linear(context, context, bias=False)
        self.out = nn.Linear(context, horizon)
        self.last_weights: Tensor | None = None

    def forward(self, contexts: Tensor) -> Tensor:
        """(B, context, C) -> (B, horizon, C) in the input's units."""
        x, univariate = as_channels(contexts)
        if x.shape[1] != self.context:
            raise ValueError(f"contexts has length {x.shape[1]}; this model reads context={self.context}")
        x, loc, scale = standardise(x)
        tokens = rearrange(x, "b l c -> b c l")  # one token per channel
        scores = self.to_q(tokens) @ self.to_k(tokens).transpose(1, 2) / self.to_q.out_features ** 0.5  # (B, C, C)
        weights = scores.softmax(dim=-1)
        self.last_weights = weights.detach()
        mixed = tokens + weights @ self.to_v(tokens)  # (B, C, context)
        forecast = rearrange(self.out(mixed), "b c h -> b h c") * scale + loc
        return forecast[..., 0] if univariate else forecast


class MultiScaledEmbedding(nn.Module):
    """A `dim`-vector for every scalar, whatever its magnitude: for each power of ten 10^k (k from `low` to
    `high`), a linear embedding of x / 10^k, and the embeddings blended with weights softmax_k(-(log10|x| - k)² / τ)
    that pick the powers of ten near x's own. Each linear piece then sees numbers of order one (a squared distance,
    so that the weights fall faster than x / 10^k grows for the powers far below x's)."""

    def __init__(self, dim: int, *, low: int = -4, high: int = 4, temperature: float = 0.5) -> None:
        super().__init__()
        check_positive("dim", dim)
        if not isinstance(low, int) or not isinstance(high, int) or low > high:
            raise ValueError(f"low={low!r} and high={high!r} must be ints with low <= high")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r} must be positive")
        self.temperature = temperature
        self.register_buffer("exponents", torch.arange(low, high + 1, dtype=torch.float32), persistent=False)
        self.slopes = nn.Parameter(torch.randn(len(self.exponents), dim) / dim ** 0.5)
        self.offsets = nn.Parameter(torch.zeros(len(self.exponents), dim))

    def scale_weights(self, x: Tensor) -> Tensor:
        """(...) -> (..., K): how much each power of ten speaks for x (softmax over K; zero counts as 10^low)."""
        magnitude = torch.log10(x.abs().clamp_min(10.0 ** float(self.exponents[0])))
        return (-(magnitude[..., None] - self.exponents).pow(2) / self.temperature).softmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """(...) -> (..., dim)."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError(f"x must be a float tensor; got {getattr(x, 'dtype', type(x).__name__)}")
        scaled = x[..., None] / 10.0 ** self.exponents  # (..., K)
        pieces = scaled[..., None] * self.slopes + self.offsets  # (..., K, dim)
        return (self.scale_weights(x)[..., None] * pieces).sum(dim=-2)
