"""Sound for the shapes world: every object of a scene plays a note, and the scene's clip is their mix.

Each attribute of an object becomes something one can hear, and see in a spectrogram:

| attribute  | sound                                                                                   |
|------------|-----------------------------------------------------------------------------------------|
| colour     | pitch: six fundamentals, a major third apart (200 to 630 Hz), see `PITCHES`             |
| shape      | timbre, the strengths of the harmonics (`HARMONICS`): circle a pure sine, square odd    |
|            | harmonics at 1/n (hollow), triangle odd harmonics at 1/n² (soft), cross all at 1/n      |
|            | (buzzy, a sawtooth)                                                                     |
| size       | loudness: a small object plays at half the amplitude of a large one                     |
| texture    | envelope: solid is steady, striped trembles (8 Hz tremolo), dotted pulses (6 Hz on/off) |
| position x | onset: an object starts at x / width of the first half of the clip, so "left of" is     |
|            | "sounds before"                                                                         |

The clip of a scene is a pure function of its objects: the same scene always sounds the same, and a
picture and its sound can never disagree. `sounds(dataset)` renders every scene of a `ShapesDataset`
at once; `spectrogram` turns waveforms into log-magnitude short-time Fourier transforms, the "image" of a
sound that most audio transformers cut into patches. All offline: nothing is recorded or downloaded.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from course_lib.data.registry import check_int
from course_lib.data.shapes import COLOURS, SHAPES, ShapesDataset

__all__ = ["HARMONICS", "PITCHES", "sounds", "spectrogram"]

PITCHES = {colour: 200.0 * 2 ** (4 * i / 12) for i, colour in enumerate(COLOURS)}  # Hz: 200, 252, 317, 400, 504, 635
_MAX_HARMONIC = 12
_n = torch.arange(1, _MAX_HARMONIC + 1, dtype=torch.float64)
_odd = (_n % 2 == 1).double()
HARMONICS = {  # amplitude of harmonics 1..12 per shape, before normalising them to sum to one
    "circle": (_n == 1).double(),
    "square": _odd / _n,
    "triangle": _odd / _n**2,
    "cross": 1 / _n,
}
_LOUDNESS = (0.5, 1.0)  # small, large
_TREMOLO_HZ, _PULSE_HZ = 8.0, 6.0
_RAMP_S = 0.01  # attack and release, so no note starts or stops with a click
_CHUNK = 256  # scenes rendered together: bounds memory to about _CHUNK * objects * samples floats


def _notes(sample_rate: int, t: Tensor) -> Tensor:
    """(shapes, colours, T) the steady note of every shape and colour: harmonics 1..12 of the colour's pitch, weighted
    by the shape's profile (normalised to sum to one, so no note exceeds 1). A harmonic at or above the Nyquist
    frequency is left out: it would alias to a false, lower pitch."""
    amplitudes = torch.stack([HARMONICS[shape] for shape in SHAPES])
    amplitudes = amplitudes / amplitudes.sum(dim=1, keepdim=True)  # (S, H)
    frequencies = torch.tensor([PITCHES[colour] for colour in COLOURS], dtype=torch.float64)[:, None] * _n  # (C, H)
    waves = torch.sin(2 * math.pi * frequencies[..., None] * t) * (frequencies < sample_rate / 2)[..., None]  # (C, H, T)
    return torch.einsum("sh,cht->sct", amplitudes, waves)


def _synthesise(shape: Tensor, colour: Tensor, size: Tensor, texture: Tensor, x: Tensor, present: Tensor, *,
               sample_rate: int = 8000, duration: float = 0.5) -> Tensor:
    """(N, K) object attributes (indices into SHAPES, COLOURS, SIZES, TEXTURES; x as a fraction of the width;
    present as bool) -> (N, samples) float32 waveforms in [-1, 1]: the sum of every present object's note."""
    samples = round(sample_rate * duration)
    t = torch.arange(samples, dtype=torch.float64) / sample_rate  # (T,)
    tone = _notes(sample_rate, t)[shape, colour]  # (N, K, T)
    onset = (x.double() * duration / 2)[..., None]  # (N, K, 1) seconds
    since = t - onset  # time since the note started
    envelope = (since / _RAMP_S).clamp(0, 1) * ((duration - t) / _RAMP_S).clamp(0, 1)
    tremolo = 0.6 + 0.4 * torch.cos(2 * math.pi * _TREMOLO_HZ * since)
    pulses = (torch.sin(2 * math.pi * _PULSE_HZ * since) >= 0).double()
    modulation = torch.where(texture[..., None] == 0, 1.0, torch.where(texture[..., None] == 1, tremolo, pulses))
    envelope = envelope * modulation
    loudness = torch.tensor(_LOUDNESS, dtype=torch.float64)[size] * present  # (N, K)
    mix = (tone * envelope * loudness[..., None]).sum(dim=1) / shape.shape[1]  # over the K object slots: never above 1
    return mix.float()


def sounds(dataset: ShapesDataset, *, sample_rate: int = 8000, duration: float = 0.5) -> Tensor:
    """(N, samples) the clip of every scene of `dataset`, in its order (see the module docstring)."""
    if not isinstance(dataset, ShapesDataset):
        raise ValueError(f"dataset must be a ShapesDataset from load('shapes', ...); got {type(dataset).__name__}")
    check_int("sample_rate", sample_rate, 2000)
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0.05 <= duration <= 10:
        raise ValueError(f"duration={duration!r} must be a number of seconds in [0.05, 10]")
    b = dataset.batch
    fields = (b["shape"], b["colour"], b["size"], b["texture"], b["centre"][..., 0], b["present"])
    return torch.cat([_synthesise(*(f[start:start + _CHUNK] for f in fields), sample_rate=sample_rate,
                                 duration=duration) for start in range(0, len(dataset), _CHUNK)])


def spectrogram(waves: Tensor, *, n_fft: int = 256, hop: int = 128) -> Tensor:
    """(N, samples) -> (N, n_fft // 2 + 1, frames): log(1 + |STFT|) with a Hann window, frequency up the rows."""
    if not isinstance(waves, Tensor) or waves.dim() != 2 or not waves.is_floating_point():
        raise ValueError(f"waves must be an (N, samples) float tensor; got {getattr(waves, 'dtype', type(waves).__name__)} "
                         f"of shape {tuple(getattr(waves, 'shape', ()))}")
    check_int("n_fft", n_fft, 8)
    check_int("hop", hop, 1)
    if waves.shape[1] < n_fft:
        raise ValueError(f"waves have {waves.shape[1]} samples, fewer than n_fft={n_fft}")
    stft = torch.stft(waves, n_fft, hop_length=hop, window=torch.hann_window(n_fft, device=waves.device),
                      center=False, return_complex=True)
    return stft.abs().log1p()
