"""The machine's memory, as verify and train see it: how much is free, this process's peak, and giving
freed heap back."""
from __future__ import annotations

import ctypes
import sys

_LIBC = None
_PEAK = 0  # the highest peak_resident_memory reading in this process


def available_memory() -> int:
    import psutil

    return psutil.virtual_memory().available


def peak_resident_memory() -> int:
    """This process's own peak resident memory, in bytes: the highest of Linux's VmHWM readings so far (not
    getrusage's maxrss: that one starts from the parent's resident size at fork, so a worker of a large
    launcher would report the launcher).

    The highest reading, because one VmHWM reading is not a high-water mark: the kernel reports the larger
    of the mark it last recorded (it records only at some events, such as unmapping) and the current
    resident size (on recent kernels an approximate per-CPU count). A reading above the recorded mark can
    be followed by a lower one, and a "peak so far" that falls misleads (seen in metrics.jsonl, kernel 6.18)."""
    global _PEAK
    reading = None
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    reading = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if reading is None:
        import resource

        reading = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    _PEAK = max(_PEAK, reading)
    return _PEAK


def release_freed_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise, and RSS would climb layer after layer)."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)
