"""The C allocator's settings for predictd's processes (glibc's malloc, which numpy's arrays
come from).

By default glibc gives every block above a moving threshold its own mapping and returns the
top of its heap to the kernel once about twice that threshold is free. numpy's temporaries of
a tensor block (1–30 MB each, made and freed thousands of times by a write task) then come
back from the kernel as fresh pages on every use, each one faulted in and zeroed again: kernel
time in every task, and page-allocator work that tasks running side by side share. Measured
in docs/performance.md ("Memory allocation").
"""

from __future__ import annotations

import ctypes
import sys

#: Blocks up to this size come from the heap, and are reused (glibc's maximum).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap is returned to the kernel only beyond this.
TRIM_THRESHOLD = 1 << 30

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_tuned = False


def keep_freed_memory() -> bool:
    """Have this process's malloc keep freed blocks for reuse (:data:`MMAP_THRESHOLD`,
    :data:`TRIM_THRESHOLD`); once per process. A process's peak memory is unchanged, but its
    resident size no longer falls back after a peak. Returns whether the settings took (glibc
    only: elsewhere nothing changes)."""
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                  and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _tuned
