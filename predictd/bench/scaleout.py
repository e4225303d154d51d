"""Scale-out (``predictd bench --workers 1,2``): the same train + impute job in local mode and on
a standalone cluster of 1, 2, … one-core workers on this machine.

Each job runs in a child process (:func:`train_and_impute`), so that every Spark master gets its
own SparkContext; every cluster's model and tracks are compared with local mode's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from .. import layout, tensor
from ..config import Config
from ..errors import PredictdError
from .compare import model_diff, tracks_diff
from .inputs import bench_config, bench_tracks, write_inputs
from .machine import fresh_memory
from .measure import PeakMemory
from .standard import warm_worker

log = logging.getLogger(__name__)

# the child process: one job spec (JSON) in argv, one result (JSON) as the last line of stdout
_CHILD = ("import json, sys; from predictd.bench.scaleout import train_and_impute; "
          "print(json.dumps(train_and_impute(json.loads(sys.argv[1]))))")


def train_and_impute(spec: dict) -> dict:
    """One train + impute job on an existing tensor; runs in a child process of
    :func:`scale_out`, so that each master gets its own SparkContext."""
    from .. import impute, train
    from ..model import Model
    from ..spark import get_context, stop_context
    from ..allocator import configure
    logging.basicConfig(level=logging.WARNING)
    configure()  # as the predictd command does for its driver
    cfg = Config().replace(**spec["config"])
    header = tensor.read_header(spec["tensor"])
    out = spec["out"]
    t0 = time.perf_counter()
    sc = get_context(spec["master"], conf=spec.get("conf"))
    # executors up, Python workers forked and the library imported in each, as the standard
    # run's Spark start-up does (the same for every master): start-up, not a stage's time
    sc.parallelize(range(64), 64).map(warm_worker).collect()
    load = [os.getloadavg()[0]]
    t1 = time.perf_counter()
    steps: dict = {}
    model, fit_res = train.train(sc, header, spec["tensor"], os.path.join(out, "work"), cfg, [],
                                 timings=steps)
    model.save(layout.model_dir(out))
    model = Model.load(layout.model_dir(out))
    t2 = time.perf_counter()
    gf = os.path.join(out, "gf")
    impute.solve_genome(sc, header, spec["tensor"], gf, model, cfg)
    t3 = time.perf_counter()
    impute.write_tracks(sc, header, out, gf, model, cfg, root=spec["tensor"])
    t4 = time.perf_counter()
    load.append(os.getloadavg()[0])
    par = sc.defaultParallelism
    stop_context()
    return {"master": spec["master"], "default_parallelism": par, "startup_seconds": t1 - t0,
            "train_seconds": t2 - t1, "solve_seconds": t3 - t2, "write_seconds": t4 - t3,
            "train_steps_seconds": steps, "iterations": len(fit_res.history),
            # 1-minute load average before and after the timed work: 2 workers on a 2-core
            # machine only scale when nothing else runs (this run's own load is about 2)
            "load_average": [round(x, 2) for x in load]}


def _run_in_child(spec: dict) -> dict:
    with PeakMemory() as mem:
        proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise PredictdError(f"benchmark job on {spec['master']} failed: {' | '.join(tail)}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["peak_memory_mb"] = round(mem.children_mb, 1)
    return out


# a write share's child: warms up, says "ready", then writes once, timed, per line on stdin
_WRITE_CHILD = ("import sys; from predictd.bench.scaleout import write_share; "
                "import json; write_share(json.loads(sys.argv[1]))")


def write_share(spec: dict) -> None:
    """Write some of a finished job's tracks in this process, without Spark: the work of some
    write tasks (``groups``: each task's tracks), one after the other. A first, untimed pass
    leaves the process's heap as a Spark Python worker's is after the job's earlier tasks
    (glibc keeps freed memory, :func:`predictd.allocator.keep_freed_memory`), so that fresh
    pages are not what is timed; then the child prints ``ready`` and, for each line on stdin,
    writes the tracks again and prints the pass's seconds, so that side-by-side children start
    each timed pass together."""
    from .. import impute
    from ..allocator import configure
    from ..model import Model
    configure()
    cfg = Config().replace(**spec["config"])
    header = tensor.read_header(spec["tensor"])
    model = Model.load(layout.model_dir(spec["job"]))
    gf = os.path.join(spec["job"], "gf")

    def write(out):
        for tracks in spec["groups"]:
            impute.write_tracks(None, header, out, gf, model, cfg, root=spec["tensor"],
                                only=tracks)

    write(os.path.join(spec["out"], "warm"))
    print("ready", flush=True)
    for i, _ in enumerate(sys.stdin):
        t0 = time.perf_counter()
        write(os.path.join(spec["out"], f"pass-{i}"))
        print(time.perf_counter() - t0, flush=True)


def write_limit(job: str, root: str, config: dict, n_tracks: int, fewer: int, more: int,
                work: str, passes: int = 2) -> dict:
    """What this machine allows the write's scale-out from ``fewer`` to ``more`` one-core
    workers at most: the time ``fewer`` processes side by side take to write a finished job's
    tracks, over the time ``more`` take. The tracks are cut into the tasks the larger cluster
    runs (:func:`predictd.impute.track_groups`, as many as its default parallelism) and the
    tasks dealt out in contiguous runs, so both sides do the same work; every process without
    Spark, with one BLAS thread. Side-by-side processes share the memory system and caches,
    which is what keeps the ratio under ``more / fewer``. The two sets of processes take turns
    ``passes`` times; each one's fastest pass counts. Returns both sets' seconds and their
    ratio (``speedup``)."""
    from ..impute import track_groups
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs: list[subprocess.Popen] = []

    def failed(p):
        p.kill()
        return PredictdError("write-limit child failed: "
                             + " | ".join(p.communicate()[1].strip().splitlines()[-3:]))

    def start(shares: list[list[list[int]]]) -> list[subprocess.Popen]:
        mine = []
        for i, groups in enumerate(shares):
            spec = {"job": job, "tensor": root, "config": config, "groups": groups,
                    "out": os.path.join(work, f"{len(shares)}-{i}")}
            mine.append(subprocess.Popen([sys.executable, "-c", _WRITE_CHILD, json.dumps(spec)],
                                         env=env, text=True, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        procs.extend(mine)
        for p in mine:
            if p.stdout.readline().strip() != "ready":
                raise failed(p)
        return mine

    def timed_pass(mine: list[subprocess.Popen]) -> float:
        for p in mine:
            p.stdin.write("go\n")
            p.stdin.flush()
        seconds = []
        for p in mine:
            line = p.stdout.readline().strip()
            if not line:
                raise failed(p)
            seconds.append(float(line))
        return max(seconds)

    # a standalone cluster's default parallelism: its cores, at least 2
    tasks = track_groups(np.arange(n_tracks), max(more, 2))

    def split(k):
        return [[tasks[i] for i in part] for part in np.array_split(np.arange(len(tasks)), k)
                if part.size]

    try:
        sets = [start(split(fewer)), start(split(more))]
        best = [min(t) for t in zip(*[[timed_pass(m) for m in sets] for _ in range(passes)])]
        return {"fewer_seconds": round(best[0], 3), "more_seconds": round(best[1], 3),
                "speedup": round(best[0] / best[1], 3)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
        shutil.rmtree(work, ignore_errors=True)


#: the timed figures of a run whose median over repeats :func:`scale_out` reports
_TIMED = ("train_seconds", "solve_seconds", "write_seconds", "train_plus_impute_seconds")


def _median_run(reps: list[dict]) -> dict:
    """One worker count's figures over its repeats: each timed figure's median (the run with
    the median train + impute time for the rest), every repeat under ``repeats``."""
    order = sorted(reps, key=lambda r: r["train_plus_impute_seconds"])
    out = dict(order[(len(order) - 1) // 2])
    for k in _TIMED:
        out[k] = round(float(np.median([r[k] for r in reps])), 3)
    out["equal_to_local"] = all(r["equal_to_local"] for r in reps)
    if len(reps) > 1:
        out["repeats"] = reps
    return out


def paired_speedups(fewer: list[dict], more: list[dict]) -> tuple[dict, list[dict]]:
    """Speed-ups from the runs of two worker counts, repeat by repeat: each repeat's own
    (``fewer[i]`` / ``more[i]`` of every timed figure: two runs a minute apart, so that a slow
    spell of the machine falls on both) and, as the figure, their median — a paired design."""
    pairs = [{k: round(x[k] / y[k], 3) for k in _TIMED} for x, y in zip(fewer, more)]
    return {k: round(float(np.median([p[k] for p in pairs])), 3) for k in _TIMED}, pairs


def scale_out(workdir: str, workers: list[int], quick: bool = False, say=None,
              n_bins: int | None = None, config: dict | None = None, repeat: int = 1) -> dict:
    """The same train + impute job in local mode and on a standalone cluster of 1, 2, …
    workers (one core each, BLAS pinned to one thread per executor); reports throughputs and
    whether every result equals local mode's. ``repeat`` runs each cluster that many times,
    the worker counts taking turns (1, 2, 1, 2, …: a slow spell of a shared machine falls on
    both), and reports each figure's median; a speed-up is the median of the repeats' own
    (each pair of runs'), and ``speedup_of_medians`` the ratio of the medians."""
    from .. import ingest
    from ..genome import load_genome
    from ..localcluster import start_cluster
    from ..manifest import read_manifest
    from ..model import Model
    say = say or (lambda msg: log.info("%s", msg))
    if repeat < 1:
        raise PredictdError(f"repeat {repeat}: must be at least 1")
    tracks, source = bench_tracks(n_bins or (1 << 18 if quick else None))
    n = next(iter(tracks.values())).size
    cfg = bench_config(quick, **(config or {}))
    base = os.path.join(workdir, "scaleout")
    shutil.rmtree(base, ignore_errors=True)
    manifest, sizes, _ = write_inputs(tracks, os.path.join(workdir, f"inputs-{n}"))
    genome = load_genome(sizes)
    root = os.path.join(base, "tensor")
    header = ingest.ingest(None, read_manifest(manifest), genome, cfg, root)
    spec_cfg = {k: getattr(cfg, k) for k in ("partitions", "max_iterations")}
    chrom, length = genome.chroms[0]
    pin = {f"spark.executorEnv.{v}": "1" for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    n_tracks = len(header.cell_types) * len(header.assays)

    def throughputs(r, total=True):
        r["solve_bins_per_s"] = round(n / r["solve_seconds"])
        r["write_tracks_per_s"] = round(n_tracks / r["write_seconds"], 3)
        if total:
            r["train_plus_impute_seconds"] = round(r["train_seconds"] + r["solve_seconds"] +
                                                   r["write_seconds"], 3)
        return r

    say("scale-out: what fresh memory costs on this machine")
    # a new cluster's processes start on memory the last run's processes gave back
    fresh = fresh_memory()
    ref = os.path.join(base, "local")
    say("scale-out: local[*] reference run")
    runs = {"local": throughputs(_run_in_child({"master": "local[*]", "tensor": root,
                                                "out": ref, "config": spec_cfg}))}
    ref_model = Model.load(layout.model_dir(ref))
    reps: dict[int, list[dict]] = {w: [] for w in workers}
    limits: list[dict] = []  # write_limit of the first and last worker counts, per repeat
    for i in range(repeat):
        for w in workers:
            out = os.path.join(base, f"workers-{w}")
            shutil.rmtree(out, ignore_errors=True)  # each repeat runs the whole job again
            say(f"scale-out: standalone cluster with {w} worker(s)" +
                (f", run {i + 1} of {repeat}" if repeat > 1 else ""))
            with start_cluster(n_workers=w, cores=1) as cluster:
                r = _run_in_child({"master": cluster.master_url, "tensor": root, "out": out,
                                   "config": spec_cfg, "conf": {**cluster.conf(), **pin}})
            r["model_max_abs_diff_vs_local"] = model_diff(Model.load(layout.model_dir(out)),
                                                          ref_model)
            r["tracks_max_abs_diff_vs_local"] = tracks_diff(ref, out, ref_model.track_names(),
                                                            chrom, length, cfg.bin_size)
            r["equal_to_local"] = bool(r["model_max_abs_diff_vs_local"] <= 1e-6 and
                                       r["tracks_max_abs_diff_vs_local"] <= 1e-4)
            reps[w].append(throughputs(r))
        if len(workers) >= 2:
            say(f"scale-out: the write without Spark, {workers[0]} and {workers[-1]} processes "
                "side by side" + (f", run {i + 1} of {repeat}" if repeat > 1 else ""))
            limits.append(write_limit(ref, root, spec_cfg, n_tracks, workers[0], workers[-1],
                                      os.path.join(base, "write-limit")))
    for w in workers:
        runs[f"workers_{w}"] = throughputs(_median_run(reps[w]), total=False)
    out = {"data": {"source": source, "bins": n, "tracks": n_tracks}, "repeat": repeat,
           "runs": runs, "fresh_memory": fresh}
    if len(workers) >= 2:
        lo, hi = workers[0], workers[-1]
        out["speedup"], pairs = paired_speedups(reps[lo], reps[hi])
        out["speedup"]["workers"] = [lo, hi]
        a, b = runs[f"workers_{lo}"], runs[f"workers_{hi}"]
        out["speedup_of_medians"] = {k: round(a[k] / b[k], 3) for k in _TIMED}
        if repeat > 1:
            out["speedup_per_repeat"] = pairs
        # the write's speed-up against what the machine allows, pair by pair as the speed-up
        out["write_limit"] = {"workers": [lo, hi], "per_repeat": limits, "speedup": round(
            float(np.median([lim["speedup"] for lim in limits])), 3)}
        out["write_vs_limit"] = round(float(np.median(
            [p["write_seconds"] / lim["speedup"] for p, lim in zip(pairs, limits)])), 3)
    return out


# the whole scale-out in a child process: keyword arguments (JSON) in argv, the result (JSON)
# as the last line of stdout; progress messages and a failure's one line on stderr
_SCALE_OUT_CHILD = ("import sys; from predictd.bench.scaleout import scale_out_main; "
                    "sys.exit(scale_out_main(sys.argv[1]))")


def scale_out_main(args: str) -> int:
    """The child process of :func:`scale_out_in_child`: runs :func:`scale_out` with the
    keyword arguments ``args`` (JSON), prints the result as JSON; returns the exit status."""
    from ..allocator import configure
    configure()  # as the predictd command does

    def say(msg):
        print(f"predictd: bench: {msg}", file=sys.stderr, flush=True)

    try:
        res = scale_out(say=say, **json.loads(args))
    except PredictdError as e:
        print(f"predictd: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(res, default=str))
    return 0


def scale_out_in_child(workdir: str, workers: list[int], **kwargs) -> dict:
    """:func:`scale_out` (``kwargs``: its other arguments but ``say``, JSON-ready) in a fresh
    Python process, as ``predictd bench --workers`` runs it after the standard run: what the
    standard run leaves in its process (a heap kept for reuse, the local-mode JVM) is then no
    part of what the scale-out measures. Its progress messages go to stderr as they come."""
    args = {"workdir": os.path.abspath(workdir), "workers": list(workers), **kwargs}
    proc = subprocess.run([sys.executable, "-c", _SCALE_OUT_CHILD, json.dumps(args)],
                          stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise PredictdError(f"the scale-out benchmark failed (exit {proc.returncode}): "
                            "see its message above")
    return json.loads(lines[-1])
