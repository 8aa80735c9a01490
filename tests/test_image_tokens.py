"""The patch tokenizer and the BEiT-style masked token model, against brute-force and naive computations."""

import pytest
import torch
import torch.nn.functional as F

from conftest import randomised
from course_lib.models.image_tokens import (
    MaskedTokenConfig,
    MaskedTokenModel,
    PatchTokenizer,
    masked_token_loss,
    patchify,
    unpatchify,
)


@pytest.mark.parametrize("patch, size, vocab", [(4, 16, 8), (2, 8, 5), (4, 8, 3)])
def test_tokenizer_is_the_nearest_codeword(patch, size, vocab):
    images = torch.rand(6, 3, size, size, generator=torch.Generator().manual_seed(patch))
    tokenizer = PatchTokenizer(patch).fit(images, vocab=vocab, seed=0)
    tokens = tokenizer.encode(images)
    g = size // patch
    for b in range(2):
        for i in range(g):
            for j in range(g):
                piece = images[b, :, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch].permute(1, 2, 0).flatten()
                distances = ((tokenizer.codebook - piece) ** 2).sum(1)
                assert tokens[b, i * g + j] == distances.argmin()
    decoded = tokenizer.decode(tokens, (g, g))
    torch.testing.assert_close(patchify(decoded, patch), tokenizer.codebook[tokens], atol=1e-6, rtol=0)
    torch.testing.assert_close(unpatchify(patchify(images, patch), patch, (g, g)), images)


def test_masked_positions_see_only_the_mask_embedding():
    model = randomised(MaskedTokenModel(MaskedTokenConfig(image_size=16, vocab=10, dim=16, depth=1))).eval()
    images = torch.rand(3, 3, 16, 16)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[:, ::3] = True
    embedded = model.embed(images, mask)
    torch.testing.assert_close(embedded[mask], (model.mask_token + model.positions).expand(3, -1, -1)[mask])
    other = images.clone()
    other[:, :, :4, :4] = torch.rand(3, 3, 4, 4)  # patch 0 is masked in every row
    with torch.no_grad():
        torch.testing.assert_close(model(images, mask)[0], model(other, mask)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch, tokens, vocab", [(2, 16, 7), (3, 4, 5)])
def test_loss_equals_a_naive_loop(batch, tokens, vocab):
    logits = torch.randn(batch, tokens, vocab)
    target = torch.randint(vocab, (batch, tokens))
    mask = torch.rand(batch, tokens) < 0.5
    mask[0, 0] = True
    terms = [-F.log_softmax(logits[b, t], -1)[target[b, t]] for b in range(batch) for t in range(tokens) if mask[b, t]]
    torch.testing.assert_close(masked_token_loss((logits, mask), target), torch.stack(terms).mean())


def test_deterministic_per_seed():
    config = MaskedTokenConfig(image_size=16, vocab=10, dim=16, depth=1)
    images = torch.rand(4, 3, 16, 16)
    torch.manual_seed(0)
    a = MaskedTokenModel(config, seed=3)
    torch.manual_seed(0)
    b = MaskedTokenModel(config, seed=3)
    (la, ma), (lb, mb) = a(images), b(images)
    assert torch.equal(ma, mb) and torch.equal(la, lb)
    tokenizer = lambda: PatchTokenizer(4).fit(images, vocab=5, seed=1).codebook  # noqa: E731
    assert torch.equal(tokenizer(), tokenizer())


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedTokenConfig(mask_ratio=1.0)
    with pytest.raises(ValueError, match="vocab"):
        MaskedTokenConfig(vocab=0)
    model = MaskedTokenModel(MaskedTokenConfig(image_size=16, vocab=10, dim=16, depth=1))
    with pytest.raises(ValueError, match="mask"):
        model(torch.rand(2, 3, 16, 16), torch.zeros(2, 15, dtype=torch.bool))
    with pytest.raises(ValueError, match="images"):
        model(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="patch"):
        patchify(torch.rand(1, 3, 10, 10), 4)
    with pytest.raises(ValueError, match="tokens"):
        masked_token_loss((torch.randn(2, 4, 3), torch.ones(2, 4, dtype=torch.bool)), torch.zeros(2, 5, dtype=torch.long))
