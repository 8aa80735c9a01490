"""course_lib.inference: padded and packed batches, the speculative-decoding rule, early exit and elastic depth for a
ViT, and the KV cache's real memory. Tolerance for logits: 1e-5 in float32."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.inference import (
    ElasticDepth,
    acceptance_probability,
    depth_logits,
    early_exit,
    every_depth_loss,
    exit_depth,
    masked_attention_fraction,
    pack_documents,
    pad_batch,
    padding_fraction,
    residual_distribution,
    truncated_logits,
)
from course_lib.models import GPTConfig, KVCache, ViT, ViTConfig
from course_lib.train.loop import fit

TOLERANCE = 1e-5


def _documents(lengths: list[int]) -> list[torch.Tensor]:
    return [torch.arange(n) + 100 * i for i, n in enumerate(lengths)]  # each token says its document and position


# --- padding and packing --------------------------------------------------------------------------------------------


def test_pad_batch():
    tokens, lengths = pad_batch(_documents([3, 5, 1]), pad_id=-1)
    assert torch.equal(lengths, torch.tensor([3, 5, 1]))
    assert torch.equal(tokens, torch.tensor([[0, 1, 2, -1, -1], [100, 101, 102, 103, 104], [200, -1, -1, -1, -1]]))


def test_pack_documents_is_first_fit_decreasing():
    """Lengths 6, 5, 4, 3, 2 into rows of 8: 6 opens row 0, 5 row 1, 4 row 2, 3 joins row 1 (first with room for
    it), 2 joins row 0."""
    documents = _documents([4, 6, 2, 5, 3])
    tokens, segments = pack_documents(documents, 8, pad_id=-1)
    expected_rows = [[documents[1], documents[2]], [documents[3], documents[4]], [documents[0]]]
    assert tokens.shape == segments.shape == (3, 8)
    for row, members in enumerate(expected_rows):
        used = sum(len(d) for d in members)
        assert torch.equal(tokens[row, :used], torch.cat(members))
        assert (tokens[row, used:] == -1).all()
        expected = torch.repeat_interleave(torch.arange(len(members) + 1),
                                           torch.tensor([*map(len, members), 8 - used]))
        assert torch.equal(segments[row], expected)  # the padding tail: a segment of its own


def test_pack_documents_keeps_every_token_once():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 17, (40,), generator=generator).tolist()
    documents = _documents(lengths)
    tokens, segments = pack_documents(documents, 16, pad_id=-1)
    assert sorted(tokens[tokens >= 0].tolist()) == sorted(torch.cat(documents).tolist())
    assert (segments[:, 1:] >= segments[:, :-1]).all()
    assert tokens.shape[0] >= math.ceil(sum(lengths) / 16)
    # each (row, segment) that is not padding holds exactly one whole document
    for row in range(len(tokens)):
        for segment in segments[row].unique():
            part = tokens[row][segments[row] == segment]
            if (part >= 0).all():
                assert torch.equal(part, documents[int(part[0]) // 100])
            else:
                assert (part == -1).all()


def test_pack_refuses_a_document_longer_than_a_row():
    with pytest.raises(ValueError, match=r"documents\[1\] has 9 tokens, more than a row's length=8"):
        pack_documents(_documents([3, 9]), 8)


@pytest.mark.parametrize("bad, message", [
    ([], "non-empty list"),
    ([torch.zeros(0, dtype=torch.long)], r"documents\[0\]"),
    ([torch.ones(3, dtype=torch.long), torch.ones(3)], r"documents\[1\].*integer"),
    ([torch.ones(2, 3, dtype=torch.long)], r"documents\[0\].*1-D"),
])
def test_bad_documents_are_refused(bad, message):
    for function in (pad_batch, lambda d: pack_documents(d, 8)):
        with pytest.raises(ValueError, match=message):
            function(bad)


def test_padding_and_attention_waste():
    lengths = [3, 5, 1]
    assert padding_fraction(lengths, 5) == pytest.approx(1 - 9 / 15)  # padded: 3 rows of 5
    assert padding_fraction(torch.tensor(lengths), 9, rows=1) == 0.0  # packed into one full row
    assert masked_attention_fraction(lengths, 5) == pytest.approx(1 - (6 + 15 + 1) / (3 * 15))
    assert masked_attention_fraction(lengths, 9, rows=1) == pytest.approx(1 - (6 + 15 + 1) / 45)
    with pytest.raises(ValueError, match="do not fit"):
        padding_fraction(lengths, 5, rows=1)
    with pytest.raises(ValueError, match="row_length=4"):
        padding_fraction(lengths, 4)


# --- speculative decoding -------------------------------------------------------------------------------------------


def test_acceptance_and_residual_make_the_target_distribution():
    """Draft q, accept with min(1, p/q), else redraw from the residual: the result is p (the rule's promise)."""
    generator = torch.Generator().manual_seed(0)
    p = torch.softmax(2 * torch.randn(7, generator=generator, dtype=torch.float64), dim=0)
    q = torch.softmax(2 * torch.randn(7, generator=generator, dtype=torch.float64), dim=0)
    accept = torch.stack([acceptance_probability(p, q, x) for x in range(7)])
    rejected = (q * (1 - accept)).sum()
    result = q * accept + rejected * residual_distribution(p, q)
    torch.testing.assert_close(result, p, atol=1e-12, rtol=0)
    assert torch.equal(accept, (p / q).clamp(max=1))


def test_speculative_rule_refuses_bad_input():
    p = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match="token=2"):
        acceptance_probability(p, p, 2)
    with pytest.raises(ValueError, match="one size"):
        acceptance_probability(p, torch.ones(3) / 3, 0)
    with pytest.raises(ValueError, match="equal"):
        residual_distribution(p, p)


# --- early exit and elastic depth -----------------------------------------------------------------------------------


def _vit(pool: str, seed: int = 0) -> ViT:
    torch.manual_seed(seed)
    return ViT(ViTConfig(image_size=8, patch_size=4, channels=1, dim=16, depth=4, heads=2, num_classes=5,
                         pool=pool)).eval()


def _images(batch: int = 12) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_depth_logits_end_at_the_model_and_truncation_matches(pool):
    model, images = _vit(pool), _images()
    with torch.no_grad():
        exits = depth_logits(model, images)
        assert exits.shape == (4, 12, 5)
        torch.testing.assert_close(exits[-1], model(images), atol=TOLERANCE, rtol=0)
        for depth in range(1, 5):
            torch.testing.assert_close(truncated_logits(model, images, depth), exits[depth - 1], atol=TOLERANCE, rtol=0)
        assert not torch.allclose(exits[0], exits[-1], atol=1e-3)  # the exits really differ


def test_truncated_logits_equal_a_shallower_copy():
    """Running the first 2 blocks is the model with its later blocks removed."""
    model, images = _vit("cls"), _images()
    shallow = _vit("cls")
    shallow.blocks = shallow.blocks[:2]
    with torch.no_grad():
        torch.testing.assert_close(truncated_logits(model, images, 2), shallow(images), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_early_exit_extremes(pool):
    model, images = _vit(pool), _images()
    with torch.no_grad():
        exits = depth_logits(model, images)
    predictions, used = early_exit(model, images, threshold=1.5)  # never confident enough: every block
    assert torch.equal(used, torch.full((12,), 4)) and torch.equal(predictions, model(images).argmax(-1))
    predictions, used = early_exit(model, images, threshold=0.0)  # always confident: one block
    assert torch.equal(used, torch.ones(12, dtype=torch.long)) and torch.equal(predictions, exits[0].argmax(-1))


def test_early_exit_uses_the_exit_at_the_depth_it_reports():
    model, images = _vit("cls", seed=3), _images(64)
    with torch.no_grad():
        exits = depth_logits(model, images)
    confidences = exits.softmax(-1).amax(-1)  # (depth, B)
    threshold = confidences[:2].median().item()  # a threshold that sends images out at several depths
    predictions, used = early_exit(model, images, threshold)
    assert len(used.unique()) >= 3, used
    assert torch.equal(used, exit_depth(confidences, threshold))
    assert torch.equal(predictions, exits[used - 1, torch.arange(64)].argmax(-1))
    assert not model.training


def test_early_exit_runs_only_the_images_still_running():
    """Real savings: each block sees only the images that have not left (counted by a forward hook)."""
    model, images = _vit("cls", seed=3), _images(64)
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    threshold = depth_logits(model, images).softmax(-1).amax(-1)[:2].median().item()
    seen.clear()
    _, used = early_exit(model, images, threshold)
    assert seen == [int((used >= depth).sum()) for depth in range(1, 1 + len(seen))]
    assert sum(seen) == int(used.sum()) < 4 * 64


def test_exit_depth():
    confidences = torch.tensor([[0.2, 0.9, 0.5], [0.7, 0.95, 0.1], [0.4, 0.3, 0.2]])
    assert torch.equal(exit_depth(confidences, 0.5), torch.tensor([2, 1, 1]))  # 0.5 reaches 0.5
    assert torch.equal(exit_depth(confidences, 0.99), torch.tensor([3, 3, 3]))
    with pytest.raises(ValueError, match="threshold"):
        exit_depth(confidences, float("nan"))


def test_every_depth_loss_is_the_mean_of_the_exits():
    logits = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    expected = torch.stack([torch.nn.functional.cross_entropy(exit, labels) for exit in logits]).mean()
    torch.testing.assert_close(every_depth_loss(logits, labels), expected)
    with pytest.raises(ValueError, match=r"labels has shape \(5,\); expected \(6,\)"):
        every_depth_loss(logits, labels[:5])


def test_elastic_depth_trains_every_exit():
    model, images = _vit("mean"), _images(32)
    labels = (images.mean(dim=(1, 2, 3)) > 0).long()  # an easy task: every exit can learn it
    with torch.no_grad():
        before = every_depth_loss(depth_logits(model, images), labels).item()
    wrapped = fit(ElasticDepth(model), images, labels, steps=30, lr=3e-3, batch=16, loss=every_depth_loss)
    assert wrapped.model is model and not model.training
    with torch.no_grad():
        after = depth_logits(model, images)
    assert before > 1.5  # about log(5): guessing
    for exit in after:  # every exit, the first included, has learned (about 0.9 each after 30 steps)
        assert torch.nn.functional.cross_entropy(exit, labels).item() < 1.2


def test_bad_arguments_are_refused():
    model, images = _vit("cls"), _images(2)
    with pytest.raises(ValueError, match="depth=5"):
        truncated_logits(model, images, 5)
    with pytest.raises(ValueError, match="threshold"):
        early_exit(model, images, "high")
    headless = ViT(ViTConfig(image_size=8, patch_size=4, channels=1, dim=16, depth=2, heads=2, num_classes=0))
    with pytest.raises(ValueError, match="without a head"):
        ElasticDepth(headless)


# --- KV cache memory ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [dict(), dict(kv_heads=2), dict(kv_heads=1), dict(kv_heads=2, kv_share_every=3)],
                         ids=["mha", "gqa", "mqa", "gqa+shared"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_nbytes_is_the_storage_it_allocates(options, dtype):
    config = GPTConfig(vocab_size=17, max_len=40, dim=32, depth=4, heads=4, **options)
    cache = KVCache(config, batch=3, max_len=40, dtype=dtype)
    tensors = [*cache.keys.values(), *cache.values.values()]
    storage = sum(t.untyped_storage().nbytes() for t in tensors)
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == len(tensors)  # no two share memory
    itemsize = torch.empty((), dtype=dtype).element_size()
    assert cache.nbytes == storage == config.kv_cache_bytes(3, 40, itemsize)
    layers = {1: 4, 3: 2}[config.kv_share_every]
    assert storage == 2 * layers * 3 * config.kv_heads * 40 * 8 * itemsize
