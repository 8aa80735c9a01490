"""MM-DiT (notebook 21): the joint block equal to diffusers' JointTransformerBlock (Stable Diffusion 3's), joint
attention against the computation written out, adaLN-Zero's zero start, the caption reaching the image, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.data.captions import tokenize
from course_lib.models.mmdit import JointBlock, MMDiT, MMDiTConfig, joint_attention

diffusers = pytest.importorskip("diffusers")


def reference_block(dim: int = 32, heads: int = 4, seed: int = 0):
    from diffusers.models.attention import JointTransformerBlock

    torch.manual_seed(seed)
    block = JointTransformerBlock(dim, heads, dim // heads).eval()
    with torch.no_grad():
        for parameter in block.parameters():  # away from zero, or the gates hide every branch
            parameter.normal_(0, 0.2)
    return block


@pytest.mark.parametrize("words", [1, 7])
def test_joint_block_equals_diffusers(words):
    reference = reference_block()
    ours = JointBlock.from_hf(reference).eval()
    image, text, condition = torch.randn(2, 16, 32), torch.randn(2, words, 32), torch.randn(2, 32)
    expected_text, expected_image = reference(image, text, condition)
    got_image, got_text = ours(image, text, condition)
    assert (expected_image - image).abs().max() > 1  # the block did something
    torch.testing.assert_close(got_image, expected_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_text, expected_text, rtol=1e-5, atol=1e-5)


def test_joint_attention_is_one_softmax_over_both_streams():
    block = JointBlock(16, 2, 2.0)
    image, text = torch.randn(3, 5, 16), torch.randn(3, 4, 16)
    got_image, got_text = joint_attention(image, text, block.image.attn, block.text.attn)
    a, b = block.image.attn, block.text.attn
    q = torch.cat([a.to_q(image), b.to_q(text)], dim=1)
    k = torch.cat([a.to_k(image), b.to_k(text)], dim=1)
    v = torch.cat([a.to_v(image), b.to_v(text)], dim=1)
    heads = []
    for h in range(2):  # each head by hand: 8 features of the 16
        part = slice(8 * h, 8 * h + 8)
        weights = torch.softmax(q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(8), dim=-1)
        heads.append(weights @ v[..., part])
    out = torch.cat(heads, dim=-1)
    torch.testing.assert_close(got_image, a.to_out(out[:, :5]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_text, b.to_out(out[:, 5:]), rtol=1e-5, atol=1e-5)


def test_untrained_model_predicts_zero_and_the_caption_reaches_the_image():
    model = MMDiT(MMDiTConfig(dim=32, depth=2, heads=2, text_length=8))
    images, times = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 700.0])
    captions = tokenize(["a large red circle", "a small blue dotted square"], context_length=8)
    assert model(images, times, captions).abs().max() == 0  # adaLN-Zero: every gate and the output start at zero
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.1)
    out = model(images, times, captions)
    swapped = model(images, times, captions.flip(0))
    assert (out - swapped).abs().max() > 1e-3
    out.sum().backward()
    assert model.word_embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("call, words", [
    (lambda m: m(torch.randn(1, 3, 8, 8), torch.zeros(1), tokenize(["a"], 8)), "image_size"),
    (lambda m: m(torch.randn(1, 3, 16, 16), torch.zeros(2), tokenize(["a"], 8)), "times"),
    (lambda m: m(torch.randn(1, 3, 16, 16), torch.zeros(1), tokenize(["a"], 9)), "captions"),
    (lambda m: m(torch.randn(1, 3, 16, 16), torch.zeros(1), torch.full((1, 8), 99)), "captions"),
    (lambda m: m(torch.randn(1, 3, 16, 16), torch.zeros(1), torch.zeros(1, 8)), "captions"),
])
def test_bad_input_is_named(call, words):
    with pytest.raises(ValueError, match=words):
        call(MMDiT(MMDiTConfig(dim=32, depth=1, heads=2, text_length=8)))


@pytest.mark.parametrize("options, words", [(dict(image_size=15), "image_size"), (dict(dim=30, heads=4), "dim"),
                                            (dict(vocab_size=0), "vocab_size")])
def test_bad_config_is_named(options, words):
    with pytest.raises(ValueError, match=words):
        MMDiTConfig(**options)
