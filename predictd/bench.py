"""Benchmarks: predictd's stages timed against the limits of this machine, in the same run.

Every ratio compares predictd with the plain operation it cannot beat, on the same data, with
the same number of processes:

* ``ingest_vs_pybigwig`` — ingest through local Spark (start-up excluded) / a plain pyBigWig
  read + 25 bp binning loop over the same files, spread over as many processes as Spark has
  cores. ``ingest_inprocess_vs_pybigwig`` is the same in one process (``sc=None``);
  ``bigwig_read_vs_pybigwig`` is predictd's reader alone (:func:`predictd.bigwig.read_binned`,
  which decodes the data sections itself) against that limit.
* ``write_vs_pybigwig`` — imputation (solve the genome factors, compute every track, write the
  bigWigs) in one process / pyBigWig writing the same float32 arrays alone in one process.
* ``impute_gemm_fraction`` — FLOP/s of predictd's imputation math (``solve_block`` +
  ``impute_values`` on one tensor block) / FLOP/s of bare float32 numpy GEMMs of the same shapes.
* ``spark_overhead`` — training + imputation through local Spark / the same code in this process
  (``sc=None``), on ≥ 1 M bins (full mode).

Peak memory is measured per stage for this process (VmHWM, reset before each stage where the
kernel allows) and for its child processes (Spark's JVM and Python workers, sampled every 50 ms).

:func:`roadmap_scale` runs the Roadmap-shaped synthetic tensor (127 × 24, 1,014 experiments,
1.2 M bins) end to end and extrapolates whole-genome imputation; :func:`scale_out` runs the same
job on a standalone cluster with 1, 2, … workers.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from . import synthetic, tensor
from .bigwig import BigWigWriter, read_binned, write_bigwig
from .config import Config
from .errors import PredictdError

log = logging.getLogger("predictd.bench")

#: PREDICTD (Durham et al. 2018) as published: training on 1 % of the genome took 10–24 h on a
#: 64-core Spark cluster; whole-genome imputation 24–48 h on a cluster.
PREDICTD_PUBLISHED = {"train_1pct_hours": [10, 24], "train_1pct_cores": 64,
                      "impute_genome_hours": [24, 48]}

ROADMAP_BINS = 1_200_000
GENOME_BINS = 120_000_000


# --------------------------------------------------------------------------- machine facts
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


# --------------------------------------------------------------------------- memory
def _status_kb(pid: int | str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _descendants(root: int) -> list[int]:
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
    ``interval`` seconds; their peak is the largest sampled sum of their RSS.
    """

    def __init__(self, interval: float = 0.05):
        self.interval = interval
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
        while True:
            kids = sum(_status_kb(p, "VmRSS:") for p in _descendants(me))
            total = kids + _status_kb(me, "VmRSS:")
            self._peak_children = max(self._peak_children, kids)
            self._peak_total = max(self._peak_total, total)
            if self._stop.wait(self.interval):
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.self_mb = _status_kb("self", "VmHWM:") / 1024
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


# --------------------------------------------------------------------------- data
CELLS = ["E003", "E017", "E116", "E117"]
MARKS = ["H3K4me3", "H3K4me1", "H3K27me3", "H3K36me3", "H3K9me3"]


def shared_dir() -> str:
    root = os.environ.get("PREDICTD_SHARED") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared")
    return os.path.join(root, "data")


def bench_tracks(n_bins: int | None = None) -> tuple[dict[str, np.ndarray], str]:
    """``({"cell.mark": float32 arcsinh values}, source)``: the 20 shared Roadmap pilot tracks
    (4 epigenomes × 5 marks, 1,126,469 bins) if present, else synthetic tracks of that shape."""
    pilot = os.path.join(shared_dir(), "roadmap_pilot")
    if os.path.isdir(pilot):
        out = {}
        for c in CELLS:
            for m in MARKS:
                with np.load(os.path.join(pilot, f"{c}.{m}.pilot.arcsinh.npz")) as z:
                    arr = z["arr_0"]
                out[f"{c}.{m}"] = np.ascontiguousarray(arr[:n_bins] if n_bins else arr)
        return out, "shared Roadmap pilot tracks (roadmap_pilot/)"
    n = n_bins or 1_126_469
    obs = [(c, m) for c in CELLS for m in MARKS]
    return synthetic.synthetic_tracks(n, CELLS, MARKS, obs), "synthetic (shared data absent)"


def write_inputs(tracks: dict[str, np.ndarray], directory: str, bin_size: int = 25
                 ) -> tuple[str, str, list[str]]:
    """Write the tracks as bigWigs in input units (sinh of arcsinh) on one pseudo-chromosome;
    returns (manifest, chrom.sizes, bigWig paths)."""
    os.makedirs(directory, exist_ok=True)
    n = next(iter(tracks.values())).size
    length = n * bin_size
    sizes = os.path.join(directory, "bench.chrom.sizes")
    with open(sizes, "w") as fh:
        fh.write(f"pilot\t{length}\n")
    rows, paths = ["cell_type\tassay\turi\n"], []
    for name, y in tracks.items():
        path = os.path.join(directory, f"{name}.bw")
        if not os.path.exists(path):
            with BigWigWriter(path, [("pilot", length)], bin_size) as w:
                w.add_block("pilot", 0, np.sinh(y.astype(np.float64)).astype(np.float32))
        cell, mark = name.split(".", 1)
        rows.append(f"{cell}\t{mark}\t{path}\n")
        paths.append(path)
    manifest = os.path.join(directory, "manifest.tsv")
    with open(manifest, "w") as fh:
        fh.writelines(rows)
    return manifest, sizes, paths


# --------------------------------------------------------------------------- the limits
def _plain_read(path: str, chrom: str, length: int, bin_size: int = 25,
                chunk_bins: int = 1 << 16) -> int:
    """The limit for ingest: pyBigWig's fastest read path plus numpy binning, nothing else."""
    import pyBigWig
    bw = pyBigWig.open(path)
    n_bins = 0
    step = chunk_bins * bin_size
    for s in range(0, length, step):
        e = min(length, s + step)
        v = bw.values(chrom, s, e, numpy=True)
        np.nan_to_num(v, copy=False)
        full = (e - s) // bin_size
        means = v[:full * bin_size].reshape(full, bin_size).mean(axis=1, dtype=np.float64)
        n_bins += means.size + ((e - s) % bin_size > 0)
    bw.close()
    return n_bins


def _plain_write(path: str, chrom: str, length: int, y: np.ndarray, bin_size: int = 25,
                 block_bins: int = 262_144) -> int:
    """The limit for track writing: pyBigWig fixed-step entries of a ready float32 array, in
    blocks, with the same zoom levels predictd writes."""
    import pyBigWig
    bw = pyBigWig.open(path, "w")
    bw.addHeader([(chrom, length)], maxZooms=10)
    n_full = length // bin_size
    for s in range(0, n_full, block_bins):
        e = min(n_full, s + block_bins)
        bw.addEntries(chrom, s * bin_size, values=y[s:e], span=bin_size, step=bin_size)
    if y.size > n_full:
        bw.addEntries([chrom], [n_full * bin_size], ends=[length], values=[float(y[-1])])
    bw.close()
    return y.size


def _read_job(args):
    return _plain_read(*args)


def _write_job(args):
    path, chrom, length, npy = args
    return _plain_write(path, chrom, length, np.load(npy))


def _noop(x):
    return x


def _warm_worker(x):
    import predictd.impute  # noqa: F401  (pulls in numpy, pyarrow, pyBigWig)
    import predictd.ingest  # noqa: F401
    import predictd.train  # noqa: F401
    time.sleep(0.05)  # hold the slot so every concurrent worker gets a task
    return x


def _warm_pool(processes: int) -> ProcessPoolExecutor:
    """A process pool whose workers are already running (their start-up, like Spark's, is not
    part of the measurement). Forkserver, not fork: the benchmark process may hold a live Spark
    gateway whose sockets a forked child must not inherit."""
    import multiprocessing
    ex = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("forkserver"))
    list(ex.map(_noop, range(4 * processes)))
    return ex


def gemm_fraction(X: np.ndarray, model, experiments: list[str], ridge: float,
                  repeats: int = 5) -> dict:
    """FLOP/s of predictd's imputation math on a block / FLOP/s of bare numpy GEMMs.

    The math is :func:`predictd.impute.solve_block` (``[G | bG]`` from the observed block) and
    :func:`predictd.impute.impute_values` (every (cell type, assay) pair), float32. The limit is
    the two bare products ``X Pᵀ`` (n × E by E × L+1) and ``GB W`` (n × L+1 by L+1 × T) with the
    same dtype, operands prepared in advance, each in the faster of its two memory layouts
    (``X @ P.T`` or ``(P @ X.T).T``). Best of ``repeats``.
    """
    from .impute import impute_values, solve_block
    pairs = model.pairs()
    n, E = X.shape
    L1 = model.latent_factors + 1
    T = len(pairs)
    flops = 2.0 * n * E * L1 + 2.0 * n * L1 * T
    P = np.ascontiguousarray(np.random.default_rng(0).standard_normal((L1, E)), np.float32)
    W = np.ascontiguousarray(np.random.default_rng(1).standard_normal((L1, T)), np.float32)
    Xc = np.ascontiguousarray(X, dtype=np.float32)

    def ours():
        GB = solve_block(Xc, model, experiments, ridge, 0.0)
        return impute_values(GB, model, pairs)

    GB = Xc @ P.T
    GBt = np.ascontiguousarray(GB.T)
    Xt_free = Xc.T
    Wt = np.ascontiguousarray(W.T)
    candidates = {"solve_row_major": lambda: Xc @ P.T, "solve_col_major": lambda: P @ Xt_free,
                  "impute_row_major": lambda: GB @ W, "impute_col_major": lambda: Wt @ GBt}
    times = {k: [] for k in ("ours", *candidates)}
    for _ in range(repeats):
        for k, fn in (("ours", ours), *candidates.items()):
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    a = best["ours"]
    b = (min(best["solve_row_major"], best["solve_col_major"]) +
         min(best["impute_row_major"], best["impute_col_major"]))
    return {"shape": {"bins": n, "experiments": E, "factors_plus_bias": L1, "tracks": T},
            "gflops": round(flops / 1e9, 3), "predictd_seconds": round(a, 5),
            "gemm_seconds": round(b, 5), "predictd_gflop_s": round(flops / a / 1e9, 2),
            "gemm_gflop_s": round(flops / b / 1e9, 2), "fraction": round(b / a, 3),
            "layouts_seconds": {k: round(v, 5) for k, v in best.items() if k != "ours"}}


# --------------------------------------------------------------------------- comparisons
def _model_diff(a, b) -> float:
    return float(max(np.max(np.abs(a.C - b.C)), np.max(np.abs(a.A - b.A)),
                     np.max(np.abs(a.bC - b.bC)), np.max(np.abs(a.bA - b.bA)),
                     abs(a.mu - b.mu)))


def _tracks_diff(out_a: str, out_b: str, names: list[str], chrom: str, length: int,
                 bin_size: int) -> float:
    worst = 0.0
    for name in names:
        pa = os.path.join(out_a, "tracks", f"{name}.imputed.bw")
        pb = os.path.join(out_b, "tracks", f"{name}.imputed.bw")
        ya = read_binned(pa, chrom, length, bin_size)
        yb = read_binned(pb, chrom, length, bin_size)
        worst = max(worst, float(np.max(np.abs(ya.astype(np.float64) - yb))))
    return worst


# --------------------------------------------------------------------------- the benchmark
def bench_config(quick: bool, **overrides) -> Config:
    base = {"partitions": 4, "max_iterations": 30 if quick else 60}
    base.update(overrides)
    return Config().replace(**base)


def run(workdir: str, quick: bool = False, spark: bool = True, master: str | None = None,
        say=None, n_bins: int | None = None, config: dict | None = None) -> dict:
    """The standard benchmark; returns the JSON-ready figures.

    Parameters
    ----------
    workdir : str
        Scratch directory (inputs, tensors, outputs); reused inputs are not rewritten.
    quick : bool
        2**18 bins instead of the full 1.13 M (a sub-minute run).
    spark : bool
        Also run the Spark stages (``spark_overhead``, ``ingest_vs_pybigwig``).
    master : str, optional
        Spark master for the Spark stages (default ``local[*]``; an existing context of this
        process is reused).
    n_bins : int, optional
        Use only the first ``n_bins`` bins (overrides ``quick``; for tests).
    config : dict, optional
        Config overrides (e.g. ``{"max_iterations": 3}``).
    """
    from . import impute, ingest, train
    from .genome import load_genome
    from .manifest import read_manifest
    from .model import Model
    say = say or (lambda msg: log.info("%s", msg))
    rec = Recorder(say=say)
    res: dict = {"machine": machine_info(), "quick": quick,
                 "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    n_bins = n_bins or (1 << 18 if quick else None)
    tracks, source = bench_tracks(n_bins)
    n = next(iter(tracks.values())).size
    res["data"] = {"source": source, "bins": n, "tracks": len(tracks),
                   "experiments": len(tracks)}
    cfg = bench_config(quick, **(config or {}))
    res["config"] = {k: getattr(cfg, k) for k in ("latent_factors", "training_fraction",
                                                   "solver", "max_iterations", "partitions",
                                                   "block_bins")}
    inputs = os.path.join(workdir, f"inputs-{n}")
    manifest, sizes, paths = rec.run("prepare_inputs", write_inputs, tracks, inputs)
    tr = read_manifest(manifest)
    genome = load_genome(sizes)
    chrom, length = genome.chroms[0]
    bin_size = cfg.bin_size

    for sub in ("local", "local_factor", "spark", "limits"):
        shutil.rmtree(os.path.join(workdir, sub), ignore_errors=True)
    local = os.path.join(workdir, "local")

    # ---- ingest: the limit, then predictd in this process
    jobs = [(p, chrom, length, bin_size) for p in paths]
    rec.run("pybigwig_read", lambda: [_read_job(j) for j in jobs])
    # predictd's reader alone (the section decoder of predictd.bigwig) on the same files
    rec.run("bigwig_read", lambda: [read_binned(p, c, L, b) for p, c, L, b in jobs])
    header = rec.run("ingest_inprocess", ingest.ingest, None, tr, genome, cfg,
                     os.path.join(local, "tensor"))
    root = os.path.join(local, "tensor")
    total_bins = n * len(tracks)

    # ---- train + impute in this process
    model_l, fit_l = rec.run("train_inprocess", train.train, None, header, root,
                             os.path.join(local, "work"), cfg, [])
    model_l.save(os.path.join(local, "model"))
    model_l = Model.load(os.path.join(local, "model"))  # the float64 round trip impute sees
    gf_l = os.path.join(local, "gf")
    rec.run("solve_inprocess", impute.solve_genome, None, header, root, gf_l, model_l, cfg)
    rec.run("write_inprocess", impute.write_tracks, None, header, local, gf_l, model_l, cfg,
            root=root)
    n_tracks = len(model_l.cell_types) * len(model_l.assays)

    # ---- the write limit: pyBigWig writing the very arrays predictd wrote
    lim = os.path.join(workdir, "limits")
    os.makedirs(lim, exist_ok=True)
    wjobs = []
    for name in model_l.track_names():
        y = read_binned(os.path.join(local, "tracks", f"{name}.imputed.bw"), chrom, length,
                        bin_size)
        npy = os.path.join(lim, f"{name}.npy")
        np.save(npy, y)
        wjobs.append((os.path.join(lim, f"{name}.bw"), chrom, length, npy))
    arrays = [(p, c, L, np.load(f)) for p, c, L, f in wjobs]
    rec.run("pybigwig_write", lambda: [_plain_write(*a) for a in arrays])
    # predictd's own bigWig writer (predictd.bigwig.write) on the very same arrays, nothing else
    rec.run("bigwig_write", lambda: [write_bigwig(p[:-3] + ".predictd.bw", [(c, L)],
                                                  [(c, 0, y)], bin_size=bin_size)
                                     for p, c, L, y in arrays])
    del arrays
    # the same write with the factor model alone (stack = false): what the stacked transfer
    # regression adds on top of writing is the difference
    import dataclasses
    plain = dataclasses.replace(model_l, stack=None, stack_windows=(), stack_similar=None)
    rec.run("write_factor_model_inprocess", impute.write_tracks, None, header,
            os.path.join(workdir, "local_factor"), gf_l, plain, cfg)

    # ---- the math against bare GEMMs
    _, X = tensor.read_block(root, *header.blocks()[0][:2], header.experiments)
    gf = gemm_fraction(X, model_l, [f"{c}.{a}" for c, a in model_l.observed], cfg.ri2)
    del X

    t_read = rec.seconds("pybigwig_read")
    t_write_lim = rec.seconds("pybigwig_write")
    t_imp_l = rec.seconds("solve_inprocess") + rec.seconds("write_inprocess")
    res.update({
        "ingest_inprocess_vs_pybigwig": round(rec.seconds("ingest_inprocess") / t_read, 3),
        "bigwig_read_vs_pybigwig": round(rec.seconds("bigwig_read") / t_read, 3),
        "write_vs_pybigwig": round(t_imp_l / t_write_lim, 3),
        "write_vs_pybigwig_factor_model": round(
            (rec.seconds("solve_inprocess") + rec.seconds("write_factor_model_inprocess")) /
            t_write_lim, 3),
        "bigwig_write_vs_pybigwig": round(rec.seconds("bigwig_write") / t_write_lim, 3),
        "impute_gemm_fraction": gf["fraction"],
        "gemm": gf,
        "throughput": {
            "pybigwig_read_bins_per_s": round(total_bins / t_read),
            "ingest_inprocess_bins_per_s": round(total_bins / rec.seconds("ingest_inprocess")),
            "pybigwig_write_bins_per_s": round(total_bins / t_write_lim),
            "solve_inprocess_bins_per_s": round(n / rec.seconds("solve_inprocess")),
            "write_inprocess_tracks_per_s": round(n_tracks / rec.seconds("write_inprocess"), 3),
            "write_inprocess_bins_per_s": round(n * n_tracks / rec.seconds("write_inprocess")),
            "train_inprocess_bins_per_s_per_iteration": round(
                fit_l.n_bins * len(fit_l.history) / rec.seconds("train_inprocess")),
        },
        "training": {"inprocess": {"iterations": len(fit_l.history), "bins": fit_l.n_bins,
                                   "best_valid_mse": fit_l.best_valid_mse,
                                   "stopped": fit_l.stopped}},
    })

    if spark:
        _spark_part(res, rec, workdir, tr, genome, cfg, header, model_l, paths, jobs, master,
                    total_bins, n, n_tracks, chrom, length)
    res["seconds"] = {k: v["seconds"] for k, v in rec.stages.items()}
    res["cpu_seconds"] = {k: v["cpu_seconds"] for k, v in rec.stages.items()}
    res["memory_mb"] = {k: {m: v[m] for m in ("self_mb", "children_mb", "total_mb")}
                        for k, v in rec.stages.items()}
    res["peak_memory_mb"] = max(v["total_mb"] for v in rec.stages.values())
    # single-process ratios in CPU time too: robust when other jobs share the machine
    cpu = res["cpu_seconds"]
    res["cpu_ratios"] = {
        "ingest_inprocess_vs_pybigwig": round(cpu["ingest_inprocess"] / cpu["pybigwig_read"], 3),
        "write_vs_pybigwig": round((cpu["solve_inprocess"] + cpu["write_inprocess"]) /
                                   cpu["pybigwig_write"], 3)}
    res["load_average"] = [round(x, 2) for x in os.getloadavg()]
    res["goals"] = {"ingest_vs_pybigwig": "<= 1.25", "write_vs_pybigwig": "<= 1.25",
                    "impute_gemm_fraction": ">= 0.5", "spark_overhead": "<= 1.5 (>= 1 M bins)"}
    return res


def _spark_part(res, rec, workdir, tr, genome, cfg, header_l, model_l, paths, jobs, master,
                total_bins, n, n_tracks, chrom, length):
    from . import impute, ingest, train
    from .model import Model
    from .spark import default_parallelism, get_context
    sp = os.path.join(workdir, "spark")
    sc = rec.run("spark_startup", get_context, master or "local[*]")
    par = default_parallelism(sc)
    # warm the Python workers — fork them and import the library (numpy, pyarrow, pyBigWig),
    # as any first job on a fresh cluster does: Spark start-up, not ingest
    rec.run("spark_warmup", lambda: sc.parallelize(range(4 * par), 4 * par)
            .map(_warm_worker).collect())
    with _warm_pool(par) as pool:
        rec.run("pybigwig_read_parallel", lambda: list(pool.map(_read_job, jobs)))
    header = rec.run("ingest_spark", ingest.ingest, sc, tr, genome, cfg,
                     os.path.join(sp, "tensor"))
    root = os.path.join(sp, "tensor")
    model_s, fit_s = rec.run("train_spark", train.train, sc, header, root,
                             os.path.join(sp, "work"), cfg, [])
    model_s.save(os.path.join(sp, "model"))
    model_s = Model.load(os.path.join(sp, "model"))
    gf_s = os.path.join(sp, "gf")
    rec.run("solve_spark", impute.solve_genome, sc, header, root, gf_s, model_s, cfg)
    rec.run("write_spark", impute.write_tracks, sc, header, sp, gf_s, model_s, cfg, root=root)
    # the write limit with as many processes as Spark has cores (as for ingest)
    lim = os.path.join(workdir, "limits")
    wjobs = [(os.path.join(lim, f"par_{name}.bw"), chrom, length,
              os.path.join(lim, f"{name}.npy")) for name in model_l.track_names()]
    with _warm_pool(par) as pool:
        rec.run("pybigwig_write_parallel", lambda: list(pool.map(_write_job, wjobs)))

    t_spark = sum(rec.seconds(s) for s in ("train_spark", "solve_spark", "write_spark"))
    t_local = sum(rec.seconds(s) for s in ("train_inprocess", "solve_inprocess",
                                           "write_inprocess"))
    res.update({
        "ingest_vs_pybigwig": round(rec.seconds("ingest_spark") /
                                    rec.seconds("pybigwig_read_parallel"), 3),
        "spark_overhead": round(t_spark / t_local, 3),
        "write_spark_vs_pybigwig_parallel": round(
            (rec.seconds("solve_spark") + rec.seconds("write_spark")) /
            rec.seconds("pybigwig_write_parallel"), 3),
        "spark_overhead_parts": {
            "train": round(rec.seconds("train_spark") / rec.seconds("train_inprocess"), 3),
            "solve": round(rec.seconds("solve_spark") / rec.seconds("solve_inprocess"), 3),
            "write": round(rec.seconds("write_spark") / rec.seconds("write_inprocess"), 3)},
        "spark": {"master": sc.master, "default_parallelism": par,
                  "startup_seconds": rec.seconds("spark_startup") + rec.seconds("spark_warmup"),
                  "model_max_abs_diff_vs_inprocess": _model_diff(model_s, model_l),
                  "tracks_max_abs_diff_vs_inprocess": _tracks_diff(
                      os.path.join(workdir, "local"), sp, model_l.track_names()[:3], chrom,
                      length, cfg.bin_size)},
    })
    res["training"]["spark"] = {"iterations": len(fit_s.history), "bins": fit_s.n_bins,
                                "best_valid_mse": fit_s.best_valid_mse, "stopped": fit_s.stopped}
    res["throughput"].update({
        "pybigwig_read_parallel_bins_per_s": round(total_bins /
                                                   rec.seconds("pybigwig_read_parallel")),
        "ingest_spark_bins_per_s": round(total_bins / rec.seconds("ingest_spark")),
        "solve_spark_bins_per_s": round(n / rec.seconds("solve_spark")),
        "write_spark_tracks_per_s": round(n_tracks / rec.seconds("write_spark"), 3),
    })


# --------------------------------------------------------------------------- scale-out
def _job(spec: dict) -> dict:
    """One train + impute job on an existing tensor (run in a child process so that each
    master gets its own SparkContext)."""
    from . import impute, train
    from .model import Model
    from .spark import get_context, stop_context
    logging.basicConfig(level=logging.WARNING)
    cfg = Config().replace(**spec["config"])
    header = tensor.read_header(spec["tensor"])
    out = spec["out"]
    t0 = time.perf_counter()
    sc = get_context(spec["master"], conf=spec.get("conf"))
    sc.parallelize(range(64), 64).count()  # executors up and Python workers forked
    t1 = time.perf_counter()
    model, fit_res = train.train(sc, header, spec["tensor"], os.path.join(out, "work"), cfg, [])
    model.save(os.path.join(out, "model"))
    model = Model.load(os.path.join(out, "model"))
    t2 = time.perf_counter()
    gf = os.path.join(out, "gf")
    impute.solve_genome(sc, header, spec["tensor"], gf, model, cfg)
    t3 = time.perf_counter()
    impute.write_tracks(sc, header, out, gf, model, cfg, root=spec["tensor"])
    t4 = time.perf_counter()
    par = sc.defaultParallelism
    stop_context()
    return {"master": spec["master"], "default_parallelism": par, "startup_seconds": t1 - t0,
            "train_seconds": t2 - t1, "solve_seconds": t3 - t2, "write_seconds": t4 - t3,
            "iterations": len(fit_res.history)}


def _run_job(spec: dict) -> dict:
    with PeakMemory() as mem:
        proc = subprocess.run([sys.executable, "-m", "predictd.bench", json.dumps(spec)],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise PredictdError(f"benchmark job on {spec['master']} failed: {' | '.join(tail)}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["peak_memory_mb"] = round(mem.children_mb, 1)
    return out


def scale_out(workdir: str, workers: list[int], quick: bool = False, say=None,
              n_bins: int | None = None, config: dict | None = None) -> dict:
    """The same train + impute job in local mode and on a standalone cluster of 1, 2, …
    workers (one core each, BLAS pinned to one thread per executor); reports throughputs and
    whether every result equals local mode's."""
    from . import ingest
    from .genome import load_genome
    from .localcluster import start_cluster
    from .manifest import read_manifest
    from .model import Model
    say = say or (lambda msg: log.info("%s", msg))
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
    runs = {}
    ref = os.path.join(base, "local")
    say("scale-out: local[*] reference run")
    runs["local"] = _run_job({"master": "local[*]", "tensor": root, "out": ref,
                              "config": spec_cfg})
    ref_model = Model.load(os.path.join(ref, "model"))
    n_tracks = len(header.cell_types) * len(header.assays)
    for w in workers:
        out = os.path.join(base, f"workers-{w}")
        say(f"scale-out: standalone cluster with {w} worker(s)")
        with start_cluster(n_workers=w, cores=1) as cluster:
            r = _run_job({"master": cluster.master_url, "tensor": root, "out": out,
                          "config": spec_cfg, "conf": {**cluster.conf(), **pin}})
        r["model_max_abs_diff_vs_local"] = _model_diff(Model.load(os.path.join(out, "model")),
                                                       ref_model)
        r["tracks_max_abs_diff_vs_local"] = _tracks_diff(ref, out, ref_model.track_names(),
                                                         chrom, length, cfg.bin_size)
        r["equal_to_local"] = bool(r["model_max_abs_diff_vs_local"] <= 1e-6 and
                                   r["tracks_max_abs_diff_vs_local"] <= 1e-4)
        runs[f"workers_{w}"] = r
    for r in runs.values():
        r["solve_bins_per_s"] = round(n / r["solve_seconds"])
        r["write_tracks_per_s"] = round(n_tracks / r["write_seconds"], 3)
        r["train_plus_impute_seconds"] = round(r["train_seconds"] + r["solve_seconds"] +
                                               r["write_seconds"], 3)
    out = {"data": {"source": source, "bins": n, "tracks": n_tracks}, "runs": runs}
    if len(workers) >= 2:
        a, b = runs[f"workers_{workers[0]}"], runs[f"workers_{workers[-1]}"]
        out["speedup"] = {k: round(a[k] / b[k], 3) for k in
                          ("train_seconds", "solve_seconds", "write_seconds",
                           "train_plus_impute_seconds")}
        out["speedup"]["workers"] = [workers[0], workers[-1]]
    return out


# --------------------------------------------------------------------------- Roadmap scale
def roadmap_scale(workdir: str, n_bins: int = ROADMAP_BINS, write_cell_types: int = 4,
                  latent_factors: int | None = None, keep: bool = False, say=None) -> dict:
    """Train and impute on a Roadmap-shaped synthetic tensor in this process.

    127 cell types × 24 assays, 1,014 observed experiments (:func:`synthetic.roadmap_pattern`),
    ``n_bins`` bins (default 1.2 M = 1 % of the genome) all used for training, as PREDICTD
    trained on 1 % of the genome. Genome factors are solved for every bin; tracks are written
    for ``write_cell_types`` cell types × 24 assays (the rest is extrapolated from the measured
    per-track throughput). Whole-genome imputation (120 M bins × 3,048 tracks) is extrapolated in
    core-hours from the measured per-block throughputs.
    """
    from . import impute, train
    from .model import Model
    say = say or (lambda msg: log.info("%s", msg))
    rec = Recorder(say=say)
    base = os.path.join(workdir, "roadmap")
    shutil.rmtree(base, ignore_errors=True)
    root = os.path.join(base, "tensor")
    cells, assays, observed = synthetic.roadmap_pattern()
    block_bins = 65_536
    header = rec.run("generate_tensor", synthetic.write_tensor, root, n_bins, cells, assays,
                     observed, block_bins=block_bins)
    overrides = {"training_fraction": 1.0, "block_bins": block_bins,
                 "partitions": max(2, n_bins // 65_536), "transform": "none"}
    if latent_factors:
        overrides["latent_factors"] = latent_factors
    cfg = Config().replace(**overrides)
    t_fit = time.perf_counter()

    def progress(row):
        say(f"train iteration {row['iteration']}: train mse {row['train_mse']:.4f}, valid mse "
            f"{row['valid_mse']:.4f}, {time.perf_counter() - t_fit:.0f} s")

    model, fit_res = rec.run("train", train.train, None, header, root,
                             os.path.join(base, "work"), cfg, [], progress=progress)
    model.save(os.path.join(base, "model"))
    model = Model.load(os.path.join(base, "model"))
    shutil.rmtree(os.path.join(base, "work"), ignore_errors=True)
    gf = os.path.join(base, "gf")
    rec.run("solve", impute.solve_genome, None, header, root, gf, model, cfg)
    # write a subset of cell types through the real path (factor model + stacked transfer
    # regression); the full 3,048 follow linearly
    k = max(1, min(write_cell_types, len(cells)))
    rec.run("write", impute.write_tracks, None, header, base, gf, model, cfg, root=root,
            only=list(range(k * len(assays))))
    n_written = k * len(assays)
    t_train, t_solve, t_write = (rec.seconds(s) for s in ("train", "solve", "write"))
    cpu = {k2: v["cpu_seconds"] for k2, v in rec.stages.items()}
    solve_rate = n_bins / t_solve                     # bins/s (all BLAS threads)
    write_rate = n_bins * n_written / t_write         # bin-tracks/s, one process
    all_tracks = len(cells) * len(assays)
    # core-hours are CPU time (every thread), scaled by the work: per block for the solve,
    # per bin-track for the writes
    gen_solve_core_h = cpu["solve"] * GENOME_BINS / n_bins / 3600
    gen_write_core_h = cpu["write"] * GENOME_BINS * all_tracks / (n_bins * n_written) / 3600
    train_core_h = cpu["train"] / 3600
    res = {
        "data": {"cell_types": len(cells), "assays": len(assays),
                 "observed_experiments": len(observed), "bins": n_bins,
                 "tensor_gib": round(n_bins * len(observed) * 4 / 2**30, 2),
                 "source": "synthetic.roadmap_pattern + synthetic.write_tensor (rank 10)"},
        "config": {k2: getattr(cfg, k2) for k2 in ("latent_factors", "solver", "partitions",
                                                    "max_iterations", "block_bins")},
        "train": {"seconds": round(t_train, 1), "iterations": len(fit_res.history),
                  "stopped": fit_res.stopped, "best_valid_mse": fit_res.best_valid_mse,
                  "training_bins": fit_res.n_bins,
                  "seconds_per_iteration": round(t_train / max(1, len(fit_res.history)), 2)},
        "impute": {"solve_seconds": round(t_solve, 1), "solve_bins_per_s": round(solve_rate),
                   "tracks_written": n_written, "write_seconds": round(t_write, 1),
                   "write_bin_tracks_per_s": round(write_rate),
                   "all_3048_tracks_seconds_extrapolated": round(
                       n_bins * all_tracks / write_rate, 1)},
        "extrapolated_whole_genome": {
            "bins": GENOME_BINS, "tracks": all_tracks,
            "solve_core_hours": round(gen_solve_core_h, 2),
            "write_core_hours": round(gen_write_core_h, 1),
            "impute_core_hours": round(gen_solve_core_h + gen_write_core_h, 1),
            "impute_hours_on_64_cores": round((gen_solve_core_h + gen_write_core_h) / 64, 2)},
        "train_core_hours": round(train_core_h, 3),
        "predictd_published": {**PREDICTD_PUBLISHED,
                               "train_1pct_core_hours": [10 * 64, 24 * 64]},
        "goals": {"train_seconds": "<= 1800", "peak_memory_gib": "<= 16"},
    }
    res["seconds"] = {k2: v["seconds"] for k2, v in rec.stages.items()}
    res["cpu_seconds"] = cpu
    res["memory_mb"] = {k2: v["total_mb"] for k2, v in rec.stages.items()}
    res["peak_memory_gib"] = round(max(v["total_mb"] for v in rec.stages.values()) / 1024, 2)
    res["machine"] = machine_info()
    if not keep:
        shutil.rmtree(base, ignore_errors=True)
    return res


if __name__ == "__main__":  # child process of scale_out
    print(json.dumps(_job(json.loads(sys.argv[1]))))
