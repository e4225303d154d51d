"""Facts about the machine a benchmark ran on: CPUs, memory, Python, numpy and its BLAS."""

from __future__ import annotations

import ctypes
import mmap
import os
import time

import numpy as np

from ..allocator import thp_mode


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
    kernel has just had back from another mapping (``reused_ms_per_mb``) against memory freed
    ``idle_seconds`` earlier (``after_idle_ms_per_mb``), in 4 KiB pages (``small_pages``:
    what predictd's processes use, :func:`predictd.allocator.configure`) and in 2 MB
    transparent huge pages (``huge_pages``: what numpy asks for by default; None where the
    kernel offers none). On a bare machine all are the kernel zeroing pages. A virtual machine
    whose balloon device reports free pages to its host (virtio-balloon free page reporting,
    which Firecracker and QEMU offer) hands freed memory back within seconds, and a page
    touched after that may be faulted in by the host again — so a fresh Spark worker's first
    tasks, and every new process, pay that price. Each figure is the fastest of ``rounds``;
    the memory is a fresh anonymous mapping each time (not the allocator's heap, which may
    hold freed memory already faulted in)."""
    huge_ok = hasattr(mmap, "MADV_HUGEPAGE") and thp_mode() in ("always", "madvise")

    def touch(huge: bool) -> float:
        t0 = time.perf_counter()
        m = mmap.mmap(-1, mb << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if huge:
            m.madvise(mmap.MADV_HUGEPAGE)
        elif hasattr(mmap, "MADV_NOHUGEPAGE"):
            m.madvise(mmap.MADV_NOHUGEPAGE)  # small pages even where THP is "always"
        view = np.frombuffer(m, dtype=np.uint8)
        view[::4096] = 1  # one write per page: the page is faulted in and zeroed
        seconds = time.perf_counter() - t0
        del view
        m.close()
        return seconds

    def timed(huge: bool) -> dict:
        touch(huge)
        reused, idle = [], []
        for _ in range(rounds):
            reused.append(touch(huge))
            time.sleep(idle_seconds)
            idle.append(touch(huge))
        return {"reused_ms_per_mb": round(min(reused) / mb * 1e3, 3),
                "after_idle_ms_per_mb": round(min(idle) / mb * 1e3, 3)}

    return {"mb": mb, "idle_seconds": idle_seconds, "small_pages": timed(False),
            "huge_pages": timed(True) if huge_ok else None}
