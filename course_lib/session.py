"""`setup(PROFILE)`: the one call at the top of every notebook (profile, seeds, device, threads, plots)."""

from __future__ import annotations

import logging
import os
import random
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch

PROFILES = ("smoke", "default", "full")

# Okabe-Ito: a palette that stays distinguishable under the common forms of colour blindness.
COLOURS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


@dataclass(frozen=True)
class Session:
    """What `setup` decided: paste `str(session)` into a question and a helper knows your setup."""

    profile: str
    requested_profile: str
    device: torch.device
    seed: int
    kernels: str

    def __str__(self) -> str:
        import course_lib

        profile = self.profile
        if self.profile != self.requested_profile:
            profile += f" (asked for {self.requested_profile})"
        return (
            f"course_lib {course_lib.__version__} | profile {profile} | device {self.device} | "
            f"torch {torch.__version__} | kernels: {self.kernels} | seed {self.seed}"
        )


def validate_profile(profile: str) -> str:
    """Return `profile` unchanged, or raise a ValueError that lists the valid ones."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not a profile; expected one of {PROFILES}")
    return profile


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so that a rerun gives the same numbers on the CPU."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} is not a non-negative int")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device() -> torch.device:
    """The fastest device present: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def kernel_backend(device: torch.device) -> str:
    """Triton kernels run on CUDA when triton imports; everywhere else the PyTorch reference paths run."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401

            return "Triton"
        except ImportError:
            pass
    return "PyTorch reference paths"


def in_colab() -> bool:
    return "google.colab" in sys.modules


def set_plot_style() -> None:
    """Readable defaults for every figure of the course: labelled, gridded, colour-blind-safe."""
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update(
        {
            "axes.prop_cycle": cycler(color=COLOURS),
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "figure.dpi": 100,
            "figure.figsize": (6.0, 4.0),
            "image.cmap": "viridis",
            "axes.titlesize": "medium",
        }
    )


def quiet_lightning() -> None:
    """Keep Lightning's start-up banners (accelerator lines, tips) out of the notebooks; warnings still show."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # An internal deprecation inside Lightning itself, not something a learner can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def setup(profile: str = "default", *, seed: int = 0, threads: int | None = None) -> Session:
    """Validate the profile, seed everything, pick the device, set threads and the plot style.

    Without a GPU, `full` falls back to `default` (and says so) instead of failing.
    Prints one line describing the session and returns it.
    """
    requested = validate_profile(profile)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads={threads!r} is not a positive int")
    device = pick_device()
    if requested == "full" and device.type != "cuda":
        profile = "default"
    seed_everything(seed)
    torch.set_num_threads(threads or max(1, os.cpu_count() or 1))
    set_plot_style()
    quiet_lightning()
    session = Session(profile, requested, device, seed, kernel_backend(device))
    if profile != requested:
        print(f"No CUDA GPU here: the 'full' profile needs one, so this run uses '{profile}'.")
    print(session)
    return session
