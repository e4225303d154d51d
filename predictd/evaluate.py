"""Evaluate: score held-out tracks against their observed signal, beside the average baseline.

One task per tensor block returns, for each held-out experiment, the observed values, the
model's imputation (from the stored genome factors) and the ``average`` baseline
(:func:`predictd.solvers.baselines.average_baseline` over the training tracks, docs/design.md §8).
The driver scores whole-genome vectors with :func:`predictd.metrics.score_track` (arcsinh space)
and writes ``OUT/report/``.
"""

from __future__ import annotations

import logging

import numpy as np

from . import layout, tensor
from .impute import gf_uri, model_values, read_gf
from .metrics import score_track
from .model import Model
from .solvers.baselines import average_baseline
from .names import experiment_name, split_experiment
from .spark import map_tasks

log = logging.getLogger("predictd.evaluate")


def _eval_task(item, payload):
    chrom, block, start, n = item
    root, gf_root, model, holdout = payload
    obs = [experiment_name(c, a) for c, a in model.observed]
    cols = sorted(set(holdout) | set(obs))
    _, X = tensor.read_columns(root, chrom, block, cols)
    ci = {c: i for i, c in enumerate(cols)}
    GB = read_gf(gf_uri(gf_root, chrom, block))
    pairs = [(model.cell_types.index(c), model.assays.index(a))
             for c, a in map(split_experiment, holdout)]
    Yhat = model_values(model, GB, pairs, (cols, X))
    # the baseline's sources are the training tracks, in the model's order (the order of the sum)
    train = [ci[e] for e in obs]
    exp_cell = np.array([model.cell_types.index(c) for c, _ in model.observed], dtype=int)
    exp_assay = np.array([model.assays.index(a) for _, a in model.observed], dtype=int)
    base = average_baseline(X[:, train], exp_cell, exp_assay, pairs)
    out = {}
    for t, h in enumerate(holdout):
        # full length: region masks stay aligned
        out[h] = (X[:, ci[h]], Yhat[:, t], base[:, t])
    return out


def collect(sc, header: tensor.TensorHeader, root: str, gf_root: str, model: Model,
            holdout: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Genome-wide (observed, imputed, baseline) vectors for each held-out experiment."""
    parts = map_tasks(sc, _eval_task, header.blocks(), (root, gf_root, model, holdout),
                      desc="evaluate", unit="block")
    res = {}
    for h in holdout:
        res[h] = tuple(np.concatenate([p[h][i] for p in parts]) for i in range(3))
    return res


def score(vectors: dict, region_masks: dict | None = None) -> list[dict]:
    """metrics.tsv rows: one per held-out track and method (model, average)."""
    return score_methods({h: {"y": y, "model": yhat, "average": base}
                          for h, (y, yhat, base) in vectors.items()}, region_masks)


def score_methods(vectors: dict[str, dict[str, np.ndarray]], region_masks: dict | None = None
                  ) -> list[dict]:
    """Rows for ``{track: {"y": observed, method: imputed, ...}}``; a method whose values are
    not all finite where y is observed (e.g. no baseline source) is left out."""
    rows = []
    for h, v in vectors.items():
        cell, assay = split_experiment(h)
        y = v["y"]
        ok = ~np.isnan(y)  # bins of chromosomes the observed track lacks are not scored
        masks = {k: m[ok] for k, m in region_masks.items()} if region_masks else None
        for method, yhat in v.items():
            if method == "y" or not np.isfinite(yhat[ok]).all():
                continue
            rows.append({"cell_type": cell, "assay": assay, "method": method,
                         **score_track(y[ok], yhat[ok], masks)})
    return rows


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
    for h, (y, yhat, base) in vectors.items():
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
                 public: bool = False, errors: list[dict] | None = None) -> str:
    """Write OUT/report (a local directory or an object-store prefix); returns its page's URI."""
    from . import report

    return report.write_report(layout.report_dir(out), rows, curves, examples, errors=errors,
                               public=public)
