"""Training: Lightning modules that add losses and metrics to any model, one trainer factory, and the SAM optimiser."""

from course_lib.train.modules import (
    ClassificationModule,
    CourseModule,
    LanguageModelModule,
    Seq2SeqModule,
    classification_metrics,
    warmup_cosine,
)
from course_lib.train.sam import SAM, sam_perturbation
from course_lib.train.trainer import (
    RandomStateCallback,
    ThroughputCallback,
    find_callback,
    make_trainer,
)

__all__ = [
    "ClassificationModule", "CourseModule", "LanguageModelModule", "RandomStateCallback", "SAM", "sam_perturbation", "Seq2SeqModule",
    "ThroughputCallback", "classification_metrics", "find_callback", "make_trainer", "warmup_cosine",
]
