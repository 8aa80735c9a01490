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

__all__ = ["KernelStatus", "available", "check_input", "interpreting", "use_kernels"]
