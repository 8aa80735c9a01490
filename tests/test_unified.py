"""Unified image-text transformers (notebook 17): the prefix-LM mask, routing of tokens to their modality's
weights (against a naive per-token computation), equal FLOPs across kinds, the bridge into a GPT, and boxes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib.measure import count_flops
from course_lib.models.gpt import GPT, GPTConfig
from course_lib.models.unified import (
    KINDS,
    UnifiedConfig,
    UnifiedTransformer,
    VisionLanguageBridge,
    box_iou,
    caption_loss,
    generalized_box_iou,
    prefix_lm_mask,
)


def small(kind: str, **options) -> UnifiedConfig:
    return UnifiedConfig(**{**dict(vocab_size=11, kind=kind, image_size=8, patch_size=4, context_length=6, dim=16,
                                   heads=2, depth=2), **options})


def batch(seed: int = 0, size: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, 8, 8, generator=generator), torch.randint(0, 11, (size, 6), generator=generator)


def test_prefix_lm_mask_matches_its_definition():
    prefix, length = 3, 4
    mask = prefix_lm_mask(prefix, length)
    for q in range(7):
        for k in range(7):
            if q < prefix:
                assert mask[q, k] == (k < prefix)
            else:
                assert mask[q, k] == (k < prefix or k <= q)


@pytest.mark.parametrize("kind", KINDS)
def test_the_image_never_reads_the_caption_and_the_caption_reads_causally(kind):
    model = UnifiedTransformer(small(kind), seed=0).eval()
    images, tokens = batch()
    changed = tokens.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % 11  # change caption tokens 3, 4, 5
    with torch.no_grad():
        before, after = model(images, tokens), model(images, changed)
    patches = small(kind).num_patches
    torch.testing.assert_close(before[:, : patches + 3], after[:, : patches + 3], rtol=0, atol=0)
    assert (before[:, patches + 3:] - after[:, patches + 3:]).abs().max() > 1e-4


def naive_mot(model: UnifiedTransformer, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mixture-of-Transformers one token at a time: each token's norms and projections are its modality's."""
    c = model.config
    patches = model.patch_embed(images).flatten(2).transpose(1, 2)
    x = torch.cat([patches, model.token_embed(tokens)], dim=1) + model.positions[: c.num_patches + tokens.shape[1]]
    mask = prefix_lm_mask(c.num_patches, tokens.shape[1])
    head = c.dim // c.heads

    def own(layer, i):
        return layer.image if i < c.num_patches else layer.text

    for block in model.blocks:
        qkv = torch.stack([own(block.to_qkv, i)(own(block.attn_norm, i)(x[:, i])) for i in range(x.shape[1])], 1)
        q, k, v = qkv.split(c.dim, dim=-1)
        out = torch.zeros_like(x)
        for h in range(c.heads):
            part = slice(h * head, (h + 1) * head)
            scores = q[..., part] @ k[..., part].transpose(1, 2) / head**0.5
            out[..., part] = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v[..., part]
        x = x + torch.stack([own(block.to_out, i)(out[:, i]) for i in range(x.shape[1])], 1)
        x = x + torch.stack([own(block.ffn, i)(own(block.ffn_norm, i)(x[:, i])) for i in range(x.shape[1])], 1)
    return torch.stack([own(model.final_norm, i)(x[:, i]) for i in range(x.shape[1])], 1)


def test_mixture_of_transformers_equals_a_per_token_computation():
    model = UnifiedTransformer(small("mot"), seed=0).eval()
    images, tokens = batch()
    with torch.no_grad():
        torch.testing.assert_close(model(images, tokens), naive_mot(model, images, tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind, image_moves", [("dense", True), ("multiway", False), ("mot", False)])
def test_text_weights_reach_image_tokens_only_where_they_are_shared(kind, image_moves):
    """Perturb the feed-forward weights that text tokens use: image tokens move only if they share them."""
    model = UnifiedTransformer(small(kind), seed=0).eval()
    images, tokens = batch()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        before = model(images, tokens)
        for block in model.blocks:
            ffn = block.block.ffn if kind == "dense" else block.ffn.text
            ffn.fc_in.weight.add_(torch.randn(ffn.fc_in.weight.shape, generator=generator))
        after = model(images, tokens)
    patches = small(kind).num_patches
    assert ((before[:, :patches] - after[:, :patches]).abs().max() > 1e-4) == image_moves
    assert (before[:, patches:] - after[:, patches:]).abs().max() > 1e-4


def test_every_kind_costs_the_same_flops_and_more_sharing_means_fewer_parameters():
    images, tokens = batch()
    models = {kind: UnifiedTransformer(small(kind), seed=0) for kind in KINDS}
    flops = {kind: count_flops(model, images, tokens) for kind, model in models.items()}
    assert len(set(flops.values())) == 1, flops
    sizes = {kind: sum(p.numel() for p in model.parameters()) for kind, model in models.items()}
    assert sizes["dense"] < sizes["multiway"] < sizes["mot"]


def test_caption_loss_is_next_token_cross_entropy_without_padding():
    logits = torch.randn(2, 4, 5)
    tokens = torch.tensor([[2, 3, 1, 0], [2, 4, 4, 1]])  # 0 pads the first caption
    terms = [F.cross_entropy(logits[b, t][None], tokens[b, t + 1][None]) for b in range(2) for t in range(3)
             if tokens[b, t + 1] != 0]
    torch.testing.assert_close(caption_loss(logits, tokens, pad=0), torch.stack(terms).mean())


def test_gpt_prefix_is_the_same_as_embedding_those_tokens_first():
    gpt = GPT(GPTConfig(vocab_size=11, max_len=12, dim=16, heads=2, depth=2)).eval()
    head, tail = torch.randint(0, 11, (2, 3)), torch.randint(0, 11, (2, 4))
    with torch.no_grad():
        torch.testing.assert_close(gpt(tail, prefix=gpt.embed(head)), gpt(torch.cat([head, tail], dim=1)))


class PatchEncoder(torch.nn.Module):
    """(B, 3, 8, 8) -> (B, 4, 8): four patch tokens of width 8, a stand-in vision encoder."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4)

    def forward(self, images):
        return self.embed(images).flatten(2).transpose(1, 2)


def test_the_bridge_trains_its_projector_only():
    gpt = GPT(GPTConfig(vocab_size=11, max_len=12, dim=16, heads=2, depth=1))
    bridge = VisionLanguageBridge(PatchEncoder(), gpt, vision_dim=8, seed=0)
    images, tokens = batch()
    logits = bridge(images, tokens)
    assert logits.shape == (3, 6, 11)
    caption_loss(logits, tokens, pad=0).backward()
    trained = {name for name, p in bridge.named_parameters() if p.grad is not None}
    assert trained and all(name.startswith("projector.") for name in trained)


def test_box_iou_and_its_generalisation():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([1 / 7, 1.0, 0.0]))
    # enclosing boxes: 3x3 (area 9, union 7), the box itself, 3x1 (area 3, union 2)
    torch.testing.assert_close(generalized_box_iou(a, b), torch.tensor([1 / 7 - 2 / 9, 1.0, -1 / 3]))


@pytest.mark.parametrize("kind", KINDS)
def test_boxes_are_inside_the_image_and_well_formed(kind):
    model = UnifiedTransformer(small(kind), seed=0)
    images, tokens = batch()
    boxes = model.box(images, tokens, torch.tensor([5, 2, 0]))
    assert boxes.shape == (3, 4) and (boxes[:, 2:] >= boxes[:, :2]).all()
    assert (boxes[:, :2] + boxes[:, 2:]).div(2).clamp(0, 1).equal((boxes[:, :2] + boxes[:, 2:]).div(2))


@pytest.mark.parametrize("bad, words", [
    (dict(kind="sparse"), "kind"), (dict(dim=15), "dim"), (dict(image_size=9), "image_size"),
    (dict(mlp_ratio=0), "mlp_ratio"), (dict(depth=0), "depth"),
])
def test_config_rejects_bad_settings(bad, words):
    with pytest.raises(ValueError, match=words):
        small(**{"kind": "dense", **bad})


def test_bad_inputs_are_named():
    model = UnifiedTransformer(small("mot"), seed=0)
    images, tokens = batch()
    for call, words in [(lambda: model(images, tokens + 11), "vocab_size"), (lambda: model(images, tokens.float()), "tokens"),
                        (lambda: model(images, tokens[:2]), "batch"), (lambda: model(images[:, :2], tokens), "channel"),
                        (lambda: model(torch.randn(3, 3, 12, 12), tokens), "image_size"),
                        (lambda: model(images, torch.zeros(3, 7, dtype=torch.long)), "context_length"),
                        (lambda: box_iou(torch.zeros(2, 3), torch.zeros(2, 3)), "boxes"),
                        (lambda: prefix_lm_mask(-1, 2), "prefix"),
                        (lambda: GPT(GPTConfig(vocab_size=11, max_len=12, dim=16, heads=2, depth=1))(
                            tokens, prefix=torch.zeros(3, 2, 8)), "prefix")]:
        with pytest.raises(ValueError, match=words):
            call()
