"""The allocator settings: freed numpy temporaries are reused, not faulted in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from predictd import allocator

_CHILD = """
import json, resource, sys
import numpy as np
from predictd import allocator
took = allocator.keep_freed_memory() if sys.argv[1] == "tuned" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    # a block's temporaries: a few of 16 MB, alive together, then all freed
    temps = [np.ones(2 << 20) for _ in range(3)]
    del temps
print(json.dumps({"took": took, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                  - before}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    tuned, plain = _faults("tuned"), _faults("plain")
    if not tuned["took"]:
        pytest.skip("this C library is not glibc: the settings do not apply")
    # by default the 48 MB freed at the top of the heap go back to the kernel every round
    # (its trim threshold follows the largest block, 2 × 16 MB); kept, only the first
    # round faults them in
    assert plain["faults"] > 20_000
    assert tuned["faults"] < plain["faults"] / 10


def test_settings_apply_once_per_process():
    first = allocator.keep_freed_memory()
    assert allocator.keep_freed_memory() == first


_PAGES_CHILD = """
import json, sys
import numpy as np
from predictd import allocator
if sys.argv[1] == "configured":
    allocator.configure()
a = np.ones(16 << 20)  # 128 MB, touched
with open("/proc/self/smaps_rollup") as fh:
    huge_kb = next(int(line.split()[1]) for line in fh if line.startswith("AnonHugePages:"))
print(json.dumps({"huge_mb": huge_kb / 1024}))
"""


def _huge_mb(mode: str, **env) -> float:
    out = subprocess.run([sys.executable, "-c", _PAGES_CHILD, mode], capture_output=True,
                         text=True, check=True,
                         env={k: v for k, v in {**os.environ, **env}.items()
                              if v is not None})
    return json.loads(out.stdout)["huge_mb"]


@pytest.mark.skipif(allocator.thp_mode() not in ("always", "madvise"),
                    reason="the kernel gives no transparent huge pages here")
def test_configured_processes_back_numpy_arrays_with_small_pages():
    # numpy's default advice: a 128 MB array lands mostly in 2 MB pages
    assert _huge_mb("plain", NUMPY_MADVISE_HUGEPAGE=None) > 64
    if allocator.thp_mode() == "madvise":
        # configured, numpy no longer asks for them (under "always" the kernel still gives them)
        assert _huge_mb("configured", NUMPY_MADVISE_HUGEPAGE=None) < 8
    # numpy's own switch, when the user sets it, decides
    assert _huge_mb("configured", NUMPY_MADVISE_HUGEPAGE="1") > 64


def test_numpy_huge_pages_returns_the_previous_setting():
    before = allocator.numpy_huge_pages(False)
    try:
        assert allocator.numpy_huge_pages(True) is False
        assert allocator.numpy_huge_pages(True) is True
    finally:
        allocator.numpy_huge_pages(before)
