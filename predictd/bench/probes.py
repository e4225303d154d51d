"""The limits of this machine, measured on the same data as predictd's stages.

Each probe is the plain operation a predictd stage cannot beat:

* :func:`pybigwig_read` — pyBigWig's fastest read path plus numpy 25 bp binning (the limit for
  ingest and for predictd's own bigWig reader);
* :func:`pybigwig_write` — pyBigWig fixed-step entries of a ready float32 array with the zoom
  levels predictd writes (the limit for writing tracks);
* :func:`gemm_fraction` — bare float32 numpy GEMMs of the shapes of the imputation math (the
  limit for solving genome factors and computing tracks).

:func:`warm_pool` runs the read and write probes in as many processes as Spark has cores.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np


def pybigwig_read(path: str, chrom: str, length: int, bin_size: int = 25,
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


def pybigwig_write(path: str, chrom: str, length: int, y: np.ndarray, bin_size: int = 25,
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


def pybigwig_read_job(args):
    """:func:`pybigwig_read` of one ``(path, chrom, length, bin_size)`` (a pool task)."""
    return pybigwig_read(*args)


def pybigwig_write_job(args):
    """:func:`pybigwig_write` of one ``(path, chrom, length, npy)``, the array loaded from the
    ``.npy`` file (a pool task: the array is not pickled to the worker)."""
    path, chrom, length, npy = args
    return pybigwig_write(path, chrom, length, np.load(npy))


def _noop(x):
    return x


def warm_pool(processes: int) -> ProcessPoolExecutor:
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
    from ..impute import impute_values, solve_block
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
                  "impute_row_major": lambda: GB @ W, "impute_col_major": lambda: Wt @ GBt,
                  # not a bare product: the row-major solve with the transposition solve_block
                  # adds, to show what the layout costs
                  "solve_row_major_transposed": lambda: np.ascontiguousarray((Xc @ P.T).T)}
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

