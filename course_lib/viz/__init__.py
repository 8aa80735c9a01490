"""Figures the course draws again and again: attention maps at several scales, training curves, scenes."""

from course_lib.viz.attention import (
    attention_heads,
    attention_layers,
    attention_rollout,
    model_attention,
)
from course_lib.viz.curves import read_metrics, training_curves
from course_lib.viz.scenes import picture_grid, show_scenes

__all__ = ["attention_heads", "attention_layers", "attention_rollout", "model_attention", "picture_grid", "read_metrics",
           "show_scenes", "training_curves"]
