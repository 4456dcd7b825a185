"""How long a grow will take on this machine, measured rather than guessed (for --dry-run)."""
from __future__ import annotations

import bisect
import os
import tempfile
import time
from itertools import accumulate
from pathlib import Path

from hyperclone.plan import GrowthPlan

SAMPLES = 16
DISK_SAMPLE_BYTES = 64 << 20


def _produce_rate(growth: GrowthPlan, seconds: float) -> float:
    """Bytes per second of one worker producing tensors picked evenly by bytes (so the mix of ops is the plan's)."""
    from hyperclone.grow import tensor_chunks

    edges = list(accumulate(growth.bytes_of(t) for t in growth.tensors))
    picks = {min(bisect.bisect_left(edges, edges[-1] * (k + 0.5) / SAMPLES), len(edges) - 1) for k in range(SAMPLES)}
    produced, start = 0, time.perf_counter()
    for index in sorted(picks):
        deadline = time.perf_counter() + seconds / len(picks)
        for task in tensor_chunks(growth, growth.tensors[index]):
            chunk = task()
            produced += chunk.numel() * chunk.element_size()
            if time.perf_counter() > deadline:
                break
    return produced / max(time.perf_counter() - start, 1e-9)


def _disk_rate(out: Path) -> float:
    """Bytes per second of a fsync'd write into the output's filesystem."""
    probe = out.absolute().parent
    while not probe.exists():
        probe = probe.parent
    block = os.urandom(1 << 20)
    with tempfile.NamedTemporaryFile(dir=probe, prefix=".hyperclone-disk-probe-") as fh:
        start = time.perf_counter()
        for _ in range(DISK_SAMPLE_BYTES >> 20):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
        return DISK_SAMPLE_BYTES / max(time.perf_counter() - start, 1e-9)


def estimate(growth: GrowthPlan, out: Path, workers: int = 1, seconds: float = 2.0) -> dict:
    """Measured production and disk rates, and the ETA they give for writing the whole plan."""
    produce = _produce_rate(growth, seconds)
    disk = _disk_rate(out)
    rate = min(produce * min(workers, os.cpu_count() or 1), disk)
    return {"produce_bytes_per_s": produce, "disk_bytes_per_s": disk, "workers": workers, "eta_seconds": growth.nbytes / rate}
