"""Next-scale prediction (towards notebook 22): the inputs rebuilt from coarser scales against the quantiser written
out, block-causal attention seen from outside, the loss against a per-scale computation, generation's shapes and
repeatability, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib.models.next_scale import NextScaleConfig, NextScaleTransformer, next_scale_inputs
from course_lib.nn.quantize import MultiScaleVQ


def quantizer_and_codes(batch: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    vq = MultiScaleVQ((1, 2, 4), codebook_size=8, dim=6)
    _, codes, _ = vq(torch.randn(batch, 6, 4, 4))
    return vq, codes


def model() -> NextScaleTransformer:
    torch.manual_seed(0)
    return NextScaleTransformer(NextScaleConfig(codebook_size=8, code_dim=6, num_classes=5, dim=32, depth=2, heads=2))


def test_inputs_are_the_coarser_scales_rebuilt_and_averaged_down():
    vq, codes = quantizer_and_codes()
    inputs = next_scale_inputs(vq, codes)
    assert inputs.shape == (3, 4 + 16, 6)
    coarsest = vq.quantizer.lookup(codes[0])  # (B, 1, 1, D): scale 0's codeword, spread evenly over 4 x 4
    expected_scale_1 = coarsest[:, 0, 0][:, None].expand(-1, 4, -1)  # averaging a constant map keeps it
    torch.testing.assert_close(inputs[:, :4], expected_scale_1)
    both = vq.lookup(codes[:2])
    expected_scale_2 = both.flatten(2).transpose(1, 2)  # scale 2 is 4 x 4, the whole map: nothing to average
    torch.testing.assert_close(inputs[:, 4:], expected_scale_2)
    torch.testing.assert_close(next_scale_inputs(vq, codes[:1]), inputs[:, :4])


def test_a_token_reads_its_own_scale_and_the_coarser_ones_only():
    vq, codes = quantizer_and_codes()
    net, labels = model().eval(), torch.tensor([0, 1, 2])
    inputs = next_scale_inputs(vq, codes)
    logits = net(labels, inputs)
    finer_changed = inputs.clone()
    finer_changed[:, 4:] += 1.0  # scale 2's inputs
    changed = net(labels, finer_changed)
    torch.testing.assert_close(changed[:, :5], logits[:, :5])  # scales 0 and 1 never read scale 2
    assert (changed[:, 5:] - logits[:, 5:]).abs().max() > 1e-4
    same_scale = inputs.clone()
    same_scale[:, 3] += 1.0  # the last token of scale 1: every token of scale 1 reads it
    assert (net(labels, same_scale)[:, 1] - logits[:, 1]).abs().max() > 1e-4
    other_label = net(torch.tensor([3, 4, 0]), inputs)
    assert (other_label[:, 0] - logits[:, 0]).abs().max() > 1e-4


def test_loss_is_the_cross_entropy_of_every_scale():
    vq, codes = quantizer_and_codes()
    net, labels = model(), torch.tensor([0, 1, 2])
    logits = net(labels, next_scale_inputs(vq, codes))
    targets = torch.cat([c.flatten(1) for c in codes], dim=1)
    expected = sum(F.cross_entropy(logits[:, i], targets[:, i], reduction="sum") for i in range(21)) / (3 * 21)
    torch.testing.assert_close(net.loss(labels, codes, vq), expected)


def test_generation_gives_every_scale_and_repeats_with_the_generator():
    vq, _ = quantizer_and_codes()
    net, labels = model().eval(), torch.tensor([0, 4])
    codes = net.generate(labels, vq, guidance=2.0, generator=torch.Generator().manual_seed(3))
    assert [tuple(c.shape) for c in codes] == [(2, 1, 1), (2, 2, 2), (2, 4, 4)]
    assert all(c.min() >= 0 and c.max() < 8 for c in codes)
    again = net.generate(labels, vq, guidance=2.0, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(codes, again))


@pytest.mark.parametrize("call, words", [
    (lambda m, x: m(torch.tensor([9]), x[:1]), "labels"),
    (lambda m, x: m(torch.tensor([0.0]), x[:1]), "labels"),
    (lambda m, x: m(torch.tensor([0]), x[:1, :, :5]), "inputs"),
    (lambda m, x: m(torch.tensor([0]), torch.zeros(1, 21, 6)), "inputs"),
])
def test_bad_input_is_named(call, words):
    vq, codes = quantizer_and_codes()
    with pytest.raises(ValueError, match=words):
        call(model(), next_scale_inputs(vq, codes))


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="scales"):
        NextScaleConfig(scales=(2, 1))
