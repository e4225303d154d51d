"""Progress with an estimated time left for long stages (ingest, train, solve, write, folds,
evaluate, the benches).

Where the output goes depends on where predictd runs:

* a terminal: a tqdm bar on stderr (drawn only once a stage has run for a moment);
* a notebook: tqdm.auto's widget;
* anything else (a log file, CI, a cluster's driver log): a line through the ``predictd`` logger
  every :data:`LOG_EVERY_SECONDS` or every :data:`LOG_EVERY_FRACTION` of the work, whichever
  comes first, and one at the end, e.g. ``write: 12/40 blocks (30 %), 1m10s, about 2m43s left``.

``predictd -q`` silences all of it (:func:`set_shown`); a library caller can silence a stretch
of work with ``with shown(False):``. The counting, the estimate and the choice of when to log
are the pure functions :func:`eta_seconds`, :func:`format_duration`, :func:`status_line` and
:class:`LogSchedule`, driven by any clock.

Spark stages report through :func:`predictd.spark.map_tasks`, which polls Spark's status tracker
from a driver thread and feeds :meth:`Progress.set_done`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
from dataclasses import dataclass, field

log = logging.getLogger("predictd")

#: Log mode: a line at least this often (seconds) while a stage runs ...
LOG_EVERY_SECONDS = 30.0
#: ... and whenever another tenth of the work is done,
LOG_EVERY_FRACTION = 0.1
#: but nothing for stages shorter than this (seconds): quick stages would only add noise.
QUIET_FIRST_SECONDS = 5.0
#: A terminal bar appears only after this many seconds, for the same reason.
BAR_DELAY_SECONDS = 2.0

_SHOWN = contextvars.ContextVar("predictd_progress_shown", default=True)


def set_shown(flag: bool) -> None:
    """Show progress (the default) or not, for the rest of this thread (``predictd -q``)."""
    _SHOWN.set(bool(flag))


@contextlib.contextmanager
def shown(flag: bool = True):
    """Within the block, show progress only if ``flag`` and it is shown outside the block: an
    inner ``shown(True)`` never undoes an outer ``-q``."""
    token = _SHOWN.set(_SHOWN.get() and bool(flag))
    try:
        yield
    finally:
        _SHOWN.reset(token)


# --------------------------------------------------------------------------- pure functions
def eta_seconds(done: float, total: float, elapsed: float) -> float | None:
    """Seconds left at the mean rate so far; None before anything is done (no rate yet).

    >>> eta_seconds(10, 40, 30.0)
    90.0
    """
    if done <= 0 or total <= 0:
        return None
    return max(0.0, elapsed / done * (total - done))


def format_duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h07m`` (whole seconds; minutes once over an hour).

    >>> format_duration(185), format_duration(7620)
    ('3m05s', '2h07m')
    """
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def status_line(desc: str, done: float, total: int, elapsed: float, unit: str = "task",
                postfix: str = "") -> str:
    """One log line: ``desc: done/total units (p %), elapsed, about T left[, postfix]``
    (``done`` may count part of an item: the percentage and the estimate use it).

    >>> status_line("write", 12, 40, 30.0, "block")
    'write: 12/40 blocks (30 %), 30s, about 1m10s left'
    """
    units = unit if total == 1 else unit + "s"
    pct = int(100 * done / total + 1e-9) if total else 100
    line = f"{desc}: {int(done)}/{total} {units} ({pct} %), {format_duration(elapsed)}"
    eta = eta_seconds(done, total, elapsed)
    if done >= total:
        line += ", done"
    elif eta is not None:
        line += f", about {format_duration(eta)} left"
    return f"{line}, {postfix}" if postfix else line


@dataclass
class LogSchedule:
    """When a log line is due: never in the first ``quiet_seconds``; then every
    ``every_seconds``, and whenever the work crosses another ``every_fraction``; at the end once
    (only if the stage lasted at least ``quiet_seconds``)."""

    every_seconds: float = LOG_EVERY_SECONDS
    every_fraction: float = LOG_EVERY_FRACTION
    quiet_seconds: float = QUIET_FIRST_SECONDS
    _last_time: float | None = field(default=None, init=False)
    _last_step: int = field(default=0, init=False)
    _finished: bool = field(default=False, init=False)

    def due(self, done: float, total: int, elapsed: float) -> bool:
        """Whether to log now (and, if so, remember it): ``elapsed`` seconds since the start."""
        if self._finished or elapsed < self.quiet_seconds:
            return False
        # whole steps (with a tolerance: 0.6 / 0.1 is 5.999... in floating point)
        steps = max(1, round(1 / self.every_fraction)) if self.every_fraction > 0 else 0
        step = int(done * steps / total + 1e-9) if total else 0
        finished = total > 0 and done >= total
        now_due = (finished or step > self._last_step or self._last_time is None
                   or elapsed - self._last_time >= self.every_seconds)
        if now_due:
            self._last_time, self._last_step, self._finished = elapsed, step, finished
        return now_due


# --------------------------------------------------------------------------- where it shows
def in_notebook() -> bool:
    """True inside a Jupyter kernel (where tqdm.auto draws a widget)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except AttributeError:
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def display_mode(stream=None) -> str:
    """``"off"`` (silenced), ``"bar"`` (a terminal or a notebook) or ``"log"`` (anything else)."""
    if not _SHOWN.get():
        return "off"
    stream = sys.stderr if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        tty = False
    return "bar" if tty or in_notebook() else "log"


class Progress:
    """Progress of one stage: ``done`` out of ``total`` units.

    Counted with :meth:`update` (one unit finished here) or :meth:`set_done` (an absolute count
    from elsewhere, e.g. Spark's status tracker; safe to call from another thread than the one
    that made the object, though not from two at once). ``mode`` defaults to
    :func:`display_mode`; ``clock`` and ``emit`` (a function taking one line) are for tests.
    Usable as a context manager; :meth:`close` logs the final line where one is due.
    """

    def __init__(self, desc: str, total: int, unit: str = "task", *, mode: str | None = None,
                 clock=time.monotonic, emit=None, schedule: LogSchedule | None = None):
        self.desc, self.total, self.unit = desc, int(total), unit
        self.mode = display_mode() if mode is None else mode
        self.done = 0
        self.partial = 0.0  # of the item in progress (in-process stages, see within_item)
        self.postfix = ""
        self._clock = clock
        self._start = clock()
        self._emit = emit or (lambda line: log.info("%s", line))
        self._schedule = schedule or LogSchedule(LOG_EVERY_SECONDS, LOG_EVERY_FRACTION,
                                                 QUIET_FIRST_SECONDS)
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm
            self._bar = tqdm(total=self.total, desc=f"predictd: {desc}", unit=unit,
                             file=sys.stderr, leave=False, delay=BAR_DELAY_SECONDS,
                             dynamic_ncols=True)

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    @property
    def position(self) -> float:
        return self.done + self.partial

    def update(self, n: int = 1) -> None:
        self.set_done(self.done + n)

    def set_done(self, done: int, total: int | None = None) -> None:
        if total is not None and total != self.total:
            self.total = int(total)
            if self._bar is not None:
                self._bar.total = self.total
        self.done, self.partial = done, 0.0
        self._show()

    def set_partial(self, fraction: float) -> None:
        """How far the item in progress is (0 to 1): long single items (a write task in this
        process) then still move the percentage and the estimate of the log lines."""
        self.partial = min(max(float(fraction), 0.0), 1.0)
        self._show()

    def _show(self) -> None:
        if self._bar is not None:
            # whole items only: tqdm would print a fractional count as "5.0/10"
            if self.done != self._bar.n:
                self._bar.update(self.done - self._bar.n)
        elif self.mode == "log":
            self._maybe_log()

    def set_postfix(self, **values) -> None:
        """Show ``key value`` pairs after the count (e.g. training losses)."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def _maybe_log(self) -> None:
        if self._schedule.due(self.position, self.total, self.elapsed):
            self._emit(self.line())

    def line(self) -> str:
        return status_line(self.desc, self.position, self.total, self.elapsed, self.unit,
                           self.postfix)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "log" and self.done < self.total and self.elapsed >= \
                self._schedule.quiet_seconds:
            # stopped early (training converged) or failed: say where it ended
            self._emit(self.line() + ", stopped")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TrainingProgress(Progress):
    """Progress over training iterations (up to ``max_iterations``; early stopping ends it
    sooner), showing the latest training and validation MSE."""

    def show_iteration(self, row: dict) -> None:
        """The training loop's per-iteration callback (a row of the training history)."""
        self.set_postfix(**{"train mse": f"{row['train_mse']:.4f}",
                            "valid mse": f"{row['valid_mse']:.4f}"})
        self.update()


def training_progress(max_iterations: int) -> TrainingProgress:
    """Training logs from its first iteration (no quiet start): its lines carry the losses, and
    a short training still shows how it converged; at most one line per tenth of
    ``max_iterations`` (or every 30 s)."""
    return TrainingProgress("training", max_iterations, "iteration",
                            schedule=LogSchedule(LOG_EVERY_SECONDS, LOG_EVERY_FRACTION, 0.0))


_ITEM: contextvars.ContextVar = contextvars.ContextVar("predictd_progress_item", default=None)


@contextlib.contextmanager
def item_of(p: "Progress"):
    """Within the block, :func:`within_item` reports to ``p`` (the in-process stage running one
    of its items)."""
    token = _ITEM.set(p)
    try:
        yield
    finally:
        _ITEM.reset(token)


def within_item(parts):
    """Yield ``parts`` (e.g. the blocks a write task goes through), reporting how far the item
    is to the in-process stage running it; a no-op elsewhere (in a Spark task, the stage counts
    whole tasks)."""
    p = _ITEM.get()
    if p is None:
        yield from parts
        return
    parts = list(parts)
    for k, part in enumerate(parts):
        p.set_partial(k / len(parts))
        yield part


def iterate(items, desc: str, unit: str = "item"):
    """Yield ``items`` while showing how many are done (the in-process twin of a Spark stage)."""
    items = list(items)
    with Progress(desc, len(items), unit) as p:
        for it in items:
            yield it
            p.update()
