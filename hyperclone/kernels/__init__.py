"""GPU kernels for the hot paths, each beside the PyTorch reference it must match.

A kernel is chosen automatically for CUDA tensors when Triton is installed (HYPERCLONE_KERNELS=0
turns them off); everywhere else the reference runs, and nothing here imports a GPU package until a
CUDA tensor asks for it, so CPU training never does.
"""
from __future__ import annotations

import importlib.util
import os

import torch


def kernels_enabled() -> bool:
    """False when HYPERCLONE_KERNELS=0 asks for the PyTorch references everywhere."""
    return os.environ.get("HYPERCLONE_KERNELS", "1") != "0"


def use_kernels(x: torch.Tensor) -> bool:
    """Whether `x` should go through a Triton kernel: a CUDA tensor, kernels not turned off, Triton present."""
    return x.is_cuda and kernels_enabled() and importlib.util.find_spec("triton") is not None
