"""Vector quantisers and the VQ-VAE (notebook 20): the nearest code against cdist, VQ against diffusers'
VectorQuantizer given the same codebook (values, loss and gradients), the straight-through gradient, dead-code
restarts, residual codes against a greedy loop, multi-scale codes decoded back, perplexity's extremes."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.models.vqvae import VQVAE, VQVAEConfig
from course_lib.nn.quantize import (
    MultiScaleVQ,
    ResidualVQ,
    VectorQuantizer,
    nearest_codes,
    perplexity,
)


@pytest.mark.parametrize("n, d, k", [(1, 1, 1), (7, 3, 5), (50, 16, 64)])
def test_nearest_codes_is_the_argmin_of_the_distances(n, d, k):
    generator = torch.Generator().manual_seed(n)
    vectors, codebook = torch.randn(n, d, generator=generator), torch.randn(k, d, generator=generator)
    assert torch.equal(nearest_codes(vectors, codebook), torch.cdist(vectors, codebook).argmin(1))


def test_vector_quantizer_equals_diffusers():
    diffusers = pytest.importorskip("diffusers")
    from diffusers.models.autoencoders.vae import VectorQuantizer as Reference

    torch.manual_seed(0)
    reference = Reference(16, 4, beta=0.25, legacy=False)
    ours = VectorQuantizer(16, 4, beta=0.25)
    with torch.no_grad():
        ours.codebook.copy_(reference.embedding.weight)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    mine = z.detach().clone().requires_grad_(True)
    expected, expected_loss, (_, _, expected_codes) = reference(z)
    quantised, codes, loss = ours(mine.permute(0, 2, 3, 1))
    torch.testing.assert_close(quantised, expected.permute(0, 2, 3, 1))
    torch.testing.assert_close(loss, expected_loss)
    assert torch.equal(codes.flatten(), expected_codes.flatten())
    (expected.sum() + expected_loss).backward()
    (quantised.sum() + loss).backward()
    torch.testing.assert_close(mine.grad, z.grad)
    torch.testing.assert_close(ours.codebook.grad, reference.embedding.weight.grad)
    assert diffusers.__version__


def test_the_gradient_passes_straight_through_the_quantiser():
    quantizer = VectorQuantizer(8, 3)
    z = torch.randn(5, 3, requires_grad=True)
    upstream = torch.randn(5, 3)
    quantised, _, _ = quantizer(z)
    (quantised * upstream).sum().backward()
    torch.testing.assert_close(z.grad, upstream)


def test_dead_codes_restart_onto_batch_vectors_only_in_training():
    torch.manual_seed(1)
    quantizer = VectorQuantizer(4, 2, restart_after=3)
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [100.0, -100.0]]))
    batch = torch.randn(32, 2) * 0.1  # every vector is nearest to code 0
    quantizer.eval()
    for _ in range(5):
        quantizer(batch)
    assert quantizer.restarted == 0
    quantizer.train()
    for _ in range(2):
        quantizer(batch)
    assert quantizer.restarted == 0 and quantizer.idle_steps.tolist() == [0, 2, 2, 2]
    quantizer(batch)  # the third idle step: codes 1-3 are moved onto vectors of the batch
    assert quantizer.restarted == 3 and quantizer.idle_steps.tolist() == [0, 0, 0, 0]
    moved = quantizer.codebook[1:].detach()
    assert all(torch.isclose(batch, code).all(dim=1).any() for code in moved)


def test_residual_codes_equal_a_greedy_loop_and_decode_to_the_sum():
    torch.manual_seed(2)
    rvq = ResidualVQ(3, 6, 4)
    z = torch.randn(2, 5, 4)
    quantised, codes, _ = rvq(z)
    residual, expected = z.reshape(-1, 4), []
    for level in rvq.levels:
        code = torch.cdist(residual, level.codebook.detach()).argmin(1)
        expected.append(code)
        residual = residual - level.codebook.detach()[code]
    assert codes.shape == (2, 5, 3) and torch.equal(codes.reshape(-1, 3), torch.stack(expected, 1))
    torch.testing.assert_close(rvq.lookup(codes), quantised)
    torch.testing.assert_close(z - quantised, residual.reshape(2, 5, 4), rtol=1e-5, atol=1e-6)


def test_multiscale_codes_decode_to_the_quantised_map():
    torch.manual_seed(3)
    msvq = MultiScaleVQ((1, 2, 4), 8, 5)
    z = torch.randn(2, 5, 4, 4)
    quantised, codes, loss = msvq(z)
    assert [tuple(c.shape) for c in codes] == [(2, 1, 1), (2, 2, 2), (2, 4, 4)]
    torch.testing.assert_close(msvq.lookup(codes), quantised, rtol=1e-5, atol=1e-6)
    assert loss.item() > 0
    coarse = msvq.lookup(codes[:1])  # the 1 x 1 code alone: one codeword everywhere
    assert coarse.shape == (2, 5, 4, 4) and torch.allclose(coarse, coarse[..., :1, :1].expand_as(coarse))
    with pytest.raises(ValueError, match="first 1 to 3"):
        msvq.lookup(codes[1:])
    with pytest.raises(ValueError, match="scales"):
        MultiScaleVQ((2, 1), 8, 5)
    with pytest.raises(ValueError, match="z must be"):
        msvq(torch.randn(2, 5, 8, 8))


def test_perplexity_is_the_number_of_equally_used_codes():
    assert math.isclose(perplexity(torch.arange(16), 16), 16, rel_tol=1e-9)
    assert math.isclose(perplexity(torch.full((9,), 2), 16), 1, rel_tol=1e-9)
    assert math.isclose(perplexity(torch.tensor([0, 1]), 16), 2, rel_tol=1e-9)
    with pytest.raises(ValueError, match="codes"):
        perplexity(torch.rand(3), 4)


@pytest.mark.parametrize("quantizer", ["vq", "residual", "multiscale"])
def test_vqvae_reconstructs_through_codes_it_can_decode(quantizer):
    torch.manual_seed(4)
    model = VQVAE(VQVAEConfig(quantizer=quantizer, hidden=8, dim=4, codebook_size=8, levels=2)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert out.shape == x.shape
        torch.testing.assert_close(model.decode_codes(model.encode(x)), out, rtol=1e-5, atol=1e-5)


def test_vqvae_training_is_deterministic_and_learns():
    from course_lib.train.loop import fit

    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        model = VQVAE(VQVAEConfig(channels=1, height=8, width=8, hidden=8, dim=4, codebook_size=8, restart_after=2))
        before = model.loss(model(x), x).item()
        fit(model, x, x, steps=30, lr=1e-2, batch=8, loss=model.loss)
        with torch.no_grad():
            losses.append(model.loss(model(x), x).item())
    assert losses[0] == losses[1] and losses[0] < before


@pytest.mark.parametrize("make, words", [
    (lambda: VQVAEConfig(quantizer="kmeans"), "quantizer"),
    (lambda: VQVAEConfig(height=30), "divisible by 4"),
    (lambda: VQVAEConfig(quantizer="multiscale", scales=(1, 2, 4)), "scales ending"),
    (lambda: VQVAEConfig(codebook_size=0), "codebook_size"),
    (lambda: VectorQuantizer(8, 4, beta=-1.0), "beta"),
    (lambda: VectorQuantizer(8, 4)(torch.randn(3, 5)), "dim=4"),
    (lambda: VQVAE(VQVAEConfig())(torch.randn(2, 1, 32, 32)), "channels=3"),
])
def test_bad_arguments_are_named(make, words):
    with pytest.raises(ValueError, match=words):
        make()
