"""Parameter-efficient fine-tuning wrappers (`course_lib.nn.peft`): each starts as the frozen model, computes
what its formula says, and leaves only its own weights trainable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib.models import ViT, ViTConfig
from course_lib.nn import peft


def tiny_vit() -> ViT:
    torch.manual_seed(0)
    return ViT(ViTConfig(image_size=8, patch_size=4, channels=1, dim=16, depth=2, heads=2, num_classes=3)).eval()


def test_lora_starts_as_the_base_and_merges():
    base = nn.Linear(6, 5)
    lora = peft.LoRALinear(base, rank=2, alpha=4.0)
    x = torch.randn(3, 6)
    assert torch.allclose(lora(x), base(x))
    with torch.no_grad():
        lora.B.normal_()
    expected = base(x) + 2.0 * x @ lora.A.T @ lora.B.T
    assert torch.allclose(lora(x), expected, atol=1e-6)
    assert torch.allclose(lora.merged()(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="rank=6"):
        peft.LoRALinear(base, rank=6)


def test_circulant_update_is_a_circulant_matrix():
    base = nn.Linear(8, 8)
    update = peft.CirculantLinear(base)
    x = torch.randn(4, 8)
    assert torch.allclose(update(x), base(x))
    with torch.no_grad():
        update.c.normal_()
    C = update.matrix()
    assert torch.allclose(C[1:, 1:], C[:-1, :-1])  # constant along diagonals
    assert torch.allclose(C[0, 1], C[-1, 0])  # and wrapping around
    assert torch.allclose(update(x), base(x) + x @ C.T, atol=1e-5)
    with pytest.raises(ValueError, match="square"):
        peft.CirculantLinear(nn.Linear(4, 6))


def test_adapters_start_as_the_base():
    model, x = tiny_vit(), torch.rand(2, 1, 8, 8)
    before = model(x)
    peft.add_adapters(model, bottleneck=3)
    assert torch.allclose(model(x), before)
    with pytest.raises(ValueError, match="blocks"):
        peft.add_adapters(nn.Linear(2, 2), bottleneck=3)


def test_freeze_except_counts_only_the_added_weights():
    model = peft.add_lora(tiny_vit(), rank=2)
    peft.freeze_except(model, ["head"])
    dim, layers = 16, 2 * 2  # to_q and to_v in each of 2 blocks
    assert peft.trainable_parameters(model) == layers * 2 * (dim + dim) + (dim * 3 + 3)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith((".A", ".B")) or n.startswith("head") for n in names)
    adapted = peft.freeze_except(peft.add_adapters(tiny_vit(), bottleneck=4))
    assert peft.trainable_parameters(adapted) == 2 * ((16 * 4 + 4) + (4 * 16 + 16))


def test_training_moves_only_the_trainable_weights():
    model = peft.freeze_except(peft.add_circulant(tiny_vit()), ["head"])
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(torch.rand(4, 1, 8, 8)).logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_add_lora_needs_a_matching_layer():
    with pytest.raises(ValueError, match="no nn.Linear named"):
        peft.add_lora(tiny_vit(), rank=2, names=("nothing",))
