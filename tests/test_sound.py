"""The shapes world's sound: every attribute is audible where the module says, the mix is the sum of its notes,
and bad input is refused by name."""

import pytest
import torch

from course_lib.data import load
from course_lib.data.shapes import COLOURS, SHAPES
from course_lib.data.sound import PITCHES, sounds, spectrogram

RATE = 8000


@pytest.fixture(scope="module")
def single():
    """Scenes of one object each, and their clips."""
    scenes = load("shapes", "train", n=120, size=32, task="shape", max_objects=1)
    return scenes, sounds(scenes)


def magnitudes(wave: torch.Tensor) -> torch.Tensor:
    """|FFT| at 2 Hz resolution for a 0.5 s clip."""
    return torch.fft.rfft(wave.double()).abs()


def bin_of(frequency: float, samples: int) -> int:
    return round(frequency * samples / RATE)


def amplitude_at(wave: torch.Tensor, frequency: float) -> float:
    """|Hann-windowed projection of `wave` onto a complex sine at `frequency`|: exact for pitches between FFT bins."""
    t = torch.arange(len(wave), dtype=torch.float64) / RATE
    window = torch.hann_window(len(wave), dtype=torch.float64)
    return (wave.double() * window * torch.exp(-2j * torch.pi * frequency * t)).sum().abs().item()


def test_shapes_range_and_determinism(single):
    scenes, clips = single
    assert clips.shape == (120, 4000) and clips.dtype == torch.float32
    assert clips.abs().max() <= 1.0 and clips.abs().max() > 0.1
    assert torch.equal(clips, sounds(load("shapes", "train", n=120, size=32, task="shape", max_objects=1)))


def test_the_loudest_frequency_is_the_colours_pitch(single):
    scenes, clips = single
    for i in range(40):
        colour = scenes.objects(i)[0].colour
        peak = magnitudes(clips[i]).argmax().item()
        assert abs(peak - bin_of(PITCHES[colour], clips.shape[1])) <= 1, (i, colour, peak)


def test_the_shape_sets_the_harmonics(single):
    scenes, clips = single
    checked = set()
    for i in range(len(scenes)):
        obj = scenes.objects(i)[0]
        if obj.texture != "solid":  # a steady note: no tremolo or pulse sidebands between the harmonics
            continue
        f0 = PITCHES[obj.colour]
        second, third = (amplitude_at(clips[i], k * f0) / amplitude_at(clips[i], f0) for k in (2, 3))
        expected_third = {"circle": 0.0, "square": 1 / 3, "triangle": 1 / 9, "cross": 1 / 3}[obj.shape]
        expected_second = 0.5 if obj.shape == "cross" else 0.0
        assert second == pytest.approx(expected_second, abs=0.02), (obj, second)
        assert third == pytest.approx(expected_third, abs=0.02), (obj, third)
        checked.add(obj.shape)
    assert checked == set(SHAPES)


def test_objects_start_left_to_right_and_the_mix_is_their_sum():
    scenes = load("shapes", "train", n=30, size=32, task="count", max_objects=3)
    clips = sounds(scenes)
    for i in range(len(scenes)):
        objects = scenes.objects(i)
        first_sound = (clips[i].abs() > 1e-6).float().argmax().item() / RATE
        assert first_sound == pytest.approx(min(o.x for o in objects) / 32 * 0.25, abs=2e-3)
    # the clip of a scene is the sum of its objects' clips, each rendered alone (the /K mixing scale undone)
    batch = scenes.batch
    alone = []
    for k in range(3):
        solo = {key: value.clone() for key, value in batch.items()}
        solo["present"] = torch.zeros_like(batch["present"])
        solo["present"][:, k] = batch["present"][:, k]
        alone.append(sounds(type(scenes)(solo, scenes.task, scenes.split)))
    assert torch.allclose(sum(alone), clips, atol=1e-6)


def test_a_small_object_plays_at_half_the_amplitude():
    scenes = load("shapes", "train", n=20, size=32, task="shape", max_objects=1)
    louder = {key: value.clone() for key, value in scenes.batch.items()}
    louder["size"] = torch.ones_like(louder["size"])
    quieter = {key: value.clone() for key, value in scenes.batch.items()}
    quieter["size"] = torch.zeros_like(quieter["size"])
    large, small = (sounds(type(scenes)(b, scenes.task, scenes.split)) for b in (louder, quieter))
    assert torch.allclose(small, large / 2, atol=1e-7)


def test_every_colour_has_its_own_pitch():
    pitches = [PITCHES[c] for c in COLOURS]
    assert pitches == sorted(pitches) and min(b / a for a, b in zip(pitches, pitches[1:])) > 1.2


def test_spectrogram_shape_and_peak():
    scenes = load("shapes", "train", n=8, size=32, task="shape", max_objects=1)
    clips = sounds(scenes)
    spec = spectrogram(clips, n_fft=256, hop=128)
    assert spec.shape == (8, 129, 30) and (spec >= 0).all()
    obj = scenes.objects(0)[0]
    row = spec[0, :, -5:].mean(dim=1).argmax().item()  # late frames: the note is playing
    assert abs(row - PITCHES[obj.colour] * 256 / RATE) <= 1


@pytest.mark.parametrize("call, name", [
    (lambda: sounds(torch.zeros(3, 3, 32, 32)), "dataset"),
    (lambda: sounds(load("shapes", n=2), sample_rate=100), "sample_rate"),
    (lambda: sounds(load("shapes", n=2), duration=0.0), "duration"),
    (lambda: spectrogram(torch.zeros(2, 100, dtype=torch.long)), "waves"),
    (lambda: spectrogram(torch.zeros(2, 100), n_fft=256), "n_fft"),
    (lambda: spectrogram(torch.zeros(2, 1000), hop=0), "hop"),
])
def test_bad_input_is_refused_by_name(call, name):
    with pytest.raises(ValueError, match=name):
        call()
