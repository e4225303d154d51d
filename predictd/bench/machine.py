"""Facts about the machine a benchmark ran on: CPUs, memory, Python, numpy and its BLAS."""

from __future__ import annotations

import ctypes
import os
import time

import numpy as np


def blas_info() -> dict:
    """Which BLAS numpy runs and which kernel it picked (threadpoolctl if installed, else the
    OpenBLAS library loaded in this process asked directly)."""
    info = {"OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE")}
    try:
        from threadpoolctl import threadpool_info
        for lib in threadpool_info():
            if lib.get("user_api") == "blas":
                info.update(library=os.path.basename(lib.get("filepath", "")),
                            version=lib.get("version"), kernel=lib.get("architecture"),
                            threads=lib.get("num_threads"))
                return info
    except ImportError:
        pass
    paths = set()
    with open("/proc/self/maps") as fh:
        for line in fh:
            if "openblas" in line.lower():
                paths.add(line.split()[-1])
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("", "")):
            try:
                corename = getattr(lib, f"{prefix}openblas_get_corename{suffix}")
                nthreads = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}")
            except AttributeError:
                continue
            corename.restype = ctypes.c_char_p
            info.update(library=os.path.basename(path), kernel=corename().decode(),
                        threads=int(nthreads()))
            return info
    info["library"] = "unknown"
    return info


def machine_info() -> dict:
    """CPUs, CPU model, memory, Python and numpy versions, and :func:`blas_info`."""
    import platform
    mem = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                       "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem / 2**30, 1),
            "python": platform.python_version(), "numpy": np.__version__, "blas": blas_info()}


def fresh_memory(mb: int = 256, idle_seconds: float = 4.0, rounds: int = 2) -> dict:
    """What a process pays to touch memory it has not used before, in ms per MB: memory the
    kernel has just had back from another allocation (``reused_ms_per_mb``) against memory
    freed ``idle_seconds`` earlier (``after_idle_ms_per_mb``), in 4 KiB pages
    (``small_pages``: predictd's processes, :func:`predictd.allocator.configure`) and in 2 MB
    transparent huge pages where numpy advises them (``huge_pages``: numpy's default; None
    where numpy cannot be told). On a bare machine all are the kernel zeroing pages. A
    virtual machine whose balloon device reports free pages to its host (virtio-balloon free
    page reporting, which Firecracker and QEMU offer) hands freed memory back within seconds,
    and a page touched after that may be faulted in by the host again — so a fresh Spark
    worker's first tasks, and every new process, pay that price. Each figure is the fastest
    of ``rounds`` (numpy arrays, as the work allocates them)."""
    from ..allocator import numpy_huge_pages

    def touch() -> float:
        t0 = time.perf_counter()
        a = np.empty(mb << 20, dtype=np.uint8)
        a[::4096] = 1  # one write per page: the page is faulted in and zeroed
        seconds = time.perf_counter() - t0
        del a
        return seconds

    def timed() -> dict:
        touch()
        reused, idle = [], []
        for _ in range(rounds):
            reused.append(touch())
            time.sleep(idle_seconds)
            idle.append(touch())
        return {"reused_ms_per_mb": round(min(reused) / mb * 1e3, 3),
                "after_idle_ms_per_mb": round(min(idle) / mb * 1e3, 3)}

    out: dict = {"mb": mb, "idle_seconds": idle_seconds}
    for key, huge in (("small_pages", False), ("huge_pages", True)):
        before = numpy_huge_pages(huge)
        try:
            out[key] = timed() if before is not None or not huge else None
        finally:
            if before is not None:
                numpy_huge_pages(before)
    return out
