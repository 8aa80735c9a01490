"""Transfusion (towards notebook 22): the mixed-modal mask seen from outside (what each output may depend on, in
both orders), the objective's two halves, greedy captioning, text-to-image through the flow sampler, bad input."""

from __future__ import annotations

import pytest
import torch

from course_lib.data.captions import EOT, PAD, SOT, tokenize
from course_lib.diffusion import sample_flow
from course_lib.models.transfusion import Transfusion, TransfusionConfig, TransfusionObjective
from course_lib.train.loop import fit


def model(seed: int = 0) -> Transfusion:
    torch.manual_seed(seed)
    net = Transfusion(TransfusionConfig(dim=32, depth=2, heads=2, text_length=8)).eval()
    with torch.no_grad():  # the patch head starts at zero: give it weights so every output depends on something
        net.to_patches.weight.normal_(0, 0.1)
    return net


def inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    text = tokenize(["a large red circle", "a small blue dotted cross"], 8)
    return text, torch.randn(2, 3, 16, 16, generator=generator), torch.tensor([0.0, 500.0])


def test_caption_first_text_never_reads_the_image_and_reads_only_earlier_words():
    net, (text, images, times) = model(), inputs()
    words, velocity = net(text, images, times, "text-first")
    other_words, other_velocity = net(text, torch.randn_like(images), times, "text-first")
    torch.testing.assert_close(words, other_words)
    assert (velocity - other_velocity).abs().max() > 1e-3
    changed = text.clone()
    changed[:, 5] = tokenize(["a"], 8)[0, 1]
    later_changed = net(changed, images, times, "text-first")[0]
    torch.testing.assert_close(later_changed[:, :5], words[:, :5])  # positions before 5 never see token 5
    assert (later_changed[:, 5:] - words[:, 5:]).abs().max() > 1e-4


def test_image_patches_read_each_other_both_ways_and_the_caption_before_them():
    net, (text, images, times) = model(), inputs()
    velocity = net(text, images, times, "text-first")[1]
    last_patch_changed = images.clone()
    last_patch_changed[:, :, 12:, 12:] += 1.0
    first_patch = net(text, last_patch_changed, times, "text-first")[1][:, :, :4, :4]
    assert (first_patch - velocity[:, :, :4, :4]).abs().max() > 1e-4  # bidirectional inside the image
    other_caption = tokenize(["a large green square", "a large red circle"], 8)
    assert (net(other_caption, images, times, "text-first")[1] - velocity).abs().max() > 1e-4


def test_image_first_the_image_never_reads_the_caption_and_the_caption_reads_the_image():
    net, (text, images, times) = model(), inputs()
    words, velocity = net(text, images, times, "image-first")
    other_words, other_velocity = net(tokenize(["a large green square"] * 2, 8), images, times, "image-first")
    torch.testing.assert_close(velocity, other_velocity)
    changed_image_words = net(text, torch.randn_like(images), times, "image-first")[0]
    assert (changed_image_words - words).abs().max() > 1e-4


def test_objective_trains_both_halves_repeatably():
    captions = ["a large red circle", "a large blue square", "a large green striped triangle", "a large red cross"] * 4
    text, images = tokenize(captions, 8), torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    empty = tokenize([""], 8)[0]
    first = TransfusionObjective(model(), empty, seed=3)({"images": images, "text": text})
    again = TransfusionObjective(model(), empty, seed=3)
    assert torch.equal(first, again({"images": images, "text": text}))
    assert set(again.last) == {"text", "image"} and again.last["image"] > 0
    objective = TransfusionObjective(model(), empty, seed=0)
    before = objective({"images": images, "text": text}).item()
    fit(objective, {"images": images, "text": text}, text, steps=30, lr=3e-3, batch=8, loss=lambda value, _: value)
    objective.train()
    assert objective({"images": images, "text": text}).item() < before


def test_greedy_captions_and_text_to_image_run_end_to_end():
    net, (text, images, _) = model(), inputs()
    written = net.caption(images)
    assert written.shape == (2, 8) and (written[:, 0] == SOT).all()
    for row in written.tolist():  # after <eot> only padding
        if EOT in row:
            assert all(token == PAD for token in row[row.index(EOT) + 1:])
    samples = sample_flow(net.velocity, text, tokenize([""], 8)[0], shape=(3, 16, 16), steps=3, guidance=2.0)
    assert samples.shape == (2, 3, 16, 16) and torch.isfinite(samples).all()


@pytest.mark.parametrize("call, words", [
    (lambda m, t, x, s: m(t, x, s, "sideways"), "order"),
    (lambda m, t, x, s: m(t[:, :4], x, s), "text"),
    (lambda m, t, x, s: m(t.float(), x, s), "text"),
    (lambda m, t, x, s: m(t, x[:, :, :8, :8], s), "image_size"),
    (lambda m, t, x, s: m(t, x, s[:1]), "times"),
])
def test_bad_input_is_named(call, words):
    with pytest.raises(ValueError, match=words):
        call(model(), *inputs())


def test_bad_config_and_objective_options_are_named():
    with pytest.raises(ValueError, match="image_size"):
        TransfusionConfig(image_size=15)
    with pytest.raises(ValueError, match="drop_caption"):
        TransfusionObjective(model(), tokenize([""], 8)[0], drop_caption=1.0)
