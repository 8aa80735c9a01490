"""Semantic segmentation: SegFormer's all-MLP decoder on the Mix Transformer, and the two CNN baselines that
notebook 09 measures it against.

SegFormer ("SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers") decodes the
pyramid of its encoder (`SegFormerEncoder`, course_lib/models/hierarchical.py) with nothing but per-pixel linear
layers: each stage's map is projected to one width, upsampled bilinearly to the first stage's resolution (1/4 of
the image for MiT), concatenated (deepest stage first), fused by a 1x1 convolution + BatchNorm + ReLU, and
classified by another 1x1 convolution. The encoder's mixed local and global attention is what makes so light a
decoder enough. `SegFormer.from_hf` copies a Hugging Face `SegformerForSemanticSegmentation`.

EoMT ("Your ViT is Secretly an Image Segmentation Model") needs no decoder at all: a plain ViT whose last
`query_blocks` blocks also carry K learned query tokens. After the final norm each query gives class logits
(the classes plus "no object") and a mask embedding; its dot product with the upsampled patch features is the
query's mask. Training matches queries to the ground-truth segments with the Hungarian algorithm (cost: class
probability, mask BCE and dice), and the semantic map is the sum over queries of class probability times mask.
The paper also anneals away a masked attention during training; that part is not built here.

Baselines that see less: `ColourClassifier` classifies each pixel from its own colour alone (1x1
convolutions); `SmallUNet` is a small convolutional encoder-decoder with skip connections, the usual CNN for
dense prediction.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from course_lib.models._common import check_images, check_positive
from course_lib.models._weights import checked_state_dict, move_module
from course_lib.models.hierarchical import (
    SegFormerConfig,
    SegFormerEncoder,
    segformer_config_from_hf,
    segformer_state_dict_from_hf,
)
from course_lib.models.vit import PatchEmbedding, ViTBlock, ViTConfig
from course_lib.nn import MLP, LayerNorm

__all__ = ["ColourClassifier", "EoMT", "EoMTConfig", "SegFormer", "SegFormerDecodeHead", "SegFormerSegmenterConfig",
           "SmallUNet", "brute_force_match", "eomt_loss", "hungarian_match", "match_costs", "pixel_cross_entropy",
           "semantic_inference", "semantic_targets", "upsample_logits"]


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, classes, h, w) -> (B, classes, *size), bilinear: logits at the image's own resolution, for the loss
    and for mIoU (SegFormer's decoder predicts at 1/4 of it)."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def pixel_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy per pixel of (B, classes, h, w) logits, upsampled to the (B, H, W) target's size first:
    the loss `fit(..., loss=pixel_cross_entropy)` trains a segmenter with."""
    return F.cross_entropy(upsample_logits(logits, target.shape[-2:]), target)


@dataclass
class SegFormerSegmenterConfig:
    """An encoder (a `SegFormerConfig`) and the decoder: its width, the classes and the dropout before them."""

    encoder: SegFormerConfig = field(default_factory=SegFormerConfig)
    decoder_dim: int = 256
    num_classes: int = 5
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, SegFormerConfig):
            raise ValueError(f"encoder={self.encoder!r} must be a SegFormerConfig")
        check_positive("decoder_dim", self.decoder_dim)
        check_positive("num_classes", self.num_classes)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must lie in [0, 1)")


class SegFormerDecodeHead(nn.Module):
    """The all-MLP decoder: a list of (B, C_i, H_i, W_i) maps -> (B, num_classes, H_0, W_0) logits."""

    def __init__(self, stage_dims: tuple[int, ...], decoder_dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.project = nn.ModuleList(nn.Linear(dim, decoder_dim) for dim in stage_dims)
        self.fuse = nn.Conv2d(decoder_dim * len(stage_dims), decoder_dim, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(decoder_dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(decoder_dim, num_classes, kernel_size=1)

    def fused_features(self, features: list[Tensor]) -> Tensor:
        """(B, stages * decoder_dim, H_0, W_0): every stage projected, upsampled, concatenated deepest first."""
        if len(features) != len(self.project):
            raise ValueError(f"got {len(features)} feature maps; this head decodes {len(self.project)} stages")
        size = features[0].shape[-2:]
        unified = []
        for grid, project in zip(features, self.project):
            height, width = grid.shape[-2:]
            tokens = project(rearrange(grid, "b c h w -> b (h w) c"))  # (B, h*w, decoder_dim): a per-pixel linear
            grid = rearrange(tokens, "b (h w) c -> b c h w", h=height, w=width)
            unified.append(upsample_logits(grid, size))  # every stage at the first stage's resolution
        return torch.cat(unified[::-1], dim=1)  # deepest stage first, as the reference implementation does

    def forward(self, features: list[Tensor]) -> Tensor:
        fused = F.relu(self.norm(self.fuse(self.fused_features(features))))  # (B, decoder_dim, H_0, W_0)
        return self.classifier(self.dropout(fused))


class SegFormer(nn.Module):
    """images (B, C, H, W) -> logits (B, num_classes, H/s, W/s), s the first stage's stride (4 in MiT);
    with `full_resolution=True`, upsampled to (H, W), what mIoU compares with the mask."""

    def __init__(self, config: SegFormerSegmenterConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = SegFormerEncoder(c.encoder)
        self.head = SegFormerDecodeHead(c.encoder.hidden_sizes, c.decoder_dim, c.num_classes, c.dropout)

    def forward(self, images: Tensor, *, full_resolution: bool = False) -> Tensor:
        logits = self.head(self.encoder(images))
        return upsample_logits(logits, images.shape[-2:]) if full_resolution else logits

    @classmethod
    def from_hf(cls, reference: nn.Module) -> SegFormer:
        """A segmenter with the weights of a Hugging Face `SegformerForSemanticSegmentation`: the same `logits`."""
        hf = reference.config
        config = SegFormerSegmenterConfig(encoder=segformer_config_from_hf(hf), decoder_dim=hf.decoder_hidden_size,
                                          num_classes=hf.num_labels, dropout=hf.classifier_dropout_prob)
        model = cls(config)
        encoder = segformer_state_dict_from_hf(reference.segformer, model.encoder)
        head = _decode_head_state_dict_from_hf(reference.decode_head, model.head)
        state = {**{f"encoder.{k}": v for k, v in encoder.items()}, **{f"head.{k}": v for k, v in head.items()}}
        model.load_state_dict(state, strict=True)
        return model


def _decode_head_state_dict_from_hf(reference: nn.Module, head: SegFormerDecodeHead) -> dict[str, Tensor]:
    """A `SegformerDecodeHead`'s weights (BatchNorm statistics included) under our names; every key must line up."""
    theirs = dict(reference.state_dict())
    ours: dict[str, Tensor] = {}
    for i in range(len(head.project)):
        move_module(theirs, ours, f"linear_projections.{i}.proj", f"project.{i}")
    move_module(theirs, ours, "linear_fuse", "fuse")
    move_module(theirs, ours, "classifier", "classifier")
    for part in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        ours[f"norm.{part}"] = theirs.pop(f"batch_norm.{part}")
    return checked_state_dict(theirs, ours, head)


# ----------------------------------------------------------------------------------------------
# Baselines.


class ColourClassifier(nn.Module):
    """Each pixel classified from its own colour alone: an MLP on the C values of one pixel, as 1x1 convolutions.
    It can tell background from object by colour, never one shape from another."""

    def __init__(self, num_classes: int, *, channels: int = 3, hidden: int = 32) -> None:
        super().__init__()
        for argument, value in (("channels", channels), ("num_classes", num_classes), ("hidden", hidden)):
            check_positive(argument, value)
        self.channels = channels
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, num_classes, 1))

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_classes, H, W)."""
        check_images(images, self.channels)
        return self.mlp(images)


def _conv_block(channels_in: int, channels_out: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU: the unit every U-Net level is made of."""
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False), nn.BatchNorm2d(channels_out), nn.ReLU(),
        nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False), nn.BatchNorm2d(channels_out), nn.ReLU(),
    )


class SmallUNet(nn.Module):
    """A small U-Net: `levels` times (conv block, 2x2 max-pool) down, a bottleneck, then up by transposed
    convolutions, each level concatenated with the encoder map of its resolution (the skip connection).
    Widths double per level from `width`. Sides must be multiples of 2**levels."""

    def __init__(self, num_classes: int, *, channels: int = 3, width: int = 16, levels: int = 2) -> None:
        super().__init__()
        for argument, value in (("channels", channels), ("num_classes", num_classes), ("width", width),
                                ("levels", levels)):
            check_positive(argument, value)
        self.channels, self.levels = channels, levels
        widths = [width * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList(_conv_block(c_in, c_out) for c_in, c_out in zip([channels, *widths[:-2]], widths[:-1]))
        self.bottleneck = _conv_block(widths[-2], widths[-1])
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(levels)))
        self.up = nn.ModuleList(_conv_block(2 * widths[i], widths[i]) for i in reversed(range(levels)))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_classes, H, W)."""
        height, width = check_images(images, self.channels)
        if height % 2**self.levels or width % 2**self.levels:
            raise ValueError(f"images are {height}x{width}; a U-Net of levels={self.levels} needs multiples of "
                             f"{2**self.levels}")
        skips, x = [], images
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for upsample, block, skip in zip(self.upsample, self.up, reversed(skips)):
            x = block(torch.cat([upsample(x), skip], dim=1))  # (B, 2 * width_i, H_i, W_i)
        return self.classifier(x)


# ----------------------------------------------------------------------------------------------
# EoMT: an encoder-only mask transformer.


@dataclass
class EoMTConfig:
    """A plain ViT (no class token, learned positions) whose last `query_blocks` blocks also carry
    `num_queries` learned queries; `mask_upscale` 2x transposed convolutions sharpen the patch features the
    masks are read from (patch 4 and 2 steps: masks at the image's resolution)."""

    image_size: int = 32
    patch_size: int = 4
    channels: int = 3
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    query_blocks: int = 1
    num_queries: int = 8
    num_classes: int = 5
    mask_upscale: int = 2
    norm_eps: float = 1e-6
    query_std: float = 0.02  # the queries' initial spread; notebook 09 trains better from 1.0 (distinct queries)

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "channels", "dim", "depth", "heads", "num_queries", "num_classes"):
            check_positive(name, getattr(self, name))
        for name in ("query_blocks", "mask_upscale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be a non-negative int")
        if isinstance(self.query_std, bool) or not isinstance(self.query_std, (int, float)) or not self.query_std > 0:
            raise ValueError(f"query_std={self.query_std!r} must be a positive number")
        if self.query_blocks > self.depth:
            raise ValueError(f"query_blocks={self.query_blocks} must not exceed depth={self.depth}")

    def vit(self) -> ViTConfig:
        """The ViTConfig of the blocks (and the checks on image, patch, dim and heads that come with it)."""
        return ViTConfig(image_size=self.image_size, patch_size=self.patch_size, channels=self.channels, dim=self.dim,
                         depth=self.depth, heads=self.heads, mlp_ratio=self.mlp_ratio, num_classes=0,
                         norm_eps=self.norm_eps)


class EoMT(nn.Module):
    """images (B, C, H, W) -> class logits (B, K, classes + 1) and mask logits (B, K, h, w), h = grid * 2**upscale;
    with `semantic=True`, the (B, classes, H, W) semantic scores `semantic_inference` makes of them."""

    def __init__(self, config: EoMTConfig) -> None:
        super().__init__()
        self.config = c = config
        vit = c.vit()
        self.patch_embed = PatchEmbedding(c.patch_size, c.channels, c.dim)
        self.pos_embedding = nn.Parameter(torch.zeros(vit.num_patches, c.dim))
        self.queries = nn.Parameter(torch.zeros(c.num_queries, c.dim))
        self.blocks = nn.ModuleList(ViTBlock(vit) for _ in range(c.depth))
        self.norm = LayerNorm(c.dim, eps=c.norm_eps)
        self.class_head = nn.Linear(c.dim, c.num_classes + 1)  # the last class is "no object"
        self.mask_head = nn.Sequential(MLP(c.dim, c.dim, activation="gelu"), nn.GELU(), nn.Linear(c.dim, c.dim))
        self.upscale = nn.Sequential(*(nn.Sequential(nn.ConvTranspose2d(c.dim, c.dim, 2, stride=2), nn.GELU())
                                       for _ in range(c.mask_upscale)))
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)
        nn.init.trunc_normal_(self.queries, std=c.query_std)  # cut at ±2 (absolute)

    def forward(self, images: Tensor, *, semantic: bool = False) -> tuple[Tensor, Tensor] | Tensor:
        c = self.config
        height, width = check_images(images, c.channels)
        if (height, width) != (c.image_size, c.image_size):
            raise ValueError(f"images are {height}x{width}; expected image_size={c.image_size}")
        x = self.patch_embed(images) + self.pos_embedding  # (B, N, dim)
        first_query_block = c.depth - c.query_blocks
        for index, block in enumerate(self.blocks):
            if index == first_query_block:  # the queries join here and attend with the patches from now on
                x = torch.cat([x, self.queries.expand(len(x), -1, -1)], dim=1)  # (B, N + K, dim)
            x = block(x)
        if c.query_blocks == 0:
            x = torch.cat([x, self.queries.expand(len(x), -1, -1)], dim=1)
        x = self.norm(x)
        patches, queries = x[:, : -c.num_queries], x[:, -c.num_queries :]
        side = c.image_size // c.patch_size
        grid = self.upscale(rearrange(patches, "b (h w) d -> b d h w", h=side, w=side))  # (B, dim, h, w)
        masks = torch.einsum("bqd,bdhw->bqhw", self.mask_head(queries), grid)  # (B, K, h, w)
        classes = self.class_head(queries)  # (B, K, classes + 1)
        if semantic:
            return upsample_logits(semantic_inference(classes, masks), (height, width))
        return classes, masks


def semantic_inference(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """(B, K, classes + 1) and (B, K, H, W) -> (B, classes, H, W): each query votes for its class probabilities
    (without "no object") over the pixels of its sigmoid mask."""
    probabilities = class_logits.softmax(dim=-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probabilities, mask_logits.sigmoid())


def semantic_targets(semantic: Tensor) -> tuple[Tensor, Tensor]:
    """One segment per class present in an (H, W) semantic map: classes (S,) ascending and masks (S, H, W) float."""
    classes = semantic.unique()
    return classes, (semantic[None] == classes[:, None, None]).float()


def _dice(probabilities: Tensor, masks: Tensor) -> Tensor:
    """(K, P) and (S, P) -> (K, S): 1 - (2|p·m| + 1) / (|p| + |m| + 1), the smoothed dice loss of every pair."""
    overlap = probabilities @ masks.T
    return 1 - (2 * overlap + 1) / (probabilities.sum(-1)[:, None] + masks.sum(-1)[None, :] + 1)


_CLASS_WEIGHT, _MASK_WEIGHT, _DICE_WEIGHT, _NO_OBJECT_WEIGHT = 2.0, 5.0, 5.0, 0.1


def match_costs(class_logits: Tensor, mask_logits: Tensor, classes: Tensor, masks: Tensor) -> Tensor:
    """(K, S) cost of giving query k segment s: -2·p_k(class_s) + 5·BCE(mask_k, m_s) + 5·dice(mask_k, m_s)."""
    logits = rearrange(mask_logits, "k h w -> k (h w)")
    targets = rearrange(masks, "s h w -> s (h w)")
    # mean BCE with logits, for all pairs at once: softplus(x) - x·m, averaged over pixels
    bce = (F.softplus(logits).sum(-1)[:, None] - logits @ targets.T) / logits.shape[-1]
    class_cost = -class_logits.softmax(dim=-1)[:, classes]  # (K, S)
    return _CLASS_WEIGHT * class_cost + _MASK_WEIGHT * bce + _DICE_WEIGHT * _dice(logits.sigmoid(), targets)


def _check_cost(cost: Tensor) -> None:
    if not isinstance(cost, Tensor) or cost.dim() != 2 or cost.shape[0] < cost.shape[1]:
        raise ValueError(f"cost has shape {tuple(getattr(cost, 'shape', ()))}; expected (queries, segments) with "
                         "at least as many queries as segments")


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """The assignment of segments to distinct queries of least total cost: (queries, segments), both (S,) long,
    sorted by query (the Hungarian algorithm, SciPy's `linear_sum_assignment`)."""
    from scipy.optimize import linear_sum_assignment

    _check_cost(cost)
    rows, cols = linear_sum_assignment(cost.detach().cpu().double().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def brute_force_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """The same assignment found by trying every one (K!/(K-S)! of them): the test of `hungarian_match`."""
    _check_cost(cost)
    segments = cost.shape[1]
    best = min(itertools.permutations(range(cost.shape[0]), segments),
               key=lambda queries: float(cost[list(queries), range(segments)].sum()))
    order = sorted(range(segments), key=lambda s: best[s])
    return torch.tensor([best[s] for s in order]), torch.tensor(order)


def eomt_loss(outputs: tuple[Tensor, Tensor], semantic: Tensor) -> Tensor:
    """The set loss of a mask transformer against (B, H, W) semantic maps, for `fit(..., loss=eomt_loss)`: each
    image's segments are matched to queries, then 2·cross-entropy of every query's class (unmatched ones:
    "no object", weighted 0.1) + 5·BCE + 5·dice of the matched masks, averaged over images."""
    class_logits, mask_logits = outputs
    classes_plus_one = class_logits.shape[-1]
    if semantic.min() < 0 or semantic.max() >= classes_plus_one - 1:
        raise ValueError(f"targets hold classes {int(semantic.min())}..{int(semantic.max())}; the model predicts "
                         f"0..{classes_plus_one - 2}")
    mask_logits = upsample_logits(mask_logits, semantic.shape[-2:])  # (B, K, H, W) at the targets' resolution
    weight = torch.ones(classes_plus_one, device=class_logits.device)
    weight[-1] = _NO_OBJECT_WEIGHT
    total = class_logits.new_zeros(())
    for logits, masks_of_queries, target in zip(class_logits, mask_logits, semantic):
        classes, masks = semantic_targets(target)
        with torch.no_grad():
            queries, segments = hungarian_match(match_costs(logits, masks_of_queries, classes, masks))
        labels = torch.full((len(logits),), classes_plus_one - 1, dtype=torch.long, device=logits.device)
        labels[queries] = classes[segments]
        matched = rearrange(masks_of_queries[queries], "s h w -> s (h w)")
        wanted = rearrange(masks[segments], "s h w -> s (h w)")
        bce = F.binary_cross_entropy_with_logits(matched, wanted)
        dice = _dice(matched.sigmoid(), wanted).diagonal().mean()
        total = total + _CLASS_WEIGHT * F.cross_entropy(logits, labels, weight=weight) + _MASK_WEIGHT * bce \
            + _DICE_WEIGHT * dice
    return total / len(class_logits)
