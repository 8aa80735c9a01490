"""Masked autoencoders: the loss is the naive per-patch average over hidden patches, the encoders never see a
hidden pixel (ConvMAE only with its masked convolutions), reconstructions keep the visible patches, and the
same seed gives the same masks and numbers."""

from __future__ import annotations

import pytest
import torch

from course_lib.models.image_tokens import patchify
from course_lib.models.mae import (
    ConvMAE,
    ConvMAEConfig,
    MAEConfig,
    MaskedAutoencoder,
    masked_patch_loss,
    normalise_patches,
    upsample_mask,
)
from course_lib.nn.masking import random_masking
from course_lib.train.loop import fit

SMALL_MAE = dict(image_size=16, patch_size=4, dim=32, depth=2, heads=2, decoder_dim=16, decoder_heads=2)
SMALL_CONV = dict(image_size=16, conv_dims=(8, 16), conv_depths=(1, 1), dim=32, depth=1, heads=2, decoder_dim=16,
                  decoder_heads=2)


def _mask(batch: int, tokens: int, seed: int = 0, ratio: float = 0.75) -> torch.Tensor:
    return random_masking(batch, tokens, ratio, generator=torch.Generator().manual_seed(seed))


def _change_hidden_pixels(images: torch.Tensor, mask: torch.Tensor, patch: int, grid: int) -> torch.Tensor:
    """The same images with every hidden patch's pixels replaced by noise."""
    changed = images.clone()
    for b in range(len(images)):
        for token in mask[b].nonzero().flatten().tolist():
            row, col = divmod(token, grid)
            block = (slice(row * patch, (row + 1) * patch), slice(col * patch, (col + 1) * patch))
            changed[b, :, block[0], block[1]] = torch.rand(images.shape[1], patch, patch)
    return changed


@pytest.mark.parametrize("batch, tokens, pixels", [(1, 4, 3), (2, 16, 12), (3, 9, 48)])
def test_masked_patch_loss_averages_hidden_patches_only(batch, tokens, pixels):
    prediction, target = torch.randn(batch, tokens, pixels), torch.randn(batch, tokens, pixels)
    mask = _mask(batch, tokens, seed=tokens)
    errors = [((prediction[b, n] - target[b, n]) ** 2).mean() for b in range(batch) for n in range(tokens) if mask[b, n]]
    expected = sum(errors) / len(errors)
    assert torch.allclose(masked_patch_loss(prediction, target, mask), expected, atol=1e-6)


def test_normalise_patches_gives_each_patch_zero_mean_unit_variance():
    patches = torch.rand(2, 5, 48) * 3 + 1
    out = normalise_patches(patches)
    for b in range(2):
        for n in range(5):
            p = patches[b, n]
            manual = (p - p.mean()) / (p.var(unbiased=False) + 1e-6).sqrt()
            assert torch.allclose(out[b, n], manual, atol=1e-5)


@pytest.mark.parametrize("height, width, factor", [(2, 2, 2), (2, 3, 4), (4, 4, 1)])
def test_upsample_mask_covers_each_tokens_block(height, width, factor):
    mask = _mask(2, height * width, seed=factor, ratio=0.5)
    big = upsample_mask(mask, (height, width), factor)
    assert big.shape == (2, height * factor, width * factor)
    for b in range(2):
        for y in range(height * factor):
            for x in range(width * factor):
                assert big[b, y, x] == mask[b, (y // factor) * width + x // factor]


def test_mae_encoder_never_sees_hidden_patches():
    model = MaskedAutoencoder(MAEConfig(**SMALL_MAE)).eval()
    images = torch.rand(3, 3, 16, 16)
    mask = _mask(3, model.config.num_patches)
    changed = _change_hidden_pixels(images, mask, 4, 4)
    assert not torch.equal(images, changed)
    with torch.no_grad():
        assert torch.equal(model.encode(images, mask), model.encode(changed, mask))
        assert model.encode(images, mask).shape == (3, 4, 32)  # 16 patches, a quarter visible


@pytest.mark.parametrize("masked, leaks", [(True, False), (False, True)])
def test_convmae_leaks_only_without_masked_convolution(masked, leaks):
    model = ConvMAE(ConvMAEConfig(**SMALL_CONV)).eval()
    assert model.config.patch_size == 8 and model.config.grid == (2, 2)
    images = torch.rand(4, 3, 16, 16)
    mask = _mask(4, 4, ratio=0.5)
    changed = _change_hidden_pixels(images, mask, 8, 2)
    with torch.no_grad():
        before = model.encode(images, mask, masked_convolution=masked)
        after = model.encode(changed, mask, masked_convolution=masked)
    assert (not torch.allclose(before, after, atol=1e-6)) == leaks


def test_convmae_feature_maps_are_zero_on_hidden_blocks():
    model = ConvMAE(ConvMAEConfig(**SMALL_CONV)).eval()
    images, mask = torch.rand(2, 3, 16, 16), _mask(2, 4, ratio=0.5)
    with torch.no_grad():
        maps = model.conv_features(images, mask)
    for stage, factor in zip(maps, (4, 2)):
        hidden = upsample_mask(mask, (2, 2), factor)[:, None].expand_as(stage)
        assert (stage[hidden] == 0).all() and (stage[~hidden] != 0).any()


@pytest.mark.parametrize("make", [lambda: MaskedAutoencoder(MAEConfig(**SMALL_MAE)),
                                  lambda: ConvMAE(ConvMAEConfig(**SMALL_CONV))])
def test_reconstruction_keeps_visible_patches_and_forward_predicts_every_patch(make):
    model = make().eval()
    c = model.config
    images = torch.rand(2, 3, 16, 16)
    mask = _mask(2, c.num_patches, ratio=0.5)
    prediction, returned = model(images, mask)
    assert prediction.shape == (2, c.num_patches, c.patch_pixels) and torch.equal(returned, mask)
    rebuilt = patchify(model.reconstruct(images, mask), c.patch_size)
    original = patchify(images, c.patch_size)
    assert torch.allclose(rebuilt[~mask], original[~mask]) and not torch.allclose(rebuilt[mask], original[mask])


def test_norm_pix_targets_and_loss_of_the_model():
    model = MaskedAutoencoder(MAEConfig(**SMALL_MAE)).eval()
    images = torch.rand(2, 3, 16, 16)
    output = model(images)
    expected = masked_patch_loss(output[0], normalise_patches(patchify(images, 4)), output[1])
    assert torch.allclose(model.loss(output, images), expected)
    raw = MaskedAutoencoder(MAEConfig(**SMALL_MAE, norm_pix_loss=False))
    assert torch.equal(raw.targets(images), patchify(images, 4))


def test_the_same_seed_gives_the_same_masks_and_outputs():
    images = torch.rand(2, 3, 16, 16)
    outputs = []
    for seed in (3, 3, 4):
        torch.manual_seed(0)
        model = MaskedAutoencoder(MAEConfig(**SMALL_MAE), seed=seed).eval()
        outputs.append(model(images))
    assert torch.equal(outputs[0][1], outputs[1][1]) and torch.equal(outputs[0][0], outputs[1][0])
    assert not torch.equal(outputs[0][1], outputs[2][1])
    assert (outputs[0][1].sum(dim=1) == 12).all()  # 75% of 16 patches


@pytest.mark.parametrize("make", [lambda: MaskedAutoencoder(MAEConfig(**SMALL_MAE)),
                                  lambda: ConvMAE(ConvMAEConfig(**SMALL_CONV))])
def test_fit_lowers_the_masked_loss(make):
    torch.manual_seed(0)
    images = torch.rand(64, 3, 16, 16).round()  # two-level images: their patches are learnable
    model = make()
    fixed = model.draw_mask(64)
    with torch.no_grad():
        before = model.loss(model(images, fixed), images).item()
    fit(model, images, images, loss=model.loss, steps=30, lr=3e-3, batch=16, seed=0, device="cpu")
    with torch.no_grad():
        after = model.loss(model(images, fixed), images).item()
    assert after < before


def test_features_pool_the_unmasked_encoder():
    model = MaskedAutoencoder(MAEConfig(**SMALL_MAE)).eval()
    images = torch.rand(3, 3, 16, 16)
    none_hidden = torch.zeros(3, 16, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(model.features(images), model.encode(images, none_hidden).mean(dim=1))


@pytest.mark.parametrize("call, message", [
    (lambda: MAEConfig(image_size=18, patch_size=4), "image_size=18"),
    (lambda: MAEConfig(mask_ratio=1.0), "mask_ratio=1.0"),
    (lambda: MAEConfig(dim=30, heads=3), "dim=30"),
    (lambda: ConvMAEConfig(conv_dims=(8, 16), conv_depths=(1,)), "conv_depths"),
    (lambda: ConvMAEConfig(image_size=20), "image_size=20"),
    (lambda: upsample_mask(torch.zeros(2, 5, dtype=torch.bool), (2, 2), 2), "grid=\\(2, 2\\)"),
    (lambda: masked_patch_loss(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), torch.zeros(1, 4, dtype=torch.bool)),
     "hides no patch"),
    (lambda: masked_patch_loss(torch.zeros(1, 4, 3), torch.zeros(1, 4, 2), torch.ones(1, 4, dtype=torch.bool)),
     "same"),
    (lambda: MaskedAutoencoder(MAEConfig(**SMALL_MAE))(torch.rand(1, 3, 8, 8)), "16x16"),
    (lambda: MaskedAutoencoder(MAEConfig(**SMALL_MAE)).encode(torch.rand(1, 3, 16, 16), torch.zeros(1, 15)),
     "mask must be"),
])
def test_bad_input_is_refused_by_name(call, message):
    with pytest.raises(ValueError, match=message):
        call()
