"""Progress with an estimated time left: the estimate, the wording and when a log line is due
(with a fake clock), where progress shows (terminal bar, log lines, nothing under -q), and a
Spark stage reporting its finished tasks from Spark's status tracker."""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import time

import pytest
from click.testing import CliRunner

from predictd import progress
from predictd.progress import (LogSchedule, Progress, eta_seconds, format_duration, shown,
                               status_line)
from predictd.spark import group_tasks, map_tasks


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_eta_is_the_mean_rate_so_far():
    assert eta_seconds(0, 40, 12.0) is None          # no rate yet
    assert eta_seconds(10, 40, 30.0) == pytest.approx(90.0)
    assert eta_seconds(40, 40, 30.0) == 0.0
    assert eta_seconds(5, 0, 3.0) is None


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (59.4, "59s"), (60, "1m00s"),
                                          (185, "3m05s"), (3599, "59m59s"), (3600, "1h00m"),
                                          (7620, "2h07m"), (-3, "0s")])
def test_durations_read_as_a_person_would_say_them(seconds, text):
    assert format_duration(seconds) == text


def test_status_line_says_done_total_percent_elapsed_and_time_left():
    assert status_line("write", 12, 40, 30.0, "block") == \
        "write: 12/40 blocks (30 %), 30s, about 1m10s left"
    assert status_line("ingest", 0, 1, 2.0, "block") == "ingest: 0/1 block (0 %), 2s"
    assert status_line("training", 100, 100, 65.0, "iteration", "valid mse 0.1") == \
        "training: 100/100 iterations (100 %), 1m05s, done, valid mse 0.1"


def test_log_schedule_quiet_start_then_every_tenth_or_interval_and_the_end_once():
    sched = LogSchedule(every_seconds=30, every_fraction=0.1, quiet_seconds=5)
    assert not sched.due(50, 100, 1.0)       # a quick stage says nothing
    assert sched.due(50, 100, 6.0)           # first line once past the quiet start
    assert not sched.due(55, 100, 7.0)       # same tenth, interval not over
    assert sched.due(60, 100, 8.0)           # another tenth
    assert not sched.due(61, 100, 37.9)
    assert sched.due(61, 100, 38.0)          # 30 s since the last line
    assert sched.due(100, 100, 39.0)         # the end
    assert not sched.due(100, 100, 80.0)     # ... only once
    quick = LogSchedule(quiet_seconds=5)
    assert not quick.due(10, 10, 2.0)        # finished within the quiet start: silent


def test_progress_in_log_mode_with_a_fake_clock():
    clock, lines = FakeClock(), []
    sched = LogSchedule(every_seconds=30, every_fraction=0.25, quiet_seconds=5)
    with Progress("solve genome factors", 8, "block", mode="log", clock=clock,
                  emit=lines.append, schedule=sched) as p:
        for _ in range(8):
            clock.advance(10)
            p.update()
    assert lines[0] == "solve genome factors: 1/8 blocks (12 %), 10s, about 1m10s left"
    assert lines[-1] == "solve genome factors: 8/8 blocks (100 %), 1m20s, done"
    assert [re.match(r".*?: (\d)/8", x).group(1) for x in lines] == ["1", "2", "4", "6", "8"]


def test_training_progress_stopping_early_says_where_it_stopped():
    clock, lines = FakeClock(), []
    p = progress.TrainingProgress("training", 100, "iteration", mode="log", clock=clock,
                                  emit=lines.append, schedule=LogSchedule(quiet_seconds=0))
    for it in range(1, 16):
        clock.advance(2)
        p.show_iteration({"iteration": it, "train_mse": 0.5, "valid_mse": 0.25})
    p.close()  # converged at iteration 15 of at most 100
    assert lines[0] == ("training: 1/100 iterations (1 %), 2s, about 3m18s left, "
                        "train mse 0.5000, valid mse 0.2500")
    assert lines[-1].startswith("training: 15/100 iterations (15 %), 30s, about 2m50s left")
    assert lines[-1].endswith(", stopped")


def test_a_long_single_item_moves_the_estimate_part_by_part():
    # a write task in this process: one item, many blocks
    clock, lines = FakeClock(), []
    p = Progress("write tracks", 1, "track group", mode="log", clock=clock, emit=lines.append,
                 schedule=LogSchedule(quiet_seconds=0, every_fraction=0.25))
    with p, progress.item_of(p):
        for _ in progress.within_item(range(4)):
            clock.advance(10)
        p.update()
    assert lines == ["write tracks: 0/1 track group (0 %), 0s",
                     "write tracks: 0/1 track group (25 %), 10s, about 30s left",
                     "write tracks: 0/1 track group (50 %), 20s, about 20s left",
                     "write tracks: 0/1 track group (75 %), 30s, about 10s left",
                     "write tracks: 1/1 track group (100 %), 40s, done"]
    # outside an in-process stage (a Spark task): the parts just pass through
    assert list(progress.within_item(range(3))) == [0, 1, 2]


def test_where_progress_shows():
    assert progress.display_mode(Tty()) == "bar"
    assert progress.display_mode(io.StringIO()) == "log"      # a log file, CI, a driver log
    with shown(False):
        assert progress.display_mode(Tty()) == "off"
        with shown(True):                                     # never undoes an outer -q
            assert progress.display_mode(Tty()) == "off"
    assert progress.display_mode(Tty()) == "bar"


def test_quiet_flag_silences_progress():
    from predictd.cli import config_cmd  # noqa: F401 - registers `predictd config`
    from predictd.cli.main import cli
    try:
        assert CliRunner().invoke(cli, ["-q", "config", "--show"]).exit_code == 0
        assert progress.display_mode(Tty()) == "off"
        assert CliRunner().invoke(cli, ["config", "--show"]).exit_code == 0
        assert progress.display_mode(Tty()) == "bar"
    finally:
        progress.set_shown(True)


def _square(x, payload):
    return x * x


def test_in_process_stage_logs_per_finished_item(monkeypatch, caplog):
    monkeypatch.setattr(progress, "QUIET_FIRST_SECONDS", 0.0)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    caplog.set_level(logging.INFO, logger="predictd")
    assert map_tasks(None, _square, [1, 2, 3, 4], desc="demo stage", unit="block") == \
        [1, 4, 9, 16]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("demo stage")]
    assert [line.split(" (")[0] for line in lines] == [f"demo stage: {k}/4 blocks"
                                                       for k in (1, 2, 3, 4)]
    caplog.clear()
    # on threads: results in item order, one line per finished item
    assert map_tasks(None, _square, list(range(6)), desc="threaded stage", threads=3) == \
        [0, 1, 4, 9, 16, 25]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("threaded")]
    assert [line.split(" (")[0] for line in lines][-1] == "threaded stage: 6/6 items"
    caplog.clear()
    map_tasks(None, _square, [1, 2], payload=None)   # no desc: an internal step, silent
    with shown(False):
        map_tasks(None, _square, [1, 2], desc="quiet stage")
    assert not caplog.records


class _Job:
    def __init__(self, stage_ids):
        self.stageIds = stage_ids


class _Stage:
    def __init__(self, done, total):
        self.numCompletedTasks, self.numTasks = done, total


class _Tracker:
    """Answers like pyspark's StatusTracker: None for what Spark no longer keeps."""

    def getJobIdsForGroup(self, group):
        return {"g": [1, 2]}.get(group, [])

    def getJobInfo(self, job):
        return {1: _Job([10, 11]), 2: _Job([12])}.get(job)

    def getStageInfo(self, stage):
        return {10: _Stage(4, 4), 11: _Stage(1, 3)}.get(stage)


def test_group_tasks_sums_the_stages_of_a_job_group():
    assert group_tasks(_Tracker(), "g") == (5, 7)
    assert group_tasks(_Tracker(), "other") == (0, 0)


def _last_waits(item, flag):
    # the last task holds its stage open until the driver has logged a partial count, which
    # it can only have read from Spark's status tracker (a timeout keeps a failure finite)
    if item == 3:
        deadline = time.monotonic() + 120
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.02)
    return item


@pytest.mark.spark
@pytest.mark.slow
def test_spark_stage_reports_progress_from_the_status_tracker(spark, monkeypatch, caplog,
                                                               tmp_path):
    from predictd import spark as spark_mod
    monkeypatch.setattr(progress, "QUIET_FIRST_SECONDS", 0.0)
    monkeypatch.setattr(spark_mod, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(sys, "stderr", io.StringIO())   # not a terminal: log lines
    flag = tmp_path / "seen-partial-progress"

    class SeePartial(logging.Handler):
        def emit(self, record):
            m = re.match(r"spark demo: (\d)/4 ", record.getMessage())
            if m and 0 < int(m.group(1)) < 4:
                flag.touch()

    handler = SeePartial()
    logging.getLogger("predictd").addHandler(handler)
    caplog.set_level(logging.INFO, logger="predictd")
    try:
        assert map_tasks(spark, _last_waits, [0, 1, 2, 3], str(flag), desc="spark demo",
                         unit="block") == [0, 1, 2, 3]
    finally:
        logging.getLogger("predictd").removeHandler(handler)
    assert flag.exists(), "no partial progress was read from the status tracker"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("spark demo")]
    assert lines[-1].startswith("spark demo: 4/4 blocks (100 %)")
    # the job group (the name in the Spark UI) is this stage's only
    assert spark.getLocalProperty("spark.jobGroup.id") is None


def test_training_logs_every_tenth_of_its_iterations_even_when_quick(caplog):
    # a cluster test waits for the line after SGD's checkpoint at iteration 10: training logs
    # from its start, whatever its speed, once per tenth of max_iterations
    caplog.set_level(logging.INFO, logger="predictd")
    with shown(True):
        p = progress.training_progress(14)
        p.mode = "log"
        for it in range(1, 15):
            p.show_iteration({"iteration": it, "train_mse": 0.5, "valid_mse": 0.25})
        p.close()
    done = [int(m.group(1)) for r in caplog.records
            if (m := re.match(r"training: (\d+)/14 iterations", r.getMessage()))]
    assert done == [1, 2, 3, 5, 6, 7, 9, 10, 12, 13, 14]
