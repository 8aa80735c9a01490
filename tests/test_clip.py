"""CLIP (notebook 15) against Hugging Face's `CLIPModel`, and its loss and metrics against loops written out here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import randomised
from course_lib.models.clip import (
    CLIP,
    CLIPConfig,
    clip_loss,
    prompt_ensemble,
    recall_at_k,
    zero_shot_classify,
)

transformers = pytest.importorskip("transformers")

VOCAB, LENGTH, PAD = 40, 12, 1


def hf_config(*, activation="quick_gelu", eos=VOCAB - 1, text_depth=2, text_heads=4, vision_depth=2, vision_heads=4,
              text_hidden=80, vision_hidden=120, **vision_options):
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=text_hidden, num_hidden_layers=text_depth,
                num_attention_heads=text_heads, max_position_embeddings=LENGTH, hidden_act=activation, eos_token_id=eos,
                bos_token_id=0, pad_token_id=PAD)
    vision = dict(hidden_size=48, intermediate_size=vision_hidden, num_hidden_layers=vision_depth,
                  num_attention_heads=vision_heads, image_size=16, patch_size=4, num_channels=3, hidden_act=activation)
    vision.update(vision_options)
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)


def captions(batch: int, length: int, eos: int, *, pad: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) ids: random words, an end-of-text token at a different place in each row, then `pad`."""
    generator = torch.Generator().manual_seed(seed)
    words = [i for i in range(VOCAB) if i not in (eos, pad)]
    tokens = torch.tensor(words)[torch.randint(len(words), (batch, length), generator=generator)]
    for row in range(batch):
        end = row % length
        tokens[row, end] = eos
        tokens[row, end + 1:] = pad
    return tokens


# --- equivalence with Hugging Face -----------------------------------------------------------------------


@pytest.mark.parametrize("options, eos, pad", [
    (dict(activation="quick_gelu"), VOCAB - 1, PAD),
    (dict(activation="gelu", text_depth=3, text_heads=2, vision_depth=1, vision_heads=6), 5, 5),  # padded with eos
])
def test_clip_equals_hugging_face(options, eos, pad):
    """float32 at 1e-5, float64 at 1e-10; captions end at every position from 0 to 10, padding after the eos."""
    torch.manual_seed(0)
    reference = randomised(transformers.CLIPModel(hf_config(eos=eos, **options))).eval()
    ours = CLIP.from_hf(reference)
    images, tokens = torch.randn(3, 3, 16, 16), captions(11, 11, eos, pad=pad)
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        reference, ours, images = reference.to(dtype), ours.to(dtype), images.to(dtype)
        with torch.no_grad():
            expected = reference(input_ids=tokens, pixel_values=images)
            vision, text = reference.vision_model(pixel_values=images), reference.text_model(input_ids=tokens)
            logits_per_image, logits_per_text = ours(images, tokens)
            pooled, vision_tokens = ours.vision(images, return_tokens=True)
            text_pooled, text_tokens = ours.text(tokens, return_tokens=True)
            pairs = [(logits_per_image, expected.logits_per_image), (logits_per_text, expected.logits_per_text),
                     (ours.encode_image(images), expected.image_embeds), (ours.encode_text(tokens), expected.text_embeds),
                     (pooled, vision.pooler_output), (vision_tokens, vision.last_hidden_state),
                     (text_pooled, text.pooler_output), (text_tokens, text.last_hidden_state)]
            for got, want in pairs:
                torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)
    assert logits_per_image.shape == (3, 11) and logits_per_text.shape == (11, 3)


def test_from_hf_takes_the_config():
    reference = transformers.CLIPModel(hf_config(activation="gelu", eos=7, text_depth=3, text_heads=2))
    config = CLIP.from_hf(reference).config
    assert (config.vocab_size, config.eos_token_id, config.context_length, config.text_depth, config.text_heads) == \
        (VOCAB, 7, LENGTH, 3, 2)
    assert (config.image_size, config.patch_size, config.vision_dim, config.embed_dim) == (16, 4, 48, 24)
    assert (config.activation, config.text_hidden, config.vision_hidden) == ("gelu", 80, 120)
    assert config.init_temperature == pytest.approx(0.07, rel=1e-4)


@pytest.mark.parametrize("options, name", [
    (dict(eos=2), "eos_token_id=2"),
    (dict(activation="tanh"), "hidden_act"),
    (dict(text_hidden=64), "intermediate_size"),
    (dict(attention_dropout=0.1), "attention_dropout"),
])
def test_from_hf_refuses_what_it_did_not_build(options, name):
    with pytest.raises(ValueError, match=name):
        CLIP.from_hf(transformers.CLIPModel(hf_config(**options)))


@pytest.mark.parametrize("option, value", [("hidden_act", "gelu"), ("layer_norm_eps", 1e-6), ("image_size", (16, 12))])
def test_from_hf_refuses_options_hugging_face_builds_but_we_do_not(option, value):
    """Towers with different activations or eps, and rectangles (which Hugging Face's CLIP accepts in its config
    only), set on the config of a built model."""
    reference = transformers.CLIPModel(hf_config())
    setattr(reference.config.vision_config, option, value)
    with pytest.raises(ValueError, match=option):
        CLIP.from_hf(reference)


# --- the encoders ----------------------------------------------------------------------------------------


def small_clip(**options) -> CLIP:
    config = CLIPConfig(vocab_size=VOCAB, eos_token_id=VOCAB - 1, image_size=16, patch_size=4, vision_dim=32,
                        vision_heads=2, text_dim=32, text_heads=2, context_length=LENGTH, embed_dim=16, **options)
    return randomised(CLIP(config)).eval()


def test_text_feature_never_reads_past_the_end_of_text_token():
    """Row r ends at position r: whatever follows leaves its feature as it is, a change before it does not."""
    model = small_clip()
    tokens = captions(6, LENGTH, VOCAB - 1, pad=PAD)
    changed, before = tokens.clone(), tokens[1:].clone()
    for row in range(6):
        changed[row, row + 1:] = torch.randint(0, VOCAB - 1, (LENGTH - row - 1,))  # anything but eos
    before[:, 0] = (before[:, 0] + 1) % (VOCAB - 1)  # rows 1.. hold a word at position 0
    with torch.no_grad():
        pooled = model.text(tokens)
        torch.testing.assert_close(model.text(changed), pooled, atol=0, rtol=0)
        assert ((model.text(before) - pooled[1:]).abs().amax(dim=1) > 1e-3).all()
    assert not torch.equal(changed, tokens)


def test_embeddings_have_unit_length_and_logits_are_scaled_cosines():
    model = small_clip()
    images, tokens = torch.randn(4, 3, 16, 16), captions(5, LENGTH, VOCAB - 1, pad=PAD)
    with torch.no_grad():
        image_embeds, text_embeds = model.encode_image(images), model.encode_text(tokens)
        torch.testing.assert_close(image_embeds.norm(dim=1), torch.ones(4))
        torch.testing.assert_close(text_embeds.norm(dim=1), torch.ones(5))
        images_raw = model.visual_projection(model.vision(images))
        texts_raw = model.text_projection(model.text(tokens))
        cosines = torch.tensor([[F.cosine_similarity(i, t, dim=0).item() for t in texts_raw] for i in images_raw])
        logits_per_image, logits_per_text = model(images, tokens)
        torch.testing.assert_close(logits_per_image, cosines * model.logit_scale.exp(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits_per_text, logits_per_image.T)
    assert CLIP(small_clip().config).logit_scale.item() == pytest.approx(math.log(1 / 0.07))


# --- the loss --------------------------------------------------------------------------------------------


def naive_clip_loss(logits: torch.Tensor, caption_ids: list[int]) -> float:
    """Each row, then each column: -Σ target · log softmax, the target uniform over the pairs with the same id."""
    size = len(caption_ids)
    total_rows = total_columns = 0.0
    for i in range(size):
        matches = [j for j in range(size) if caption_ids[j] == caption_ids[i]]
        row = [logits[i, j].item() for j in range(size)]
        column = [logits[j, i].item() for j in range(size)]
        for values, name in ((row, "row"), (column, "column")):
            log_total = math.log(sum(math.exp(v) for v in values))
            loss = -sum(values[j] - log_total for j in matches) / len(matches)
            if name == "row":
                total_rows += loss
            else:
                total_columns += loss
    return (total_rows / size + total_columns / size) / 2


@pytest.mark.parametrize("caption_ids", [[0, 1, 2, 3, 4, 5], [0, 1, 0, 2, 1, 0], [3, 3, 3, 3, 3, 3], [7, 2, 9, 2, 4, 5]])
def test_clip_loss_matches_a_loop(caption_ids):
    logits = torch.randn(6, 6, dtype=torch.float64) * 3
    got = clip_loss(logits, torch.tensor(caption_ids))
    assert got.item() == pytest.approx(naive_clip_loss(logits, caption_ids), abs=1e-12)


def test_clip_loss_with_distinct_captions_is_the_symmetric_cross_entropy():
    logits = torch.randn(5, 5) * 4
    diagonal = torch.arange(5)
    expected = (F.cross_entropy(logits, diagonal) + F.cross_entropy(logits.T, diagonal)) / 2
    torch.testing.assert_close(clip_loss(logits), expected)
    torch.testing.assert_close(clip_loss(logits, torch.tensor([4, 0, 3, 1, 2])), expected)
    assert clip_loss(logits).item() == pytest.approx(naive_clip_loss(logits, list(range(5))), abs=1e-5)


def test_clip_loss_does_not_care_which_copy_of_a_caption_an_image_picks():
    """Captions 0 and 2 share an id ("a red circle"): a model that matches image 0 to caption 2 and image 2 to
    caption 0 is as right as one that matches each to its own copy. The diagonal loss punishes it."""
    caption_ids = torch.tensor([0, 1, 0, 2])
    logits = torch.randn(4, 4) + 8 * torch.eye(4)  # each image prefers its own copy
    swapped = logits[:, [2, 1, 0, 3]]  # ... and now the other copy
    torch.testing.assert_close(clip_loss(swapped, caption_ids), clip_loss(logits, caption_ids))
    assert clip_loss(swapped).item() > clip_loss(logits).item() + 1.0  # the diagonal loss would fail this


def test_clip_loss_of_identical_copies_is_the_diagonal_loss():
    """Identical captions get identical embeddings, hence equal columns: the copies' diagonal terms then add up to
    what the uniform targets cost, and both losses agree (the floor is log 2 per copy either way)."""
    caption_ids = torch.tensor([0, 1, 0, 2])
    equal = torch.randn(4, 4, dtype=torch.float64) * 3
    equal[:, 2] = equal[:, 0]
    torch.testing.assert_close(clip_loss(equal, caption_ids), clip_loss(equal), atol=1e-12, rtol=1e-12)
    assert clip_loss(equal, caption_ids).item() == pytest.approx(naive_clip_loss(equal, [0, 1, 0, 2]), abs=1e-12)


def test_clip_loss_trains_duplicates_towards_both_copies():
    """The gradient of the loss at equal logits for two copies is the same for both columns and both rows."""
    caption_ids = torch.tensor([0, 1, 0])
    logits = torch.tensor([[2.0, 0.5, 2.0], [0.1, 1.0, 0.1], [2.0, 0.5, 2.0]], requires_grad=True)
    clip_loss(logits, caption_ids).backward()
    torch.testing.assert_close(logits.grad[:, 0], logits.grad[:, 2])
    torch.testing.assert_close(logits.grad[0], logits.grad[2])


def test_the_loss_treats_identical_token_rows_as_one_caption():
    tokens = captions(5, LENGTH, VOCAB - 1, pad=PAD)
    tokens[3] = tokens[0]
    tokens[4] = tokens[0]
    model = small_clip()
    images = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        expected = clip_loss(model(images, tokens)[0], torch.tensor([0, 1, 2, 0, 0]))
        torch.testing.assert_close(model.loss(model(images), tokens), expected)
        torch.testing.assert_close(model(images), model.encode_image(images))


def test_fit_trains_the_pair_with_the_models_own_loss():
    from course_lib.train.loop import fit

    model = small_clip()
    tokens = captions(32, LENGTH, VOCAB - 1, pad=PAD)
    images = torch.randn(32, 3, 16, 16)
    with torch.no_grad():
        before = model.loss(model(images), tokens).item()
    fit(model, images, tokens, steps=30, lr=3e-3, batch=32, loss=model.loss)
    with torch.no_grad():
        assert model.loss(model(images), tokens).item() < before - 0.5


# --- zero-shot classification and retrieval --------------------------------------------------------------


class FixedEmbeddings:
    """A stand-in for a CLIP whose image and text embeddings are the given vectors, normalised."""

    def __init__(self, images: torch.Tensor, texts: torch.Tensor) -> None:
        self.images, self.texts = images, texts

    def encode_image(self, images):
        return F.normalize(self.images, dim=-1)

    def encode_text(self, tokens):
        return F.normalize(self.texts, dim=-1)


def naive_zero_shot(image_features: torch.Tensor, text_features: torch.Tensor) -> list[int]:
    expected = []
    for image in image_features:
        cosines = [float(image @ text / (image.norm() * text.norm())) for text in text_features]
        expected.append(max(range(len(cosines)), key=lambda c: cosines[c]))
    return expected


def test_zero_shot_classify_picks_the_most_similar_prompt():
    images, texts = torch.randn(20, 8) * torch.rand(20, 1) * 5, torch.randn(4, 8) * torch.rand(4, 1) * 5
    expected = naive_zero_shot(images, texts)
    prompts = captions(4, 6, VOCAB - 1, pad=PAD)
    assert zero_shot_classify(FixedEmbeddings(images, texts), None, prompts).tolist() == expected
    assert len(set(expected)) > 2
    model = small_clip()  # the real model: its own features, projected
    images = torch.randn(7, 3, 16, 16)
    with torch.no_grad():
        image_raw = model.visual_projection(model.vision(images))
        text_raw = model.text_projection(model.text(prompts))
    assert zero_shot_classify(model, images, prompts).tolist() == naive_zero_shot(image_raw, text_raw)


def naive_recall(similarity: torch.Tensor, k: int, caption_ids: list[int]) -> float:
    hits = 0
    for i, row in enumerate(similarity.tolist()):
        best = sorted(range(len(row)), key=lambda j: -row[j])[:k]
        hits += any(caption_ids[j] == caption_ids[i] for j in best)
    return hits / len(caption_ids)


@pytest.mark.parametrize("k", [1, 2, 5, 8])
@pytest.mark.parametrize("caption_ids", [None, [0, 1, 0, 2, 3, 2, 4, 0]])
def test_recall_at_k_matches_a_loop(k, caption_ids):
    similarity = torch.randn(8, 8) + torch.eye(8)
    ids = list(range(8)) if caption_ids is None else caption_ids
    expected = naive_recall(similarity, k, ids)
    got = recall_at_k(similarity, k, None if caption_ids is None else torch.tensor(caption_ids))
    assert got == pytest.approx(expected)


def test_recall_counts_a_copy_of_the_caption_as_a_hit():
    similarity = torch.tensor([[0.1, 0.0, 0.9], [0.0, 1.0, 0.2], [0.8, 0.1, 0.3]])  # images 0, 2 pick each other's
    assert recall_at_k(similarity, 1) == pytest.approx(1 / 3)
    assert recall_at_k(similarity, 1, torch.tensor([5, 6, 5])) == 1.0


# --- argument checks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [dict(vocab_size=0), dict(eos_token_id=VOCAB), dict(eos_token_id=-1),
                                 dict(image_size=30), dict(vision_dim=30), dict(text_heads=5), dict(mlp_ratio=0.0),
                                 dict(activation="tanh"), dict(norm_eps=0.0), dict(init_temperature=0.0),
                                 dict(embed_dim=0), dict(context_length=0), dict(text_depth=0)])
def test_config_rejects_bad_arguments(bad):
    name = next(iter(bad))
    options = {"vocab_size": VOCAB, "eos_token_id": 3, **bad}
    expected = "image_size=30" if name == "image_size" else name
    with pytest.raises(ValueError, match=expected):
        CLIPConfig(**options)


def test_encoders_reject_bad_inputs():
    model = small_clip()
    good = captions(2, LENGTH, VOCAB - 1, pad=PAD)
    with pytest.raises(ValueError, match="eos_token_id"):
        model.encode_text(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens"):
        model.encode_text(torch.full((2, LENGTH + 1), VOCAB - 1))
    with pytest.raises(ValueError, match="tokens"):
        model.encode_text(good.float())
    with pytest.raises(ValueError, match="vocab_size"):
        model.encode_text(torch.cat([good[:, :3], torch.tensor([[VOCAB], [VOCAB]])], dim=1))
    with pytest.raises(ValueError, match="image_size=16"):
        model.encode_image(torch.randn(2, 3, 12, 12))
    with pytest.raises(ValueError, match="images"):
        model.encode_image(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="class_tokens"):
        zero_shot_classify(model, torch.randn(2, 3, 16, 16), good[0])


def test_loss_and_recall_reject_bad_arguments():
    with pytest.raises(ValueError, match="logits_per_image"):
        clip_loss(torch.randn(3, 4))
    with pytest.raises(ValueError, match="caption_ids"):
        clip_loss(torch.randn(3, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="similarity"):
        recall_at_k(torch.randn(3, 4), 1)
    with pytest.raises(ValueError, match="k=0"):
        recall_at_k(torch.randn(3, 3), 0)
    with pytest.raises(ValueError, match="k=4"):
        recall_at_k(torch.randn(3, 3), 4)
    with pytest.raises(ValueError, match="caption_ids"):
        recall_at_k(torch.randn(3, 3), 1, torch.tensor([[0, 1, 2]]))


# --- the shared, modality-agnostic backbone --------------------------------------------------------------


def test_shared_backbone_runs_one_set_of_blocks_in_both_towers():
    """Equal to two separate towers whose text blocks hold copies of the vision blocks' weights, with the block
    weights counted once."""
    shared = small_clip(shared_backbone=True)
    assert shared.text.blocks is shared.vision.blocks
    separate = small_clip()
    state = shared.state_dict()  # holds the blocks under both names, with the same tensors
    separate.load_state_dict(state)
    for ours, theirs in zip(separate.text.blocks.parameters(), shared.vision.blocks.parameters()):
        assert torch.equal(ours, theirs)
    images, tokens = torch.randn(3, 3, 16, 16), captions(3, LENGTH, VOCAB - 1, pad=PAD)
    with torch.no_grad():
        for ours, theirs in zip(shared(images, tokens), separate(images, tokens)):
            torch.testing.assert_close(ours, theirs)
    blocks = sum(p.numel() for p in shared.vision.blocks.parameters())
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731  (parameters() yields shared ones once)
    assert count(separate) - count(shared) == blocks


def test_shared_backbone_needs_towers_of_one_shape():
    with pytest.raises(ValueError, match="shared_backbone"):
        CLIPConfig(vocab_size=VOCAB, eos_token_id=0, text_dim=32, vision_dim=64, shared_backbone=True)


def test_prompt_ensemble_averages_each_class_then_renormalises():
    embeddings = F.normalize(torch.randn(3, 4, 5), dim=-1)
    expected = torch.stack([sum(embeddings[c, p] for p in range(4)) for c in range(3)])
    expected = expected / expected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(prompt_ensemble(embeddings), expected)
    with pytest.raises(ValueError, match="embeddings"):
        prompt_ensemble(torch.randn(3, 5))
