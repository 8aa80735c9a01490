"""Fusion of modalities (notebook 16): the masks that keep streams pure, the cost formula against measured
attention FLOPs, missing modalities, modality dropout, and training through `fit` with several modalities."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib.measure import count_attention_flops
from course_lib.models.fusion import (
    FUSIONS,
    FusionConfig,
    FusionModel,
    attention_pairs,
    drop_modalities,
    modality_pure_mask,
)
from course_lib.train.loop import accuracy, fit

ALL = ("image", "sound", "text")


def small(fusion: str, modalities: tuple[str, ...] = ALL, **options) -> FusionConfig:
    settings = dict(num_classes=3, fusion=fusion, modalities=modalities, dim=16, heads=2, image_size=8,
                    patch_size=4, sound_bins=5, sound_frames=6, frames_per_token=2, vocab_size=12, context_length=6)
    return FusionConfig(**{**settings, **options})


def inputs(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(1, 12, (batch, 6), generator=generator)
    text[:, 4:] = 0  # padding
    return {"image": torch.randn(batch, 3, 8, 8, generator=generator),
            "sound": torch.randn(batch, 5, 6, generator=generator), "text": text}


def test_modality_pure_mask_matches_its_definition():
    lengths, fusion_tokens = [2, 3, 1], 2
    mask = modality_pure_mask(lengths, fusion_tokens)
    owner = [0, 0, 1, 1, 1, 2, "fusion", "fusion"]
    for q in range(8):
        for k in range(8):
            assert mask[q, k] == (owner[q] == "fusion" or owner[q] == owner[k])
    assert modality_pure_mask([4], 0).all()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_classifies_any_subset_of_modalities(fusion):
    model = FusionModel(small(fusion), seed=0).eval()
    data = inputs()
    for subset in (ALL, ("image",), ("sound", "text"), ("text", "image")):
        with torch.no_grad():
            logits = model({m: data[m] for m in subset})
        assert logits.shape == (3, 3) and torch.isfinite(logits).all()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_streams_stay_pure_only_where_the_design_says(fusion):
    """Changing the sound changes the image stream's final tokens unless the design keeps streams apart (late
    fusion, and Zorro's masks); Zorro's fusion tokens do read the sound."""
    model = FusionModel(small(fusion), seed=0).eval()
    data = inputs()
    other = {**data, "sound": torch.randn(3, 5, 6)}
    with torch.no_grad():
        _, streams = model(data, return_streams=True)
        _, changed = model(other, return_streams=True)
    image_moved = (streams["image"] - changed["image"]).abs().max().item()
    if fusion in ("late", "zorro"):
        assert image_moved == 0.0
    else:
        assert image_moved > 1e-4
    if "fusion" in streams:
        assert (streams["fusion"] - changed["fusion"]).abs().max() > 1e-4


@pytest.mark.parametrize("fusion", FUSIONS)
def test_the_order_of_the_inputs_does_not_matter(fusion):
    model = FusionModel(small(fusion), seed=0).eval()
    data = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(data), model(dict(reversed(list(data.items())))), rtol=0, atol=0)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_padding_after_a_caption_changes_nothing(fusion):
    config = small(fusion, context_length=8)
    model = FusionModel(config, seed=0).eval()
    data = inputs()
    longer = {**data, "text": F.pad(data["text"], (0, 2), value=0)}  # two more padding positions
    with torch.no_grad():
        torch.testing.assert_close(model(data), model(longer), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("modalities", [("image", "sound"), ALL, ("sound",)])
def test_attention_pairs_is_what_the_attention_kernels_spend(fusion, modalities):
    """One fusion layer, no unimodal blocks: measured attention FLOPs are 4 · pairs · dim (heads x head size)."""
    config = small(fusion, modalities, unimodal_depth=0, fusion_depth=1, fusion_tokens=3)
    model = FusionModel(config, seed=0)
    data = {m: inputs(batch=1)[m] for m in modalities}
    lengths = [config.tokens(m) for m in modalities]
    assert count_attention_flops(model, data) == 4 * config.dim * attention_pairs(lengths, fusion, 3)


def test_attention_pairs_of_the_designs():
    assert attention_pairs([64, 30], "early") == 94**2
    assert attention_pairs([64, 30], "cross") == 94**2
    assert attention_pairs([64, 30], "late") == 64**2 + 30**2
    assert attention_pairs([64, 30], "bottleneck", 4) == 68**2 + 34**2
    assert attention_pairs([64, 30], "zorro", 4) == 98**2
    assert attention_pairs([10], "cross") == 200  # alone, a stream cross-attends to itself


def test_drop_modalities_never_drops_everything_and_repeats_with_its_generator():
    data = inputs()
    seen = {}
    for seed in range(400):
        kept = drop_modalities(data, torch.Generator().manual_seed(seed), p=0.5)
        again = drop_modalities(data, torch.Generator().manual_seed(seed), p=0.5)
        assert list(kept) == list(again) and kept and set(kept) <= set(data)
        assert all(kept[m] is data[m] for m in kept)
        for m in kept:
            seen[m] = seen.get(m, 0) + 1
    # each kept with probability 1/2, plus 1/3 of the 1/8 all-dropped draws: 0.54
    assert all(0.45 < count / 400 < 0.63 for count in seen.values()), seen
    assert list(drop_modalities(data, torch.Generator().manual_seed(0), p=0.0)) == list(data)


def test_fit_trains_a_fusion_model_on_a_mapping_of_modalities():
    """A label readable only from the sound and the image together (the sign of their means agree)."""
    generator = torch.Generator().manual_seed(0)
    image_sign, sound_sign = (torch.randint(0, 2, (512,), generator=generator) * 2 - 1 for _ in range(2))
    data = {"image": torch.randn(512, 3, 8, 8, generator=generator) * 0.3 + image_sign[:, None, None, None],
            "sound": torch.randn(512, 5, 6, generator=generator) * 0.3 + sound_sign[:, None, None]}
    labels = (image_sign == sound_sign).long()
    model = FusionModel(small("early", ("image", "sound"), num_classes=2), seed=0)
    fit(model, data, labels, steps=150, lr=3e-3, batch=64, seed=0)
    assert accuracy(model, data, labels, batch=100) > 0.95


def test_fit_with_modality_dropout_hands_the_model_partial_batches():
    seen = []

    class Recorder(FusionModel):
        def forward(self, inputs, **options):
            seen.append(tuple(inputs))
            return super().forward(inputs, **options)

    data = {m: inputs(batch=16)[m] for m in ("image", "sound")}
    model = Recorder(small("bottleneck", ("image", "sound")), seed=0)
    fit(model, data, torch.zeros(16, dtype=torch.long), steps=30, lr=1e-3, batch=4, seed=0,
        augment=lambda batch, generator: drop_modalities(batch, generator, p=0.5))
    assert {("image", "sound"), ("image",), ("sound",)} <= set(seen)


def test_same_seed_same_model():
    a, b = FusionModel(small("cross"), seed=3), FusionModel(small("cross"), seed=3)
    with torch.no_grad():
        torch.testing.assert_close(a(inputs()), b(inputs()), rtol=0, atol=0)


@pytest.mark.parametrize("bad, name", [
    (dict(fusion="middle"), "fusion"), (dict(modalities=("image", "smell")), "modalities"),
    (dict(modalities=()), "modalities"), (dict(modalities=["image"]), "modalities"),
    (dict(dim=30, heads=4), "dim"), (dict(sound_frames=7), "sound_frames"), (dict(image_size=9), "image_size"),
    (dict(pad_token_id=12), "pad_token_id"), (dict(unimodal_depth=-1), "unimodal_depth"),
    (dict(fusion_tokens=0), "fusion_tokens"), (dict(mlp_ratio=0), "mlp_ratio"),
])
def test_config_rejects_bad_settings(bad, name):
    bad = dict(bad)
    with pytest.raises(ValueError, match=name):
        small(bad.pop("fusion", "early"), **bad)


def test_forward_rejects_bad_inputs_by_name():
    model = FusionModel(small("bottleneck"), seed=0)
    data = inputs()
    cases = [({"smell": data["image"]}, "modalities"), ({}, "modalities"),
             ({**data, "sound": data["sound"][:2]}, "batch sizes"),
             ({"image": data["image"][:, :2]}, "channel"), ({"sound": data["sound"].long()}, "sound"),
             ({"sound": data["sound"][:, :4]}, "sound_bins"), ({"text": data["text"].float()}, "text"),
             ({"text": data["text"] + 20}, "vocab_size"), ({"text": torch.zeros(3, 6, dtype=torch.long)}, "padding"),
             ({"image": torch.randn(3, 3, 16, 16)}, "image_size")]
    for bad, words in cases:
        with pytest.raises(ValueError, match=words):
            model(bad)


@pytest.mark.parametrize("call, words", [
    (lambda: modality_pure_mask([], 2), "lengths"), (lambda: modality_pure_mask([2, 0], 2), "lengths"),
    (lambda: modality_pure_mask([2], -1), "fusion_tokens"), (lambda: attention_pairs([2], "soon"), "fusion"),
    (lambda: drop_modalities({}, torch.Generator()), "inputs"),
    (lambda: drop_modalities(inputs(), torch.Generator(), p=1.0), "p="),
])
def test_helpers_reject_bad_arguments(call, words):
    with pytest.raises(ValueError, match=words):
        call()
