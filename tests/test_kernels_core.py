"""The kernel package's own rules: which path is in use and why, and the checks before any launch."""

import pytest
import torch

from course_lib import kernels
from course_lib.kernels import _triton


def test_available_on_the_cpu_names_the_pytorch_path_and_why():
    status = kernels.available("cpu")
    assert status.triton is False
    assert "PyTorch" in str(status) and "cpu" in status.reason


def test_available_without_triton_says_it_cannot_be_imported(monkeypatch):
    monkeypatch.setattr(_triton, "triton", None)
    monkeypatch.setattr(_triton, "TRITON_IMPORT_ERROR", "No module named 'triton'")
    status = kernels.available("cuda")
    assert status.triton is False and "cannot be imported" in status.reason
    assert kernels.use_kernels(torch.ones(2)) is False


def test_cpu_tensors_never_take_the_kernel_path():
    assert kernels.use_kernels(torch.ones(2), torch.ones(3)) is False


@pytest.mark.parametrize(
    "tensor, options, message",
    [
        (torch.ones(4, dtype=torch.int64), {}, "x has dtype torch.int64"),
        (torch.ones(4, 4).t()[:, :2], {}, "x .* is not contiguous"),
        (torch.ones(4), {"ndim": 2}, r"x has shape \(4,\); expected 2 dimensions"),
        ([1.0, 2.0], {}, "x must be a torch.Tensor, got list"),
    ],
)
def test_check_input_names_the_argument_and_the_problem(tensor, options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        kernels.check_input("x", tensor, **options)


def test_check_input_refuses_a_cpu_tensor_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="x is on cpu; Triton kernels need a CUDA tensor"):
        kernels.check_input("x", torch.ones(4))
