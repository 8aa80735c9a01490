"""One transformer for images and text (notebook 17): three ways to share its weights between modalities, a
bridge that feeds a vision encoder to a language model, and a head that grounds a phrase as a box.

`UnifiedTransformer` reads one sequence: an image's patch tokens (a prefix every token may read) followed by a
caption's tokens (each reads the prefix and the caption up to itself: the prefix-LM mask). What its blocks share
between the two modalities is `kind`:

| kind       | attention                         | projections, feed-forward, norms      | paper                              |
|------------|-----------------------------------|---------------------------------------|------------------------------------|
| "dense"    | one, global                       | one set for every token               | one early-fusion transformer       |
| "multiway" | one, global                       | a feed-forward expert (and its norm)  | VLMo; "Image as a Foreign          |
|            |                                   | per modality                          | Language" (BEiT-3)                 |
| "mot"      | global over every token           | every weight per modality: q, k, v,   | "Mixture-of-Transformers"          |
|            |                                   | output, feed-forward, norms           |                                    |

Tokens are routed to their modality's weights by position (the layout image-then-text is the same in every
example), so each weight set runs once on a contiguous slice: no loop over tokens. Every kind costs the same
FLOPs per token; "multiway" and "mot" hold more parameters.

Two more kinds (`MOE_KINDS`, notebook 18) learn the routing instead of fixing it: the feed-forward is a mixture of
`experts` SwiGLU experts shared by both modalities, each token sent to its `top_k` best by a router, one router
for every token ("moe", as in LIMoE) or one per modality ("moe-modality", EVE's modality-aware routing). The
experts are 2/3 as wide as the dense MLP, so with top_k = 1 a token meets as many feed-forward weights as in
"dense".

`VisionLanguageBridge` is the bridge family (LLaVA and its kin): a vision encoder's tokens, mapped by a small
projector into the embedding space of a causal language model, are prepended to the caption as a prefix.

`box_iou` and `generalized_box_iou` score and train box regression (`UnifiedTransformer.box`), the grounding
task: given an image and a phrase, where is the thing it names?
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from course_lib.models._common import (
    check_heads,
    check_images,
    check_positive,
    check_positive_number,
    init_vit_style,
)
from course_lib.models.gpt import GPT
from course_lib.nn import (
    MLP,
    LayerNorm,
    MoE,
    MultiHeadAttention,
    TransformerBlock,
    mixed_modal_mask,
    scaled_dot_product_attention,
)

__all__ = ["KINDS", "MOE_KINDS", "UnifiedConfig", "UnifiedTransformer", "VisionLanguageBridge", "box_iou",
           "caption_accuracy", "caption_loss",
           "generalized_box_iou", "prefix_lm_mask"]

KINDS = ("dense", "multiway", "mot")
MOE_KINDS = ("moe", "moe-modality")
IMAGE, TEXT = 0, 1  # modality ids


def prefix_lm_mask(prefix: int, length: int, *, device: torch.device | None = None) -> Tensor:
    """(prefix + length, prefix + length) boolean mask, True = may attend: the first `prefix` tokens (the image)
    attend to each other both ways and never to the text; each of the next `length` tokens attends to the whole
    prefix and causally to the text up to itself."""
    for name, value in (("prefix", prefix), ("length", length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} must be an int >= 0")
    if prefix + length == 0:
        raise ValueError("prefix + length must be at least 1")
    return mixed_modal_mask(torch.tensor([1] * prefix + [0] * length, device=device))  # the image: one block


@dataclass(frozen=True)
class UnifiedConfig:
    """An image prefix (`image_size`², `patch_size`² patches) and a caption of at most `context_length` token ids
    below `vocab_size` in one transformer of `depth` blocks, whose weights are shared by `kind` (see the module
    docstring)."""

    vocab_size: int
    kind: str = "dense"
    image_size: int = 32
    patch_size: int = 8
    channels: int = 3
    context_length: int = 16
    dim: int = 64
    heads: int = 4
    depth: int = 2
    mlp_ratio: float = 2.0
    experts: int = 4  # the MoE kinds only
    top_k: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS + MOE_KINDS:
            raise ValueError(f"kind={self.kind!r}; expected one of {KINDS + MOE_KINDS}")
        for name in ("vocab_size", "image_size", "patch_size", "channels", "context_length", "dim", "heads", "depth",
                     "experts", "top_k"):
            check_positive(name, getattr(self, name))
        if self.top_k > self.experts:
            raise ValueError(f"top_k={self.top_k} is more than experts={self.experts}")
        check_heads(self.dim, self.heads)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        check_positive_number("mlp_ratio", self.mlp_ratio)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def hidden(self) -> int:
        return max(1, round(self.dim * self.mlp_ratio))

    @property
    def expert_hidden(self) -> int:
        """A SwiGLU expert's width with as many weights as the dense MLP (3·dim·h = 2·dim·hidden)."""
        return max(1, round(2 * self.hidden / 3))


class PerModality(nn.Module):
    """One copy of a layer per modality; `forward(x, split)` runs the image copy on the first `split` tokens and
    the text copy on the rest (the sequence is image-then-text in every example)."""

    def __init__(self, make_layer) -> None:
        super().__init__()
        self.image, self.text = make_layer(), make_layer()

    def forward(self, x: Tensor, split: int) -> Tensor:
        return torch.cat([self.image(x[:, :split]), self.text(x[:, split:])], dim=1)


class MultiwayBlock(nn.Module):
    """Pre-norm block with one self-attention for every token and a feed-forward expert (with its norm) per
    modality: VLMo's mixture-of-modality-experts, BEiT-3's Multiway Transformer."""

    def __init__(self, config: UnifiedConfig) -> None:
        super().__init__()
        c = config
        self.attn_block = TransformerBlock(c.dim, c.heads, mlp_ratio=c.mlp_ratio)  # its attention and norm are used
        del self.attn_block.ffn, self.attn_block.ffn_norm
        self.ffn_norm = PerModality(lambda: LayerNorm(c.dim))
        self.ffn = PerModality(lambda: MLP(c.dim, c.hidden))

    def forward(self, x: Tensor, *, mask: Tensor, split: int) -> Tensor:
        block = self.attn_block
        x = x + block.attn(block.attn_norm(x), mask=mask)
        return x + self.ffn(self.ffn_norm(x, split), split)


class MoTBlock(nn.Module):
    """Mixture-of-Transformers: every non-embedding weight is per modality (norms, query, key, value and output
    projections, feed-forward), but attention is one global softmax over every token of the sequence."""

    def __init__(self, config: UnifiedConfig) -> None:
        super().__init__()
        c = config
        self.heads = c.heads
        self.attn_norm = PerModality(lambda: LayerNorm(c.dim))
        self.to_qkv = PerModality(lambda: nn.Linear(c.dim, 3 * c.dim))
        self.to_out = PerModality(lambda: nn.Linear(c.dim, c.dim))
        self.ffn_norm = PerModality(lambda: LayerNorm(c.dim))
        self.ffn = PerModality(lambda: MLP(c.dim, c.hidden))

    def forward(self, x: Tensor, *, mask: Tensor, split: int) -> Tensor:
        qkv = self.to_qkv(self.attn_norm(x, split), split)
        q, k, v = rearrange(qkv, "b l (three h d) -> three b h l d", three=3, h=self.heads)
        attended = rearrange(scaled_dot_product_attention(q, k, v, mask, impl="fused"), "b h l d -> b l (h d)")
        x = x + self.to_out(attended, split)
        return x + self.ffn(self.ffn_norm(x, split), split)


class DenseBlock(nn.Module):
    """A pre-norm `TransformerBlock`: the same weights for every token, whatever its modality."""

    def __init__(self, config: UnifiedConfig) -> None:
        super().__init__()
        self.block = TransformerBlock(config.dim, config.heads, mlp_ratio=config.mlp_ratio)

    def forward(self, x: Tensor, *, mask: Tensor, split: int) -> Tensor:
        return self.block(x, mask=mask)


class MoEBlock(nn.Module):
    """Pre-norm block whose feed-forward is a mixture of experts that both modalities share; the router sees each
    token's modality ("moe-modality": a router per modality) or not ("moe": one router)."""

    def __init__(self, config: UnifiedConfig) -> None:
        super().__init__()
        c = config
        self.attn_norm, self.ffn_norm = LayerNorm(c.dim), LayerNorm(c.dim)
        self.attn = MultiHeadAttention(c.dim, c.heads)
        self.ffn = MoE(c.dim, c.expert_hidden, c.experts, c.top_k, groups=2, router_per_group=c.kind == "moe-modality")

    def forward(self, x: Tensor, *, mask: Tensor, split: int) -> Tensor:
        x = x + self.attn(self.attn_norm(x), mask=mask)
        modality = (torch.arange(x.shape[1], device=x.device) >= split).long()  # (L,): IMAGE then TEXT
        return x + self.ffn(self.ffn_norm(x), repeat(modality, "l -> b l", b=x.shape[0]))


BLOCKS = {"dense": DenseBlock, "multiway": MultiwayBlock, "mot": MoTBlock, "moe": MoEBlock, "moe-modality": MoEBlock}


class UnifiedTransformer(nn.Module):
    """(images (B, C, H, W), tokens (B, L)) -> hidden states (B, N + L, dim) of the image's N patch tokens followed
    by the caption's, under the prefix-LM mask. `caption_logits` reads next-token predictions off the caption's
    positions; `box` reads a box off the last caption token."""

    def __init__(self, config: UnifiedConfig, *, seed: int | None = None) -> None:
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        self.config = c = config
        self.patch_embed = nn.Conv2d(c.channels, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.token_embed = nn.Embedding(c.vocab_size, c.dim)
        self.positions = nn.Parameter(torch.zeros(c.num_patches + c.context_length, c.dim))
        self.blocks = nn.ModuleList(BLOCKS[c.kind](c) for _ in range(c.depth))
        self.final_norm = PerModality(lambda: LayerNorm(c.dim)) if c.kind == "mot" else LayerNorm(c.dim)
        self.lm_head = nn.Linear(c.dim, c.vocab_size)
        self.box_head = nn.Sequential(nn.Linear(c.dim, c.dim), nn.GELU(), nn.Linear(c.dim, 4))
        self.apply(init_vit_style)
        nn.init.normal_(self.positions, std=0.02)
        nn.init.normal_(self.token_embed.weight, std=0.02)

    def check_tokens(self, tokens: Tensor, batch: int) -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point() or tokens.dtype == torch.bool \
                or tokens.shape[0] != batch or not 1 <= tokens.shape[1] <= self.config.context_length:
            raise ValueError(f"tokens must be integer ids of shape (batch={batch}, 1 <= length <= context_length="
                             f"{self.config.context_length}); got {getattr(tokens, 'dtype', type(tokens).__name__)} of "
                             f"shape {tuple(getattr(tokens, 'shape', ()))}")
        if tokens.min() < 0 or tokens.max() >= self.config.vocab_size:
            raise ValueError(f"tokens hold ids in [{tokens.min().item()}, {tokens.max().item()}]; expected ids in "
                             f"[0, vocab_size={self.config.vocab_size})")

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        c = self.config
        height, width = check_images(images, c.channels)
        if (height, width) != (c.image_size, c.image_size):
            raise ValueError(f"images are {height}x{width}; this model reads image_size={c.image_size} squares")
        self.check_tokens(tokens, images.shape[0])
        patches = rearrange(self.patch_embed(images), "b d h w -> b (h w) d")
        x = torch.cat([patches, self.token_embed(tokens)], dim=1) + self.positions[: c.num_patches + tokens.shape[1]]
        mask = prefix_lm_mask(c.num_patches, tokens.shape[1], device=x.device)
        for block in self.blocks:
            x = block(x, mask=mask, split=c.num_patches)
        return self.final_norm(x, c.num_patches) if c.kind == "mot" else self.final_norm(x)

    def caption_logits(self, images: Tensor, tokens: Tensor) -> Tensor:
        """(B, L, vocab_size): at caption position t, the prediction of token t + 1."""
        return self.lm_head(self(images, tokens)[:, self.config.num_patches:])

    def box(self, images: Tensor, tokens: Tensor, last: Tensor) -> Tensor:
        """(B, 4) boxes (x1, y1, x2, y2) as fractions of the image side, read off each phrase's last token (at
        index `last` (B,) of the caption), which has read the image and the whole phrase."""
        hidden = self(images, tokens)[:, self.config.num_patches:]
        centre_size = torch.sigmoid(self.box_head(hidden[torch.arange(len(hidden)), last]))  # (B, 4): cx, cy, w, h
        centre, size = centre_size[:, :2], centre_size[:, 2:]
        return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def caption_loss(logits: Tensor, tokens: Tensor, pad: int) -> Tensor:
    """Next-token cross-entropy of (B, L, vocab) caption logits against the caption (B, L) shifted by one; targets
    equal to `pad` are ignored."""
    targets = tokens[:, 1:].masked_fill(tokens[:, 1:] == pad, -100)
    return F.cross_entropy(rearrange(logits[:, :-1], "b l v -> (b l) v"), rearrange(targets, "b l -> (b l)"),
                           ignore_index=-100)


def caption_accuracy(logits: Tensor, tokens: Tensor, pad: int) -> float:
    """Share of the captions' non-padding words after the first that (B, L, vocab) next-word logits predict exactly."""
    targets, keep = tokens[:, 1:], tokens[:, 1:] != pad
    return ((logits[:, :-1].argmax(dim=-1) == targets) & keep).sum().item() / keep.sum().item()


class VisionLanguageBridge(nn.Module):
    """A vision encoder's tokens, mapped by a two-layer projector into a language model's embedding width, as a
    prefix before the caption: (images, tokens) -> (B, L, vocab) next-token logits at the caption's positions.

    `vision(images)` must return (B, N, vision_dim) tokens. The encoder and the language model are frozen (their
    parameters stop requiring gradients): only the projector trains, LLaVA's first stage."""

    def __init__(self, vision: nn.Module, language_model: GPT, vision_dim: int, *, seed: int | None = None) -> None:
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        check_positive("vision_dim", vision_dim)
        self.vision, self.language_model = vision, language_model
        dim = language_model.config.dim
        self.projector = nn.Sequential(nn.Linear(vision_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        for parameter in [*vision.parameters(), *language_model.parameters()]:
            parameter.requires_grad_(False)

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        with torch.no_grad():
            features = self.vision(images)
        if features.dim() != 3 or features.shape[0] != tokens.shape[0]:
            raise ValueError(f"the vision encoder returned shape {tuple(features.shape)}; expected (batch="
                             f"{tokens.shape[0]}, tokens, vision_dim)")
        prefix = self.projector(features)
        return self.language_model(tokens, prefix=prefix)[:, prefix.shape[1]:]


def _check_boxes(name: str, boxes: Tensor) -> None:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
        raise ValueError(f"{name} must be float boxes (N, 4) as (x1, y1, x2, y2); got "
                         f"{getattr(boxes, 'dtype', type(boxes).__name__)} of shape {tuple(getattr(boxes, 'shape', ()))}")


def _intersection_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(N,) areas of the intersection and of the union of matching rows of two (N, 4) sets of boxes."""
    _check_boxes("a", a)
    _check_boxes("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a has shape {tuple(a.shape)} and b {tuple(b.shape)}; expected matching rows")
    low, high = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    intersection = (high - low).clamp(min=0).prod(dim=1)
    union = (a[:, 2:] - a[:, :2]).prod(dim=1) + (b[:, 2:] - b[:, :2]).prod(dim=1) - intersection
    return intersection, union


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """(N,) intersection over union of matching rows of two (N, 4) sets of (x1, y1, x2, y2) boxes (x2 >= x1,
    y2 >= y1); 0 where both boxes are empty."""
    intersection, union = _intersection_union(a, b)
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), torch.zeros_like(union))


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """(N,) IoU minus the share of the smallest box enclosing both that their union leaves empty: in [-1, 1], and
    unlike IoU it still has a gradient when the boxes do not overlap (GIoU; its loss is 1 - GIoU)."""
    intersection, union = _intersection_union(a, b)
    enclosing = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(dim=1)
    iou = torch.where(union > 0, intersection / union.clamp(min=1e-12), torch.zeros_like(union))
    return iou - (enclosing - union) / enclosing.clamp(min=1e-12)
