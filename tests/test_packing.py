"""Packed sequences in the GPT: a row holding several documents back to back gives each document the logits it
gets alone (tolerance 1e-5 in float32), for learned and rotary positions, with MHA, GQA, MQA and shared KV."""

from __future__ import annotations

import pytest
import torch

from course_lib.inference import pack_documents
from course_lib.models import GPT, GPTConfig, KVCache
from course_lib.models.gpt import _rotate, document_mask, document_positions

TOLERANCE = 1e-5
VARIANTS = {
    "learned": dict(),
    "learned+gqa": dict(kv_heads=2),
    "rope": dict(positional="rope"),
    "rope+gqa": dict(positional="rope", kv_heads=2, norm="rms", ffn="glu", bias=False),
    "rope+mqa+shared-kv": dict(positional="rope", kv_heads=1, kv_share_every=2),
}


def tiny(**options) -> GPTConfig:
    return GPTConfig(**{"vocab_size": 61, "max_len": 32, "dim": 32, "depth": 3, "heads": 4, **options})


def _documents(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 61, (n,), generator=generator) for n in lengths]


@pytest.mark.parametrize("name", VARIANTS)
def test_a_packed_row_gives_each_document_its_own_logits(name):
    torch.manual_seed(0)
    model = GPT(tiny(**VARIANTS[name])).eval()
    rows = [[7, 4, 11, 3], [20, 9]]  # the first row ends in 7 padding tokens, a segment of their own
    documents = [_documents(lengths, seed=i) for i, lengths in enumerate(rows)]
    tokens = torch.stack([torch.cat([*docs, torch.zeros(32 - sum(map(len, docs)), dtype=torch.long)])
                          for docs in documents])
    segments = torch.stack([torch.repeat_interleave(torch.arange(len(lengths) + 1),
                                                    torch.tensor([*lengths, 32 - sum(lengths)]))
                            for lengths in rows])
    with torch.no_grad():
        packed = model(tokens, segments=segments)
        assert packed.shape == (2, 32, 61)
        for row, docs in enumerate(documents):
            start = 0
            for document in docs:
                alone = model(document[None])[0]
                assert alone.abs().max() > 0.1  # a real comparison
                torch.testing.assert_close(packed[row, start : start + len(document)], alone, atol=TOLERANCE, rtol=0)
                start += len(document)


@pytest.mark.parametrize("name", ["learned", "rope+gqa"])
def test_without_packing_a_row_reads_the_documents_before(name):
    """The control: the same row without segments does not give the later documents their own logits."""
    torch.manual_seed(0)
    model = GPT(tiny(**VARIANTS[name])).eval()
    first, second = _documents([6, 6])
    with torch.no_grad():
        together = model(torch.cat([first, second])[None])[0, 6:]
        assert not torch.allclose(together, model(second[None])[0], atol=1e-3)


def test_a_document_of_a_packed_row_takes_no_gradient_from_the_others():
    """Rows from `pack_documents` train: a loss on one document's logits reaches the embeddings of its own tokens
    only, none of the other documents' in its row (nor the padding's)."""
    torch.manual_seed(0)
    model = GPT(tiny(positional="rope", kv_heads=2))
    tokens, segments = pack_documents(_documents([9, 14, 5, 20, 3, 8]), 32)
    embedded = {}

    def keep(module, inputs, output):
        output.retain_grad()
        embedded["x"] = output

    model.embed.register_forward_hook(keep)
    logits = model(tokens, segments=segments)
    chosen = segments == 1
    chosen[1:] = False  # the second document of the first row
    logits[chosen].logsumexp(-1).sum().backward()
    reach = embedded["x"].grad.abs().sum(-1)  # (rows, 32)
    assert (reach[chosen] > 0).all()
    assert (reach[~chosen] == 0).all()


def test_one_segment_equals_the_plain_path():
    torch.manual_seed(0)
    model = GPT(tiny(positional="rope", kv_heads=2)).eval()
    tokens = torch.randint(0, 61, (3, 17))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, segments=torch.zeros_like(tokens)), model(tokens),
                                   atol=TOLERANCE, rtol=0)


def test_document_positions_restart_at_each_document():
    segments = torch.tensor([[0, 0, 0, 1, 1, 2, 3, 3, 3, 3], [4, 4, 4, 4, 4, 4, 4, 4, 9, 9]])
    expected = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]])
    assert torch.equal(document_positions(segments), expected)


def test_rotary_positions_restart_at_each_document():
    """Rotary scores depend only on distance, so the logits test above cannot see where rotary positions start;
    this checks directly that each document's queries and keys are rotated as if it stood alone."""
    model = GPT(tiny(positional="rope"))
    segments = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2]])
    x = torch.randn(1, 4, 9, 8)  # (B, heads, T, head_dim)
    rotated = _rotate(model.rope, x, 0, document_positions(segments))
    for start, end in ((0, 3), (3, 7), (7, 9)):
        torch.testing.assert_close(rotated[..., start:end, :], model.rope(x[..., start:end, :]), atol=1e-6, rtol=0)


def test_document_mask_against_a_loop():
    segments = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1]])
    mask = document_mask(segments)
    assert mask.shape == (2, 1, 6, 6) and mask.dtype == torch.bool
    for b in range(2):
        for q in range(6):
            for k in range(6):
                assert mask[b, 0, q, k] == (k <= q and segments[b, q] == segments[b, k])


@pytest.mark.parametrize("segments, message", [
    (torch.zeros(2, 9, dtype=torch.long), r"segments has shape \(2, 9\); expected the tokens' \(2, 10\)"),
    (torch.zeros(2, 10), "integer tensor"),
    (torch.zeros(2, 10, dtype=torch.bool), "integer tensor"),
    (torch.zeros(20, dtype=torch.long), r"segments has shape \(20,\)"),
    ([[0] * 10] * 2, r"segments has shape \(\)"),
    (torch.tensor([[0] * 5 + [1] * 5, [0, 0, 1, 1, 0, 0, 1, 1, 2, 2]]), r"non-decreasing.*row 1"),
])
def test_bad_segments_are_refused(segments, message):
    model = GPT(tiny())
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(2, 10, dtype=torch.long), segments=segments)


def test_segments_with_a_cache_a_prefix_or_wavelets_are_refused():
    model = GPT(tiny())
    tokens = torch.zeros(1, 6, dtype=torch.long)
    segments = torch.zeros_like(tokens)
    with pytest.raises(ValueError, match="segments.*cache=True"):
        model(tokens, KVCache(model.config, 1, 12), segments=segments)
    with pytest.raises(ValueError, match="segments.*prefix=True"):
        model(tokens, prefix=torch.zeros(1, 2, 32), segments=segments)
    with pytest.raises(ValueError, match="segments.*wavelet_levels=2"):
        GPT(tiny(wavelet_levels=2))(tokens, segments=segments)
