"""Figures the course draws again and again: attention maps at several scales and training curves."""

from course_lib.viz.attention import (
    attention_heads,
    attention_layers,
    attention_rollout,
    model_attention,
)
from course_lib.viz.curves import read_metrics, training_curves

__all__ = ["attention_heads", "attention_layers", "attention_rollout", "model_attention", "read_metrics", "training_curves"]
