"""The finished model of each family, one file each, built from `course_lib.nn`."""

from course_lib.models.seq2seq import Seq2SeqTransformer, Seq2SeqTransformerConfig
from course_lib.models.sequence import SequenceTransformer, SequenceTransformerConfig

__all__ = [
    "Seq2SeqTransformer", "Seq2SeqTransformerConfig", "SequenceTransformer", "SequenceTransformerConfig",
]
