"""``predictd bench`` — timings of every stage against this machine's limits, in one run."""

from __future__ import annotations

import json
import os
import tempfile

import click

from .. import bench as bench_mod
from ..errors import PredictdError
from . import options
from .main import cli


def _workers(value: str | None) -> list[int]:
    if not value:
        return []
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise PredictdError(f"--workers {value!r}: expected a comma-separated list of worker "
                            "counts, e.g. 1,2") from None
    if not out or any(w < 1 for w in out):
        raise PredictdError(f"--workers {value!r}: worker counts must be >= 1")
    return out


def _table(res: dict) -> str:
    lines = []
    m = res.get("machine") or {}
    if m:
        b = m.get("blas", {})
        lines.append(f"machine: {m.get('cpus')} CPUs ({m.get('cpu')}), {m.get('memory_gib')} GiB; "
                     f"BLAS {b.get('library')} kernel {b.get('kernel')} "
                     f"({b.get('threads')} threads; OPENBLAS_CORETYPE="
                     f"{b.get('OPENBLAS_CORETYPE')})")
    if "data" in res:
        lines.append("data: " + ", ".join(f"{k} {v}" for k, v in res["data"].items()))
    ratios = [("ingest_vs_pybigwig", "<= 1.25"), ("ingest_inprocess_vs_pybigwig", "<= 1.25"),
              ("write_vs_pybigwig", "<= 1.25"), ("impute_gemm_fraction", ">= 0.5"),
              ("spark_overhead", "<= 1.5")]
    present = [(k, g) for k, g in ratios if k in res]
    if present:
        lines.append("")
        lines.append(f"{'ratio':<32}{'value':>9}   goal")
        for k, g in present:
            lines.append(f"{k:<32}{res[k]:>9.3f}   {g}")
    if "extend_core_hours_per_cell_type" in res:
        lines.append("")
        lines.append(f"{'extend_core_hours_per_cell_type':<32}"
                     f"{res['extend_core_hours_per_cell_type']:>9.3f}   <= 0.5 (whole genome, "
                     "extrapolated)")
    if "seconds" in res:
        lines.append("")
        lines.append(f"{'stage':<28}{'seconds':>9}{'cpu s':>9}{'peak MB':>10}{'children MB':>13}")
        for k, s in res["seconds"].items():
            mem = res.get("memory_mb", {}).get(k, {})
            if not isinstance(mem, dict):
                mem = {"total_mb": mem}
            cpu = res.get("cpu_seconds", {}).get(k, float("nan"))
            lines.append(f"{k:<28}{s:>9.2f}{cpu:>9.2f}{mem.get('total_mb', 0):>10.0f}"
                         f"{mem.get('children_mb', 0):>13.0f}")
    if "throughput" in res:
        lines.append("")
        for k, v in res["throughput"].items():
            lines.append(f"{k:<44}{v:>14,}")
    for key in ("scale_out", "roadmap_scale"):
        if key in res:
            lines.append("")
            lines.append(f"{key}:")
            lines.append(json.dumps(res[key], indent=1, default=str))
    return "\n".join(lines)


@cli.command(name="bench")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of figures.")
@click.option("--quick", is_flag=True, help="2**18 bins instead of 1.13 M (under a minute).")
@click.option("--workdir", metavar="DIR", type=click.Path(file_okay=False),
              help="Scratch directory (default: a temporary one, removed afterwards).")
@click.option("--no-spark", is_flag=True, help="Skip the Spark stages.")
@click.option("--master", metavar="URL", help="Spark master for the Spark stages "
              "(default local[*]).")
@click.option("--workers", metavar="N,N", help="Also run the same job on a standalone "
              "cluster on 127.0.0.1 with each number of 1-core workers, e.g. 1,2.")
@click.option("--repeat", metavar="N", type=click.IntRange(min=1), default=3, show_default=True,
              help="--workers: run each cluster this many times, taking turns, and report "
                   "the medians (a shared machine's speed varies from minute to minute).")
@click.option("--roadmap-scale", is_flag=True, help="Instead: train and impute a Roadmap-shaped "
              "synthetic tensor (127 x 24, 1,014 experiments, 1.2 M bins) in this process and "
              "extrapolate whole-genome imputation, and extending it with one new cell type "
              "of 3 marks, in core-hours (takes tens of minutes).")
@click.option("--bins", type=int, default=bench_mod.ROADMAP_BINS, show_default=True,
              help="Bins of the --roadmap-scale tensor.")
@click.option("--write-cell-types", type=int, default=4, show_default=True,
              help="--roadmap-scale: cell types whose 24 tracks are written (the rest is "
                   "extrapolated from the measured throughput).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="--roadmap-scale: override one config key of the model (TOML value "
                   "syntax), e.g. --set stack_hinges=false (repeatable).")
def bench(as_json, quick, workdir, no_spark, master, workers, repeat, roadmap_scale, bins,
          write_cell_types, sets):
    """Benchmark predictd against the limits of this machine, measured in the same run.

    \b
    Ratios (goal): ingest_vs_pybigwig (<= 1.25), write_vs_pybigwig (<= 1.25),
    impute_gemm_fraction (>= 0.5), spark_overhead (<= 1.5), extend_vs_run (<= 0.5: `predictd
    extend` of one cell type with 3 marks against the whole run); also the write with the factor
    model alone and through Spark against pyBigWig in as many processes; plus times,
    throughputs and peak memory per stage. --roadmap-scale: whole-genome imputation and
    extend_core_hours_per_cell_type (<= 0.5: one new cell type with 3 marks extended and its 21
    tracks written), extrapolated in core-hours. Data: the shared Roadmap pilot tracks when present
    ($PREDICTD_SHARED/data/roadmap_pilot), else synthetic tracks of the same shape.

    \b
    Examples:
      predictd bench --json --quick
      predictd bench --workers 1,2
      predictd bench --roadmap-scale --json
      predictd bench --roadmap-scale --json --set stack_hinges=false
    """
    n_workers = _workers(workers)
    if sets and not roadmap_scale:
        raise click.UsageError("--set applies to --roadmap-scale only")
    overrides = options.config_overrides(None, sets)
    own = workdir is None
    wd = workdir or tempfile.mkdtemp(prefix="predictd-bench-")
    os.makedirs(wd, exist_ok=True)
    say = (lambda msg: click.echo(f"predictd: bench: {msg}", err=True))
    try:
        if roadmap_scale:
            if bins < 1024:
                raise PredictdError(f"--bins {bins}: must be at least 1024")
            res = bench_mod.roadmap_scale(wd, n_bins=bins, write_cell_types=write_cell_types,
                                          say=say, config=overrides)
        else:
            res = bench_mod.run(wd, quick=quick, spark=not no_spark, master=master, say=say)
            if n_workers:
                if not no_spark:
                    from ..spark import stop_context
                    stop_context()
                res["scale_out"] = bench_mod.scale_out_in_child(
                    wd, n_workers, quick=quick, repeat=repeat)
    finally:
        if own:
            import shutil
            shutil.rmtree(wd, ignore_errors=True)
    if as_json:
        click.echo(json.dumps(res, sort_keys=True, default=str))
    else:
        click.echo(_table(res))
