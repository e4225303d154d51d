"""ChromImpute on predictd's leave-one-track-out folds of the Roadmap pilot, scored with
predictd's metrics, side by side with predictd's own cross-validation.

A peer comparison kept outside the installed package: it calls ChromImpute's jar (GPL-2.0,
``../shared/peers/chromimpute``; never vendored or imported) as a user would, on exactly the
values predictd trains on (the pilot's arcsinh arrays, 25 bp bins), and scores its imputation of
each held-out track with :func:`predictd.metrics.score_track` in the same space, ``msevar``
weighted by the assay's variance across the four cell types. The ``average`` baseline is scored
beside it; with ``--predictd OUT/report/metrics.tsv`` (from ``predictd run --folds 20`` on the
same pilot) predictd's rows (model, ensemble, average, cp_als4) join the table.

For each held-out track ChromImpute sees only the other 19: the track is left out of
``inputinfo.txt`` for the global distances, the training data, the training and the
application. Conversion to ChromImpute's binary format is per file and done once.

Usage (all 20 tracks take over an hour on 2 cores)::

    python benchmarks/chromimpute_loo.py --work /tmp/ci --out benchmarks/results/chromimpute
    python benchmarks/chromimpute_loo.py --tracks E116.H3K4me3 --bins 200000 --work /tmp/ci \\
        --out /tmp/ci/result

Writes ``OUT/chromimpute_loo.tsv`` (one row per track and method, every metric) and
``OUT/chromimpute_loo.md`` (the mean MSE / Pearson per method and the per-track table).
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # the checkout's predictd, not an installed one

from predictd.demo import demo_tracks  # noqa: E402
from predictd.errors import PredictdError  # noqa: E402
from predictd.metrics import assay_variance, score_track  # noqa: E402
from predictd.names import split_experiment  # noqa: E402
from predictd.solvers.baselines import average_baseline  # noqa: E402

CHROM = "pilot"
BIN = 25
DEFAULT_JAR = os.path.join(REPO, "..", "shared", "peers", "chromimpute", "ChromImpute.jar")
DEFAULT_PILOT = os.path.join(REPO, "..", "shared", "data", "roadmap_pilot")


def write_bedgraph(path: str, values: np.ndarray, decimals: int = 4) -> None:
    """A gzipped bedGraph of one pseudo-chromosome: runs of equal (rounded) values merged,
    formatted in one C-level pass (no Python loop over bins)."""
    v = np.round(np.asarray(values, dtype=np.float64), decimals)
    change = np.flatnonzero(np.diff(v)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [v.size]])
    flat = np.empty(3 * starts.size, dtype=object)
    flat[0::3] = (starts * BIN).tolist()
    flat[1::3] = (ends * BIN).tolist()
    flat[2::3] = v[starts].tolist()
    text = (f"{CHROM}\t%d\t%d\t%.{decimals}f\n" * starts.size) % tuple(flat)
    with gzip.open(path, "wt", compresslevel=1) as fh:
        fh.write(text)


def read_wig(path: str, n_bins: int) -> np.ndarray:
    """ChromImpute's imputed track: a fixedStep wig at 25 bp from base 1, one value per line
    (header lines skipped), cut or zero-padded to ``n_bins``."""
    with gzip.open(path, "rt") as fh:
        lines = fh.read().split("\n")
    data = [s for s in lines if s and s[0] not in "tfv#"]  # track / fixedStep / variableStep
    v = np.array(data, dtype=np.float64)
    out = np.zeros(n_bins)
    out[:min(n_bins, v.size)] = v[:n_bins]
    return out


def java(jar: str, memory: str, step: str, *args: str, log: str) -> None:
    cmd = ["java", f"-mx{memory}", "-jar", jar, step, *args]
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        p = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise PredictdError(f"ChromImpute {step} failed (exit {p.returncode}); see {log}")


def write_inputinfo(path: str, names: list[str]) -> None:
    with open(path, "w") as fh:
        for name in names:
            cell, assay = split_experiment(name)
            fh.write(f"{cell}\t{assay}\t{name}.bedgraph.gz\n")


def chromimpute_fold(jar: str, memory: str, work: str, names: list[str], held: str,
                     sizes: str, converted: str, n_bins: int) -> np.ndarray:
    """ChromImpute's imputation of ``held`` from the other tracks (arcsinh space)."""
    cell, assay = split_experiment(held)
    d = os.path.join(work, "folds", held)
    out = os.path.join(d, "impute")
    result = os.path.join(out, f"{CHROM}_impute_{cell}_{assay}.wig.gz")
    if not os.path.exists(result):  # resumable: a finished fold is kept
        os.makedirs(d, exist_ok=True)
        info = os.path.join(d, "inputinfo.txt")
        write_inputinfo(info, [e for e in names if e != held])
        log = os.path.join(d, "chromimpute.log")
        dist, train, pred = (os.path.join(d, x) for x in ("dist", "train", "predictors"))
        java(jar, memory, "ComputeGlobalDist", converted, info, sizes, dist, log=log)
        java(jar, memory, "GenerateTrainData", converted, dist, info, sizes, train, assay,
             log=log)
        java(jar, memory, "Train", train, info, pred, cell, assay, log=log)
        java(jar, memory, "Apply", converted, dist, pred, info, sizes, out, cell, assay, log=log)
    return read_wig(result, n_bins)


def score_rows(tracks: dict[str, np.ndarray], held: str, imputed: dict[str, np.ndarray]
               ) -> list[dict]:
    """Rows of every metric (and msevar) for the held-out track, one per method."""
    names = sorted(tracks)
    cell, assay = split_experiment(held)
    y = tracks[held].astype(np.float64)
    same = [e for e in names if split_experiment(e)[1] == assay]
    var = assay_variance(np.stack([tracks[e] for e in same], axis=1))
    rows = []
    for method, yhat in imputed.items():
        rows.append({"cell_type": cell, "assay": assay, "method": method,
                     **score_track(y, yhat, var=var)})
    return rows


def average_of(tracks: dict[str, np.ndarray], held: str) -> np.ndarray:
    """predictd's ``average`` baseline of the held-out track from the other 19."""
    train = [e for e in sorted(tracks) if e != held]
    cells = sorted({split_experiment(e)[0] for e in tracks})
    assays = sorted({split_experiment(e)[1] for e in tracks})
    ec = np.array([cells.index(split_experiment(e)[0]) for e in train])
    ea = np.array([assays.index(split_experiment(e)[1]) for e in train])
    c, a = split_experiment(held)
    X = np.stack([tracks[e] for e in train], axis=1)
    return average_baseline(X, ec, ea, [(cells.index(c), assays.index(a))])[:, 0]


def predictd_rows(path: str, held: list[str]) -> list[dict]:
    """predictd's rows for the held-out tracks from a cross-validation metrics.tsv."""
    from predictd.report import read_metrics_tsv
    want = {tuple(split_experiment(h)) for h in held}
    return [dict(r, method=f"predictd:{r['method']}") for r in read_metrics_tsv(path)
            if (r["cell_type"], r["assay"]) in want]


def write_tables(out: str, rows: list[dict]) -> tuple[str, str]:
    from predictd.report import write_metrics_tsv
    os.makedirs(out, exist_ok=True)
    tsv = os.path.join(out, "chromimpute_loo.tsv")
    write_metrics_tsv(tsv, rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    md = ["| method | tracks | mean MSE | mean Pearson r |", "| --- | --- | --- | --- |"]
    for m in methods:
        sel = [r for r in rows if r["method"] == m]
        md.append(f"| {m} | {len(sel)} | {np.mean([r['mse'] for r in sel]):.4f} | "
                  f"{np.nanmean([r['gwcorr'] for r in sel]):.3f} |")
    cols = ["mse", "gwcorr", "msevar", "mse1obs", "match1", "aucobs1"]
    md += ["", "| track | method | " + " | ".join(cols) + " |",
           "| --- | --- | " + " | ".join("---" for _ in cols) + " |"]
    for r in sorted(rows, key=lambda r: (r["cell_type"], r["assay"], r["method"])):
        vals = " | ".join("nan" if math.isnan(r.get(c, math.nan)) else f"{r[c]:.4g}"
                          for c in cols)
        md.append(f"| {r['cell_type']}.{r['assay']} | {r['method']} | {vals} |")
    path = os.path.join(out, "chromimpute_loo.md")
    with open(path, "w") as fh:
        fh.write("\n".join(md) + "\n")
    return tsv, path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jar", default=DEFAULT_JAR, help="ChromImpute.jar (default: %(default)s)")
    ap.add_argument("--pilot-dir", default=DEFAULT_PILOT,
                    help="the Roadmap pilot's *.pilot.arcsinh.npz (default: %(default)s)")
    ap.add_argument("--work", required=True, help="scratch directory (resumable)")
    ap.add_argument("--out", required=True, help="where the tables are written")
    ap.add_argument("--tracks", nargs="*", metavar="CELL.ASSAY",
                    help="held-out tracks (default: all 20)")
    ap.add_argument("--bins", type=int, default=0,
                    help="only the first N bins (a quick run; default: all 1,126,469)")
    ap.add_argument("--memory", default="6000M", help="Java heap (default: %(default)s)")
    ap.add_argument("--predictd", metavar="METRICS_TSV",
                    help="predictd's cross-validation metrics.tsv to put beside (same bins)")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.jar):
        print(f"chromimpute_loo: ChromImpute jar not found: {args.jar}", file=sys.stderr)
        return 2
    tracks = demo_tracks(args.pilot_dir)
    if args.bins:
        tracks = {k: v[:args.bins] for k, v in tracks.items()}
    names = sorted(tracks)
    held = args.tracks or names
    unknown = [h for h in held if h not in tracks]
    if unknown:
        print(f"chromimpute_loo: no track {unknown[0]} in {args.pilot_dir}", file=sys.stderr)
        return 2
    n = next(iter(tracks.values())).size
    work = os.path.abspath(args.work)
    inputs, converted = os.path.join(work, "inputs"), os.path.join(work, "converted")
    os.makedirs(inputs, exist_ok=True)
    sizes = os.path.join(work, "chrom.sizes")
    with open(sizes, "w") as fh:
        fh.write(f"{CHROM}\t{n * BIN}\n")
    if not os.path.isdir(converted):
        for e in names:
            write_bedgraph(os.path.join(inputs, f"{e}.bedgraph.gz"), tracks[e])
        info = os.path.join(work, "inputinfo.all.txt")
        write_inputinfo(info, names)
        java(args.jar, args.memory, "Convert", inputs, info, sizes, converted + ".partial",
             log=os.path.join(work, "convert.log"))
        os.rename(converted + ".partial", converted)
    rows = []
    for h in held:
        t0 = time.perf_counter()
        ci = chromimpute_fold(args.jar, args.memory, work, names, h, sizes, converted, n)
        rows += score_rows(tracks, h, {"chromimpute": ci, "average": average_of(tracks, h)})
        r = rows[-2]
        print(f"{h}: ChromImpute MSE {r['mse']:.4f} r {r['gwcorr']:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.predictd:
        rows += predictd_rows(args.predictd, held)
    tsv, md = write_tables(args.out, rows)
    print(f"wrote {tsv} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
