"""Codec-like token streams (`load("codec_tokens")`): melodies, log spectra, residual vector quantisation.

The quantiser is checked against naive loops (nearest codeword by brute force, decoding by summing
codewords by hand), the audio against the notes it claims to play, and the token layout position by
position. Everything stays small: one fitted quantiser, shared by every test that loads the dataset.
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from course_lib.data import CodecTokenDataset, ResidualQuantizer, available, codec, load

torch.set_num_threads(1)

LEVELS, CODEBOOK = 4, 64


@pytest.fixture(scope="module")
def val() -> CodecTokenDataset:
    return load("codec_tokens", split="val", n=60, seed=0)


def brute_force_encode(x: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, levels): for each point, try every codeword of each level on the residual."""
    codes = []
    for point in x.double():
        residual, row = point.clone(), []
        for codebook in codebooks.double():
            best, best_distance = 0, float("inf")
            for j, word in enumerate(codebook):
                distance = float(((residual - word) ** 2).sum())
                if distance < best_distance:
                    best, best_distance = j, distance
            row.append(best)
            residual = residual - codebook[best]
        codes.append(row)
    return torch.tensor(codes, dtype=torch.long)


def runs(notes: torch.Tensor) -> list[int]:
    """Lengths of the runs of equal values in a 1-D tensor."""
    lengths = [1]
    for a, b in zip(notes[:-1].tolist(), notes[1:].tolist()):
        if a == b:
            lengths[-1] += 1
        else:
            lengths.append(1)
    return lengths


# --- Audio and features --------------------------------------------------------------------------

def test_same_seed_split_index_gives_the_same_clip_and_splits_differ():
    audio, notes = codec.render_melody(7, split="val", seed=3)
    again, notes_again = codec.render_melody(7, split="val", seed=3)
    assert audio.shape == (64 * 128,) and audio.dtype == torch.float32 and notes.shape == (64,)
    assert torch.equal(audio, again) and torch.equal(notes, notes_again)
    for other in [codec.render_melody(7, split="train", seed=3)[0], codec.render_melody(7, split="test", seed=3)[0],
                  codec.render_melody(7, split="val", seed=4)[0], codec.render_melody(8, split="val", seed=3)[0]]:
        assert (audio - other).abs().max() > 0.1
    batch, batch_notes = codec.render_melodies([8, 7], split="val", seed=3)  # batching changes nothing
    assert torch.equal(batch[1], audio) and torch.equal(batch_notes[1], notes)


def test_melodies_follow_the_stated_rules():
    """Notes last 2..8 frames (the last may be cut), never repeat, and each frame's strongest
    frequency is a harmonic of its note (within one FFT bin, 62.5 Hz)."""
    audio, notes = codec.render_melodies(range(20), split="test", frames=64)
    assert audio.abs().max() < 1.0
    for row in notes:
        lengths = runs(row)
        assert all(2 <= n <= 8 for n in lengths[:-1]) and 1 <= lengths[-1] <= 8
        events = torch.unique_consecutive(row)
        assert (events[1:] - events[:-1]).abs().le(3).all()
    frames = rearrange(audio, "n (f s) -> n f s", s=128) * torch.hann_window(128, periodic=True)
    peak_hz = torch.fft.rfft(frames).abs().argmax(-1) * codec.SAMPLE_RATE / 128  # (n, f)
    fundamental = torch.tensor(codec.SCALE_HZ)[notes]
    harmonics = fundamental[..., None] * torch.arange(1, codec.HARMONICS + 1)
    off = (harmonics - peak_hz[..., None]).abs().min(-1).values
    assert (off <= codec.SAMPLE_RATE / 128).float().mean() > 0.95


def test_features_are_phase_invariant_log_spectra():
    t = torch.arange(4 * 128) / codec.SAMPLE_RATE
    tone = torch.sin(2 * torch.pi * 1000 * t)
    shifted = torch.sin(2 * torch.pi * 1000 * t + 1.3)
    a, b = codec.frame_features(tone), codec.frame_features(shifted)
    assert a.shape == (4, 32)
    torch.testing.assert_close(a, b, atol=0.05, rtol=0)  # the phase barely moves a Hann-windowed spectrum
    assert a[0].argmax() == 1000 // 125  # 32 bands of 125 Hz: 1000 Hz falls in band 8
    # Pooling is a mean of magnitudes over 2 FFT bins, then log(. + 1e-3): recompute one frame naively.
    window = torch.hann_window(128, periodic=True, dtype=torch.float64)
    spectrum = torch.fft.rfft(tone[:128].double() * window).abs()[:64] / window.sum()
    naive = torch.log(spectrum.reshape(32, 2).mean(1) + 1e-3).float()
    torch.testing.assert_close(a[0], naive, atol=1e-6, rtol=0)


# --- The quantiser ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "dim", "levels", "codebook_size"), [(150, 2, 1, 5), (200, 5, 3, 8), (120, 16, 4, 16)])
def test_encode_is_the_nearest_codeword_level_by_level(n, dim, levels, codebook_size):
    generator = torch.Generator().manual_seed(n + dim)
    points = torch.randn(n, dim, generator=generator) * torch.linspace(0.2, 2.0, dim)
    quantizer = ResidualQuantizer().fit(points, levels=levels, codebook_size=codebook_size, iterations=10, seed=1)
    assert quantizer.codebooks.shape == (levels, codebook_size, dim)
    fresh = torch.randn(30, dim, generator=generator)  # points the codebooks were not fitted on
    for x in (points[:30], fresh):
        codes = quantizer.encode(x)
        assert codes.dtype == torch.int64 and codes.shape == (30, levels)
        assert torch.equal(codes, brute_force_encode(x, quantizer.codebooks))
        by_hand = torch.zeros(30, dim)
        for level in range(levels):
            by_hand = by_hand + quantizer.codebooks[level][codes[:, level]]
        torch.testing.assert_close(quantizer.decode(codes), by_hand, atol=1e-6, rtol=0)
    # Leading dimensions pass through.
    assert quantizer.encode(fresh.reshape(3, 10, dim)).shape == (3, 10, levels)


def test_encode_matches_brute_force_on_the_dataset(val):
    features = rearrange(val.features[:3], "n f b -> (n f) b")[::4]  # 48 frames
    assert torch.equal(val.quantizer.encode(features), brute_force_encode(features, val.quantizer.codebooks))


def test_distortion_falls_with_levels_and_beats_the_mean(val):
    features = rearrange(val.features, "n f b -> (n f) b")  # held-out: the quantiser saw train clips
    distortion = val.quantizer.distortion_by_level(features)
    assert distortion.shape == (LEVELS,)
    assert (distortion[1:] <= distortion[:-1]).all(), distortion
    trivial = ((features - features.mean(0)) ** 2).mean()
    assert distortion[0] < 0.1 * trivial, (distortion, trivial)
    codes = val.quantizer.encode(features)  # distortion after l levels, recomputed from partial sums
    partial = torch.zeros_like(features)
    for level in range(LEVELS):
        partial = partial + val.quantizer.codebooks[level][codes[:, level]]
        torch.testing.assert_close(((features - partial) ** 2).mean().double(), distortion[level], rtol=1e-4, atol=0)


def test_kmeans_and_fit_are_deterministic_and_use_the_seed():
    points = torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
    a = codec.kmeans(points, 10, seed=5)
    assert torch.equal(a, codec.kmeans(points, 10, seed=5))
    assert not torch.equal(a, codec.kmeans(points, 10, seed=6))
    first = ResidualQuantizer().fit(points, levels=3, codebook_size=10, seed=2).codebooks
    assert torch.equal(first, ResidualQuantizer().fit(points, levels=3, codebook_size=10, seed=2).codebooks)
    # k-means does its job: every centroid is the mean of the points nearest to it.
    nearest = torch.cdist(points, a).argmin(1)
    means = torch.stack([points[nearest == j].mean(0) for j in range(10)])
    torch.testing.assert_close(a, means, atol=1e-5, rtol=0)


def test_the_quantiser_is_fitted_on_train_clips_only(val):
    """The same codebooks whatever the split or n; and they are a fit on the first FIT_CLIPS train clips."""
    other = load("codec_tokens", split="train", n=3, frames=16)
    assert torch.equal(other.quantizer.codebooks, val.quantizer.codebooks)
    audio, _ = codec.render_melodies(range(codec.FIT_CLIPS), split="train", frames=codec.FIT_FRAMES)
    features = rearrange(codec.frame_features(audio), "n f b -> (n f) b")
    refit = ResidualQuantizer().fit(features, levels=LEVELS, codebook_size=CODEBOOK, seed=0)
    assert torch.equal(refit.codebooks, val.quantizer.codebooks)


# --- Tokens and the dataset ------------------------------------------------------------------------

def test_token_layout(val):
    assert val.vocab_size == LEVELS * CODEBOOK == 256 and val.levels == LEVELS
    tokens = torch.stack([val[i] for i in range(len(val))])
    assert tokens.dtype == torch.int64 and tokens.shape == (60, 64 * LEVELS) == (len(val), val.seq_len)
    assert tokens.min() >= 0 and tokens.max() < val.vocab_size
    assert torch.equal(tokens // CODEBOOK, torch.arange(LEVELS).repeat(64).expand_as(tokens))
    codes = val.quantizer.encode(val.features)  # (n, frames, levels)
    assert torch.equal(tokens[:, 4 * 5 + 2], 2 * CODEBOOK + codes[:, 5, 2])  # frame 5, level 2
    assert torch.equal(val.codes, codes)
    torch.testing.assert_close(val.decode(val[0]), val.quantizer.decode(codes[0]))
    example = codec.codes_to_tokens(torch.tensor([[1, 2], [3, 4]]), codebook_size=10)
    assert example.tolist() == [1, 12, 3, 14]
    assert codec.tokens_to_codes(example, levels=2, codebook_size=10).tolist() == [[1, 2], [3, 4]]


def test_sample_does_not_depend_on_n_and_splits_differ(val):
    few = load("codec_tokens", split="val", n=4, seed=0)
    assert torch.equal(few.tokens, val.tokens[:4]) and torch.equal(few.notes, val.notes[:4])
    test = load("codec_tokens", split="test", n=4, seed=0)
    assert (test.tokens != few.tokens).float().mean() > 0.5
    audio, _ = codec.render_melody(2, split="val")
    assert torch.equal(few.audio(2), audio)


def test_a_held_note_repeats_its_level0_code(val):
    """Consecutive frames of one note mostly share the level-0 code; random pairs of frames rarely do."""
    level0 = val.codes[..., 0]  # (n, frames)
    held = val.notes[:, 1:] == val.notes[:, :-1]
    same = level0[:, 1:] == level0[:, :-1]
    held_rate = same[held].float().mean()
    flat = level0.flatten()
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randint(len(flat), (5000,), generator=generator), torch.randint(len(flat), (5000,), generator=generator)
    random_rate = (flat[a] == flat[b]).float().mean()
    assert held_rate > 0.5 and held_rate > 5 * random_rate, (held_rate, random_rate)
    assert same[~held].float().mean() < 0.1  # a new note changes the code


# --- Arguments -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "name"), [
    ({"n": 0}, "n"), ({"frames": 0}, "frames"), ({"levels": 0}, "levels"), ({"levels": True}, "levels"),
    ({"codebook_size": 1}, "codebook_size"), ({"codebook_size": 10**6}, "codebook_size"),
    ({"frame_size": 129}, "frame_size"), ({"frame_size": 16}, "frame_size"), ({"bins": 30}, "bins"),
    ({"bins": 0}, "bins"), ({"seed": -1}, "seed"), ({"split": "dev"}, "split"), ({"n": 2.5}, "n"),
])
def test_load_rejects_bad_arguments_before_any_work(options, name):
    before = codec._fitted_codebooks.cache_info().misses
    options = {"n": 2, "seed": 11, **options}  # seed 11 is fitted nowhere: a fit would show as a cache miss
    with pytest.raises(ValueError, match=rf"{name}="):
        load("codec_tokens", **options)
    assert codec._fitted_codebooks.cache_info().misses == before


def test_load_rejects_unknown_options_and_is_registered():
    assert "codec_tokens" in available()
    with pytest.raises(ValueError, match="sample_rate"):
        load("codec_tokens", n=2, sample_rate=16000)


QUANTIZER = ResidualQuantizer(torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize(("call", "name"), [
    (lambda: ResidualQuantizer().fit(torch.randn(50)), "features"),
    (lambda: ResidualQuantizer().fit(torch.randn(50, 3), codebook_size=51), "codebook_size"),
    (lambda: ResidualQuantizer().fit(torch.randn(50, 3), iterations=0), "iterations"),
    (lambda: ResidualQuantizer().fit(torch.randn(50, 3), levels=0), "levels"),
    (lambda: ResidualQuantizer().fit(torch.full((50, 3), float("nan"))), "features"),
    (lambda: ResidualQuantizer(torch.randn(4, 3)), "codebooks"),
    (lambda: QUANTIZER.encode(torch.randn(5, 4)), "features"),
    (lambda: QUANTIZER.decode(torch.tensor([[0, 4]])), "codes"),
    (lambda: QUANTIZER.decode(torch.zeros(5, 3, dtype=torch.long)), "codes"),
    (lambda: codec.kmeans(torch.randn(5, 2), 6), "k"),
    (lambda: codec.render_melody(-1), "index"),
    (lambda: codec.render_melodies([0, -2]), "indices"),
    (lambda: codec.render_melody(0, frames=0), "frames"),
    (lambda: codec.frame_features(torch.randn(200)), "audio"),
    (lambda: codec.tokens_to_codes(torch.tensor([1, 2]), levels=2, codebook_size=10), "tokens"),
    (lambda: codec.tokens_to_codes(torch.tensor([1, 2, 3]), levels=2, codebook_size=10), "tokens"),
])
def test_functions_reject_bad_arguments(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_unfitted_quantizer_says_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        ResidualQuantizer().encode(torch.randn(3, 2))
