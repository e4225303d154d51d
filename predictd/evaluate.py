"""Evaluate: score held-out tracks against their observed signal, beside the average baseline.

One task per tensor block returns, for each held-out experiment, the observed values, the
model's imputation (from the stored genome factors), the ``average`` baseline
(:func:`predictd.solvers.baselines.average_baseline` over the training tracks, docs/design.md §8)
and the assay's variance across cell types (``msevar``'s weights). The driver scores
whole-genome vectors with :func:`predictd.metrics.score_track` (arcsinh space), leaving out the
assembly's blacklisted bins, and writes ``OUT/report/``. :func:`score_bigwigs` scores any pair
of bigWigs with the same metrics (``predictd score``).
"""

from __future__ import annotations

import logging

import numpy as np

from . import layout, tensor
from .impute import block_no_signal, gf_uri, model_values, model_variance, read_gf
from .metrics import assay_variance, score_track
from .model import Model
from .solvers.baselines import average_baseline
from .names import experiment_name, split_experiment
from .spark import map_tasks

log = logging.getLogger("predictd.evaluate")


def _eval_task(item, payload):
    chrom, block, start, n = item
    root, gf_root, model, holdout, uncertainty = payload
    obs = [experiment_name(c, a) for c, a in model.observed]
    cols = sorted(set(holdout) | set(obs))
    _, X = tensor.read_columns(root, chrom, block, cols)
    ci = {c: i for i, c in enumerate(cols)}
    GB = read_gf(gf_uri(gf_root, chrom, block))
    pairs = [(model.cell_types.index(c), model.assays.index(a))
             for c, a in map(split_experiment, holdout)]
    Yhat = model_values(model, GB, pairs, (cols, X))
    sd = None
    if uncertainty:
        sd = np.sqrt(model_variance(model, Yhat, pairs, (cols, X),
                                    block_no_signal(model, (cols, X))))
    # the baseline's sources are the training tracks, in the model's order (the order of the sum)
    train = [ci[e] for e in obs]
    _, exp_cell, exp_assay = model.observed_indices()
    base = average_baseline(X[:, train], exp_cell, exp_assay, pairs)
    out = {}
    for t, h in enumerate(holdout):
        # full length: region masks stay aligned
        out[h] = (X[:, ci[h]], Yhat[:, t], base[:, t], assay_variance_of(h, cols, X))
        if sd is not None:
            out[h] += (sd[:, t].astype(np.float32),)
    return out


def assay_variance_of(track: str, names: list[str], X: np.ndarray) -> np.ndarray:
    """``msevar``'s weights for a track: the per-bin variance of its assay's observed tracks
    across cell types (the track itself included) among the block's columns ``names``."""
    assay = split_experiment(track)[1]
    idx = [i for i, e in enumerate(names) if split_experiment(e)[1] == assay]
    return assay_variance(X[:, idx])


def collect(sc, header: tensor.TensorHeader, root: str, gf_root: str, model: Model,
            holdout: list[str], uncertainty: bool = False
            ) -> dict[str, tuple[np.ndarray, ...]]:
    """Genome-wide (observed, imputed, baseline, assay variance) vectors for each held-out
    experiment, all in model space; with ``uncertainty`` a fifth, the imputation's standard
    deviation (:func:`predictd.impute.model_variance`)."""
    parts = map_tasks(sc, _eval_task, header.blocks(),
                      (root, gf_root, model, holdout, uncertainty),
                      desc="evaluate", unit="block", cost=tensor.block_bins(header.blocks()))
    res = {}
    for h in holdout:
        res[h] = tuple(np.concatenate([p[h][i] for p in parts])
                       for i in range(len(parts[0][h])))
    return res


def score(vectors: dict, region_masks: dict | None = None,
          blacklist: np.ndarray | None = None) -> list[dict]:
    """metrics.tsv rows: one per held-out track and method (model, average)."""
    return score_methods({h: {"y": y, "model": yhat, "average": base, "var": var}
                          for h, (y, yhat, base, var, *_) in vectors.items()}, region_masks,
                         blacklist)


def score_methods(vectors: dict[str, dict[str, np.ndarray]], region_masks: dict | None = None,
                  blacklist: np.ndarray | None = None) -> list[dict]:
    """Rows for ``{track: {"y": observed, method: imputed, ...}}``; a method whose values are
    not all finite where y is observed (e.g. no baseline source) is left out. An entry
    ``"var"`` (the assay's variance across cell types) adds ``msevar``; the bins of
    ``blacklist`` (bool, genome-wide) are not scored."""
    rows = []
    for h, v in vectors.items():
        cell, assay = split_experiment(h)
        y = v["y"]
        ok = ~np.isnan(y)  # bins of chromosomes the observed track lacks are not scored
        if blacklist is not None:
            ok &= ~blacklist
        masks = {k: m[ok] for k, m in region_masks.items()} if region_masks else None
        var = v["var"][ok] if "var" in v else None
        for method, yhat in v.items():
            if method in ("y", "var") or not np.isfinite(yhat[ok]).all():
                continue
            rows.append({"cell_type": cell, "assay": assay, "method": method,
                         **score_track(y[ok], yhat[ok], masks, var)})
    return rows


def calibration_rows(vectors: dict, transform: str, blacklist: np.ndarray | None = None
                     ) -> list[dict]:
    """Per held-out track, how its uncertainty track describes its errors, in the output's
    units (the values users get: the observed track, the imputed track and its standard
    deviation by the delta method, :func:`predictd.solvers.uncertainty.output_sd`):
    :func:`predictd.solvers.uncertainty.calibration`'s coverage of the ±1.645 sd interval and
    Spearman correlation of |error| and sd. ``vectors`` maps a track to its genome-wide
    model-space (observed, imputed, sd); the bins of ``blacklist`` are not counted."""
    from .solvers.uncertainty import calibration, output_sd
    from .transform import inverse
    rows = []
    for h, (y, yhat, sd) in vectors.items():
        cell, assay = split_experiment(h)
        keep = slice(None) if blacklist is None else ~blacklist
        y, yhat, sd = y[keep], yhat[keep], sd[keep]
        # the observed values in the output's units (NaN where not observed stays NaN)
        y_out = np.where(np.isnan(y), np.nan, inverse(np.nan_to_num(y), transform))
        rows.append({"cell_type": cell, "assay": assay,
                     **calibration(y_out, inverse(yhat, transform),
                                   output_sd(yhat, sd, transform))})
    return rows


def holdout_calibration(out: str, vectors: dict, transform: str,
                        blacklist: np.ndarray | None = None, public: bool = False) -> list[dict]:
    """:func:`calibration_rows` of :func:`collect`'s vectors that carry a standard deviation,
    written to ``OUT/report/calibration.tsv`` (nothing when none does)."""
    with_sd = {h: (v[0], v[1], v[4]) for h, v in vectors.items() if len(v) > 4}
    if not with_sd:
        return []
    rows = calibration_rows(with_sd, transform, blacklist)
    write_calibration(out, rows, public=public)
    return rows


def write_calibration(out: str, rows: list[dict], public: bool = False) -> str:
    """Write ``OUT/report/calibration.tsv`` (one row per held-out track); returns its URI."""
    from . import storage
    cols = ["cell_type", "assay", "bins", "coverage", "spearman", "mean_sd", "rmse"]
    lines = ["\t".join(cols)] + ["\t".join(str(r[c]) if c in ("cell_type", "assay", "bins")
                                           else f"{r[c]:.6g}" for c in cols) for r in rows]
    uri = layout.calibration_file(out)
    storage.write_text_atomic(uri, "\n".join(lines) + "\n", public=public)
    return uri


def scoring_masks(genome: dict, bin_size: int, blacklist: bool = True
                  ) -> tuple[dict | None, np.ndarray | None]:
    """(region masks, blacklisted bins) of a genome for scoring: the bundled annotations of its
    assembly (:mod:`predictd.annotations`; None where there are none, or for the blacklist
    when ``blacklist`` is off)."""
    from .annotations import genome_blacklist, genome_region_masks
    return (genome_region_masks(genome, bin_size),
            genome_blacklist(genome, bin_size) if blacklist else None)


def _segments(n: int, chroms, bin_size: int) -> list[tuple[str, int, int, int]]:
    """(chrom, first genome-wide bin, number of bins, length in bp) of each chromosome of the
    genome-ordered vectors (every chromosome's bins end to end, as :func:`collect` concatenates
    the tensor's blocks); one unnamed segment when ``chroms`` is None."""
    if chroms is None:
        return [("", 0, n, n * bin_size)]
    out, o = [], 0
    for name, length in chroms:
        nb = -(-int(length) // bin_size)
        out.append((str(name), o, nb, int(length)))
        o += nb
    if o != n:
        raise ValueError(f"vectors have {n} bins, the genome {o} at {bin_size} bp")
    return out


def _best_window(v: np.ndarray, segments, width: int) -> tuple[int, int] | None:
    """(first bin, number of bins) of the window of ``width`` bins with the largest sum of
    ``v`` (NaN counted as 0) that lies within one chromosome — the whole chromosome when it is
    shorter; None if no window has a positive sum. One cumulative sum per chromosome."""
    best, where = 0.0, None
    for _, o, nb, _ in segments:
        if nb == 0:
            continue
        w = min(width, nb)
        cs = np.concatenate([[0.0], np.cumsum(np.nan_to_num(v[o:o + nb]), dtype=np.float64)])
        sums = cs[w:] - cs[:-w]
        i = int(np.argmax(sums))
        if sums[i] > best:
            best, where = float(sums[i]), (o + i, w)
    return where


def _region(segments, start: int, width: int, bin_size: int) -> tuple[str, int, str]:
    """Chromosome, bin within it, and ``chrom:start-end`` (bp, end clipped to the chromosome)
    of ``width`` bins from a genome-wide bin."""
    for name, o, nb, length in segments:
        if o <= start < o + nb:
            b = start - o
            end = min((b + width) * bin_size, length)
            return name, b, f"{name}:{b * bin_size:,}-{end:,}"
    raise ValueError(f"bin {start} is outside the genome")


def error_profile(se: np.ndarray, segments, width: int) -> dict:
    """Where a track's squared error ``se`` (per bin; NaN where the track is not observed,
    those bins not scored) sits: the share of the whole error in its worst 1 % of bins, and the
    window of ``width`` bins (within one chromosome) holding the most of it, with that window's
    share and mean squared error and the MSE of every other bin. A model whose error is a few
    regions' (a cell-type-specific domain no training cell type has) reads differently from one
    that is a little off everywhere."""
    ok = ~np.isnan(se)
    n = int(ok.sum())
    total = float(se[ok].sum())
    out = {"bins": n, "mse": total / n if n else float("nan"), "top1_share": float("nan"),
           "worst": None, "worst_share": float("nan"), "worst_mse": float("nan"),
           "rest_mse": float("nan")}
    if n == 0 or total <= 0:
        return out
    k = max(1, n // 100)
    out["top1_share"] = float(np.partition(se[ok], n - k)[n - k:].sum() / total)
    win = _best_window(se, segments, width)
    if win is not None:
        s, w = win
        part = se[s:s + w]
        m = int((~np.isnan(part)).sum())
        in_sum = float(np.nansum(part))
        out.update(worst=win, worst_share=in_sum / total, worst_mse=in_sum / m,
                   rest_mse=(total - in_sum) / (n - m) if n > m else float("nan"))
    return out


def example_regions(vectors: dict, chroms=None, bin_size: int = 25, width: int = 2000,
                    error_width: int = 10_000) -> tuple[list[dict], list[dict]]:
    """Report material for each held-out track: the signal plots' regions and where its error
    sits.

    ``vectors`` maps a track to its genome-wide (observed, imputed, baseline) vectors, the
    chromosomes of ``chroms`` ([(name, length), ...], the tensor's order) end to end. Each
    track gets two plot regions of ``width`` bins, each within one chromosome and named by its
    real coordinates: its densest observed signal (so the plot shows peaks, not a flat line),
    and the densest squared error of the model (where it misses most) when that window is not
    the first. The second list has one :func:`error_profile` row per track, its worst window
    ``error_width`` bins wide (250 kb at 25 bp), as chrom:start-end.
    """
    examples, errors = [], []
    for h, (y, yhat, base, *_) in vectors.items():
        segs = _segments(y.size, chroms, bin_size)
        se = (np.asarray(yhat, dtype=np.float64) - y) ** 2  # NaN where y is
        wins = []
        dense = _best_window(y, segs, width)
        if dense is not None:
            wins.append(("densest observed signal", dense))
        worst = _best_window(se, segs, width)
        if worst is not None and (dense is None or abs(worst[0] - dense[0]) >= width // 2):
            wins.append(("largest error of the model", worst))
        for label, (s, w) in wins:
            chrom, b, _ = _region(segs, s, w, bin_size)
            examples.append({"track": h, "chrom": chrom, "start_bin": b, "label": label,
                             "observed": y[s:s + w], "imputed": yhat[s:s + w],
                             "baseline": base[s:s + w]})
        prof = error_profile(se, segs, error_width)
        if prof["worst"] is not None:
            prof["worst"] = _region(segs, *prof["worst"], bin_size)[2]
        errors.append({"track": h, **prof})
    return examples, errors


def write_report(out: str, rows: list[dict], curves: dict | None, examples: list[dict],
                 public: bool = False, errors: list[dict] | None = None,
                 calibration: list[dict] | None = None) -> str:
    """Write OUT/report (a local directory or an object-store prefix); returns its page's URI.
    ``calibration``: :func:`calibration_rows`, shown on the page as in ``calibration.tsv``."""
    from . import report

    return report.write_report(layout.report_dir(out), rows, curves, examples, errors=errors,
                               calibration=calibration, public=public)


def score_bigwigs(truth: str, pred: str, genome: str | None = None, var: str | None = None,
                  blacklist: bool = True, transform: str = "arcsinh",
                  bin_size: int = 25) -> dict[str, float]:
    """Score any imputed bigWig against an observed one with predictd's metrics.

    Both files are read as per-bin means (``bin_size`` bp; no-data bases count as 0) and put
    through ``transform`` (arcsinh, as the pipeline scores; ``none`` for values already in the
    scoring space). Every bin of the scored chromosomes counts except the assembly's
    blacklisted ones (with ``blacklist``).

    Parameters
    ----------
    truth, pred : str
        Local bigWig files: the observed track and the imputation (or a replicate).
    genome : str, optional
        A bundled assembly name (hg19, hg38, mm10) or a chrom.sizes path: the chromosomes
        scored are those of the genome that ``truth`` has. Default: ``truth``'s chromosomes,
        the assembly recognised from their lengths.
    var : str, optional
        A bigWig of the assay's per-bin variance across cell types in the scoring space
        (already transformed); adds ``msevar``.

    Returns
    -------
    dict
        Metric name -> value: :data:`~predictd.metrics.METRIC_NAMES`, then ``msevar`` with
        ``var``, then ``mseprom``/``msegene``/``mseenh`` for an assembly with bundled
        annotations (hg19, hg38).

    Raises
    ------
    PredictdError
        Naming the file: unreadable or not a bigWig, no chromosome in common with the genome,
        ``pred`` (or ``var``) lacking a chromosome ``truth`` has, a chromosome longer than
        the genome's, or NaN or infinite values.
    """
    from .bigwig import bigwig_chroms, nonfinite_summary, read_binned
    from .errors import PredictdError
    from .genome import load_genome
    from .transform import forward

    have = bigwig_chroms(truth)
    if genome is not None:
        g = load_genome(genome)
        chroms = [(c, n) for c, n in g.chroms if c in have]
        name = g.name
        if not chroms:
            raise PredictdError(f"{truth}: none of its chromosomes is in the genome {genome}")
    else:
        chroms, name = [(c, int(n)) for c, n in have.items()], None
    files = {"truth": truth, "pred": pred, **({"var": var} if var else {})}
    for role, path in files.items():
        if role == "truth":
            continue
        listed = bigwig_chroms(path)
        lacking = [c for c, _ in chroms if c not in listed]
        if lacking:
            raise PredictdError(f"{path}: has no chromosome {lacking[0]} (the truth {truth} "
                                "has it)")
    for path in files.values():  # refused as the pipeline refuses such an input
        bad = nonfinite_summary(path)
        if bad:
            raise PredictdError(f"{path}: bigWig has NaN or infinite values (header summary: "
                                f"{bad})")
    vals = {role: np.concatenate([read_binned(path, c, n, bin_size) for c, n in chroms])
            for role, path in files.items()}
    y = forward(vals["truth"], transform)
    yhat = forward(vals["pred"], transform)
    # region masks and blacklist of the assembly, named or recognised from the lengths
    masks, black = scoring_masks({"name": name, "chroms": [[c, n] for c, n in chroms]},
                                 bin_size, blacklist)
    keep = ~black if black is not None else np.ones(y.size, bool)
    masks = {k: m[keep] for k, m in masks.items()} if masks else None
    v = vals["var"][keep] if var else None
    return score_track(y[keep], yhat[keep], masks, v)
