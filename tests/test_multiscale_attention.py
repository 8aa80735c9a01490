"""Multi-scale self-attention and the byte-level classifier built on it, against naive loops and MultiHeadAttention.

Tolerances (absolute and relative, outputs are O(1)): float64 1e-10, float32 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import randomised
from course_lib.models import MultiScaleTransformer, MultiScaleTransformerConfig
from course_lib.nn import (
    MultiHeadAttention,
    MultiScaleAttention,
    multiscale_mask,
    padding_mask,
    scale_schedule,
)

TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5}
IMPLS = ("explicit", "fused")


def naive_mask(length: int, radii, causal: bool = False) -> torch.Tensor:
    """|i - j| <= radius (None: always), and j <= i when causal, one element at a time."""
    mask = torch.zeros(len(radii), length, length, dtype=torch.bool)
    for h, radius in enumerate(radii):
        for i in range(length):
            for j in range(length):
                mask[h, i, j] = (radius is None or abs(i - j) <= radius) and (not causal or j <= i)
    return mask


def naive_attention(module: MultiScaleAttention, x: torch.Tensor, *, lengths=None, causal: bool = False):
    """Head by head and query by query: softmax over the keys inside the window (and the sequence, and the past)."""
    batch, length, dim = x.shape
    d = dim // module.heads
    q, k, v = module.to_q(x), module.to_k(x), module.to_v(x)
    merged = torch.zeros_like(q)
    for b in range(batch):
        valid = length if lengths is None else int(lengths[b])
        for h, radius in enumerate(module.radii):
            columns = slice(h * d, (h + 1) * d)
            for i in range(length):
                keys = [j for j in range(valid) if (radius is None or abs(i - j) <= radius) and (not causal or j <= i)]
                if not keys:
                    continue  # a query that sees no key gets zeros
                scores = torch.stack([q[b, i, columns] @ k[b, j, columns] for j in keys]) / math.sqrt(d)
                weights = torch.softmax(scores, dim=0)
                merged[b, i, columns] = sum(w * v[b, j, columns] for w, j in zip(weights, keys))
    return module.to_out(merged)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [1, 2, 5, 9])
def test_mask_matches_naive(length, causal):
    """Head h's mask is |i - j| <= radii[h]; None is everywhere; causal also hides the future."""
    radii = (1, 2, None, 3, 7)
    assert torch.equal(multiscale_mask(length, radii, causal=causal), naive_mask(length, radii, causal))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, [1]), "length=0"),
        ((4, []), r"radii=\[\]"),
        ((4, [1, 0]), "radii=.*holds 0"),
        ((4, [1, 1.5]), "radii=.*holds 1.5"),
        ((4, [True]), "radii=.*holds True"),
        ((4, "12"), "radii='12'"),
    ],
)
def test_mask_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        multiscale_mask(*args)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("causal", [False, True])
def test_all_global_heads_equal_multi_head_attention(impl, causal):
    """With every radius None the module is MultiHeadAttention: the same weights load and give the same outputs."""
    torch.manual_seed(0)
    reference = MultiHeadAttention(16, 4, impl=impl)
    module = MultiScaleAttention(16, 4, [None] * 4, impl=impl)
    module.load_state_dict(reference.state_dict())  # strict: the same names and shapes
    x = torch.randn(3, 7, 16)
    mask = padding_mask(torch.tensor([7, 3, 5]), 7)
    for options in ({}, {"mask": mask}):
        expected = reference(x, causal=causal, **options)
        torch.testing.assert_close(module(x, causal=causal, **options), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("radii", [(1, 3, None, 2), (1, 1, 1, 1), (2, None, 5, 10)])
def test_each_head_matches_a_naive_loop(radii, impl, dtype):
    """Every head attends only inside its window, as the loop over heads, queries and keys computes."""
    module = randomised(MultiScaleAttention(16, 4, radii, impl=impl), seed=1).to(dtype)
    x = torch.randn(2, 9, 16, dtype=dtype)
    tol = TOLERANCES[dtype]
    with torch.no_grad():
        torch.testing.assert_close(module(x), naive_attention(module, x), atol=tol, rtol=tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_causal_and_padding_combine_with_the_windows(impl):
    """causal=True and a padding mask are both applied on top of each head's window."""
    module = randomised(MultiScaleAttention(12, 3, (1, 3, None), impl=impl), seed=2).double()
    x = torch.randn(3, 8, 12, dtype=torch.float64)
    lengths = torch.tensor([8, 2, 5])
    with torch.no_grad():
        causal = module(x, causal=True)
        padded = module(x, mask=padding_mask(lengths, 8))
        both = module(x, mask=padding_mask(lengths, 8), causal=True)
        torch.testing.assert_close(causal, naive_attention(module, x, causal=True), atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(padded, naive_attention(module, x, lengths=lengths), atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(both, naive_attention(module, x, lengths=lengths, causal=True), atol=1e-10, rtol=1e-10)
        # a padded key, changed, changes nothing; neither does a future token under causal=True
        changed = x.clone()
        changed[1, 2:] = torch.randn(6, 12, dtype=torch.float64)
        torch.testing.assert_close(module(changed, mask=padding_mask(lengths, 8))[1, :2], padded[1, :2])
        changed = x.clone()
        changed[:, 5:] = torch.randn(3, 3, 12, dtype=torch.float64)
        torch.testing.assert_close(module(changed, causal=True)[:, :5], causal[:, :5])


def test_return_weights_vanish_outside_the_windows():
    module = randomised(MultiScaleAttention(8, 2, (1, None)), seed=3)
    _, weights = module(torch.randn(2, 6, 8), return_weights=True)
    window = multiscale_mask(6, (1, None))
    assert weights.shape == (2, 2, 6, 6)
    assert (weights[:, ~window] == 0).all() and (weights[:, 1] > 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 6))


@pytest.mark.parametrize("impl", IMPLS)
def test_receptive_field_ends_at_the_largest_radius(impl):
    """Token i's output ignores tokens farther than max(radii) away, and a global head brings them back."""
    length, query, reach = 16, 7, 3
    local = randomised(MultiScaleAttention(8, 2, (1, reach), impl=impl), seed=4)
    wide = MultiScaleAttention(8, 2, (1, None), impl=impl)
    wide.load_state_dict(local.state_dict())
    x = torch.randn(1, length, 8)
    far = [j for j in range(length) if abs(j - query) > reach]
    near = [query - reach, query + reach]
    changed_far, changed_near = x.clone(), x.clone()
    changed_far[0, far] += torch.randn(len(far), 8)
    changed_near[0, near] += torch.randn(len(near), 8)
    with torch.no_grad():
        torch.testing.assert_close(local(changed_far)[0, query], local(x)[0, query], atol=1e-6, rtol=0)
        assert not torch.allclose(local(changed_near)[0, query], local(x)[0, query], atol=1e-3)
        assert not torch.allclose(wide(changed_far)[0, query], wide(x)[0, query], atol=1e-3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((16, 4, (1, 2, 3)), "radii=.*3 entries.*heads=4"),
        ((16, 4, (1, 2, 3, 0)), "holds 0"),
        ((16, 5, (1,) * 5), "dim=16 is not divisible by heads=5"),
        ((0, 4, (1,) * 4), "dim=0"),
    ],
)
def test_attention_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        MultiScaleAttention(*args)


@pytest.mark.parametrize(("depth", "heads", "length"), [(1, 4, 16), (3, 4, 64), (4, 8, 256), (6, 2, 100)])
def test_scale_schedule_grows_with_depth(depth, heads, length):
    """depth lists of heads radii; radii grow along the heads and, head by head, with depth; the top is global."""
    schedule = scale_schedule(depth, heads, length)
    size = [length if r is None else r for layer in schedule for r in layer]  # None sorts as the widest
    size = [size[layer * heads : (layer + 1) * heads] for layer in range(depth)]
    assert len(schedule) == depth and all(len(layer) == heads for layer in schedule)
    assert all(layer == sorted(layer) for layer in size)
    assert all(size[layer][h] <= size[layer + 1][h] for layer in range(depth - 1) for h in range(heads))
    assert schedule[-1][-1] is None
    if depth > 1:
        assert None not in schedule[0] and max(size[0]) < max(size[-1])
    assert scale_schedule(3, 4, 64) == [[1, 2, 2, 4], [2, 4, 8, 16], [2, 8, 16, None]]  # the docstring's example
    assert scale_schedule(2, 2, 8, scales=(1, 4, None)) == [[1, 4], [4, None]]


def test_scale_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="depth=0"):
        scale_schedule(0, 4, 16)
    with pytest.raises(ValueError, match="scales|radii"):
        scale_schedule(2, 4, 16, scales=(0, None))


# --- the classifier ------------------------------------------------------------------------------

SMALL = {"max_len": 24, "num_classes": 5, "dim": 16, "depth": 2, "heads": 4, "mlp_ratio": 2.0}
RADII = [[1, 1, 2, 4], [2, 4, 8, None]]


def test_classifier_shape_and_standard_baseline():
    """logits (B, num_classes); the standard baseline has the very same parameters, so weights load both ways."""
    model = randomised(MultiScaleTransformer(MultiScaleTransformerConfig(radii=RADII, **SMALL)), seed=0)
    standard = MultiScaleTransformer.standard(model.config)
    assert standard.config.radii is None and model.config.radii == RADII
    tokens = torch.randint(0, 256, (3, 20))
    assert model(tokens).shape == (3, 5)
    shapes = {name: p.shape for name, p in model.named_parameters()}
    assert shapes == {name: p.shape for name, p in standard.named_parameters()}
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in standard.parameters())
    standard.load_state_dict(model.state_dict())
    assert not torch.allclose(standard(tokens), model(tokens), atol=1e-2)  # the windows matter
    # radii that cover the whole sequence are the standard transformer
    wide = MultiScaleTransformer(MultiScaleTransformerConfig(radii=[[30] * 4, [None] * 4], **SMALL))
    wide.load_state_dict(model.state_dict())
    torch.testing.assert_close(wide(tokens), standard(tokens), atol=1e-5, rtol=1e-5)


def test_classifier_gradients_reach_every_parameter():
    model = MultiScaleTransformer(MultiScaleTransformerConfig(radii=RADII, **SMALL))
    logits = model(torch.randint(0, 256, (4, 24)))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for name, parameter in model.named_parameters():
        if name == "position.weight":  # 24 positions of max_len=24, all in use
            assert parameter.grad.abs().sum(-1).gt(0).all(), name
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_classifier_is_deterministic_under_a_seed():
    tokens = torch.randint(0, 256, (2, 16))
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        outputs.append(MultiScaleTransformer(MultiScaleTransformerConfig(radii=RADII, **SMALL))(tokens))
    assert torch.equal(*outputs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"radii": [[1, 1, 2, 4]]}, "radii=.*expected 2 lists"),
        ({"radii": [[1, 1, 2], [2, 4, 8, None]]}, "radii=.*layer \\[1, 1, 2\\]"),
        ({"radii": [[1, 1, 2, 0], [2, 4, 8, None]]}, "radii=.*holds 0"),
        ({"radii": "global"}, "radii='global'"),
        ({"heads": 3}, "dim=16 is not divisible by heads=3"),
        ({"num_classes": 0}, "num_classes=0"),
        ({"depth": 0}, "depth=0"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"mlp_ratio": 0}, "mlp_ratio=0"),
    ],
)
def test_classifier_config_rejects_bad_fields(change, message):
    with pytest.raises(ValueError, match=message):
        MultiScaleTransformerConfig(**{**SMALL, "radii": RADII, **change})


def test_classifier_rejects_bad_tokens():
    model = MultiScaleTransformer(MultiScaleTransformerConfig(**SMALL))
    with pytest.raises(ValueError, match="longer than max_len=24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match="expected \\(batch, length\\)"):
        model(torch.zeros(25, dtype=torch.long))
