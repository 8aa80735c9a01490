"""Datasets (`course_lib.data.load`), the byte-level text corpus, and the resumable loader."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.data import (
    IGNORE,
    ByteTextDataset,
    EpochSampler,
    ResumableDataLoader,
    SequenceDataModule,
    available,
    corpus_text,
    decode,
    encode,
    load,
)
from course_lib.data import text as text_module

SEQUENCE_TASKS = ["associative_recall", "copy", "induction_heads", "reverse", "selective_copy", "sort"]
SMALL = {"python_text": {"block_size": 16, "max_bytes": 4000}}  # options that keep each load quick


def small_load(name: str, split: str = "train", **options):
    options = {**SMALL.get(name, {"n": 200}), **options}
    return load(name, split=split, **options)


def all_inputs(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def all_targets(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][1] for i in range(len(dataset))])


TOKEN_DATASETS = [*SEQUENCE_TASKS, "python_text"]  # the images (shapes, digits) have their own tests


def test_available_lists_every_dataset():
    assert available() == sorted([*TOKEN_DATASETS, "advection", "burgers", "co2", "codec_tokens", "digits", "elnino",
                                  "heat", "listops", "macro", "multiscale_series", "nile", "pathfinder", "photos",
                                  "shapes", "stdlib_packages", "sunspots"])


@pytest.mark.parametrize("name", TOKEN_DATASETS)
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_shapes_and_dtypes(name, split):
    """Every sample is a pair of (length,) int64 tensors; tokens lie in the vocabulary."""
    dataset = small_load(name, split)
    assert len(dataset) > 0
    inputs, targets = dataset[0]
    assert inputs.dtype == targets.dtype == torch.int64
    assert inputs.dim() == 1 and inputs.shape == targets.shape
    x, y = all_inputs(dataset), all_targets(dataset)
    assert x.min() >= 0 and x.max() < dataset.vocab_size
    scored = y != IGNORE
    assert scored.any() and y[scored].min() >= 0 and y[scored].max() < dataset.vocab_size


@pytest.mark.parametrize(("name", "n", "length"), [("copy", 50, 7), ("reverse", 30, 12), ("sort", 20, 5)])
def test_elementwise_sizes(name, n, length):
    dataset = load(name, n=n, length=length, vocab_size=6)
    assert len(dataset) == n and dataset.inputs.shape == dataset.targets.shape == (n, length)
    assert dataset.vocab_size == 6 and dataset.inputs.max() <= 5


def test_copy_targets():
    dataset = small_load("copy")
    assert torch.equal(dataset.targets, dataset.inputs)


def test_reverse_targets():
    dataset = small_load("reverse")
    for inputs, targets in zip(dataset.inputs[:50], dataset.targets[:50]):
        assert targets.tolist() == inputs.tolist()[::-1]


def test_sort_targets():
    dataset = small_load("sort")
    for inputs, targets in zip(dataset.inputs[:50], dataset.targets[:50]):
        assert targets.tolist() == sorted(inputs.tolist())


def test_selective_copy_targets():
    """Body of blanks (0) and data (>= 2), then markers (1); the marker positions emit the data in order."""
    length, n_data = 10, 4
    dataset = load("selective_copy", n=100, length=length, n_data=n_data, vocab_size=7)
    assert dataset.inputs.shape == (100, length + n_data)
    for inputs, targets in zip(dataset.inputs, dataset.targets):
        body, markers = inputs[:length].tolist(), inputs[length:].tolist()
        assert markers == [1] * n_data
        data = [token for token in body if token != 0]
        assert len(data) == n_data and all(token >= 2 for token in data)
        assert targets[:length].tolist() == [IGNORE] * length
        assert targets[length:].tolist() == data


def test_associative_recall_targets():
    """k1 v1 ... kn vn q: distinct keys, values after the keys, and the target is the value paired with q."""
    pairs, n_keys, n_values = 5, 8, 6
    dataset = load("associative_recall", n=100, pairs=pairs, n_keys=n_keys, n_values=n_values)
    assert dataset.inputs.shape == (100, 2 * pairs + 1) and dataset.vocab_size == n_keys + n_values
    for inputs, targets in zip(dataset.inputs.tolist(), dataset.targets.tolist()):
        keys, values, query = inputs[0:-1:2], inputs[1:-1:2], inputs[-1]
        assert len(set(keys)) == pairs and all(0 <= key < n_keys for key in keys)
        assert all(n_keys <= value < n_keys + n_values for value in values)
        assert targets[:-1] == [IGNORE] * (2 * pairs)
        assert targets[-1] == dict(zip(keys, values))[query]


def test_induction_heads_targets():
    """The trigger (0) occurs once in the body and again at the end; the target is what followed it."""
    dataset = load("induction_heads", n=100, length=12, vocab_size=5)
    for inputs, targets in zip(dataset.inputs.tolist(), dataset.targets.tolist()):
        assert inputs[-1] == 0 and inputs[:-1].count(0) == 1
        trigger = inputs.index(0)
        assert targets[:-1] == [IGNORE] * 11
        assert targets[-1] == inputs[trigger + 1] != 0


@pytest.mark.parametrize("name", TOKEN_DATASETS)
def test_same_seed_same_data_and_different_seed_different_data(name):
    """Data are a pure function of (name, split, options, seed)."""
    first, second = small_load(name), small_load(name)
    assert torch.equal(all_inputs(first), all_inputs(second))
    assert torch.equal(all_targets(first), all_targets(second))
    if name == "python_text":
        return  # fixed text: no seed
    other = small_load(name, seed=1)
    assert not torch.equal(all_inputs(first), all_inputs(other))


@pytest.mark.parametrize("name", SEQUENCE_TASKS)
def test_splits_share_no_sequence(name):
    """Held-out means unseen: no input sequence is in two splits."""
    rows = {split: {tuple(row) for row in small_load(name, split, n=300).inputs.tolist()}
            for split in ("train", "val", "test")}
    assert not rows["train"] & rows["val"]
    assert not rows["train"] & rows["test"]
    assert not rows["val"] & rows["test"]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("copy", {"length": 3, "vocab_size": 4}),
        ("sort", {"length": 3, "vocab_size": 4}),
        ("induction_heads", {"length": 5, "vocab_size": 4}),
        ("associative_recall", {"pairs": 2, "n_keys": 3, "n_values": 2}),
    ],
)
def test_splits_share_no_sequence_in_a_tiny_space(name, options):
    """With only a few dozen possible sequences every split repeats itself, yet never borrows from another."""
    rows = {split: {tuple(row) for row in load(name, split=split, n=100, **options).inputs.tolist()}
            for split in ("train", "val", "test")}
    assert all(len(found) < 100 for found in rows.values())  # the space really is small
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"name='mnist'.*associative_recall, burgers, co2, codec_tokens, copy.*sort"):
        load("mnist")
    with pytest.raises(ValueError, match=r"split='validation'.*'train', 'val', 'test'"):
        load("reverse", split="validation")


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("reverse", {"n": 0}, r"n=0 must be a positive int"),
        ("copy", {"length": -1}, r"length=-1"),
        ("sort", {"vocab_size": 1}, r"vocab_size=1"),
        ("reverse", {"n": 2.5}, r"n=2.5"),
        ("selective_copy", {"n_data": 9, "length": 8}, r"n_data=9 cannot exceed length=8"),
        ("selective_copy", {"vocab_size": 2}, r"vocab_size=2"),
        ("associative_recall", {"pairs": 9, "n_keys": 8}, r"pairs=9 cannot exceed n_keys=8"),
        ("associative_recall", {"n_values": 0}, r"n_values=0"),
        ("induction_heads", {"length": 3}, r"length=3"),
        ("induction_heads", {"vocab_size": 2}, r"vocab_size=2"),
        ("python_text", {"source": "web"}, r"source='web'"),
        ("python_text", {"block_size": 0}, r"block_size=0"),
        ("python_text", {"block_size": 16, "max_bytes": 10}, r"max_bytes=10"),
    ],
)
def test_bad_options_name_the_argument(name, options, message):
    with pytest.raises(ValueError, match=message):
        load(name, **options)


def test_unknown_option_is_an_error_naming_it_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"no option lenght; its options are n, length, vocab_size, seed"):
        load("reverse", lenght=5)


def test_too_small_task_says_so():
    """With two possible sequences, neither hashes into val: the loader gives up with a clear error."""
    with pytest.raises(ValueError, match=r"could not draw n=5"):
        load("copy", split="val", n=5, length=1, vocab_size=2)


# --- text ----------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(text=st.text())
def test_encode_decode_round_trip(text):
    tokens = encode(text)
    assert tokens.dtype == torch.uint8 and tokens.numel() == len(text.encode("utf-8"))
    assert decode(tokens) == text


def test_encode_is_utf8_bytes():
    assert encode("aé").tolist() == [97, 0xC3, 0xA9]
    assert decode(torch.tensor([104, 105])) == "hi"
    assert encode("").shape == (0,) and decode(encode("")) == ""


def test_corpus_splits_are_deterministic_and_partition_the_documents():
    """Each document is in exactly one split (lengths add up), and every call gives the same text."""
    texts = {split: corpus_text("docs", split) for split in ("train", "val", "test")}
    assert texts["val"] == corpus_text("docs", "val")
    documents = text_module._documentation_topics()
    separators = len(text_module._SEPARATOR) * (len(documents) - 3)
    assert sum(map(len, texts.values())) == sum(map(len, documents.values())) + separators
    total = sum(map(len, texts.values()))
    for split in ("val", "test"):  # roughly 80/10/10
        assert 0.04 < len(texts[split]) / total < 0.2, split


def test_corpus_split_assigns_whole_documents(monkeypatch):
    """With labelled stand-in documents: every document lands in one split, none in two, none lost."""
    documents = {f"topic{i}/0000": f"<doc {i}>" for i in range(60)}
    monkeypatch.setattr(text_module, "_documentation_topics", lambda: documents)
    found = {}
    for split in ("train", "val", "test"):
        text = corpus_text("docs", split)
        found[split] = {int(piece[5:-1]) for piece in text.split(text_module._SEPARATOR) if piece}
    assert not found["train"] & found["val"] and not found["train"] & found["test"] and not found["val"] & found["test"]
    assert found["train"] | found["val"] | found["test"] == set(range(60))
    assert found["val"] and found["test"]


def test_corpus_rejects_unknown_source():
    with pytest.raises(ValueError, match=r"source='web'"):
        corpus_text("web")


@pytest.mark.parametrize(("block_size", "stride"), [(3, None), (3, 2), (4, 1), (9, None)])
def test_byte_windows_have_targets_shifted_by_one(block_size, stride):
    """inputs = data[s : s+B], targets = data[s+1 : s+B+1], for every window that fits."""
    data = encode("abcdefghij")
    dataset = ByteTextDataset(data, block_size, stride)
    step = stride or block_size
    starts = list(range(0, data.numel() - block_size, step))
    assert len(dataset) == len(starts)
    for index, start in enumerate(starts):
        inputs, targets = dataset[index]
        assert inputs.dtype == torch.int64
        assert inputs.tolist() == data[start : start + block_size].tolist()
        assert targets.tolist() == data[start + 1 : start + block_size + 1].tolist()


def test_byte_dataset_validates():
    with pytest.raises(ValueError, match=r"block_size=10 needs at least 11"):
        ByteTextDataset(encode("abcdefghij"), 10)
    with pytest.raises(ValueError, match=r"stride=0"):
        ByteTextDataset(encode("abcdefghij"), 2, 0)


def test_python_text_windows_come_from_the_split():
    dataset = load("python_text", split="val", block_size=16, max_bytes=2000)
    text = encode(corpus_text("docs", "val"))[:2000]
    inputs, targets = dataset[3]
    assert inputs.tolist() == text[48:64].tolist() and targets.tolist() == text[49:65].tolist()


# --- loaders -------------------------------------------------------------------------------------


def test_epoch_sampler_orders():
    """A permutation per epoch: replayable from (seed, epoch), different across epochs and seeds."""

    def order(seed, epoch):
        sampler = EpochSampler(20, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert sorted(order(0, 0)) == list(range(20))
    assert order(0, 0) == order(0, 0) and order(3, 5) == order(3, 5)
    assert order(0, 0) != order(0, 1) != order(0, 2)
    assert order(0, 0) != order(1, 0)
    assert list(EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def _batches(loader, count=None):
    """The inputs of the first `count` batches (all when None), drawing no batch beyond them."""
    return [inputs for inputs, _ in itertools.islice(loader, count)]


def test_resumable_loader_resumes_mid_epoch():
    """After load_state_dict, the loader yields exactly the batches the interrupted epoch had left."""
    dataset = load("reverse", n=50, length=4)
    full = _batches(ResumableDataLoader(dataset, 8, seed=3))
    assert len(full) == 7

    interrupted = ResumableDataLoader(dataset, 8, seed=3)
    seen = _batches(interrupted, count=3)
    state = interrupted.state_dict()
    assert state == {"epoch": 0, "batches_done": 3}
    assert all(torch.equal(a, b) for a, b in zip(seen, full[:3]))

    resumed = ResumableDataLoader(dataset, 8, seed=3)
    resumed.load_state_dict(state)
    rest = _batches(resumed)
    assert len(rest) == 4 and all(torch.equal(a, b) for a, b in zip(rest, full[3:]))
    assert resumed.state_dict()["batches_done"] == 7
    # the next pass is a whole epoch again
    assert len(_batches(resumed)) == 7


def test_resumable_loader_resumes_in_a_later_epoch():
    """The saved epoch is restored too, so the resumed order is that epoch's shuffle."""
    dataset = load("copy", n=40, length=3)
    reference = ResumableDataLoader(dataset, 5, seed=0)
    reference.sampler.set_epoch(2)
    full = _batches(reference)
    first_epoch = _batches(ResumableDataLoader(dataset, 5, seed=0))
    assert not torch.equal(torch.cat(full), torch.cat(first_epoch))

    resumed = ResumableDataLoader(dataset, 5, seed=0)
    resumed.load_state_dict({"epoch": 2, "batches_done": 5})
    rest = _batches(resumed)
    assert len(rest) == 3 and all(torch.equal(a, b) for a, b in zip(rest, full[5:]))


def test_resumable_loader_leaves_global_rng_alone():
    """Iterating draws from the loader's own generator, not torch's global one."""
    loader = ResumableDataLoader(load("copy", n=20, length=3), 4)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    _batches(loader)
    assert torch.equal(torch.rand(3), expected)


def test_resumable_loader_validates():
    with pytest.raises(ValueError, match=r"batch_size=0"):
        ResumableDataLoader(load("copy", n=10), 0)


def test_sequence_datamodule_sizes_and_early_errors():
    module = SequenceDataModule("sort", n_train=40, n_val=12, batch_size=8, length=5)
    assert len(module.dataset("train")) == 40 and len(module.dataset("val")) == 12
    assert len(module.train_dataloader()) == 5 and len(module.val_dataloader()) == 2
    with pytest.raises(ValueError, match=r"name='sorting'"):
        SequenceDataModule("sorting")
    with pytest.raises(ValueError, match=r"length=0"):
        SequenceDataModule("sort", length=0)
