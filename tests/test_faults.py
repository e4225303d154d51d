"""Faults on a real Spark standalone cluster, and determinism across execution modes.

A throw-away cluster on 127.0.0.1 (``tests/support/sparkcluster.py``: one master, two workers of
one core each) runs the real CLI (``predictd run --master spark://...``) as a subprocess:

- *a lost node*: once the ingest stage is complete (its tasks ran on every executor), a worker
  is SIGKILLed together with its executor and Python workers, like a reclaimed spot instance.
  Spark re-runs the lost tasks on the surviving executors (every task writes its outputs
  atomically and skips what already exists, so a re-run task is harmless) and the run finishes
  with tracks and model byte-identical to a local-mode run. Once with the ALS solver, killed
  while the training subset is being sampled; once with SGD, killed after its first local
  checkpoint, so the lost SGD state is recomputed from the checkpoint's replica;
- *determinism*: the same inputs, config and seed give bit-identical factors (every array of
  ``factors.npz``) and tracks in-process (``--no-spark``), in Spark local mode and on the
  cluster — the training plan (shards, partitions) is fixed by the config, not by the scheduler.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest


pytestmark = [
    pytest.mark.spark, pytest.mark.cluster, pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None and not os.environ.get("JAVA_HOME"),
                       reason="no Java runtime for a Spark cluster"),
]

# partitions and write_parallelism are pinned so every mode makes the same plan; training
# stays on the executors (these small subsets would otherwise be fitted in the driver)
FIXED = ["--set", "max_iterations=6", "--set", "write_parallelism=2",
         "--set", "driver_fit_max_mb=0"]


def env(jvm_opts: str, extra_conf: dict | None = None) -> dict:
    conf = {"spark.driver.defaultJavaOptions": jvm_opts, **(extra_conf or {})}
    e = {**os.environ, "PREDICTD_DRIVER_MEMORY": "1g",
         "PYSPARK_SUBMIT_ARGS": " ".join(f"--conf '{k}={v}'" for k, v in conf.items())
                                + " pyspark-shell"}
    e.pop("PREDICTD_DEBUG", None)
    return e


def cluster_conf(jvm_opts: str) -> dict:
    return {
        "spark.executor.memory": "512m",
        "spark.executor.defaultJavaOptions": jvm_opts,
        # start only once both executors are up, so both get work before the fault
        "spark.scheduler.minRegisteredResourcesRatio": "1.0",
        "spark.scheduler.maxRegisteredResourcesWaitingTime": "60s",
    }


def cmd(inputs, out, *extra):
    return [sys.executable, "-m", "predictd.cli", "run", "-m", inputs.manifest, "-g",
            inputs.sizes, "-o", str(out), *inputs.args, *FIXED, *extra]


def outputs(out: Path) -> dict:
    got = {f"tracks/{f.name}": f.read_bytes() for f in sorted((out / "tracks").iterdir())}
    with np.load(out / "model" / "factors.npz", allow_pickle=False) as z:
        for k in z.files:
            got[f"model/{k}"] = (z[k].dtype.str, z[k].shape, z[k].tobytes())
    return got


def _bigwig_differences(a: Path, b: Path) -> str:
    """How two bigWigs of the same track differ: in their values, their header's summary,
    their zoom levels, or only in the bytes (the same data encoded otherwise)."""
    import pyBigWig
    from predictd.bigwig.read import header_summary
    x, y = a.read_bytes(), b.read_bytes()
    n = min(len(x), len(y))
    first = int(np.argmax(np.frombuffer(x[:n], np.uint8) != np.frombuffer(y[:n], np.uint8))
                if x[:n] != y[:n] else n)
    parts = [f"{len(x)} against {len(y)} bytes, first difference at byte {first}"]
    with pyBigWig.open(str(a)) as p, pyBigWig.open(str(b)) as q:
        if p.chroms() != q.chroms():
            return "; ".join(parts + ["different chromosomes"])
        hp, hq = header_summary(a), header_summary(b)
        parts.append("header summary " + ("equal" if hp == hq else f"{hp} against {hq}"))
        values = zoom = True
        for chrom, length in p.chroms().items():
            u, v = np.array(p.values(chrom, 0, length)), np.array(q.values(chrom, 0, length))
            values &= np.array_equal(u, v, equal_nan=True)
            # coarse statistics come from the zoom levels
            zs = [np.array(r.stats(chrom, 0, length, type=t, nBins=max(1, length // 100_000)),
                           dtype=float) for r in (p, q) for t in ("mean", "max", "std")]
            zoom &= all(np.array_equal(zs[i], zs[i + 3], equal_nan=True) for i in range(3))
        parts.append("values " + ("equal" if values else "DIFFER"))
        parts.append("zoom levels " + ("equal" if zoom else "DIFFER"))
    return "; ".join(parts)


def differences(out: Path, ref: Path) -> list[str]:
    """Every output of run ``out`` that is not byte-identical to run ``ref``'s, described."""
    got, want = outputs(out), outputs(ref)
    found = []
    for k in sorted(got.keys() | want.keys()):
        if k not in got or k not in want:
            found.append(f"{k}: only in {'the run' if k in got else 'the reference'}")
        elif got[k] == want[k]:
            continue
        elif k.startswith("tracks/"):
            found.append(f"{k}: {_bigwig_differences(out / k, ref / k)}")
        else:
            found.append(f"{k}: {got[k][:2]} against {want[k][:2]}, bytes differ")
    return found


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, write_small_run_inputs):
    return write_small_run_inputs(tmp_path_factory.mktemp("faults-in"))


@pytest.fixture(scope="module")
def local_mode(inputs, fast_jvm_opts, tmp_path_factory):
    """The Spark local-mode run every other mode must match."""
    out = tmp_path_factory.mktemp("local") / "out"
    p = subprocess.run(cmd(inputs, out, "--master", "local[2]"), capture_output=True, text=True,
                       env=env(fast_jvm_opts), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def cluster(standalone_cluster, tmp_path_factory):
    # three single-core workers: two are lost in turn, the last one carries on
    c = standalone_cluster(n_workers=3, cores=1, memory="1g",
                                 state_dir=tmp_path_factory.mktemp("cluster"))
    yield c
    c.stop()


def test_differences_names_how_two_runs_differ(tmp_path):
    """The determinism tests' report: a track whose values differ is named as such, an
    identical one not at all, a missing one as missing."""
    from predictd.bigwig import BigWigWriter
    values = np.linspace(0, 5, 4000, dtype=np.float32)
    for run, last in (("a", 5.0), ("b", 6.0)):
        (tmp_path / run / "tracks").mkdir(parents=True)
        (tmp_path / run / "model").mkdir()
        np.savez(tmp_path / run / "model" / "factors.npz", C=np.eye(2))
        for name, v in (("same", values), ("changed", np.append(values[:-1], last))):
            with BigWigWriter(str(tmp_path / run / "tracks" / f"{name}.bw"), [("chr1", 100_000)],
                              25) as w:
                w.add_block("chr1", 0, v)
    (tmp_path / "a" / "tracks" / "extra.bw").write_bytes(
        (tmp_path / "a" / "tracks" / "same.bw").read_bytes())
    found = differences(tmp_path / "a", tmp_path / "b")
    assert len(found) == 2, found
    assert found[0].startswith("tracks/changed.bw: ") and "values DIFFER" in found[0]
    assert found[1] == "tracks/extra.bw: only in the run"


def test_in_process_equals_local_mode(inputs, local_mode, fast_jvm_opts, tmp_path):
    p = subprocess.run(cmd(inputs, tmp_path / "out", "--no-spark"), capture_output=True,
                       text=True, env=env(fast_jvm_opts), timeout=300)
    assert p.returncode == 0, p.stderr
    got = outputs(tmp_path / "out")
    assert sum(k.startswith("tracks/") for k in got) == 6
    assert {"model/C", "model/A", "model/bC", "model/bA", "model/mu"} <= set(got)
    assert not differences(tmp_path / "out", local_mode)


def test_cluster_run_is_deterministic(inputs, local_mode, cluster, fast_jvm_opts,
                                      tmp_path):
    """Executors in other JVMs, tasks scheduled wherever: the same bytes as local mode."""
    assert cluster.alive_workers() == 3
    p = subprocess.run(cmd(inputs, tmp_path / "out", "--master", cluster.master_url),
                       capture_output=True, text=True,
                       env=env(fast_jvm_opts, cluster_conf(fast_jvm_opts)), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not differences(tmp_path / "out", local_mode)


def test_lost_worker_mid_run_still_gives_identical_output(inputs, local_mode, cluster,
                                                          fast_jvm_opts, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(cmd(inputs, out, "--master", cluster.master_url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(fast_jvm_opts, cluster_conf(fast_jvm_opts)),
                            start_new_session=True)
    try:
        # the first training piece: ingest is complete and the sampling job is under way
        pieces = out / "work" / "training_subset"
        deadline = time.monotonic() + 180
        while not any(pieces.glob("*.parquet")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start on the cluster"
            time.sleep(0.01)
        # every executor took part before the fault
        for i in (0, 1, 2):
            assert list((cluster.state_dir / f"work-{i}").glob("app-*/*/stderr")), i
        cluster.kill_worker(0)
        n_pieces = len(list(pieces.glob("*.parquet")))
        assert not (out / "_predictd" / "train.done.json").exists(), \
            "the kill came too late to hit a running job"
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    print(f"\nworker 0 killed with {n_pieces} of 8 training pieces written")
    assert cluster.workers[0].poll() is not None and cluster.workers[1].poll() is None
    assert not differences(out, local_mode)


SGD = ["--set", "solver=sgd", "--set", "max_iterations=14", "--set", "sgd_steps=20",
       "--set", "patience=50"]


def test_lost_worker_during_sgd_after_a_checkpoint(inputs, cluster, fast_jvm_opts,
                                                   tmp_path):
    """SGD keeps its state (genome factors and moments of each shard) in persisted RDDs that
    are locally checkpointed every 10 iterations; losing a node after that must recompute the
    lost partitions from the checkpoint, giving the same bytes as local mode."""
    ref = tmp_path / "local"
    p = subprocess.run(cmd(inputs, ref, "--master", "local[2]", *SGD), capture_output=True,
                       text=True, env=env(fast_jvm_opts), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert cluster.workers[1].poll() is None
    out = tmp_path / "out"
    proc = subprocess.Popen(cmd(inputs, out, "--master", cluster.master_url, *SGD),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(fast_jvm_opts, cluster_conf(fast_jvm_opts)),
                            start_new_session=True)
    try:
        seen = []
        # when stderr is not a terminal, training progress is logged at every tenth of the
        # iterations (10 of 14 is one): wait for one after the checkpoint at iteration 10 and
        # before the last
        past_checkpoint = re.compile(r"training: (1[0-3])/14 iterations")
        for line in proc.stderr:
            seen.append(line)
            if past_checkpoint.search(line):
                break
        assert seen and past_checkpoint.search(seen[-1]), "".join(seen)[-3000:]
        cluster.kill_worker(1)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, ("".join(seen) + stderr)[-3000:]
    assert cluster.workers[1].poll() is not None and cluster.workers[2].poll() is None
    assert not differences(out, ref)
