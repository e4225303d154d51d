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
application, and the fold's directory of converted files links only the other 19.
Conversion to ChromImpute's binary format is per file and done once; every later step depends
on which track is held out, so it is run per fold (the distances take seconds,
GenerateTrainData and Train most of a fold's 8 minutes).

Resumable: a fold is built in ``WORK/folds/TRACK.partial`` and renamed to ``WORK/folds/TRACK``
when ChromImpute's imputation is complete; its scores are kept beside it (``scores.tsv``), so
a killed run continues with the first unfinished fold. After each fold the tables are
rewritten (atomically) from every fold finished in ``WORK``, so they grow as the run goes and
runs of different ``--tracks`` into one ``WORK`` add up. ``--table-only`` rewrites them from
what is on disk without running ChromImpute (e.g. with a newer ``--predictd``); ``--docs
docs/accuracy.md`` also sets the page's side-by-side table (between its ``chromimpute_loo``
comments), headed by how many of the 20 tracks it covers.

Usage (all 20 tracks take over an hour on 2 cores)::

    python benchmarks/chromimpute_loo.py --work /tmp/ci --out benchmarks/results/chromimpute
    python benchmarks/chromimpute_loo.py --tracks E116.H3K4me3 --bins 200000 --work /tmp/ci \\
        --out /tmp/ci/result

Writes ``OUT/chromimpute_loo.tsv`` (one row per track and method, every metric) and
``OUT/chromimpute_loo.md`` (the mean MSE / Pearson per method, with ``--predictd`` the
side-by-side table of predictd, ChromImpute, average and CP-ALS and how many tracks meet
"MSE <= 0.8 x ChromImpute's and Pearson >= ChromImpute's", then every metric per track).
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import shutil
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
from predictd.report import read_metrics_tsv, write_metrics_tsv  # noqa: E402
from predictd.solvers.baselines import average_baseline  # noqa: E402
from predictd.storage import staged  # noqa: E402

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


#: ChromImpute's own code is single-threaded: one GC thread and one visible processor keep the
#: JVM from taking the whole (shared) machine for its collector and compiler threads.
JVM_FLAGS = ["-XX:+UseSerialGC", "-XX:ActiveProcessorCount=1"]


def java(jar: str, memory: str, step: str, *args: str, log: str) -> None:
    cmd = ["java", f"-mx{memory}", *JVM_FLAGS, "-jar", jar, step, *args]
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        p = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise PredictdError(f"ChromImpute {step} failed (exit {p.returncode}); see {log}")


def converted_name(experiment: str) -> str:
    """The file ChromImpute's Convert makes of an experiment's bedGraph."""
    return f"{CHROM}_{experiment}.bedgraph.gz.wig.gz"


def write_inputinfo(path: str, names: list[str]) -> None:
    with open(path, "w") as fh:
        for name in names:
            cell, assay = split_experiment(name)
            fh.write(f"{cell}\t{assay}\t{name}.bedgraph.gz\n")


def fold_dir(work: str, held: str) -> str:
    """Where the finished fold of ``held`` lives (built in ``<this>.partial``)."""
    return os.path.join(work, "folds", held)


def imputed_wig(fold: str, held: str) -> str:
    cell, assay = split_experiment(held)
    return os.path.join(fold, "impute", f"{CHROM}_impute_{cell}_{assay}.wig.gz")


def chromimpute_fold(jar: str, memory: str, work: str, names: list[str], held: str,
                     sizes: str, converted: str) -> str:
    """Run ChromImpute's imputation of ``held`` from the other tracks; returns the finished
    fold's directory (kept as is when already there)."""
    cell, assay = split_experiment(held)
    final = fold_dir(work, held)
    if os.path.exists(imputed_wig(final, held)):
        return final
    if os.path.exists(final):  # a fold directory without its imputation: not ours to trust
        shutil.rmtree(final)
    d = final + ".partial"
    if os.path.exists(d):  # a killed fold starts again from its first step
        shutil.rmtree(d)
    os.makedirs(d)
    others = [e for e in names if e != held]
    info = os.path.join(d, "inputinfo.txt")
    write_inputinfo(info, others)
    # the fold's view of the shared conversion: links to the other tracks' files only, so the
    # held-out track is not there to be read, whatever ChromImpute opens
    view = os.path.join(d, "converted")
    os.makedirs(view)
    for e in others:
        name = converted_name(e)
        if not os.path.exists(os.path.join(converted, name)):
            raise PredictdError(f"{converted} lacks {name}; remove it to convert again")
        os.symlink(os.path.join(converted, name), os.path.join(view, name))
    log = os.path.join(d, "chromimpute.log")
    dist, train, pred, out = (os.path.join(d, x) for x in ("dist", "train", "predictors",
                                                           "impute"))
    java(jar, memory, "ComputeGlobalDist", view, info, sizes, dist, log=log)
    java(jar, memory, "GenerateTrainData", view, dist, info, sizes, train, assay, log=log)
    java(jar, memory, "Train", train, info, pred, cell, assay, log=log)
    java(jar, memory, "Apply", view, dist, pred, info, sizes, out, cell, assay, log=log)
    if not os.path.exists(imputed_wig(d, held)):
        raise PredictdError(f"ChromImpute Apply wrote no {imputed_wig(d, held)}; see {log}")
    os.rename(d, final)  # the view's links are absolute: they survive the rename
    return final


def fold_scores(tracks: dict[str, np.ndarray], held: str, fold: str) -> list[dict]:
    """The held-out track's rows (ChromImpute and the average baseline), scored once and kept
    in the fold's ``scores.tsv``."""
    path = os.path.join(fold, "scores.tsv")
    if os.path.exists(path):
        return read_metrics_tsv(path)
    n = next(iter(tracks.values())).size
    ci = read_wig(imputed_wig(fold, held), n)
    rows = score_rows(tracks, held, {"chromimpute": ci, "average": average_of(tracks, held)})
    write_metrics_tsv(path + ".partial", rows)
    os.replace(path + ".partial", path)
    return rows


def finished_folds(work: str, names: list[str]) -> list[str]:
    """The held-out tracks whose fold is finished in ``work``, in name order."""
    return [e for e in names if os.path.exists(imputed_wig(fold_dir(work, e), e))]


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
    want = {tuple(split_experiment(h)) for h in held}
    return [dict(r, method=f"predictd:{r['method']}") for r in read_metrics_tsv(path)
            if (r["cell_type"], r["assay"]) in want]


#: The side-by-side columns: predictd's imputation (its ``ensemble``; with ``ensemble_size=1``
#: the same as ``model``), ChromImpute, the average baseline, predictd's CP-ALS reference.
SIDE_BY_SIDE = [("predictd", "predictd:ensemble"), ("ChromImpute", "chromimpute"),
                ("average", "average"), ("CP-ALS r4", "predictd:cp_als4")]


def side_by_side(rows: list[dict]) -> list[str]:
    """Markdown of the per-track comparison: MSE / Pearson r of each method, and whether
    predictd's MSE is at most 0.8 x ChromImpute's and its r at least ChromImpute's; a mean row
    and the count of such tracks. Empty when predictd's or ChromImpute's rows are missing."""
    by = {(f"{r['cell_type']}.{r['assay']}", r["method"]): r for r in rows}
    tracks = sorted({t for t, m in by if m == "chromimpute"}
                    & {t for t, m in by if m == "predictd:ensemble"})
    if not tracks:
        return []
    cols = [(label, m) for label, m in SIDE_BY_SIDE if all((t, m) in by for t in tracks)]

    def cell(mse, r):
        return f"{mse:.4f} / {r:.3f}".replace("-", "−")

    md = ["| held-out track | " + " | ".join(f"{label} MSE / r" for label, _ in cols)
          + " | MSE ≤ 0.8× ChromImpute's, r ≥ ChromImpute's |",
          "| --- | " + " | ".join("---" for _ in cols) + " | --- |"]
    met = 0
    for t in tracks:
        p, c = by[(t, "predictd:ensemble")], by[(t, "chromimpute")]
        ok = p["mse"] <= 0.8 * c["mse"] and p["gwcorr"] >= c["gwcorr"]
        met += ok
        md.append(f"| {t} | " + " | ".join(cell(by[(t, m)]["mse"], by[(t, m)]["gwcorr"])
                                           for _, m in cols)
                  + f" | {'yes' if ok else 'no'} |")
    means = [cell(np.mean([by[(t, m)]["mse"] for t in tracks]),
                  np.mean([by[(t, m)]["gwcorr"] for t in tracks])) for _, m in cols]
    md.append(f"| **mean ({len(tracks)} tracks)** | " + " | ".join(means)
              + f" | {met} of {len(tracks)} |")
    return md


def write_tables(out: str, rows: list[dict]) -> tuple[str, str]:
    """``chromimpute_loo.tsv`` and ``chromimpute_loo.md`` in ``out``, published together."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    md = ["| method | tracks | mean MSE | mean Pearson r |", "| --- | --- | --- | --- |"]
    for m in methods:
        sel = [r for r in rows if r["method"] == m]
        md.append(f"| {m} | {len(sel)} | {np.mean([r['mse'] for r in sel]):.4f} | "
                  f"{np.nanmean([r['gwcorr'] for r in sel]):.3f} |")
    both = side_by_side(rows)
    if both:
        md += [""] + both
    cols = ["mse", "gwcorr", "msevar", "mse1obs", "match1", "aucobs1"]
    md += ["", "| track | method | " + " | ".join(cols) + " |",
           "| --- | --- | " + " | ".join("---" for _ in cols) + " |"]
    for r in sorted(rows, key=lambda r: (r["cell_type"], r["assay"], r["method"])):
        vals = " | ".join("nan" if math.isnan(r.get(c, math.nan)) else f"{r[c]:.4g}"
                          for c in cols)
        md.append(f"| {r['cell_type']}.{r['assay']} | {r['method']} | {vals} |")
    with staged(out) as d:
        write_metrics_tsv(os.path.join(d, "chromimpute_loo.tsv"), rows)
        with open(os.path.join(d, "chromimpute_loo.md"), "w") as fh:
            fh.write("\n".join(md) + "\n")
    return os.path.join(out, "chromimpute_loo.tsv"), os.path.join(out, "chromimpute_loo.md")


DOCS_BEGIN = "<!-- chromimpute_loo: begin (written by benchmarks/chromimpute_loo.py --docs) -->"
DOCS_END = "<!-- chromimpute_loo: end -->"


def docs_block(rows: list[dict], n_tracks: int) -> str:
    """The side-by-side table for a documentation page, headed by how many tracks it covers."""
    done = len({(r["cell_type"], r["assay"]) for r in rows if r["method"] == "chromimpute"})
    head = (f"All {n_tracks} tracks." if done == n_tracks else
            f"**{done} of the {n_tracks} tracks** (the other {n_tracks - done} are not "
            "measured yet).")
    table = side_by_side(rows) or ["(no track scored by both predictd and ChromImpute yet)"]
    return "\n".join([head, ""] + table)


def replace_docs_block(text: str, block: str) -> str:
    """``text`` with the part between :data:`DOCS_BEGIN` and :data:`DOCS_END` set to ``block``."""
    if text.count(DOCS_BEGIN) != 1 or text.count(DOCS_END) != 1:
        raise PredictdError(f"--docs: the page needs one '{DOCS_BEGIN}' and one '{DOCS_END}'")
    before, rest = text.split(DOCS_BEGIN)
    _, after = rest.split(DOCS_END)
    return f"{before}{DOCS_BEGIN}\n{block}\n{DOCS_END}{after}"


def refresh_tables(out: str, work: str, tracks: dict[str, np.ndarray], names: list[str],
                   predictd: str | None, docs: str | None = None) -> tuple[str, str, int]:
    """Rewrite the tables (and the block of ``docs``) from every finished fold in ``work``;
    returns the tables' paths and the number of tracks they cover."""
    done = finished_folds(work, names)
    rows = [r for h in done for r in fold_scores(tracks, h, fold_dir(work, h))]
    if predictd and os.path.isfile(predictd):
        rows += predictd_rows(predictd, done)
    elif predictd:  # predictd's own run may still be going: its rows join at a later refresh
        print(f"chromimpute_loo: no {predictd} yet; tables without predictd's rows",
              file=sys.stderr)
    if docs:
        with open(docs) as fh:
            text = replace_docs_block(fh.read(), docs_block(rows, len(names)))
        with open(docs + ".partial", "w") as fh:
            fh.write(text)
        os.replace(docs + ".partial", docs)
    return (*write_tables(out, rows), len(done))


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
    ap.add_argument("--memory", default="3000M", help="Java heap (default: %(default)s)")
    ap.add_argument("--predictd", metavar="METRICS_TSV",
                    help="predictd's cross-validation metrics.tsv to put beside (same bins); "
                         "read at each rewrite of the tables, so it may appear later")
    ap.add_argument("--docs", metavar="PAGE",
                    help="also set the side-by-side table between the page's chromimpute_loo "
                         "begin/end comments (e.g. docs/accuracy.md), at the end of the run")
    ap.add_argument("--table-only", action="store_true",
                    help="only rewrite the tables from the folds finished in --work")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except PredictdError as e:
        print(f"chromimpute_loo: {e}", file=sys.stderr)
        return 2


def prepare(work: str, jar: str, memory: str, tracks: dict[str, np.ndarray]) -> tuple[str, str]:
    """The chrom.sizes of the pseudo-chromosome and ChromImpute's conversion of all 20 tracks,
    made once per work directory (the conversion is per file, the same for every fold)."""
    names = sorted(tracks)
    n = next(iter(tracks.values())).size
    inputs, converted = os.path.join(work, "inputs"), os.path.join(work, "converted")
    sizes = os.path.join(work, "chrom.sizes")
    want = f"{CHROM}\t{n * BIN}\n"
    if os.path.exists(sizes):
        with open(sizes) as fh:
            have = fh.read()
        if have != want:  # another --bins: its folds would not line up with these tracks
            raise PredictdError(f"--work {work} holds {have.split()[-1]} bp, not {n * BIN} "
                                "(another --bins); use another --work")
    else:
        os.makedirs(work, exist_ok=True)
        with open(sizes + ".partial", "w") as fh:
            fh.write(want)
        os.replace(sizes + ".partial", sizes)
    if not os.path.isdir(converted):
        os.makedirs(inputs, exist_ok=True)
        for e in names:
            write_bedgraph(os.path.join(inputs, f"{e}.bedgraph.gz"), tracks[e])
        info = os.path.join(work, "inputinfo.all.txt")
        write_inputinfo(info, names)
        if os.path.exists(converted + ".partial"):
            shutil.rmtree(converted + ".partial")
        java(jar, memory, "Convert", inputs, info, sizes, converted + ".partial",
             log=os.path.join(work, "convert.log"))
        os.rename(converted + ".partial", converted)
    return sizes, converted


def run(args) -> int:
    if not args.table_only and not os.path.isfile(args.jar):
        raise PredictdError(f"ChromImpute jar not found: {args.jar}")
    tracks = demo_tracks(args.pilot_dir)
    if args.bins:
        tracks = {k: v[:args.bins] for k, v in tracks.items()}
    names = sorted(tracks)
    held = args.tracks or names
    unknown = [h for h in held if h not in tracks]
    if unknown:
        raise PredictdError(f"no track {unknown[0]} in {args.pilot_dir}")
    work = os.path.abspath(args.work)
    if not args.table_only:
        sizes, converted = prepare(work, args.jar, args.memory, tracks)
        for h in held:
            t0 = time.perf_counter()
            fold = chromimpute_fold(args.jar, args.memory, work, names, h, sizes, converted)
            r = next(r for r in fold_scores(tracks, h, fold) if r["method"] == "chromimpute")
            tsv, md, n_done = refresh_tables(args.out, work, tracks, names, args.predictd)
            print(f"{h}: ChromImpute MSE {r['mse']:.4f} r {r['gwcorr']:.3f} "
                  f"({time.perf_counter() - t0:.0f} s; {n_done} of {len(names)} folds done)",
                  flush=True)
    tsv, md, n_done = refresh_tables(args.out, work, tracks, names, args.predictd, args.docs)
    print(f"wrote {tsv} and {md}{' and ' + args.docs if args.docs else ''} "
          f"({n_done} of {len(names)} folds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
