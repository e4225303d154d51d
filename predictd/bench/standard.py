"""The standard run (``predictd bench``, ``--quick``): predictd's stages against this machine's
limits, measured in the same run.

Every ratio compares predictd with the plain operation it cannot beat (:mod:`.probes`), on the
same data, with the same number of processes:

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
* ``extend_vs_run`` — ``predictd extend`` of one cell type with 3 marks against a reference
  trained on the other cell types / the whole run (ingest, train, solve, write) on all the
  tracks, both in this process (the reference's own training is not counted).

Peak memory is measured per stage for this process (VmHWM, reset before each stage where the
kernel allows) and for its child processes (Spark's JVM and Python workers, sampled every 50 ms).
"""

from __future__ import annotations

import logging
import os
import shutil
import time

import numpy as np

from .. import layout, tensor
from ..bigwig import read_binned, write_bigwig
from ..names import experiment_name
from .compare import model_diff, tracks_diff
from .inputs import bench_config, bench_tracks, write_inputs
from .machine import machine_info
from .measure import Recorder
from .probes import (gemm_fraction, pybigwig_read_job, pybigwig_write, pybigwig_write_job,
                     warm_pool)

log = logging.getLogger(__name__)


def run(workdir: str, quick: bool = False, spark: bool = True, master: str | None = None,
        say=None, n_bins: int | None = None, config: dict | None = None) -> dict:
    """The standard benchmark; returns the JSON-ready figures.

    Parameters
    ----------
    workdir : str
        Scratch directory (inputs, tensors, outputs); reused inputs are not rewritten.
    quick : bool
        2**18 bins instead of the full 1.13 M.
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
    from .. import impute, ingest, train
    from ..genome import load_genome
    from ..manifest import read_manifest
    from ..model import Model
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
    rec.run("pybigwig_read", lambda: [pybigwig_read_job(j) for j in jobs])
    # predictd's reader alone (the section decoder of predictd.bigwig) on the same files
    rec.run("bigwig_read", lambda: [read_binned(p, c, L, b) for p, c, L, b in jobs])
    header = rec.run("ingest_inprocess", ingest.ingest, None, tr, genome, cfg,
                     os.path.join(local, "tensor"))
    root = os.path.join(local, "tensor")
    total_bins = n * len(tracks)

    # ---- train + impute in this process
    model_l, fit_l = rec.run("train_inprocess", train.train, None, header, root,
                             os.path.join(local, "work"), cfg, [])
    model_l.save(layout.model_dir(local))
    model_l = Model.load(layout.model_dir(local))  # the float64 round trip impute sees
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
        y = read_binned(layout.track_file(local, name), chrom, length, bin_size)
        npy = os.path.join(lim, f"{name}.npy")
        np.save(npy, y)
        wjobs.append((os.path.join(lim, f"{name}.bw"), chrom, length, npy))
    arrays = [(p, c, L, np.load(f)) for p, c, L, f in wjobs]
    rec.run("pybigwig_write", lambda: [pybigwig_write(*a) for a in arrays])
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
    gf = gemm_fraction(X, model_l, [experiment_name(c, a) for c, a in model_l.observed], cfg.ri2)
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

    t_run = sum(rec.seconds(s) for s in ("ingest_inprocess", "train_inprocess",
                                         "solve_inprocess", "write_inprocess"))
    _extend_part(res, rec, workdir, tr, sizes, cfg, t_run)

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
                    "extend_vs_run": "<= 0.5",
                    "impute_gemm_fraction": ">= 0.5", "spark_overhead": "<= 1.5 (>= 1 M bins)"}
    return res


def _extend_part(res, rec, workdir, tr, sizes, cfg, t_run):
    """Extend a reference of all but the last cell type with 3 of that one's marks."""
    from .. import extend, pipeline
    from ..manifest import write_manifest
    d = os.path.join(workdir, "extend")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    cell = sorted({t.cell_type for t in tr})[-1]
    write_manifest([t for t in tr if t.cell_type != cell], os.path.join(d, "ref.tsv"))
    new = [t for t in tr if t.cell_type == cell][:3]
    write_manifest(new, os.path.join(d, "new.tsv"))
    ref_run = pipeline.open_run(os.path.join(d, "ref.tsv"), sizes, os.path.join(d, "ref"), cfg,
                                progress=False)
    rec.run("extend_reference_run", pipeline.run_all, ref_run)
    ref = extend.open_reference(os.path.join(d, "ref"))
    run = extend.open_extension(ref, os.path.join(d, "new.tsv"), os.path.join(d, "out"),
                                ref.config(), progress=False)
    done = rec.run("extend_inprocess", extend.extend_all, run)
    res["extend_vs_run"] = round(rec.seconds("extend_inprocess") / t_run, 3)
    res["extend"] = {"cell_type": cell, "marks": [t.assay for t in new],
                     "reference_cell_types": len(ref.model.cell_types),
                     "tracks_written": done["impute"]["written"],
                     "run_seconds": round(t_run, 3)}


def _spark_part(res, rec, workdir, tr, genome, cfg, header_l, model_l, paths, jobs, master,
                total_bins, n, n_tracks, chrom, length):
    from .. import impute, ingest, train
    from ..model import Model
    from ..spark import default_parallelism, get_context
    sp = os.path.join(workdir, "spark")
    sc = rec.run("spark_startup", get_context, master or "local[*]")
    par = default_parallelism(sc)
    # warm the Python workers — fork them and import the library (numpy, pyarrow, pyBigWig),
    # as any first job on a fresh cluster does: Spark start-up, not ingest
    rec.run("spark_warmup", lambda: sc.parallelize(range(4 * par), 4 * par)
            .map(warm_worker).collect())
    with warm_pool(par) as pool:
        rec.run("pybigwig_read_parallel", lambda: list(pool.map(pybigwig_read_job, jobs)))
    header = rec.run("ingest_spark", ingest.ingest, sc, tr, genome, cfg,
                     os.path.join(sp, "tensor"))
    root = os.path.join(sp, "tensor")
    model_s, fit_s = rec.run("train_spark", train.train, sc, header, root,
                             os.path.join(sp, "work"), cfg, [])
    model_s.save(layout.model_dir(sp))
    model_s = Model.load(layout.model_dir(sp))
    gf_s = os.path.join(sp, "gf")
    rec.run("solve_spark", impute.solve_genome, sc, header, root, gf_s, model_s, cfg)
    rec.run("write_spark", impute.write_tracks, sc, header, sp, gf_s, model_s, cfg, root=root)
    # the write limit with as many processes as Spark has cores (as for ingest)
    lim = os.path.join(workdir, "limits")
    wjobs = [(os.path.join(lim, f"par_{name}.bw"), chrom, length,
              os.path.join(lim, f"{name}.npy")) for name in model_l.track_names()]
    with warm_pool(par) as pool:
        rec.run("pybigwig_write_parallel",
                lambda: list(pool.map(pybigwig_write_job, wjobs)))

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
                  "model_max_abs_diff_vs_inprocess": model_diff(model_s, model_l),
                  "tracks_max_abs_diff_vs_inprocess": tracks_diff(
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


def warm_worker(x):
    """Import the library in a Spark Python worker (the first job on a fresh cluster does)."""
    import predictd.impute  # noqa: F401  (pulls in numpy, pyarrow, pyBigWig)
    import predictd.ingest  # noqa: F401
    import predictd.train  # noqa: F401
    time.sleep(0.05)  # hold the slot so every concurrent worker gets a task
    return x

