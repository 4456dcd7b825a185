"""The machine's memory, as verify sees it: how much is free, and giving freed heap back."""
from __future__ import annotations

import ctypes

_LIBC = None


def available_memory() -> int:
    import psutil

    return psutil.virtual_memory().available


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
