"""Codec-like token streams: procedural melodies, quantised frame by frame with residual vector quantisation.

Neural audio codecs (SoundStream, EnCodec) turn each short frame of audio into a stack of `levels`
codes by residual vector quantisation (RVQ): level 0 picks the nearest of `codebook_size` codewords,
level 1 quantises what level 0 left over, and so on, each level refining the one before. UniAudio
models such streams with two transformers: a global one across frames and a local one across the
codebooks of each frame. This module builds a small, offline stand-in for that data:

1. `render_melody`: a clip of `frames` frames of `frame_size` samples at SAMPLE_RATE = 8000 Hz. A
   melody steps through a major pentatonic scale over two octaves (220-880 Hz); each note lasts a
   random whole number of frames (2-8), has a few harmonics with a per-clip timbre, a short attack
   and an exponential decay, and a little white noise is added. Notes start on frame boundaries, so
   every frame holds one note, and `notes` says which (an index into SCALE_HZ).
2. `frame_features`: the log-magnitude spectrum of each Hann-windowed frame, pooled into `bins`
   bands. It ignores phase, so a held note gives similar vectors frame after frame.
3. `ResidualQuantizer`: k-means level by level on the residuals; `encode` gives (N, levels) codes,
   `decode` sums the chosen codewords back into features.
4. `load("codec_tokens", ...)`: the quantiser is fitted once on FIT_CLIPS clips of FIT_FRAMES frames
   of the *train* split (whatever `n`, `frames` or split is asked for; computed once per setting,
   `fitted_quantizer` returns it) and used to encode every split.

Token layout. A sample is a 1-D int64 tensor of `frames * levels` tokens, frame-major, with

    token = level * codebook_size + code        (vocabulary: levels * codebook_size ids)

so with levels=4 and codebook_size=64 a clip reads

    position:  0       1        2        3        4       5        ...
    token:     c[0,0]  64+c[0,1] 128+c[0,2] 192+c[0,3] c[1,0]  64+c[1,1] ...

where c[t, l] is the level-l code of frame t. One vocabulary serves a flat transformer, token //
codebook_size is the level (position within the frame) and token % codebook_size the code; a
multi-scale model regroups the stream as (frames, levels) with `tokens_to_codes`.

Sample `i` of `split` is a pure function of (seed, split, i): its random numbers come from a
generator seeded by that triple, so it does not depend on `n`, and the splits use different streams.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from einops import rearrange, reduce
from torch import Tensor
from torch.utils.data import Dataset

from course_lib.data.registry import SPLITS, check_int, check_split, register

SAMPLE_RATE = 8000  # Hz
SCALE_HZ = tuple(220.0 * 2 ** (s / 12) for s in (0, 2, 4, 7, 9, 12, 14, 16, 19, 21, 24))  # A3..A5 pentatonic
HARMONICS = 4
NOTE_FRAMES = (2, 8)  # shortest and longest note, in frames
FIT_CLIPS, FIT_FRAMES = 200, 64  # the train clips every quantiser is fitted on
_SALT = 0xC0DE_C5EC  # separates these random streams from any other dataset's
_ATTACK_S = 0.005  # seconds of linear fade-in at each note
_NOISE = 0.002  # standard deviation of the added white noise
_FLOOR = 1e-3  # added to magnitudes before the log, about the noise level
_CHUNK_SAMPLES = 2**19  # audio samples rendered at once, to bound memory


def _check_frame_size(frame_size: int, bins: int | None = None) -> None:
    check_int("frame_size", frame_size, 32)
    if frame_size % 2:
        raise ValueError(f"frame_size={frame_size} must be even")
    if bins is not None:
        check_int("bins", bins, 1)
        if (frame_size // 2) % bins:
            raise ValueError(f"bins={bins} must divide frame_size // 2 = {frame_size // 2}")


# --- Audio --------------------------------------------------------------------------------------

def _draw_melody(rng: np.random.Generator, frames: int, frame_size: int) -> dict[str, np.ndarray]:
    """One clip's random choices: timbre, decay, noise, and per frame the note, the frame's index
    within the note, the note's velocity and its harmonics' phases."""
    harmonic = np.arange(1, HARMONICS + 1)
    weights = harmonic ** -rng.uniform(0.5, 2.0) * rng.uniform(0.5, 1.0, HARMONICS)  # a tilt, jittered
    decay = rng.uniform(1.0, 6.0)  # per second
    # A walk through the scale, never repeating a note, up to 3 steps at a time.
    notes, durations = [int(rng.integers(len(SCALE_HZ)))], []
    while True:
        durations.append(int(rng.integers(NOTE_FRAMES[0], NOTE_FRAMES[1] + 1)))
        if sum(durations) >= frames:
            break
        near = [p for p in range(len(SCALE_HZ)) if 0 < abs(p - notes[-1]) <= 3]
        notes.append(int(rng.choice(near)))
    velocity = rng.uniform(0.6, 1.0, len(notes))
    phases = rng.uniform(0, 2 * np.pi, (len(notes), HARMONICS))
    noise = rng.standard_normal((frames, frame_size))
    event = np.repeat(np.arange(len(notes)), durations)[:frames]  # (frames,) which note event
    starts = np.cumsum([0, *durations[:-1]])
    return {"weights": weights / weights.sum(), "decay": np.full(frames, decay), "note": np.asarray(notes)[event],
            "offset": np.arange(frames) - starts[event], "velocity": velocity[event], "phases": phases[event], "noise": noise}


def render_melodies(indices, *, split: str = "train", seed: int = 0, frames: int = 64,
                    frame_size: int = 128) -> tuple[Tensor, Tensor]:
    """Clips `indices` of `split`: audio (N, frames * frame_size) float32 and notes (N, frames) int64
    (indices into SCALE_HZ); the batched core of `render_melody`."""
    asked = torch.as_tensor(indices).reshape(-1)
    if len(asked) == 0 or asked.is_floating_point() or asked.dtype == torch.bool or (asked < 0).any():
        raise ValueError(f"indices={indices!r} must be a non-empty collection of ints of at least 0")
    indices = asked.tolist()
    check_split(split)
    check_int("seed", seed, 0)
    check_int("frames", frames, 1)
    _check_frame_size(frame_size)
    split_id = SPLITS.index(split)
    draws = [_draw_melody(np.random.default_rng([_SALT, seed, split_id, i]), frames, frame_size) for i in indices]
    get = lambda key: torch.from_numpy(np.stack([d[key] for d in draws]))  # noqa: E731
    note = get("note")  # (N, F)
    pitch = torch.tensor(SCALE_HZ, dtype=torch.float64)[note]  # (N, F) Hz
    harmonic = torch.arange(1, HARMONICS + 1, dtype=torch.float64)
    # Seconds since the note began, for every sample: (N, F, S). At most NOTE_FRAMES[1] frames, so
    # float32 phases stay accurate.
    t = (get("offset")[..., None] * frame_size + torch.arange(frame_size)) / SAMPLE_RATE
    cycles = (pitch[..., None] * harmonic).float()  # (N, F, H) Hz of each harmonic
    waves = torch.sin(2 * torch.pi * cycles[:, :, None, :] * t.float()[..., None]
                      + get("phases").float()[:, :, None, :])  # (N, F, S, H)
    gains = get("weights")[:, None, :] * (pitch[..., None] * harmonic < SAMPLE_RATE / 2)  # (N, F, H): no aliasing
    tone = (waves * gains.float()[:, :, None, :]).sum(-1)  # (N, F, S)
    envelope = (t / _ATTACK_S).clamp(max=1.0) * torch.exp(-get("decay")[..., None] * t) * get("velocity")[..., None]
    audio = 0.8 * envelope.float() * tone + _NOISE * get("noise").float()  # (N, F, S)
    return rearrange(audio, "n f s -> n (f s)"), note.long()


def render_melody(index: int, *, split: str = "train", seed: int = 0, frames: int = 64,
                  frame_size: int = 128) -> tuple[Tensor, Tensor]:
    """Clip `index` of `split`: audio (frames * frame_size,) float32 in about [-1, 1] and the note of
    each frame (frames,) int64, an index into SCALE_HZ."""
    check_int("index", index, 0)
    audio, notes = render_melodies([index], split=split, seed=seed, frames=frames, frame_size=frame_size)
    return audio[0], notes[0]


def frame_features(audio: Tensor, *, frame_size: int = 128, bins: int = 32) -> Tensor:
    """Audio (..., frames * frame_size) -> log-magnitude spectra (..., frames, bins), one per frame.

    Each frame is Hann-windowed and Fourier transformed; the frame_size // 2 bins below Nyquist are
    pooled into `bins` bands of equal width (mean magnitude), then log(magnitude + 1e-3) is taken.
    """
    _check_frame_size(frame_size, bins)
    if not isinstance(audio, Tensor) or audio.dim() < 1 or audio.shape[-1] == 0 or audio.shape[-1] % frame_size:
        raise ValueError(f"audio has shape {tuple(audio.shape)}; expected (..., samples) with samples a "
                         f"positive multiple of frame_size={frame_size}")
    window = torch.hann_window(frame_size, periodic=True, dtype=torch.float64)
    framed = rearrange(audio.double(), "... (f s) -> ... f s", s=frame_size)
    spectrum = torch.fft.rfft(framed * window, dim=-1).abs()[..., : frame_size // 2] / window.sum()
    pooled = reduce(spectrum, "... f (b k) -> ... f b", "mean", b=bins)
    return torch.log(pooled + _FLOOR).float()


def _clip_features(indices: range, split: str, seed: int, frames: int, frame_size: int, bins: int
                   ) -> tuple[Tensor, Tensor]:
    """Features (N, frames, bins) and notes (N, frames) of clips `indices`, rendered a chunk at a time."""
    chunk = max(1, _CHUNK_SAMPLES // (frames * frame_size))
    features, notes = [], []
    for start in range(indices.start, indices.stop, chunk):
        audio, note = render_melodies(range(start, min(start + chunk, indices.stop)), split=split, seed=seed,
                                      frames=frames, frame_size=frame_size)
        features.append(frame_features(audio, frame_size=frame_size, bins=bins))
        notes.append(note)
    return torch.cat(features), torch.cat(notes)


# --- Residual vector quantisation ------------------------------------------------------------------

def _scores(points: Tensor, centroids: Tensor) -> Tensor:
    """(N, D), (K, D) -> (N, K) squared distances less ||point||², which does not change the argmin."""
    return (centroids**2).sum(1) - 2 * points @ centroids.T


def _nearest(points: Tensor, centroids: Tensor) -> Tensor:
    """(N, D), (K, D) -> (N,) index of the nearest centroid, computed in float64 (the first one on a tie)."""
    return _scores(points.double(), centroids.double()).argmin(dim=1)


def kmeans(points: Tensor, k: int, *, iterations: int = 20, seed: int = 0) -> Tensor:
    """Lloyd's k-means with k-means++ initialisation from a seeded generator: (N, D) -> (k, D) centroids.

    A cluster that empties takes the point farthest from its centroid. Stops early once no point moves.
    """
    check_int("k", k, 1)
    _check_points(points, k, "points", "k")
    check_int("iterations", iterations, 1)
    check_int("seed", seed, 0)
    generator = torch.Generator().manual_seed(seed)
    x = points.double()
    first = int(torch.randint(len(x), (1,), generator=generator))
    centroids = [x[first]]
    closest = ((x - x[first]) ** 2).sum(1)  # (N,) squared distance to the nearest chosen centroid
    for _ in range(1, k):  # k-means++: the next centroid is drawn with probability ~ squared distance
        if closest.sum() > 0:
            pick = int(torch.multinomial(closest, 1, generator=generator))
        else:  # every point already sits on a centroid
            pick = int(torch.randint(len(x), (1,), generator=generator))
        centroids.append(x[pick])
        closest = torch.minimum(closest, ((x - x[pick]) ** 2).sum(1))
    c = torch.stack(centroids)  # (k, D)
    x32, assign = x.float(), None  # assignments in float32 (twice as fast), means in float64
    for _ in range(iterations):
        new_assign = _scores(x32, c.float()).argmin(dim=1)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        own = ((x - c[assign]) ** 2).sum(1)  # (N,) distance to the old centroid, to refill empty clusters
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            c[empty] = x[own.topk(len(empty)).indices]
    return c.float()


def _check_points(points: Tensor, rows: int, name: str = "features", rows_name: str = "codebook_size") -> None:
    """ValueError unless `points` is a finite float (N, dim) tensor with N >= rows."""
    if not isinstance(points, Tensor) or points.dim() != 2 or not points.is_floating_point():
        raise ValueError(f"{name} has shape {tuple(getattr(points, 'shape', ()))}; expected a float (N, dim) tensor")
    if len(points) < rows:
        raise ValueError(f"{rows_name}={rows} must be at most the number of rows of {name}, N={len(points)}")
    if not torch.isfinite(points).all():
        raise ValueError(f"{name} contains NaN or infinite values")


class ResidualQuantizer:
    """Residual vector quantisation: `levels` codebooks of `codebook_size` codewords, each one fitted by
    k-means to what the levels before it left over. `codebooks` is (levels, codebook_size, dim)."""

    def __init__(self, codebooks: Tensor | None = None) -> None:
        if codebooks is not None and (not isinstance(codebooks, Tensor) or codebooks.dim() != 3
                                      or not codebooks.is_floating_point() or 0 in codebooks.shape):
            raise ValueError(f"codebooks has shape {tuple(getattr(codebooks, 'shape', ()))}; "
                             "expected a float (levels, codebook_size, dim) tensor")
        self.codebooks = None if codebooks is None else codebooks.float()

    @property
    def levels(self) -> int:
        return self._fitted().shape[0]

    @property
    def codebook_size(self) -> int:
        return self._fitted().shape[1]

    @property
    def dim(self) -> int:
        return self._fitted().shape[2]

    def _fitted(self) -> Tensor:
        if self.codebooks is None:
            raise RuntimeError("this ResidualQuantizer is not fitted yet; call fit(features) first")
        return self.codebooks

    def fit(self, features: Tensor, levels: int = 4, codebook_size: int = 64, iterations: int = 20,
            seed: int = 0) -> ResidualQuantizer:
        """Fit the codebooks on (N, dim) features, level by level (level l uses seed + l); returns self."""
        check_int("levels", levels, 1)
        check_int("codebook_size", codebook_size, 1)
        check_int("iterations", iterations, 1)
        check_int("seed", seed, 0)
        _check_points(features, codebook_size)
        residual = features.double()
        codebooks = []
        for level in range(levels):
            codebook = kmeans(residual, codebook_size, iterations=iterations, seed=seed + level)
            codebooks.append(codebook)
            residual = residual - codebook.double()[_nearest(residual, codebook)]  # as `encode` does
        self.codebooks = torch.stack(codebooks)
        return self

    def _check_features(self, features: Tensor) -> None:
        if not isinstance(features, Tensor) or features.dim() < 1 or features.shape[-1] != self.dim:
            raise ValueError(f"features has shape {tuple(getattr(features, 'shape', ()))}; expected (..., dim={self.dim})")

    def encode(self, features: Tensor) -> Tensor:
        """Features (..., dim) -> codes (..., levels) int64: at each level, the codeword nearest the residual."""
        self._check_features(features)
        residual = features.reshape(-1, self.dim).double()  # (N, dim)
        codes = []
        for codebook in self._fitted().double():
            code = _nearest(residual, codebook)
            codes.append(code)
            residual = residual - codebook[code]
        return torch.stack(codes, dim=-1).reshape(*features.shape[:-1], self.levels)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes (..., levels) -> features (..., dim) float32: the sum of the chosen codewords."""
        codebooks = self._fitted()
        if (not isinstance(codes, Tensor) or codes.dim() < 1 or codes.shape[-1] != self.levels
                or codes.is_floating_point() or codes.is_complex()):
            raise ValueError(f"codes has shape {tuple(getattr(codes, 'shape', ()))}; expected integer (..., levels={self.levels})")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes lie in {int(codes.min())}..{int(codes.max())}; expected 0..{self.codebook_size - 1}")
        out = torch.zeros(*codes.shape[:-1], self.dim)
        for level in range(self.levels):
            out = out + codebooks[level][codes[..., level].long()]
        return out

    def distortion_by_level(self, features: Tensor) -> Tensor:
        """(levels,) float64: mean squared error of the features rebuilt from the first 1, 2, ..., levels levels."""
        self._check_features(features)
        residual = features.reshape(-1, self.dim).double()
        errors = []
        for codebook in self._fitted().double():
            residual = residual - codebook[_nearest(residual, codebook)]
            errors.append((residual**2).mean())
        return torch.stack(errors)

    def __repr__(self) -> str:
        if self.codebooks is None:
            return "ResidualQuantizer(not fitted)"
        return f"ResidualQuantizer(levels={self.levels}, codebook_size={self.codebook_size}, dim={self.dim})"


# --- Tokens -------------------------------------------------------------------------------------

def codes_to_tokens(codes: Tensor, codebook_size: int) -> Tensor:
    """Codes (..., frames, levels) -> tokens (..., frames * levels), frame-major, token = level * codebook_size + code."""
    check_int("codebook_size", codebook_size, 1)
    if codes.dim() < 2:
        raise ValueError(f"codes has shape {tuple(codes.shape)}; expected (..., frames, levels)")
    offsets = torch.arange(codes.shape[-1]) * codebook_size  # (levels,)
    return rearrange(codes.long() + offsets, "... f l -> ... (f l)")


def tokens_to_codes(tokens: Tensor, levels: int, codebook_size: int) -> Tensor:
    """Tokens (..., frames * levels) -> codes (..., frames, levels); ValueError if a token sits at the wrong level."""
    check_int("levels", levels, 1)
    check_int("codebook_size", codebook_size, 1)
    if tokens.dim() < 1 or tokens.shape[-1] % levels:
        raise ValueError(f"tokens has shape {tuple(tokens.shape)}; expected (..., frames * levels) with levels={levels}")
    codes = rearrange(tokens.long(), "... (f l) -> ... f l", l=levels) - torch.arange(levels) * codebook_size
    if codes.numel() and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(f"tokens do not follow the layout token = level * codebook_size + code with "
                         f"levels={levels}, codebook_size={codebook_size}")
    return codes


# --- The dataset --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _fitted_codebooks(frame_size: int, bins: int, levels: int, codebook_size: int, seed: int) -> Tensor:
    features, _ = _clip_features(range(FIT_CLIPS), "train", seed, FIT_FRAMES, frame_size, bins)
    features = rearrange(features, "n f b -> (n f) b")
    return ResidualQuantizer().fit(features, levels=levels, codebook_size=codebook_size, seed=seed).codebooks


def fitted_quantizer(*, frame_size: int = 128, bins: int = 32, levels: int = 4, codebook_size: int = 64,
                     seed: int = 0) -> ResidualQuantizer:
    """The quantiser `load("codec_tokens")` uses: fitted on train clips 0..FIT_CLIPS-1 of FIT_FRAMES frames
    (so the same whatever `n`, `frames` or split), computed once per setting; each call gets its own copy."""
    _check_frame_size(frame_size, bins)
    check_int("levels", levels, 1)
    check_int("codebook_size", codebook_size, 2)
    if codebook_size > FIT_CLIPS * FIT_FRAMES:
        raise ValueError(f"codebook_size={codebook_size} must be at most the {FIT_CLIPS * FIT_FRAMES} frames it is fitted on")
    check_int("seed", seed, 0)
    return ResidualQuantizer(_fitted_codebooks(frame_size, bins, levels, codebook_size, seed).clone())


class CodecTokenDataset(Dataset):
    """Codec token streams in memory; `dataset[i]` is clip i's (frames * levels,) int64 tokens.

    Also kept: `features` (n, frames, bins), the spectra before quantisation, and `notes` (n, frames),
    the note of every frame. `decode(tokens)` turns tokens back into (..., frames, bins) features.
    """

    def __init__(self, tokens: Tensor, features: Tensor, notes: Tensor, quantizer: ResidualQuantizer,
                 split: str, seed: int, frame_size: int) -> None:
        self.tokens, self.features, self.notes, self.quantizer = tokens, features, notes, quantizer
        self.split, self.seed, self.frame_size = split, seed, frame_size
        self.levels, self.codebook_size = quantizer.levels, quantizer.codebook_size
        self.vocab_size = self.levels * self.codebook_size
        self.sample_rate = SAMPLE_RATE

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.tokens[index]

    @property
    def frames(self) -> int:
        return self.notes.shape[1]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    @property
    def codes(self) -> Tensor:
        """(n, frames, levels) codes, the tokens regrouped per frame without the level offsets."""
        return tokens_to_codes(self.tokens, self.levels, self.codebook_size)

    def decode(self, tokens: Tensor) -> Tensor:
        """Tokens (..., frames * levels) -> quantised features (..., frames, bins)."""
        return self.quantizer.decode(tokens_to_codes(tokens, self.levels, self.codebook_size))

    def audio(self, index: int) -> Tensor:
        """Clip `index`'s audio (frames * frame_size,) at `sample_rate`, rendered again."""
        return render_melody(index, split=self.split, seed=self.seed, frames=self.frames, frame_size=self.frame_size)[0]

    def __repr__(self) -> str:
        return (f"CodecTokenDataset(split={self.split!r}, n={len(self)}, frames={self.frames}, levels={self.levels}, "
                f"codebook_size={self.codebook_size}, vocab_size={self.vocab_size})")


@register("codec_tokens")
def load_codec_tokens(split: str, n: int = 1000, frames: int = 64, levels: int = 4, codebook_size: int = 64,
                      frame_size: int = 128, bins: int = 32, seed: int = 0) -> CodecTokenDataset:
    """`n` melodies of `frames` frames as RVQ token streams of frames * levels tokens (layout: module docstring)."""
    check_split(split)
    check_int("n", n, 1)
    check_int("frames", frames, 1)
    quantizer = fitted_quantizer(frame_size=frame_size, bins=bins, levels=levels, codebook_size=codebook_size,
                                 seed=seed)  # checks these arguments before any work
    features, notes = _clip_features(range(n), split, seed, frames, frame_size, bins)  # (n, frames, bins), (n, frames)
    tokens = codes_to_tokens(quantizer.encode(features), codebook_size)  # (n, frames * levels)
    return CodecTokenDataset(tokens, features, notes, quantizer, split, seed, frame_size)
