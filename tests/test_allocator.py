"""The allocator settings: freed numpy temporaries are reused, not faulted in again."""

from __future__ import annotations

import json
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
