"""Offline datasets: `load(name, split=..., **options)`; `available()` lists the names."""

from course_lib.data import digits, pde, photos, sequences, series, shapes, text, text_classes  # noqa: F401  (importing registers the datasets)
from course_lib.data.codec import CodecTokenDataset, ResidualQuantizer
from course_lib.data.digits import DigitsDataset
from course_lib.data.loaders import (
    CourseDataModule,
    EpochSampler,
    ResumableDataLoader,
    SequenceDataModule,
    TextDataModule,
)
from course_lib.data.long_range import ListOpsDataset, PathfinderDataset
from course_lib.data.pde import FieldTrajectories
from course_lib.data.photos import PhotoCropsDataset, bicubic_upsample
from course_lib.data.registry import SPLITS, available, load, register
from course_lib.data.sequences import IGNORE, SequenceTaskDataset
from course_lib.data.series import ForecastWindows, ProceduralSeries, sliding_windows
from course_lib.data.shapes import Scene, ShapesDataset
from course_lib.data.sound import sounds, spectrogram
from course_lib.data.text import ByteTextDataset, corpus_text, decode, encode
from course_lib.data.text_classes import StdlibPackagesDataset

__all__ = [
    "IGNORE", "SPLITS", "available", "ByteTextDataset", "CodecTokenDataset", "corpus_text", "CourseDataModule", "decode",
    "bicubic_upsample", "DigitsDataset", "encode", "FieldTrajectories", "EpochSampler", "ForecastWindows", "ListOpsDataset", "load", "PathfinderDataset", "PhotoCropsDataset", "ProceduralSeries", "register",
    "ResidualQuantizer", "ResumableDataLoader", "Scene", "SequenceDataModule", "SequenceTaskDataset", "ShapesDataset",
    "sliding_windows", "sounds", "spectrogram", "StdlibPackagesDataset", "TextDataModule",
]
