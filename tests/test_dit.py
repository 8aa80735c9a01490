"""The diffusion transformer (towards notebook 21): equal to diffusers' DiTTransformer2DModel given the same weights,
adaLN-Zero's identity start, the time features against diffusers' Timesteps, and bad input named."""

from __future__ import annotations

import pytest
import torch

from course_lib.models.dit import DiT, DiTConfig, timestep_embedding

diffusers = pytest.importorskip("diffusers")


def reference(layers: int = 2, tie: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    model = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=3,
                                            out_channels=3, num_layers=layers, sample_size=16, patch_size=4,
                                            num_embeds_ada_norm=5, norm_type="ada_norm_zero").eval()
    with torch.no_grad():
        for parameter in model.parameters():  # away from the zero init, or every block is the identity
            parameter.normal_(0, 0.2)
        weights = model.state_dict()
        for key in weights:
            if tie and ".norm1.emb." in key and not key.startswith("transformer_blocks.0."):
                weights[key].copy_(weights["transformer_blocks.0." + key.split(".", 2)[2]])
    return model


@pytest.mark.parametrize("layers", [1, 3])
def test_equal_to_diffusers_dit(layers):
    theirs = reference(layers)
    ours = DiT.from_hf(theirs).eval()
    images, times, labels = torch.randn(3, 3, 16, 16), torch.tensor([0, 371, 999]), torch.tensor([0, 4, 5])
    with torch.no_grad():
        expected = theirs(images, timestep=times, class_labels=labels).sample
        torch.testing.assert_close(ours(images, times, labels), expected, rtol=1e-5, atol=1e-5)
    assert expected.abs().mean() > 0.1


def test_per_block_embedders_that_differ_are_refused():
    with pytest.raises(ValueError, match="equal weights"):
        DiT.from_hf(reference(2, tie=False))


def test_time_features_equal_diffusers_timesteps():
    from diffusers.models.embeddings import Timesteps

    times = torch.tensor([0.0, 1.0, 17.0, 999.0])
    expected = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)(times)
    torch.testing.assert_close(timestep_embedding(times, 256), expected)


def test_adaln_zero_starts_every_block_as_the_identity():
    model = DiT(DiTConfig(image_size=8, patch_size=4, dim=16, heads=2, depth=2, num_classes=3))
    images, times, labels = torch.randn(2, 3, 8, 8), torch.tensor([5, 50]), torch.tensor([0, 3])
    assert model(images, times, labels).abs().max() == 0  # the output layer starts at zero
    x = torch.randn(2, 4, 16)
    torch.testing.assert_close(model.blocks[0](x, model.condition(times, labels)), x)


@pytest.mark.parametrize("call, words", [
    (lambda m: m(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1])), "image_size=16"),
    (lambda m: m(torch.randn(2, 3, 16, 16), torch.tensor([1]), torch.tensor([0, 1])), "times"),
    (lambda m: m(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 13])), "labels"),
    (lambda m: m(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.tensor([0.0, 1.0])), "labels"),
])
def test_bad_input_is_named(call, words):
    model = DiT(DiTConfig(image_size=16, patch_size=4, dim=32, heads=2, depth=1, num_classes=12))
    with pytest.raises(ValueError, match=words):
        call(model)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="patch_size"):
        DiTConfig(image_size=16, patch_size=5)
    with pytest.raises(ValueError, match="heads"):
        DiTConfig(dim=30, heads=4)


def randomised(model: DiT, seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model.eval()


def test_in_context_conditioning_reads_time_and_label_as_two_tokens():
    model = randomised(DiT(DiTConfig(image_size=8, patch_size=4, dim=16, heads=2, depth=2, num_classes=3,
                                     conditioning="in-context")))
    assert all(block.modulation is None for block in model.blocks) and model.final_modulation is None
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = model(images, torch.tensor([5, 5]), torch.tensor([0, 0]))
        assert out.shape == images.shape
        assert not torch.allclose(out, model(images, torch.tensor([5, 5]), torch.tensor([1, 1])))
        assert not torch.allclose(out, model(images, torch.tensor([500, 500]), torch.tensor([0, 0])))
        tokens = torch.cat([model.time_mlp(timestep_embedding(torch.tensor([5, 5]), 256))[:, None],
                            model.label_embed(torch.tensor([0, 0]))[:, None],
                            model.patch_embed(images).flatten(2).transpose(1, 2) + model.positions], dim=1)
        for block in model.blocks:
            tokens = block(tokens, None)
        by_hand = model.to_patches(model.final_norm(tokens)[:, 2:])  # (2, 4, 48)
        expected = by_hand.reshape(2, 2, 2, 4, 4, 3).permute(0, 5, 1, 3, 2, 4).reshape(2, 3, 8, 8)
    torch.testing.assert_close(out, expected)


def test_long_skips_feed_each_early_block_to_its_mirror():
    model = randomised(DiT(DiTConfig(image_size=8, patch_size=4, dim=16, heads=2, depth=5, num_classes=3,
                                     conditioning="in-context", long_skips=True)))
    assert len(model.skip_projections) == 2
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        first = model.blocks[0](x, None)
        second = model.blocks[1](first, None)
        middle = model.blocks[2](second, None)
        fourth = model.blocks[3](model.skip_projections[1](torch.cat([middle, second], -1)), None)
        fifth = model.blocks[4](model.skip_projections[0](torch.cat([fourth, first], -1)), None)
        torch.testing.assert_close(model._in_context_blocks(x), fifth)


@pytest.mark.parametrize("options, words", [
    (dict(conditioning="cross-attention"), "conditioning"),
    (dict(long_skips=True), "long_skips"),
    (dict(conditioning="in-context", long_skips=True, depth=4), "odd depth"),
])
def test_conditioning_options_are_checked(options, words):
    with pytest.raises(ValueError, match=words):
        DiTConfig(**options)
