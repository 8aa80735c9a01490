"""SegFormer's segmenter equals Hugging Face's SegformerForSemanticSegmentation (1e-5, float32, random weights and
BatchNorm statistics); EoMT's matching equals brute force, its semantic inference equals a loop, queries never
change the patch tokens before they join; the baselines keep their receptive fields; bad input is refused."""

from __future__ import annotations

import pytest
import torch

from course_lib.models.segmentation import (
    ColourClassifier,
    EoMT,
    EoMTConfig,
    SegFormer,
    SmallUNet,
    brute_force_match,
    eomt_loss,
    hungarian_match,
    match_costs,
    semantic_inference,
    semantic_targets,
)

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

CONFIGS = {
    "2stages-40x52": dict(depths=[1, 1], hidden_sizes=[8, 16], num_attention_heads=[1, 2], sr_ratios=[2, 1],
                          patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], decoder_hidden_size=12, image=(40, 52)),
    "3stages-32": dict(depths=[1, 1, 1], hidden_sizes=[8, 16, 24], num_attention_heads=[1, 2, 2], sr_ratios=[2, 1, 1],
                       patch_sizes=[3, 3, 3], strides=[2, 2, 2], mlp_ratios=[2, 2, 2], decoder_hidden_size=20,
                       image=(32, 32)),
    "4stages-64x48": dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 2, 3, 4],
                          sr_ratios=[4, 2, 1, 1], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
                          mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=16, image=(64, 48)),
}


def hf_segmenter(options: dict, seed: int = 0):
    torch.manual_seed(seed)
    options = {k: v for k, v in options.items() if k != "image"}
    config = transformers.SegformerConfig(num_channels=3, num_encoder_blocks=len(options["depths"]), num_labels=5,
                                          drop_path_rate=0.0, hidden_dropout_prob=0.0,
                                          attention_probs_dropout_prob=0.0, **options)
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, parameter[0].numel() ** -0.5 if parameter.dim() >= 2 else 0.1)
        norm = model.decode_head.batch_norm
        norm.running_mean.normal_(0.0, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_segformer_logits_equal_hugging_face(name):
    reference = hf_segmenter(CONFIGS[name])
    ours = SegFormer.from_hf(reference).eval()
    images = torch.randn(2, 3, *CONFIGS[name]["image"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, mine = reference(images).logits, ours(images)
        full = ours(images, full_resolution=True)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(mine, expected, atol=1e-5, rtol=0)
    assert full.shape[-2:] == images.shape[-2:]


def test_segformer_comparison_fails_when_the_concatenation_order_is_off():
    reference = hf_segmenter(CONFIGS["3stages-32"])
    ours = SegFormer.from_hf(reference).eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        fused = ours.head.fused_features(ours.encoder(images))
        forward_order = torch.cat(list(fused.chunk(3, dim=1))[::-1], dim=1)
        hidden = torch.relu(ours.head.norm(ours.head.fuse(forward_order)))
        assert (ours.head.classifier(hidden) - reference(images).logits).abs().max() > 1e-3


@pytest.mark.parametrize("queries, segments", [(3, 2), (4, 4), (5, 3), (6, 1)])
def test_hungarian_match_equals_brute_force(queries, segments):
    for seed in range(5):
        cost = torch.randn(queries, segments, generator=torch.Generator().manual_seed(seed))
        rows, cols = hungarian_match(cost)
        best_rows, best_cols = brute_force_match(cost)
        assert torch.equal(cols, best_cols)
        assert abs(float(cost[rows, cols].sum()) - float(cost[best_rows, best_cols].sum())) < 1e-9


def test_semantic_inference_equals_a_loop():
    g = torch.Generator().manual_seed(2)
    class_logits, mask_logits = torch.randn(2, 4, 4, generator=g), torch.randn(2, 4, 5, 6, generator=g)
    expected = torch.zeros(2, 3, 5, 6)
    for b in range(2):
        for q in range(4):
            p = torch.softmax(class_logits[b, q], dim=0)
            for c in range(3):
                expected[b, c] += p[c] * torch.sigmoid(mask_logits[b, q])
    torch.testing.assert_close(semantic_inference(class_logits, mask_logits), expected, atol=1e-6, rtol=0)


def test_match_costs_equal_a_loop():
    g = torch.Generator().manual_seed(3)
    logits, masks_of_queries = torch.randn(3, 4, generator=g), torch.randn(3, 4, 4, generator=g)
    classes, masks = semantic_targets(torch.tensor([[0, 0, 2, 2]] * 4))
    cost = match_costs(logits, masks_of_queries, classes, masks)
    for q in range(3):
        for j in range(len(classes)):
            p = torch.sigmoid(masks_of_queries[q]).flatten()
            m = masks[j].flatten()
            bce = torch.nn.functional.binary_cross_entropy(p, m)
            dice = 1 - (2 * (p * m).sum() + 1) / (p.sum() + m.sum() + 1)
            expected = -2 * logits[q].softmax(0)[classes[j]] + 5 * bce + 5 * dice
            assert abs(float(cost[q, j] - expected)) < 1e-5


def test_queries_do_not_change_the_patch_tokens_before_they_join():
    torch.manual_seed(0)
    model = EoMT(EoMTConfig(image_size=16, patch_size=4, dim=16, depth=3, heads=2, query_blocks=1)).eval()
    images = torch.randn(2, 3, 16, 16)
    captured = []
    model.blocks[1].register_forward_hook(lambda module, inputs, output: captured.append(output.clone()))
    with torch.no_grad():
        model(images)
        model.queries.add_(1.0)
        model(images)
        plain = model.patch_embed(images) + model.pos_embedding
        for block in model.blocks[:2]:
            plain = block(plain)
    torch.testing.assert_close(captured[0], captured[1], atol=0, rtol=0)
    torch.testing.assert_close(captured[0], plain, atol=1e-6, rtol=0)


def test_eomt_loss_is_deterministic_and_trains_the_queries():
    torch.manual_seed(0)
    model = EoMT(EoMTConfig(image_size=16, patch_size=4, dim=16, depth=2, heads=2, query_blocks=1, num_classes=3))
    targets = torch.randint(0, 3, (2, 16, 16), generator=torch.Generator().manual_seed(0))
    images = torch.randn(2, 3, 16, 16)
    first, second = eomt_loss(model(images), targets), eomt_loss(model(images), targets)
    assert torch.equal(first, second)
    first.backward()
    assert model.queries.grad.abs().sum() > 0


def test_baselines_receptive_fields():
    colour = ColourClassifier(5).eval()
    images = torch.randn(1, 3, 8, 8)
    changed = images.clone()
    changed[0, :, 3, 3] += 1.0
    with torch.no_grad():
        difference = (colour(changed) - colour(images)).abs().sum(1)[0]
    assert difference[3, 3] > 0 and difference.sum() == difference[3, 3]
    assert SmallUNet(5, width=4)(images).shape == (1, 5, 8, 8)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="query_blocks=5"):
        EoMTConfig(depth=4, query_blocks=5)
    with pytest.raises(ValueError, match="num_queries"):
        EoMTConfig(num_queries=0)
    with pytest.raises(ValueError, match="query_std=0"):
        EoMTConfig(query_std=0)
    with pytest.raises(ValueError, match="cost has shape"):
        hungarian_match(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="multiples of 4"):
        SmallUNet(5)(torch.zeros(1, 3, 10, 10))
    with pytest.raises(ValueError, match="targets hold classes"):
        model = EoMT(EoMTConfig(image_size=16, patch_size=4, dim=16, depth=2, heads=2, num_classes=2))
        eomt_loss(model(torch.zeros(1, 3, 16, 16)), torch.full((1, 16, 16), 4))


@pytest.mark.parametrize("std", [0.02, 1.0])
def test_queries_start_with_the_configured_spread(std):
    torch.manual_seed(0)
    queries = EoMT(EoMTConfig(image_size=16, patch_size=4, dim=32, depth=2, heads=2, num_queries=64,
                              query_std=std)).queries
    assert queries.abs().max() <= 2.0  # trunc_normal_ cuts at ±2, which only bites at std 1 (where it keeps 0.88)
    assert 0.8 * std < float(queries.detach().std()) < 1.1 * std
    torch.manual_seed(0)
    again = EoMT(EoMTConfig(image_size=16, patch_size=4, dim=32, depth=2, heads=2, num_queries=64, query_std=std))
    assert torch.equal(queries, again.queries)
