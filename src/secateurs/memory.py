"""Process-level memory settings for long pruning runs."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_MMAP_THRESHOLD = -3


def limit_heap_growth(threshold_bytes: int = 4 * 2**20) -> bool:
    """Serve allocations above ``threshold_bytes`` with mmap, so freed activations go back to the system.

    glibc raises its mmap threshold as large blocks are freed and then keeps later ones on the heap, where
    fragmentation holds them: measured on SmolLM2, Wanda's peak RSS fell from 1240 to 1170 MiB. Called by
    the CLI (an application's choice, not a library's). Returns whether the setting took effect.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
