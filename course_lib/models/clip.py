"""CLIP ("Learning Transferable Visual Models From Natural Language Supervision"): an image encoder and a text
encoder trained so that an image and its caption land close together in one shared space.

- `CLIPVisionEncoder` is a ViT: patches, a class token, learned positions, pre-norm blocks; its pooled feature is
  the class token, normalised.
- `CLIPTextEncoder` is a GPT-like causal transformer over tokens; its pooled feature is the one at the end-of-text
  token, the first position that has seen the whole caption.
- `CLIP` projects both pooled features linearly into `embed_dim`, normalises them to unit length, and scores every
  image against every caption by cosine similarity times a learned temperature, exp(logit_scale).
- `clip_loss` is the symmetric contrastive loss (InfoNCE) over those scores; `zero_shot_classify` turns class names
  into a classifier with no training; `recall_at_k` measures retrieval.

`CLIP.from_hf` copies the weights of Hugging Face's `CLIPModel`, with which it then agrees. With
`shared_backbone=True` both towers run the same transformer blocks (causal for text, not for images) between
their own tokenisers and poolers: the modality-agnostic backbone of "VATT: Transformers for Multimodal
Self-Supervised Learning from Raw Video, Audio and Text", with about half the block weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from course_lib.models._common import check_images, check_positive, init_vit_style
from course_lib.models._weights import checked_state_dict, move_module
from course_lib.nn import MLP, LayerNorm, TransformerBlock
from course_lib.nn.feedforward import ACTIVATIONS

__all__ = ["CLIP", "CLIPConfig", "CLIPTextEncoder", "CLIPVisionEncoder", "caption_targets",
           "clip_loss", "prompt_ensemble", "recall_at_k", "zero_shot_classify"]

# Hugging Face's names for the activations we have (`hidden_act`), as our names
HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "relu": "relu", "silu": "silu"}


@dataclass(frozen=True)
class CLIPConfig:
    """Both towers of a CLIP: a ViT over `image_size`² images cut into `patch_size`² patches, a causal text
    transformer over at most `context_length` tokens pooled at `eos_token_id`, and a shared space of `embed_dim`.
    `mlp_ratio`, `activation` and `norm_eps` hold for both towers; the temperature starts at `init_temperature`."""

    vocab_size: int
    eos_token_id: int
    image_size: int = 32
    patch_size: int = 4
    channels: int = 3
    vision_dim: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    context_length: int = 16
    text_dim: int = 64
    text_depth: int = 2
    text_heads: int = 4
    embed_dim: int = 64
    mlp_ratio: float = 4.0
    activation: str = "quick_gelu"
    norm_eps: float = 1e-5
    init_temperature: float = 0.07
    shared_backbone: bool = False  # one set of blocks for both towers (VATT's modality-agnostic backbone)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "image_size", "patch_size", "channels", "vision_dim", "vision_depth", "vision_heads",
                     "context_length", "text_dim", "text_depth", "text_heads", "embed_dim"):
            check_positive(name, getattr(self, name))
        if isinstance(self.eos_token_id, bool) or not isinstance(self.eos_token_id, int) \
                or not 0 <= self.eos_token_id < self.vocab_size:
            raise ValueError(f"eos_token_id={self.eos_token_id!r} must be an int in [0, vocab_size={self.vocab_size})")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        for tower in ("vision", "text"):
            dim, heads = getattr(self, f"{tower}_dim"), getattr(self, f"{tower}_heads")
            if dim % heads:
                raise ValueError(f"{tower}_dim={dim} is not divisible by {tower}_heads={heads}")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or not self.mlp_ratio > 0 \
                or min(self.vision_hidden, self.text_hidden) < 1:
            raise ValueError(f"mlp_ratio={self.mlp_ratio!r} must be a positive number that leaves the feed-forward "
                             "layers at least one hidden unit")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}; expected one of {sorted(ACTIVATIONS)}")
        if isinstance(self.norm_eps, bool) or not isinstance(self.norm_eps, (int, float)) or not self.norm_eps > 0:
            raise ValueError(f"norm_eps={self.norm_eps!r} must be a positive number")
        if isinstance(self.init_temperature, bool) or not isinstance(self.init_temperature, (int, float)) \
                or not 0 < self.init_temperature < math.inf:
            raise ValueError(f"init_temperature={self.init_temperature!r} must be a positive finite number")
        towers = [(self.vision_dim, self.vision_depth, self.vision_heads), (self.text_dim, self.text_depth, self.text_heads)]
        if self.shared_backbone and towers[0] != towers[1]:
            raise ValueError(f"shared_backbone=True needs the same (dim, depth, heads) in both towers; got vision "
                             f"{towers[0]} and text {towers[1]}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def vision_hidden(self) -> int:
        return round(self.vision_dim * self.mlp_ratio)

    @property
    def text_hidden(self) -> int:
        return round(self.text_dim * self.mlp_ratio)


def clip_block(dim: int, heads: int, *, hidden: int, activation: str, eps: float) -> TransformerBlock:
    """A pre-norm `TransformerBlock` with CLIP's feed-forward layer (`hidden` units, `activation`) and LayerNorm eps."""
    block = TransformerBlock(dim, heads, mlp_ratio=1.0, norm_position="pre")  # its MLP and norms replaced below
    block.ffn = MLP(dim, hidden, activation=activation)
    block.attn_norm, block.ffn_norm = LayerNorm(dim, eps=eps), LayerNorm(dim, eps=eps)
    return block


class CLIPVisionEncoder(nn.Module):
    """Images (B, C, H, W) -> pooled features (B, vision_dim): a ViT whose tokens are normalised once before the
    blocks, and whose class token, normalised again, is the image's feature."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        c = config
        self.image_size = c.image_size
        self.channels = c.channels
        self.patch_embed = nn.Conv2d(c.channels, c.vision_dim, kernel_size=c.patch_size, stride=c.patch_size, bias=False)
        self.class_token = nn.Parameter(torch.zeros(c.vision_dim))
        self.positions = nn.Parameter(torch.zeros(c.num_patches + 1, c.vision_dim))
        self.pre_norm = LayerNorm(c.vision_dim, eps=c.norm_eps)
        self.blocks = nn.ModuleList(clip_block(c.vision_dim, c.vision_heads, hidden=c.vision_hidden,
                                               activation=c.activation, eps=c.norm_eps) for _ in range(c.vision_depth))
        self.post_norm = LayerNorm(c.vision_dim, eps=c.norm_eps)

    def forward(self, images: Tensor, *, return_tokens: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B, C, H, W) -> (B, vision_dim); with `return_tokens`, also every token after the blocks (B, 1 + N,
        vision_dim), class token first (Hugging Face's `last_hidden_state`)."""
        height, width = check_images(images, self.channels)
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(f"images are {height}x{width}; this model reads image_size={self.image_size} squares")
        patches = rearrange(self.patch_embed(images), "b d h w -> b (h w) d")
        cls = repeat(self.class_token, "d -> b 1 d", b=images.shape[0])
        tokens = self.pre_norm(torch.cat([cls, patches], dim=1) + self.positions)  # (B, 1 + N, dim)
        for block in self.blocks:
            tokens = block(tokens)
        pooled = self.post_norm(tokens[:, 0])
        return (pooled, tokens) if return_tokens else pooled


class CLIPTextEncoder(nn.Module):
    """Token ids (B, L) -> pooled features (B, text_dim): a causal transformer, a final LayerNorm, and the feature at
    each caption's first end-of-text token, the first position that has read the whole caption.

    No padding mask is needed when the padding comes after the end-of-text token: attention is causal, so the
    end-of-text token never sees what follows it, whatever it is (the tokens after it get features that are never
    used). Padding before it would be read, and would change the feature."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        c = config
        self.vocab_size, self.context_length, self.eos_token_id = c.vocab_size, c.context_length, c.eos_token_id
        self.token_embed = nn.Embedding(c.vocab_size, c.text_dim)
        self.positions = nn.Parameter(torch.zeros(c.context_length, c.text_dim))
        self.blocks = nn.ModuleList(clip_block(c.text_dim, c.text_heads, hidden=c.text_hidden,
                                               activation=c.activation, eps=c.norm_eps) for _ in range(c.text_depth))
        self.final_norm = LayerNorm(c.text_dim, eps=c.norm_eps)

    def check_tokens(self, tokens: Tensor) -> None:
        """Raise ValueError unless `tokens` is (B, L) integer ids in the vocabulary, L <= context_length, with an
        end-of-text token in every row."""
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point() or tokens.is_complex() \
                or tokens.dtype == torch.bool or not 1 <= tokens.shape[1] <= self.context_length:
            raise ValueError(f"tokens must be integer ids of shape (batch, length <= context_length="
                             f"{self.context_length}); got {getattr(tokens, 'dtype', type(tokens).__name__)} of shape "
                             f"{tuple(getattr(tokens, 'shape', ()))}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"tokens hold ids in [{tokens.min().item()}, {tokens.max().item()}]; expected ids in "
                             f"[0, vocab_size={self.vocab_size})")
        missing = (~(tokens == self.eos_token_id).any(dim=1)).nonzero()[:, 0].tolist()
        if missing:
            raise ValueError(f"tokens rows {missing} hold no eos_token_id={self.eos_token_id}: every caption must end "
                             "with one, where its feature is read")

    def forward(self, tokens: Tensor, *, return_tokens: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B, L) -> (B, text_dim); with `return_tokens`, also every token after the final norm (B, L, text_dim)."""
        self.check_tokens(tokens)
        x = self.token_embed(tokens) + self.positions[: tokens.shape[1]]  # (B, L, dim)
        for block in self.blocks:
            x = block(x, causal=True)
        x = self.final_norm(x)
        # argmax returns the first of the maxima: the first end-of-text token, even if the padding repeats it
        eos = (tokens == self.eos_token_id).int().argmax(dim=1)  # (B,)
        pooled = x[torch.arange(x.shape[0], device=x.device), eos]  # (B, dim)
        return (pooled, x) if return_tokens else pooled


class CLIP(nn.Module):
    """The dual encoder: images and captions projected into one space of `embed_dim`, unit length, scored against
    each other by exp(logit_scale) · cosine similarity. `logit_scale` is log(1 / temperature), learned."""

    def __init__(self, config: CLIPConfig, *, seed: int | None = None) -> None:
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        self.config = config
        self.vision = CLIPVisionEncoder(config)
        self.text = CLIPTextEncoder(config)
        if config.shared_backbone:  # per-modality tokenisers, norms and poolers around one set of blocks
            self.text.blocks = self.vision.blocks
        self.visual_projection = nn.Linear(config.vision_dim, config.embed_dim, bias=False)
        self.text_projection = nn.Linear(config.text_dim, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))
        self._init_weights()

    def _init_weights(self) -> None:
        """OpenAI's CLIP, in short: small normal embeddings and positions (std 0.02 and 0.01; width^-1/2 on the image
        side), projections into the shared space with std width^-1/2, the ViT's init for the other layers."""
        c = self.config
        self.apply(init_vit_style)
        nn.init.normal_(self.text.token_embed.weight, std=0.02)
        nn.init.normal_(self.text.positions, std=0.01)
        nn.init.normal_(self.vision.class_token, std=c.vision_dim ** -0.5)
        nn.init.normal_(self.vision.positions, std=c.vision_dim ** -0.5)
        nn.init.normal_(self.visual_projection.weight, std=c.vision_dim ** -0.5)
        nn.init.normal_(self.text_projection.weight, std=c.text_dim ** -0.5)

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, embed_dim), unit length."""
        return F.normalize(self.visual_projection(self.vision(images)), dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """(B, L) token ids, each row with an end-of-text token -> (B, embed_dim), unit length."""
        return F.normalize(self.text_projection(self.text(tokens)), dim=-1)

    def forward(self, images: Tensor, tokens: Tensor | None = None) -> tuple[Tensor, Tensor] | Tensor:
        """(B_i images, B_t captions) -> (logits_per_image (B_i, B_t), logits_per_text (B_t, B_i)): exp(logit_scale)
        times the cosine similarity of every pair. Like Hugging Face, no clamp here (OpenAI clamped the parameter
        itself to log 100 after each step in training). Without `tokens`, the image embeddings alone: what `fit`
        hands to `loss`, so that `fit(model, images, tokens, loss=model.loss)` trains the pair."""
        image_embeds = self.encode_image(images)
        if tokens is None:
            return image_embeds
        logits_per_text = self.encode_text(tokens) @ image_embeds.T * self.logit_scale.exp()  # (B_t, B_i)
        return logits_per_text.T, logits_per_text

    def loss(self, image_embeds: Tensor, tokens: Tensor) -> Tensor:
        """`clip_loss` of a batch of B pairs given the images' embeddings (B, embed_dim) and their captions (B, L),
        identical token rows counted as one caption."""
        logits_per_image = image_embeds @ self.encode_text(tokens).T * self.logit_scale.exp()
        _, caption_ids = torch.unique(tokens, dim=0, return_inverse=True)  # (B,): one id per distinct row
        return clip_loss(logits_per_image, caption_ids)

    @classmethod
    def from_hf(cls, reference: nn.Module) -> CLIP:
        """Our CLIP with the weights of a Hugging Face `CLIPModel`, which it then agrees with."""
        config = config_from_hf(reference.config)
        model = cls(config)
        model.load_state_dict(state_dict_from_hf(reference, model), strict=True)
        return model.eval()


def _square(name: str, value: object) -> int:
    """An int, or a pair of equal ints, as one int; ValueError naming `name` otherwise."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"reference config has {name}={value!r}; CLIP.from_hf needs one int (square images, patches)")
    return value


def config_from_hf(hf: object) -> CLIPConfig:
    """Our config for a Hugging Face `CLIPConfig`; ValueError, naming the option, for what we did not build."""
    text, vision = hf.text_config, hf.vision_config
    eos = text.eos_token_id
    if eos == 2:
        raise ValueError("reference config has text_config.eos_token_id=2, the legacy setting under which Hugging Face "
                         "pools at the largest token id, not at the first eos token; CLIP.from_hf builds only the "
                         "eos rule: set text_config.eos_token_id to the real end-of-text id (the same pooling when "
                         "that id is the largest in the vocabulary, as in OpenAI's tokenizer)")
    if isinstance(eos, bool) or not isinstance(eos, int):
        raise ValueError(f"reference config has text_config.eos_token_id={eos!r}; CLIP.from_hf needs one int")
    for name in ("hidden_act", "layer_norm_eps"):
        if getattr(text, name) != getattr(vision, name):
            raise ValueError(f"reference config has text_config.{name}={getattr(text, name)!r} but vision_config."
                             f"{name}={getattr(vision, name)!r}; our CLIPConfig has one for both towers")
    if text.hidden_act not in HF_ACTIVATIONS:
        raise ValueError(f"reference config has hidden_act={text.hidden_act!r}; expected one of {sorted(HF_ACTIVATIONS)}")
    for tower in (text, vision):
        if tower.attention_dropout:
            raise ValueError(f"reference config has attention_dropout={tower.attention_dropout!r}; our CLIP has no "
                             "attention dropout (0 needed)")
    mlp_ratio = vision.intermediate_size / vision.hidden_size
    if round(text.hidden_size * mlp_ratio) != text.intermediate_size:
        raise ValueError(f"reference config has intermediate_size={text.intermediate_size} for hidden_size="
                         f"{text.hidden_size} in the text tower but {vision.intermediate_size} for {vision.hidden_size} "
                         "in the vision tower; our CLIPConfig has one mlp_ratio for both")
    return CLIPConfig(vocab_size=text.vocab_size, eos_token_id=eos, image_size=_square("image_size", vision.image_size),
                      patch_size=_square("patch_size", vision.patch_size), channels=vision.num_channels,
                      vision_dim=vision.hidden_size, vision_depth=vision.num_hidden_layers,
                      vision_heads=vision.num_attention_heads, context_length=text.max_position_embeddings,
                      text_dim=text.hidden_size, text_depth=text.num_hidden_layers, text_heads=text.num_attention_heads,
                      embed_dim=hf.projection_dim, mlp_ratio=mlp_ratio, activation=HF_ACTIVATIONS[text.hidden_act],
                      norm_eps=text.layer_norm_eps, init_temperature=math.exp(-hf.logit_scale_init_value))


def _move_blocks(theirs: dict[str, Tensor], ours: dict[str, Tensor], old: str, new: str, depth: int) -> None:
    for i in range(depth):
        for hf_name, our_name in (("self_attn.q_proj", "attn.to_q"), ("self_attn.k_proj", "attn.to_k"),
                                  ("self_attn.v_proj", "attn.to_v"), ("self_attn.out_proj", "attn.to_out"),
                                  ("layer_norm1", "attn_norm"), ("layer_norm2", "ffn_norm"),
                                  ("mlp.fc1", "ffn.fc_in"), ("mlp.fc2", "ffn.fc_out")):
            move_module(theirs, ours, f"{old}.{i}.{hf_name}", f"{new}.{i}.{our_name}")


def state_dict_from_hf(reference: nn.Module, model: CLIP) -> dict[str, Tensor]:
    """Hugging Face CLIP weights under our names; every weight of theirs used, every one of ours filled."""
    # older versions of transformers saved the position ids (0, 1, 2, ...) with the weights: they are no weights
    theirs = {k: v for k, v in reference.state_dict().items() if not k.endswith("position_ids")}
    ours: dict[str, Tensor] = {}
    ours["logit_scale"] = theirs.pop("logit_scale")
    move_module(theirs, ours, "visual_projection", "visual_projection")
    move_module(theirs, ours, "text_projection", "text_projection")

    ours["vision.class_token"] = theirs.pop("vision_model.embeddings.class_embedding")
    ours["vision.positions"] = theirs.pop("vision_model.embeddings.position_embedding.weight")
    move_module(theirs, ours, "vision_model.embeddings.patch_embedding", "vision.patch_embed")
    move_module(theirs, ours, "vision_model.pre_layrnorm", "vision.pre_norm")
    _move_blocks(theirs, ours, "vision_model.encoder.layers", "vision.blocks", model.config.vision_depth)
    move_module(theirs, ours, "vision_model.post_layernorm", "vision.post_norm")

    move_module(theirs, ours, "text_model.embeddings.token_embedding", "text.token_embed")
    ours["text.positions"] = theirs.pop("text_model.embeddings.position_embedding.weight")
    _move_blocks(theirs, ours, "text_model.encoder.layers", "text.blocks", model.config.text_depth)
    move_module(theirs, ours, "text_model.final_layer_norm", "text.final_norm")
    return checked_state_dict(theirs, ours, model)


# --- training and evaluation -----------------------------------------------------------------------------


def _check_logits(name: str, logits: Tensor) -> int:
    """B, after checking that `logits` is a square (B, B) float matrix: image i and caption i form pair i."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != logits.shape[1] \
            or logits.shape[0] < 1 or not logits.is_floating_point():
        raise ValueError(f"{name} must be a square float matrix (B images, B captions); got "
                         f"{getattr(logits, 'dtype', type(logits).__name__)} of shape {tuple(getattr(logits, 'shape', ()))}")
    return logits.shape[0]


def _check_caption_ids(caption_ids: Tensor | None, size: int) -> None:
    if caption_ids is not None and (not isinstance(caption_ids, Tensor) or caption_ids.shape != (size,)):
        raise ValueError(f"caption_ids has shape {tuple(getattr(caption_ids, 'shape', ()))}; expected ({size},), one id "
                         "per pair")


def caption_targets(caption_ids: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B,) caption ids -> (B, B) targets: row i spread evenly over the columns whose caption id is that of i."""
    same = (caption_ids[:, None] == caption_ids[None, :]).to(dtype)  # (B, B), symmetric, 1 on the diagonal
    return same / same.sum(dim=1, keepdim=True)


def clip_loss(logits_per_image: Tensor, caption_ids: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE over a batch of B pairs: the mean of the image->text cross-entropy (rows) and the
    text->image one (columns) of the (B, B) logits, whose diagonal holds the true pairs.

    With `caption_ids` (B,), pairs with the same id have identical captions, and every copy is a right answer: two
    images captioned "a red circle" both match both copies. The target of a row (and of a column) is then uniform
    over the columns (rows) with its caption id, rather than the diagonal alone, which would punish the model for
    choosing the other copy. The loss then bottoms out at the mean log of the group sizes, not at 0. Without
    `caption_ids`, or with all ids distinct, it is the usual diagonal loss.

    Where the copies are identical inputs to a deterministic text encoder, their columns of logits are equal and the
    value (hence every gradient) is exactly the diagonal loss's: the copies' diagonal terms then add up to what the
    uniform targets cost. The targets change the training where one id groups captions that differ (paraphrases, templates of
    one class, text dropout) or logits that come from elsewhere."""
    size = _check_logits("logits_per_image", logits_per_image)
    _check_caption_ids(caption_ids, size)
    if caption_ids is None:
        targets = torch.arange(size, device=logits_per_image.device)
        return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets)) / 2
    targets = caption_targets(caption_ids.to(logits_per_image.device), logits_per_image.dtype)
    # the target matrix is symmetric: column j's target over the images is row j's over the captions
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets.T)) / 2


@torch.no_grad()
def zero_shot_classify(model: CLIP, images: Tensor, class_tokens: Tensor) -> Tensor:
    """(B,) index of the class prompt (one row of `class_tokens` (K, L) per class) whose text embedding is the most
    similar to each image's: a classifier built from class names alone."""
    if not isinstance(class_tokens, Tensor) or class_tokens.dim() != 2 or class_tokens.shape[0] < 1:
        raise ValueError(f"class_tokens has shape {tuple(getattr(class_tokens, 'shape', ()))}; expected (classes >= 1, "
                         "length), one prompt per class")
    return (model.encode_image(images) @ model.encode_text(class_tokens).T).argmax(dim=1)


def prompt_ensemble(embeddings: Tensor) -> Tensor:
    """(classes, prompts, D) text embeddings -> (classes, D): each class's prompts averaged and put back on the unit
    sphere, CLIP's prompt ensembling ("a red circle", "a red striped circle", ... as one class vector)."""
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 3 or not embeddings.is_floating_point() \
            or 0 in embeddings.shape:
        raise ValueError(f"embeddings must be a float tensor (classes, prompts, dim); got "
                         f"{getattr(embeddings, 'dtype', type(embeddings).__name__)} of shape {tuple(getattr(embeddings, 'shape', ()))}")
    return F.normalize(embeddings.mean(dim=1), dim=-1)


def recall_at_k(similarity: Tensor, k: int, caption_ids: Tensor | None = None) -> float:
    """Image->text retrieval on (N, N) similarities (row i: image i against every caption, caption i is its own):
    the fraction of images whose caption is among their k best. With `caption_ids` (N,), any caption with the
    image's caption id counts as a hit, since identical captions cannot be told apart."""
    size = _check_logits("similarity", similarity)
    check_positive("k", k)
    if k > size:
        raise ValueError(f"k={k} is more than the {size} captions")
    _check_caption_ids(caption_ids, size)
    ids = torch.arange(size, device=similarity.device) if caption_ids is None else caption_ids.to(similarity.device)
    top = similarity.topk(k, dim=1).indices  # (N, k)
    hits = (ids[top] == ids[:, None]).any(dim=1)  # (N,)
    return hits.float().mean().item()
