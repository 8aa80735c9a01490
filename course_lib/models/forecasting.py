"""Transformers that forecast time series from patches: PatchTST and a decoder-only forecaster (Timer).

Both read a series the way a ViT reads an image: cut into patches of `patch` consecutive values, each patch
embedded by one linear map into a token.
- `PatchTST` ("A Time Series is Worth 64 Words") is an encoder: its tokens attend to each other in both
  directions, and one linear head maps all of them, flattened, to the whole horizon at once. Each channel of a
  multivariate series is forecast on its own with the same weights (channel independence). `PatchTST.from_hf`
  copies the weights of Hugging Face's `PatchTSTForPrediction`, with which it then agrees.
- `DecoderForecaster` ("Timer: Transformers for Time Series Analysis at Scale") is a GPT over patches: causal
  attention, and a head that predicts the next patch from every position. Pretrained on many series, it
  forecasts any horizon by rolling out patch after patch.

Every window is standardised by its own mean and standard deviation first (`standardise`) and the forecast is
mapped back: a model then sees only the shape of the series, whatever its level and units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from course_lib.models._common import check_heads, check_positive
from course_lib.models._weights import checked_state_dict, move_module
from course_lib.nn import RotaryEmbedding, TransformerBlock, make_norm

__all__ = ["DecoderForecaster", "DecoderForecasterConfig", "PatchEncoder", "PatchTST", "PatchTSTConfig", "as_channels", "check_windows", "patchify_series",
           "standardise"]

MIN_VARIANCE = 1e-5  # added to each window's variance before the square root (Hugging Face's `minimum_scale`)


def check_windows(argument: str, windows: object) -> None:
    """ValueError unless `windows` is a float tensor (batch, length) or (batch, length, channels)."""
    if not isinstance(windows, Tensor) or windows.dim() not in (2, 3) or not windows.is_floating_point():
        raise ValueError(f"{argument} must be a float tensor (batch, length) or (batch, length, channels); got "
                         f"{getattr(windows, 'dtype', type(windows).__name__)} of shape {tuple(getattr(windows, 'shape', ()))}")


def as_channels(contexts: Tensor) -> tuple[Tensor, bool]:
    """(B, L) or (B, L, C) -> ((B, L, C), whether the input had no channel axis); ValueError otherwise."""
    check_windows("contexts", contexts)
    return (contexts[..., None], True) if contexts.dim() == 2 else (contexts, False)


def standardise(x: Tensor, eps: float = MIN_VARIANCE) -> tuple[Tensor, Tensor, Tensor]:
    """(B, L, C) -> ((x - loc) / scale, loc, scale), loc and scale (B, 1, C): the mean over time of each window and
    channel, and sqrt(biased variance + eps)."""
    loc = x.mean(dim=1, keepdim=True)
    scale = (x.var(dim=1, keepdim=True, unbiased=False) + eps).sqrt()
    return (x - loc) / scale, loc, scale


def patchify_series(x: Tensor, patch: int, stride: int) -> Tensor:
    """(..., L) -> (..., N, patch): windows of `patch` values every `stride` steps, placed so that the last one
    ends at the last value (the first L - patch - stride·(N-1) values, if any, are dropped)."""
    check_positive("patch", patch)
    check_positive("stride", stride)
    length = x.shape[-1]
    if length < patch:
        raise ValueError(f"a series of length {length} is shorter than patch={patch}")
    count = (length - patch) // stride + 1
    start = length - (patch + stride * (count - 1))
    return x[..., start:].unfold(-1, patch, stride)


# --- PatchTST ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchTSTConfig:
    """PatchTST: `context` values in, `horizon` values out, per channel; tokens are patches of `patch` values
    every `stride` steps. `positions`: 'learned' (added to the tokens) or 'rope' (rotary, relative)."""

    context: int
    horizon: int
    patch: int = 16
    stride: int = 8
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    norm_position: Literal["pre", "post"] = "pre"
    positions: Literal["learned", "rope"] = "learned"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("context", "horizon", "patch", "stride", "dim", "depth", "heads"):
            check_positive(name, getattr(self, name))
        if self.patch > self.context:
            raise ValueError(f"patch={self.patch} is longer than context={self.context}")
        check_heads(self.dim, self.heads, rotary=self.positions == "rope")
        if self.positions not in ("learned", "rope"):
            raise ValueError(f"positions={self.positions!r}; expected 'learned' or 'rope'")
        if self.norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position={self.norm_position!r}; expected 'pre' or 'post'")

    @property
    def num_patches(self) -> int:
        return (self.context - self.patch) // self.stride + 1


class PatchEncoder(nn.Module):
    """Standardised series (B, length) -> patch tokens (B, N, dim): embed each patch, add learned positions (or
    rotate by rotary ones inside attention), then transformer blocks. Every patch model here starts with one."""

    def __init__(self, *, patch: int, stride: int, dim: int, depth: int, heads: int, mlp_ratio: float = 2.0,
                 num_patches: int, positions: str = "learned", norm_position: str = "pre", dropout: float = 0.0) -> None:
        super().__init__()
        if positions not in ("learned", "rope"):
            raise ValueError(f"positions={positions!r}; expected 'learned' or 'rope'")
        self.patch, self.stride = patch, stride
        self.embed = nn.Linear(patch, dim)
        self.positions = nn.Parameter(torch.randn(num_patches, dim) * 0.02) if positions == "learned" else None
        self.rope = RotaryEmbedding(dim // heads, max_len=num_patches) if positions == "rope" else None
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio=mlp_ratio, norm_position=norm_position,
                                                     dropout=dropout) for _ in range(depth))

    def forward(self, series: Tensor, offset: Tensor | None = None) -> Tensor:
        """(B, length) -> (B, N, dim); `offset` (dim,), if given, is added to every token before the blocks (the
        scale embedding of coarse-to-fine refinement)."""
        tokens = self.embed(patchify_series(series, self.patch, self.stride))  # (B, N, dim)
        if offset is not None:
            tokens = tokens + offset
        if self.positions is not None:
            tokens = tokens + self.positions[: tokens.shape[1]]
        for block in self.blocks:
            tokens = block(tokens, rope=self.rope)
        return tokens


class PatchTST(nn.Module):
    """Standardise each window, cut it into patches, embed, encode with transformer blocks, and map the flattened
    tokens to the horizon with one linear layer; every channel alone, with shared weights."""

    def __init__(self, config: PatchTSTConfig, *, seed: int | None = None) -> None:
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        self.config = config
        self.encoder = PatchEncoder(patch=config.patch, stride=config.stride, dim=config.dim, depth=config.depth,
                                    heads=config.heads, mlp_ratio=config.mlp_ratio, num_patches=config.num_patches,
                                    positions=config.positions, norm_position=config.norm_position,
                                    dropout=config.dropout)
        self.head = nn.Linear(config.num_patches * config.dim, config.horizon)

    def forward(self, contexts: Tensor) -> Tensor:
        """(B, context) or (B, context, C) -> (B, horizon) or (B, horizon, C), in the units of the input."""
        x, univariate = as_channels(contexts)
        if x.shape[1] != self.config.context:
            raise ValueError(f"contexts has length {x.shape[1]}; this model reads context={self.config.context}")
        x, loc, scale = standardise(x)
        tokens = self.encoder(rearrange(x, "b l c -> (b c) l"))  # (B·C, N, dim)
        forecast = self.head(rearrange(tokens, "bc n d -> bc (n d)"))  # (B·C, horizon)
        forecast = rearrange(forecast, "(b c) h -> b h c", c=x.shape[2]) * scale + loc
        return forecast[..., 0] if univariate else forecast

    @classmethod
    def from_hf(cls, reference: nn.Module) -> PatchTST:
        """Our PatchTST with the weights of a Hugging Face `PatchTSTForPrediction` (layer norms, 'std' scaling,
        a flattening head shared by the channels, no class token), which it then agrees with."""
        config = config_from_hf(reference.config)
        model = cls(config)
        model.load_state_dict(state_dict_from_hf(reference, model), strict=True)
        return model.eval()


def config_from_hf(hf: object) -> PatchTSTConfig:
    """Our config for a Hugging Face `PatchTSTConfig`; ValueError for the options we did not build."""
    unsupported = {"norm_type": (hf.norm_type, "layernorm"), "scaling": (hf.scaling, "std"),
                   "use_cls_token": (hf.use_cls_token, False), "pooling_type": (hf.pooling_type, None),
                   "share_projection": (hf.share_projection, True), "share_embedding": (hf.share_embedding, True),
                   "channel_attention": (hf.channel_attention, False), "activation_function": (hf.activation_function, "gelu"),
                   "do_mask_input": (bool(hf.do_mask_input), False)}
    for name, (value, needed) in unsupported.items():
        if value != needed and not (name == "scaling" and value is True):
            raise ValueError(f"reference config has {name}={value!r}; PatchTST.from_hf needs {needed!r}")
    if hf.positional_encoding_type not in ("random", "sincos"):
        raise ValueError(f"positional_encoding_type={hf.positional_encoding_type!r}; expected 'random' or 'sincos'")
    if hf.norm_eps != 1e-5:
        raise ValueError(f"norm_eps={hf.norm_eps}; our layer norms use 1e-5")
    return PatchTSTConfig(context=hf.context_length, horizon=hf.prediction_length, patch=hf.patch_length,
                          stride=hf.patch_stride, dim=hf.d_model, depth=hf.num_hidden_layers,
                          heads=hf.num_attention_heads, mlp_ratio=hf.ffn_dim / hf.d_model,
                          norm_position="pre" if hf.pre_norm else "post", positions="learned")


def state_dict_from_hf(reference: nn.Module, model: PatchTST) -> dict[str, Tensor]:
    """Hugging Face PatchTST weights under our names; every weight of theirs used, every one of ours filled."""
    theirs = {k: v for k, v in reference.state_dict().items()}
    ours: dict[str, Tensor] = {}
    move_module(theirs, ours, "model.encoder.embedder.input_embedding", "encoder.embed")
    ours["encoder.positions"] = theirs.pop("model.encoder.positional_encoder.position_enc")
    for i in range(model.config.depth):
        old, new = f"model.encoder.layers.{i}", f"encoder.blocks.{i}"
        for hf_name, our_name in (("q_proj", "to_q"), ("k_proj", "to_k"), ("v_proj", "to_v"), ("out_proj", "to_out")):
            move_module(theirs, ours, f"{old}.self_attn.{hf_name}", f"{new}.attn.{our_name}")
        move_module(theirs, ours, f"{old}.norm_sublayer1", f"{new}.attn_norm")
        move_module(theirs, ours, f"{old}.norm_sublayer3", f"{new}.ffn_norm")
        move_module(theirs, ours, f"{old}.ff.0", f"{new}.ffn.fc_in")
        move_module(theirs, ours, f"{old}.ff.3", f"{new}.ffn.fc_out")
    move_module(theirs, ours, "head.projection", "head")
    return checked_state_dict(theirs, ours, model)


# --- the decoder-only forecaster ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DecoderForecasterConfig:
    """A GPT over patches of `patch` values: at most `max_patches` tokens, rotary positions, causal blocks."""

    patch: int = 16
    dim: int = 64
    depth: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    max_patches: int = 64

    def __post_init__(self) -> None:
        for name in ("patch", "dim", "depth", "heads", "max_patches"):
            check_positive(name, getattr(self, name))
        check_heads(self.dim, self.heads, rotary=True)


class DecoderForecaster(nn.Module):
    """Next-patch prediction: token t sees patches 0..t and predicts patch t + 1 (Timer's generative pretraining).
    `forward` and `loss` train it on whole series; `forecast(contexts, horizon)` rolls out patch after patch."""

    def __init__(self, config: DecoderForecasterConfig, *, seed: int | None = None) -> None:
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        self.config = config
        self.embed = nn.Linear(config.patch, config.dim)
        self.rope = RotaryEmbedding(config.dim // config.heads, max_len=config.max_patches)
        self.blocks = nn.ModuleList(TransformerBlock(config.dim, config.heads, mlp_ratio=config.mlp_ratio)
                                    for _ in range(config.depth))
        self.norm = make_norm("layer", config.dim)
        self.head = nn.Linear(config.dim, config.patch)

    def next_patches(self, patches: Tensor) -> Tensor:
        """(B, N, patch) standardised patches -> (B, N, patch): at every position, the prediction of the next patch."""
        if patches.shape[1] > self.config.max_patches:
            raise ValueError(f"{patches.shape[1]} patches are more than max_patches={self.config.max_patches}")
        tokens = self.embed(patches)
        for block in self.blocks:
            tokens = block(tokens, causal=True, rope=self.rope)
        return self.head(self.norm(tokens))

    def _patches(self, series: Tensor) -> Tensor:
        if series.dim() != 2 or series.shape[1] % self.config.patch:
            raise ValueError(f"series has shape {tuple(series.shape)}; expected (batch, length) with length a multiple "
                             f"of patch={self.config.patch}")
        return rearrange(series, "b (n p) -> b n p", p=self.config.patch)

    def forward(self, series: Tensor) -> tuple[Tensor, Tensor]:
        """(B, length) series -> (predicted, true) next patches, both (B, N - 1, patch): the training pair of
        generative pretraining, which `loss` compares. Each series is standardised with the statistics of its
        first half only: a forecast knows only its context's, and statistics of the whole series would tell the
        model where the series is going (an upward trend would sit below zero at the end of the context)."""
        patches = self._patches(series)
        if patches.shape[1] < 2:
            raise ValueError(f"series of length {series.shape[1]} hold fewer than 2 patches of {self.config.patch}: "
                             "nothing to predict")
        half = patches.shape[1] // 2 * self.config.patch
        _, loc, scale = standardise(series[:, :half, None])
        patches = (patches - loc) / scale
        return self.next_patches(patches[:, :-1]), patches[:, 1:]

    @staticmethod
    def loss(output: tuple[Tensor, Tensor], target: Tensor | None = None) -> Tensor:
        """Mean squared error of every next-patch prediction; `target` is unused (the series is its own target),
        so that `fit(model, series, series, loss=model.loss)` pretrains the model."""
        predicted, true = output
        return F.mse_loss(predicted, true)

    @torch.no_grad()
    def forecast(self, contexts: Tensor, horizon: int) -> Tensor:
        """(B, L) -> (B, horizon): patch after patch, each prediction fed back as the next input. L must be a
        multiple of patch; the context is standardised with its own statistics and the forecast mapped back."""
        check_positive("horizon", horizon)
        x, loc, scale = standardise(contexts[..., None])
        patches = self._patches(x[..., 0])
        steps = math.ceil(horizon / self.config.patch)
        for _ in range(steps):
            window = patches[:, -self.config.max_patches:]
            patches = torch.cat([patches, self.next_patches(window)[:, -1:]], dim=1)
        forecast = rearrange(patches[:, -steps:], "b n p -> b (n p)")[:, :horizon]
        return forecast * scale[..., 0] + loc[..., 0]
