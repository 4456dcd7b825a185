"""The machine's memory, as verify and train see it: how much is free, this process's peak, and giving
freed heap back."""
from __future__ import annotations

import ctypes
import sys

_LIBC = None


def available_memory() -> int:
    import psutil

    return psutil.virtual_memory().available


def peak_resident_memory() -> int:
    """This process's own peak resident memory, in bytes. Linux's VmHWM, not getrusage's maxrss: that one
    starts from the parent's resident size at fork, so a worker of a large launcher would report the launcher."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


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
