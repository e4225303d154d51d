"""The memory settings of predictd's processes: glibc's malloc (which numpy's arrays come
from) keeps freed memory, and numpy's large arrays are backed by ordinary 4 KiB pages.

By default glibc gives every block above a moving threshold its own mapping and returns the
top of its heap to the kernel once about twice that threshold is free. numpy's temporaries of
a tensor block (1–30 MB each, made and freed thousands of times by a write task) then come
back from the kernel as fresh pages on every use, each one faulted in and zeroed again: kernel
time in every task, and page-allocator work that tasks running side by side share. Measured
in docs/performance.md ("Memory allocation").

numpy advises the kernel to back every array of 4 MB or more with 2 MB transparent huge pages.
A huge page faulted in for the first time costs several times what as many small pages cost on
a virtual machine whose balloon reports free memory to its host (each one is a fresh 2 MB
block the host must supply again), and every Spark worker's first tasks fault in their memory;
reused memory is as fast either way. :func:`configure` turns the advice off unless the user
set numpy's own switch, ``NUMPY_MADVISE_HUGEPAGE``.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: Blocks up to this size come from the heap, and are reused (glibc's maximum).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap is returned to the kernel only beyond this.
TRIM_THRESHOLD = 1 << 30

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_tuned = False

#: numpy's own switch for its huge-page advice (read when numpy is imported): when set, it
#: decides
NUMPY_HUGEPAGE_ENV = "NUMPY_MADVISE_HUGEPAGE"


def configure() -> None:
    """predictd's memory settings for this process (the command, every Spark task, the
    benchmark's jobs): :func:`keep_freed_memory`, and numpy's huge-page advice off
    (:func:`numpy_huge_pages`) unless :data:`NUMPY_HUGEPAGE_ENV` is set. Both are cheap to
    repeat (every Spark task calls this)."""
    keep_freed_memory()
    if NUMPY_HUGEPAGE_ENV not in os.environ:
        numpy_huge_pages(False)


def thp_mode() -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise" or "never"); None where
    it does not say."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            return fh.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return None


def numpy_huge_pages(enabled: bool) -> bool | None:
    """Have numpy advise the kernel to back its new arrays of 4 MB or more with transparent
    huge pages, or not (arrays already made keep their pages). Returns the previous setting;
    None, changing nothing, where numpy has no such switch."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:
        try:  # numpy 1.x
            from numpy.core.multiarray import _set_madvise_hugepage
        except ImportError:
            return None
    return bool(_set_madvise_hugepage(bool(enabled)))


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
