"""How a benchmark stage is measured: wall time, CPU time and peak memory.

:class:`Recorder` runs each stage inside :class:`PeakMemory` and collects
``{stage: {"seconds", "cpu_seconds", "self_mb", "children_mb", "total_mb"}}``. Memory is read from
``/proc``: this process's high-water mark (VmHWM) and the summed resident memory of its
descendants (Spark's JVM, Python workers, executors), sampled from a background thread.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field


def status_kb(pid: int | str, key: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (e.g. ``"VmRSS:"``); 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def rss_kb(pid: int | str) -> int:
    """Resident memory of a process in kB (``/proc/<pid>/statm``: one short line, cheaper to
    read than ``status``); 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


def descendants(root: int) -> list[int]:
    """Process ids of every descendant of ``root`` (children, their children, …)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the ppid follows the last ")"
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            out.append(c)
            todo.append(c)
    return out


class PeakMemory:
    """Peak resident memory of this process and of its descendants during a ``with`` block.

    This process's peak is the kernel's high-water mark (VmHWM), reset on entry through
    ``/proc/self/clear_refs`` where allowed (else the process's lifetime peak, flagged by
    ``self_reset = False``). Children (Spark's JVM, Python workers, executors) are sampled every
    ``interval`` seconds; their peak is the largest sampled sum of their RSS. The process tree
    is listed again every ``tree_interval`` seconds (new Python workers and executors): a
    listing reads every process's stat file, and listing at every sample would take about 7 %
    of a core from the work being measured (1.5 % as done here), which matters when that work
    keeps every core busy.
    """

    def __init__(self, interval: float = 0.05, tree_interval: float = 0.5):
        self.interval = interval
        self.tree_interval = tree_interval
        self.self_mb = self.children_mb = self.total_mb = 0.0
        self.self_reset = False
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.self_reset = True
        except OSError:
            self.self_reset = False
        self._peak_children = 0
        self._peak_total = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        me = os.getpid()
        listed, pids = float("-inf"), []
        while True:
            if time.monotonic() - listed >= self.tree_interval:
                listed, pids = time.monotonic(), descendants(me)
            kids = sum(rss_kb(p) for p in pids)
            total = kids + rss_kb(me)
            self._peak_children = max(self._peak_children, kids)
            self._peak_total = max(self._peak_total, total)
            if self._stop.wait(self.interval):
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.self_mb = status_kb("self", "VmHWM:") / 1024
        self.children_mb = self._peak_children / 1024
        self.total_mb = max(self._peak_total / 1024, self.self_mb)

    def as_dict(self) -> dict:
        return {"self_mb": round(self.self_mb, 1), "children_mb": round(self.children_mb, 1),
                "total_mb": round(self.total_mb, 1)}


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its reaped children. On a shared machine
    wall time swings with other load; CPU time of a single-process stage does not."""
    import resource
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


@dataclass
class Recorder:
    """Collects ``{stage: {"seconds", memory...}}`` as stages run."""

    stages: dict = field(default_factory=dict)
    say: object = None

    def run(self, name: str, fn, *args, **kwargs):
        with PeakMemory() as mem:
            c0 = _cpu_seconds()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            dt = time.perf_counter() - t0
            cpu = _cpu_seconds() - c0
        self.stages[name] = {"seconds": round(dt, 4), "cpu_seconds": round(cpu, 4),
                             **mem.as_dict()}
        if self.say:
            self.say(f"{name}: {dt:.2f} s, peak {mem.total_mb:.0f} MB")
        return out

    def seconds(self, name: str) -> float:
        return self.stages[name]["seconds"]

