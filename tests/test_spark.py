"""The Spark layer gives the same answers as the in-process path (local[2] Spark)."""

from __future__ import annotations

import numpy as np
import pytest

from predictd import pipeline
from predictd.config import Config
from predictd.spark import map_tasks
from predictd.errors import PredictdError

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _square(x, payload):
    if x < 0:
        raise PredictdError(f"negative item {x}")
    return x * x + payload


def test_map_tasks_keeps_order_and_reraises_input_errors(spark):
    assert map_tasks(spark, _square, list(range(7)), 1) == [x * x + 1 for x in range(7)]
    assert map_tasks(None, _square, [3], 0) == [9]
    # fewer tasks than items (items dealt round-robin): still in item order
    assert map_tasks(spark, _square, list(range(11)), 2, n_slices=3) == [x * x + 2
                                                                         for x in range(11)]
    with pytest.raises(PredictdError, match="negative item -2"):
        map_tasks(spark, _square, [1, -2, 3], 0)


def _started(x, payload):
    import time
    t = time.monotonic()
    time.sleep(payload)
    return x, t


def test_map_tasks_starts_the_costliest_items_first(spark):
    # the fixture's 2 cores: without the costs, item 3 would wait for a free core
    out = map_tasks(spark, _started, [0, 1, 2, 3], 0.3, cost=[1, 1, 1, 5])
    assert [x for x, _ in out] == [0, 1, 2, 3]
    start = {x: t for x, t in out}
    assert start[3] < start[2] - 0.15
    # in this process, one thread: the items are called in cost order, ties in item order
    calls = []
    assert map_tasks(None, lambda x, p: calls.append(x) or -x, [0, 1, 2, 3],
                     cost=[2, 7, 2, 9]) == [0, -1, -2, -3]
    assert calls == [3, 1, 0, 2]


def test_block_bins_is_a_blocks_or_a_groups_cost():
    from predictd.tensor import block_bins
    blocks = [("chr1", 0, 0, 4096), ("chr1", 1, 4096, 100), ("chr2", 0, 0, 7)]
    assert block_bins(blocks) == [4096, 100, 7]
    assert block_bins([blocks[::2], blocks[1:2]]) == [4103, 100]


def _blas_env(x, payload):
    import os
    return os.environ.get("OPENBLAS_NUM_THREADS")


def _frozen(x, payload):
    import gc
    return gc.get_freeze_count()


def test_python_workers_keep_their_imports_out_of_the_collectors_walk(spark):
    # pyspark's daemon collects garbage after every task: the modules a worker imported are
    # frozen, so that collection does not walk them each time
    assert min(map_tasks(spark, _frozen, list(range(4)))) > 1000


def test_python_workers_get_one_blas_thread_per_task_slot(spark):
    # two workers on two cores, each with a BLAS thread per core, would oversubscribe
    assert set(map_tasks(spark, _blas_env, [0, 1, 2])) == {"1"}


@pytest.mark.parametrize("solver", ["als", "sgd"])
def test_training_through_spark_equals_in_process(roadmap, spark, write_roadmap_inputs, tmp_path,
                                                  solver):
    small = {k: v[:40_000] for k, v in roadmap.items()}
    manifest, sizes = write_roadmap_inputs(small, tmp_path / "in")
    cfg = Config(solver=solver, training_fraction=0.25, block_bins=8192, max_iterations=4,
                 latent_factors=4, sgd_steps=20, batch_size=512, partitions=3,
                 driver_fit_max_mb=0)
    factors = {}
    # executors; in process; and on Spark with the small subset fitted in the driver
    runs = (("spark", spark, cfg), ("local", None, cfg),
            ("driver", spark, cfg.replace(driver_fit_max_mb=256)))
    for name, sc, c in runs:
        run = pipeline.open_run(manifest, sizes, str(tmp_path / name), c, sc=sc,
                                progress=False)
        pipeline.run_all(run, stages=("ingest", "train"))
        m = run.load_model()
        factors[name] = (m.C, m.A, m.bC, m.bA, m.mu)
    for other in ("local", "driver"):
        for a, b in zip(factors["spark"], factors[other]):
            np.testing.assert_array_equal(a, b)


def _in_a_fresh_process(code: str, env: dict | None = None) -> list[str]:
    """Run ``code`` in a new Python process (its own JVM, as a user's session) and return its
    stdout's lines; it must succeed."""
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout.strip().splitlines()


def test_a_stopped_context_is_made_again():
    """A context Spark stopped (its master went away, or a user's sc.stop()) is not handed
    out again: the next get_context makes a live one."""
    code = ("from predictd.spark import get_context; sc = get_context('local[1]'); sc.stop(); "
            "print(get_context('local[1]').parallelize([1, 2, 3]).sum())")
    assert _in_a_fresh_process(code)[-1] == "6"


def test_stop_context_then_another_master_gives_that_master():
    """The warning for a second master says to call stop_context() first: after it, the next
    context has the master and settings asked for (the JVM, still running, holds the first
    context's as system properties) and runs jobs."""
    code = ("from predictd.spark import get_context, stop_context; "
            "sc = get_context('local[1]'); print(sc.master, sc.parallelize([1]).sum()); "
            "stop_context(); sc = get_context('local[2]', conf={'spark.task.maxFailures': '2'}); "
            "print(sc.master, sc.parallelize([1, 2, 3]).sum(), "
            "sc.getConf().get('spark.task.maxFailures'))")
    assert _in_a_fresh_process(code)[-2:] == ["local[1] 1", "local[2] 6 2"]


def test_local_spark_leaves_no_socket_files():
    """Spark's Unix domain sockets go in a directory of the process's, removed when it exits
    (Spark leaves the files behind in java.io.tmpdir otherwise: one per run)."""
    import os
    import shutil
    import tempfile
    from pathlib import Path
    code = ("from predictd.spark import get_context, stop_context; sc = get_context('local[1]');"
            "d = sc.getConf().get('spark.python.unix.domain.socket.dir'); "
            "print(d); print(sc.parallelize([1, 2, 3]).map(lambda x: x).sum()); stop_context()")
    scratch = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))  # short, as socket paths must be
    socket_dir, total = _in_a_fresh_process(code, env=dict(os.environ, TMPDIR=str(scratch)))[-2:]
    assert total == "6" and socket_dir.startswith(str(scratch / "predictd-sock-"))
    assert not os.path.exists(socket_dir) and not list(scratch.iterdir())
    shutil.rmtree(scratch)
