"""Learning-rate schedules: Warmup-Stable-Decay (linear, cosine, 1-sqrt, MiniCPM's exponential), cosine, constant.

One LambdaLR serves every shape, so the scheduler state round-trips through checkpoints the same
way for all of them. transformers' get_wsd_schedule has the linear/cosine/1-sqrt shapes but starts
at lr 0 on step 0 (a wasted step) and stops its decay a step short of the floor, and it lacks the
exponential shape and branching a decay from a stable-phase step (`decay_start`), so mixing it in
would give two conventions in one run.
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("wsd", "cosine", "constant")
DECAY_SHAPES = ("linear", "cosine", "1-sqrt", "exp")


def decay_start_step(total: int, warmup: int, decay_fraction: float, decay_start: int | None = None) -> int:
    """The 0-based step where a WSD decay begins (a branch's own start, or the last `decay_fraction`)."""
    start = decay_start if decay_start is not None else total - int(round(decay_fraction * total))
    return max(start, warmup)


def lr_factor(step: int, total: int, warmup: int, schedule: str = "wsd", decay_fraction: float = 0.2,
              decay_shape: str = "linear", min_ratio: float = 0.0, decay_start: int | None = None) -> float:
    """Multiplier of the peak learning rate at `step` (0-based) of `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    start = decay_start_step(total, warmup, decay_fraction, decay_start)
    if step < start:
        return 1.0
    progress = min(1.0, (step - start + 1) / max(1, total - start))
    if decay_shape == "linear":
        shape = 1 - progress
    elif decay_shape == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    elif decay_shape == "1-sqrt":
        shape = 1 - math.sqrt(progress)
    else:  # MiniCPM: exponential from 1 to min_ratio (or 1 % when that is 0)
        floor = min_ratio or 0.01
        return floor**progress
    return min_ratio + (1 - min_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup: int, schedule: str = "wsd",
                    decay_fraction: float = 0.2, decay_shape: str = "linear", min_ratio: float = 0.0,
                    decay_start: int | None = None) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, schedule, decay_fraction, decay_shape,
                                                      min_ratio, decay_start))
