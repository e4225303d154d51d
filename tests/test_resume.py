"""kill -9 at any moment, re-run the same command: the run finishes with bit-identical outputs.

Two ways of killing the real CLI process:

- *at a chosen write* (``--no-spark``): the CLI runs under a small launcher that wraps
  ``os.replace`` — the last step of every atomic write in predictd (ingest block markers, tensor
  blocks, headers, training pieces, the model, genome factors, bigWigs, markers, run.json, the
  report). When the N-th rename whose destination matches a pattern is about to happen, the
  process SIGKILLs itself: the complete temporary file is left behind and the destination is not
  published (``before``), or the kill comes right after the rename (``after``). This reaches every
  stage boundary and the middle of every stage deterministically.
- *from outside at a moment seen on disk* (Spark local): the test polls OUT for progress (ingest
  block markers, training pieces, genome factors) and ``kill -9``s the driver.

After each kill the same command is run again; it must exit 0 and give tracks, model and report
metrics byte-identical to an uninterrupted run, with no temporary files left in OUT.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
# the evaluate stage (report with PNG plots) costs ~3 s a run: only some cases hold a track out
HOLDOUT = ["--holdout", "B:y"]

LAUNCHER = r"""
import os, re, signal, sys, threading
pattern, nth, when = re.compile(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
real_replace, seen, lock = os.replace, [0], threading.Lock()
def replace(src, dst, *a, **k):
    # stages write from several threads: each rename takes its own count under the lock
    k_th = 0
    if pattern.search(os.fspath(dst)) is not None:
        with lock:
            seen[0] += 1
            k_th = seen[0]
    if k_th == nth and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    out = real_replace(src, dst, *a, **k)
    if k_th == nth and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return out
os.replace = replace
sys.argv = ["predictd", *sys.argv[4:]]
from predictd.cli.main import main
main()
"""

# (name, destination pattern, N-th match, before/after the rename)
KILL_POINTS = [
    ("ingest: first block marker, unpublished", r"/_staging/.*\.json$", 1, "before"),
    ("ingest: second tensor block, unpublished", r"/tensor/chrom=.*\.parquet$", 2, "before"),
    ("ingest: done marker, unpublished", r"/_predictd/ingest\.done\.json$", 1, "before"),
    ("train: third training piece, unpublished", r"/work/training_subset/.*\.parquet$", 3,
     "before"),
    ("train: factors.npz published, model.json not", r"/model/factors\.npz$", 1, "after"),
    ("impute: fourth genome-factor block, unpublished", r"/genome_factors/.*\.parquet$", 4,
     "before"),
    ("impute: first track, unpublished", r"/tracks/.*\.imputed\.bw$", 1, "before"),
    ("impute: after 4 tracks published", r"/tracks/.*\.imputed\.bw$", 4, "after"),
    ("impute: done marker, unpublished", r"/_predictd/impute\.done\.json$", 1, "before"),
    ("end: run.json after the last marker, unpublished", r"/run\.json$", 5, "before"),
]


@pytest.fixture(scope="module")
def env(fast_jvm_opts):
    e = {**os.environ, "PYTHONPATH": str(REPO), "PREDICTD_DRIVER_MEMORY": "1g",
         # a test-sized driver JVM starts ~2 s faster with the C1 compiler and the serial GC
         "PYSPARK_SUBMIT_ARGS": f"--conf 'spark.driver.defaultJavaOptions={fast_jvm_opts}' "
                                "pyspark-shell"}
    e.pop("PREDICTD_DEBUG", None)
    return e


def cli_args(inputs, out, *extra):
    return ["run", "-m", inputs.manifest, "-g", inputs.sizes, "-o", str(out), *inputs.args,
            *extra]


def run(args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "predictd.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def outputs(out: Path) -> dict:
    """The outputs that must not depend on interruptions: tracks, model arrays, metrics."""
    got = {}
    for f in sorted((out / "tracks").iterdir()):
        got[f"tracks/{f.name}"] = f.read_bytes()
    with np.load(out / "model" / "factors.npz", allow_pickle=False) as z:
        for k in z.files:
            got[f"model/{k}"] = z[k].tobytes()
    if (out / "report").exists():
        got["report/metrics.tsv"] = (out / "report" / "metrics.tsv").read_bytes()
    return got


def temp_files(out: Path) -> list[str]:
    return [str(p) for p in out.rglob(".*.tmp")] + [str(p) for p in out.rglob(".tmp-*")]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, write_small_run_inputs):
    return write_small_run_inputs(tmp_path_factory.mktemp("resume-in"))


def _reference(inputs, env, out, *extra):
    p = run(cli_args(inputs, out, "--no-spark", *extra), env)
    assert p.returncode == 0, p.stderr
    ref = outputs(out)
    assert len([k for k in ref if k.startswith("tracks/")]) == len(inputs.tracks)
    return ref


@pytest.fixture(scope="module")
def reference(inputs, env, tmp_path_factory):
    """An uninterrupted --no-spark run."""
    return _reference(inputs, env, tmp_path_factory.mktemp("reference") / "out")


@pytest.fixture(scope="module")
def reference_holdout(inputs, env, tmp_path_factory):
    """An uninterrupted --no-spark run with a held-out track (so with the evaluate stage)."""
    ref = _reference(inputs, env, tmp_path_factory.mktemp("reference-holdout") / "out",
                     *HOLDOUT)
    assert "report/metrics.tsv" in ref
    return ref


def _kill_and_resume(inputs, env, out, point):
    name, pattern, nth, when = point
    killed = subprocess.run([sys.executable, "-c", LAUNCHER, pattern, str(nth), when,
                             *cli_args(inputs, out, "--no-spark")],
                            capture_output=True, text=True, env=env, timeout=300)
    left = temp_files(out)
    resumed = run(cli_args(inputs, out, "--no-spark"), env)
    return killed, left, resumed


def test_kill_at_every_stage_then_resume_is_bit_identical(inputs, env, reference, tmp_path):
    # two at a time: each case is two short processes, mostly interpreter start-up
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda ip: _kill_and_resume(inputs, env, tmp_path / f"o{ip[0]}",
                                                                  ip[1]),
                                enumerate(KILL_POINTS)))
    report = []
    for i, (point, (killed, left, resumed)) in enumerate(zip(KILL_POINTS, results)):
        name, _, _, when = point
        out = tmp_path / f"o{i}"
        assert killed.returncode == -signal.SIGKILL, (name, killed.returncode, killed.stderr)
        if when == "before":
            # the kill left the complete-but-unpublished temporary file behind
            assert left, (name, "no temporary file left by the kill")
        assert resumed.returncode == 0, (name, resumed.stderr)
        assert outputs(out) == reference, name
        assert temp_files(out) == [], name
        skipped = [ln.split()[0] for ln in resumed.stdout.splitlines() if "skipped" in ln]
        report.append(f"| {name} | {len(left)} temp file(s) left | resumed, skipped: "
                      f"{', '.join(skipped) or 'none'} | identical |")
    print("\n" + "\n".join(report))


def test_killed_twice_then_resumed(inputs, env, reference_holdout, tmp_path):
    """Kill in ingest, kill the resumed run while it writes the report (evaluate stage), then
    finish: still identical, and the report's temporary directory is gone."""
    out = tmp_path / "out"
    for pattern, nth in ((r"/tensor/chrom=.*\.parquet$", 3), (r"/report/", 1)):
        p = subprocess.run([sys.executable, "-c", LAUNCHER, pattern, str(nth), "before",
                            *cli_args(inputs, out, "--no-spark", *HOLDOUT)],
                           capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == -signal.SIGKILL, p.stderr
        assert temp_files(out), "the kill should leave a temporary file or directory"
    assert not (out / "report" / "index.html").exists()
    p = run(cli_args(inputs, out, "--no-spark", *HOLDOUT), env)
    assert p.returncode == 0, p.stderr
    for stage in ("ingest", "train", "impute"):
        assert f"{stage:<9} skipped" in p.stdout, p.stdout
    assert outputs(out) == reference_holdout
    assert temp_files(out) == []
    assert (out / "report" / "index.html").exists()


def test_changed_config_or_manifest_on_a_killed_run_is_refused(inputs, env, tmp_path):
    """A half-finished OUT is still a run: resuming it with other settings would mix runs."""
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-c", LAUNCHER, r"/work/training_subset/", "1", "after",
                        *cli_args(inputs, out, "--no-spark")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == -signal.SIGKILL
    before = {str(f): f.read_bytes() for f in out.rglob("*") if f.is_file()}

    p = run(cli_args(inputs, out, "--no-spark", "--set", "seed=2"), env)
    assert p.returncode == 2
    assert p.stderr.splitlines() == [
        f"predictd: error: {out} holds a different run (config changed); use another --out "
        "or --overwrite to replace it"]

    m, g = inputs.manifest, inputs.sizes
    m2 = tmp_path / "m2.tsv"
    rows = open(m).read().splitlines()
    base = os.path.dirname(m)
    m2.write_text("\n".join([rows[0]] + [re.sub(r"\t(\S+\.bw)$", lambda x: f"\t{base}/{x[1]}", r)
                                         for r in rows[1:-1]]) + "\n")
    p = run(["run", "-m", str(m2), "-g", g, "-o", str(out), *inputs.args, "--no-spark"], env)
    assert p.returncode == 2
    assert re.fullmatch(r"predictd: error: .* holds a different run \(manifest changed\); .*",
                        p.stderr.strip())
    after = {str(f): f.read_bytes() for f in out.rglob("*") if f.is_file()}
    assert after == before


def _wait_for(out: Path, globs: list[str], proc, timeout=120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for g in globs:
            if any(out.glob(g)):
                return g
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {globs} appeared: "
                                 f"{proc.communicate()[1][-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"nothing matched {globs} under {out} within {timeout} s")


def _kill_group_leftovers(proc):
    """kill -9 hit the driver alone; its JVM and Python workers notice the closed pipe and exit.
    Anything of this test's process group still alive after that is killed too."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.spark
def test_kill_spark_driver_mid_run_then_resume(inputs, env, reference, tmp_path):
    """Spark local mode: kill -9 the driver as soon as OUT shows the training pieces (the
    train stage is running), then resume with Spark; the result equals the in-process
    reference."""
    out = tmp_path / "out"
    seen = []
    for globs in (["work/training_subset/*.parquet"],):
        proc = subprocess.Popen([sys.executable, "-m", "predictd.cli",
                                 *cli_args(inputs, out, "--master", "local[2]")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                start_new_session=True)
        try:
            seen.append(_wait_for(out, globs, proc))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL
        finally:
            _kill_group_leftovers(proc)
            proc.stdout.close()
            proc.stderr.close()
    p = run(cli_args(inputs, out, "--master", "local[2]"), env)
    assert p.returncode == 0, p.stderr
    assert "ingest    skipped" in p.stdout
    assert outputs(out) == reference
    assert temp_files(out) == []
    print(f"\nSpark driver killed when OUT showed: {seen}")
