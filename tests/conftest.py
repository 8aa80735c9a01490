"""Shared test set-up: a non-interactive plotting backend and the offline environment for subprocesses."""

import os
import sys
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")

# Without a GPU, Triton kernels run in its CPU interpreter; the switch is read when a kernel is
# defined, so it must be set before course_lib.kernels is imported by any test.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
NETBLOCK = ROOT / "tests" / "netblock"


def offline_env(runs_dir: Path) -> dict[str, str]:
    """Environment for a child process with the network blocked and results written to `runs_dir`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(NETBLOCK), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["COURSE_RUNS_DIR"] = str(runs_dir)
    env["MPLBACKEND"] = "Agg"
    env["PYTHONHASHSEED"] = "0"
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    env.pop("HF_HUB_OFFLINE", None)  # nothing hides a download attempt: it must fail loudly instead
    return env


PYTHON = sys.executable


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """`module` with every parameter drawn from N(0, 0.5²), norms included, so that no part of a comparison with a
    naive computation is trivially zero or one."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.5)
    return module
