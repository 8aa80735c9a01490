"""Triton kernels, each with the plain PyTorch reference it must match.

`available()` says whether `course_lib.nn` uses them (CUDA tensors and Triton importable) or the
PyTorch path, and why. To run the kernels on the CPU, set TRITON_INTERPRET=1 before importing this
package: Triton then interprets them with NumPy (slowly; fp32 and fp16 only, its bfloat16 is wrong).
"""

from course_lib.kernels._triton import (
    KernelStatus,
    available,
    check_input,
    interpreting,
    use_kernels,
)
from course_lib.kernels.flash_attention import attention_reference, flash_attention
from course_lib.kernels.norms import layer_norm, layer_norm_reference, rms_norm, rms_norm_reference
from course_lib.kernels.selective_scan import selective_scan, selective_scan_reference
from course_lib.kernels.softmax import softmax, softmax_reference

__all__ = ["KernelStatus", "available", "check_input", "interpreting", "use_kernels",
           "attention_reference", "flash_attention",
           "selective_scan", "selective_scan_reference",
           "layer_norm", "layer_norm_reference", "rms_norm", "rms_norm_reference",
           "softmax", "softmax_reference"]
