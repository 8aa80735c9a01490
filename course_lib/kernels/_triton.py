"""What every kernel module needs: Triton if it can be imported, whether it runs on a GPU or in the
CPU interpreter, and the checks each kernel makes on its inputs before launching."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl

    TRITON_IMPORT_ERROR: str | None = None
except ImportError as error:  # macOS and Windows wheels of torch come without Triton
    triton, tl = None, None
    TRITON_IMPORT_ERROR = str(error)

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU, in its interpreter (TRITON_INTERPRET=1 before the kernels load)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class KernelStatus:
    """Which path `course_lib.nn` takes for tensors on `device`, and why."""

    triton: bool
    reason: str

    def __str__(self) -> str:
        return f"{'Triton kernels' if self.triton else 'PyTorch path'}: {self.reason}"


def available(device: torch.device | str | None = None) -> KernelStatus:
    """Say whether `course_lib.nn` uses the Triton kernels for tensors on `device` (default: CUDA if any)."""
    if triton is None:
        return KernelStatus(False, f"Triton cannot be imported ({TRITON_IMPORT_ERROR})")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type != "cuda":
        return KernelStatus(False, f"tensors on {device.type} use PyTorch; the kernels run on CUDA devices "
                                   "(tests call them directly through Triton's CPU interpreter)")
    if not torch.cuda.is_available():
        return KernelStatus(False, "no CUDA device is visible")
    return KernelStatus(True, f"Triton {triton.__version__} on {torch.cuda.get_device_name(device)}")


def use_kernels(*tensors: Tensor) -> bool:
    """True when every tensor is on a CUDA device and Triton is importable: the dispatch rule of course_lib.nn."""
    return triton is not None and all(t.is_cuda for t in tensors)


def check_input(name: str, tensor: Tensor, *, ndim: int | None = None, dtypes: tuple = KERNEL_DTYPES) -> None:
    """Refuse, with a message naming `name`, a tensor a kernel cannot take: before anything is launched."""
    if triton is None:
        raise RuntimeError(f"Triton cannot be imported ({TRITON_IMPORT_ERROR}); use the PyTorch reference instead")
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not (tensor.is_cuda or interpreting()):
        raise ValueError(f"{name} is on {tensor.device}; Triton kernels need a CUDA tensor "
                         "(or TRITON_INTERPRET=1 set before course_lib.kernels is imported, to run them on the CPU)")
    if tensor.dtype not in dtypes:
        raise ValueError(f"{name} has dtype {tensor.dtype}; expected one of {dtypes}")
    if ndim is not None and tensor.ndim != ndim:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected {ndim} dimensions")
    if not tensor.is_contiguous():
        raise ValueError(f"{name} (shape {tuple(tensor.shape)}) is not contiguous; call .contiguous() first")
