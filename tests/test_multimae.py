"""MultiMAE: the Dirichlet split, the shared encoder on concatenated visible tokens, isolation of absent
modalities and the per-modality losses, against naive computations."""

import pytest
import torch
import torch.nn.functional as F

from conftest import randomised
from course_lib.models.multimae import (
    MODALITIES,
    MultiMAE,
    MultiMAEConfig,
    dirichlet_split,
    modality_masks,
    multimae_losses,
    pack_scene,
)

CONFIG = dict(image_size=16, patch_size=4, dim=16, depth=1, heads=2, decoder_dim=16, decoder_depth=1,
              decoder_heads=2, visible=10)


def scene(batch=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return pack_scene(torch.rand(batch, 3, size, size, generator=g), torch.randint(0, 3, (batch, size, size), generator=g),
                      torch.randint(0, 5, (batch, size, size), generator=g))


@pytest.mark.parametrize("batch, budget, tokens, alpha", [(50, 16, 16, 1.0), (40, 40, 16, 0.3), (20, 5, 4, 2.0),
                                                         (10, 48, 16, 1.0)])
def test_dirichlet_split_keeps_the_budget(batch, budget, tokens, alpha):
    draw = lambda: dirichlet_split(batch, budget, tokens, alpha=alpha, generator=torch.Generator().manual_seed(4))  # noqa: E731
    counts = draw()
    assert counts.shape == (batch, 3) and (counts.sum(1) == budget).all()
    assert (counts >= 0).all() and (counts <= tokens).all()
    assert torch.equal(counts, draw())
    other = dirichlet_split(batch, budget, tokens, alpha=alpha, generator=torch.Generator().manual_seed(5))
    assert budget == 3 * tokens or not torch.equal(counts, other)
    masks = modality_masks(counts, tokens, generator=torch.Generator().manual_seed(0))
    assert torch.equal((~masks).sum(-1), counts)


def test_absent_modalities_never_influence_the_output():
    model = randomised(MultiMAE(MultiMAEConfig(**CONFIG))).eval()
    x = scene()
    perturbed = x.clone()
    perturbed[:, 3:] = torch.randn_like(perturbed[:, 3:])  # depth and semantic channels
    with torch.no_grad():
        a, b = model(x, given=("rgb",))[0], model(perturbed, given=("rgb",))[0]
    for m in MODALITIES:
        torch.testing.assert_close(a[m], b[m], atol=1e-5, rtol=1e-5)


def test_encoder_equals_a_naive_construction():
    model = randomised(MultiMAE(MultiMAEConfig(**CONFIG))).eval()
    x = scene()
    masks = model.draw_masks(3)
    with torch.no_grad():
        encoded, index = model.encode(x, masks)
        maps = {"rgb": x[:, :3], "depth": x[:, 3:4], "semantic": x[:, 4:]}
        for b in range(3):
            rows = []
            for i, m in enumerate(MODALITIES):
                tokens = model.embeds[m](maps[m][b:b + 1])[0]
                for t in range(model.config.tokens):
                    if not masks[b, i, t]:
                        rows.append(tokens[t] + model.modality_embedding[i] + model.positions[t])
            h = torch.stack(rows)[None]
            for block in model.blocks:
                h = block(h)
            torch.testing.assert_close(encoded[b], model.norm(h)[0], atol=1e-5, rtol=1e-5)


def test_losses_equal_naive_loops():
    torch.manual_seed(0)
    x = scene(batch=2, size=8)
    predictions = {"rgb": torch.rand(2, 3, 8, 8), "depth": torch.rand(2, 1, 8, 8), "semantic": torch.randn(2, 5, 8, 8)}
    masks = torch.rand(2, 3, 4) < 0.5
    masks[:, :, 0] = True
    losses = multimae_losses((predictions, masks), x, patch=4)
    labels = x[:, 4:].argmax(1)
    sq = {"rgb": [], "depth": []}
    ce = []
    for b in range(2):
        for t in range(4):
            i, j = divmod(t, 2)
            window = (b, slice(None), slice(4 * i, 4 * i + 4), slice(4 * j, 4 * j + 4))
            for k, (m, channels) in enumerate((("rgb", slice(0, 3)), ("depth", slice(3, 4)))):
                if masks[b, k, t]:
                    sq[m].append((predictions[m][window] - x[:, channels][window]).flatten() ** 2)
            if masks[b, 2, t]:
                for y in range(4 * i, 4 * i + 4):
                    for z in range(4 * j, 4 * j + 4):
                        ce.append(F.cross_entropy(predictions["semantic"][b, :, y, z], labels[b, y, z]))
    for m in ("rgb", "depth"):
        torch.testing.assert_close(losses[m], torch.cat(sq[m]).mean())
    torch.testing.assert_close(losses["semantic"], torch.stack(ce).mean())


def test_deterministic_per_seed():
    x = scene()
    outputs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = MultiMAE(MultiMAEConfig(**CONFIG), seed=2)
        outputs.append(model(x))
    assert torch.equal(outputs[0][1], outputs[1][1])
    torch.testing.assert_close(outputs[0][0]["depth"], outputs[1][0]["depth"], atol=0, rtol=0)
    assert ((~outputs[0][1]).sum((1, 2)) == CONFIG["visible"]).all()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="visible"):
        MultiMAEConfig(**{**CONFIG, "visible": 100})
    with pytest.raises(ValueError, match="given"):
        MultiMAEConfig(**CONFIG, given=("sound",))
    with pytest.raises(ValueError, match="budget"):
        dirichlet_split(2, 13, 4)
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_split(2, 3, 4, alpha=0.0)
    model = MultiMAE(MultiMAEConfig(**CONFIG))
    with pytest.raises(ValueError, match="scene"):
        model(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="masks"):
        model(scene(), torch.zeros(3, 3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="semantic"):
        pack_scene(torch.rand(1, 3, 8, 8), torch.zeros(1, 8, 8), torch.full((1, 8, 8), 7))
