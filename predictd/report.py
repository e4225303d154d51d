"""The evaluation report: ``metrics.tsv``, PNG plots, a self-contained ``index.html``
(docs/design.md §9).

:func:`write_report` turns metric rows (one per evaluated track and method, as produced with
:func:`predictd.metrics.score_track`), optional training curves and optional signal examples into a
report directory (local, or an ``s3://``, ``gs://`` or Azure prefix)::

    report/
      metrics.tsv          cell_type, assay, method, METRIC_NAMES..., msevar and region metrics...
      bar_<metric>.png     per metric: model vs baselines across tracks
      curves.png           training / validation curves
      signal_<track>.png   observed vs imputed vs baseline over a few regions
      index.html           summary tables, the plots (embedded), what each metric means

The page embeds its images as data URIs and its CSS inline, so it can be mailed, uploaded to S3 or
opened from anywhere as one file; the PNGs are also written beside it for reuse.

The files are built in a staging directory and published one by one, each atomically
(:func:`predictd.storage.staged`); ``index.html`` goes last, so a present ``index.html`` means a
complete report.

Plots are drawn with matplotlib's object API on Agg canvases: no pyplot, no global backend switch,
safe to call from a library or a worker thread.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from predictd import storage
from predictd.errors import PredictdError
from predictd.metrics import EXTRA_METRIC_NAMES, LOWER_IS_BETTER, METRIC_NAMES
from predictd.names import experiment_name

#: Key columns of ``metrics.tsv``, first in every row.
KEY_COLUMNS: list[str] = ["cell_type", "assay", "method"]

#: One-line meaning of each metric, shown in the report.
METRIC_DESCRIPTIONS: dict[str, str] = {
    "mse": "Mean squared error between observed and imputed signal over all evaluated bins.",
    "gwcorr": "Genome-wide Pearson correlation between observed and imputed signal.",
    "gwspear": "Genome-wide Spearman rank correlation (tied values share their average rank).",
    "mse1obs": "MSE over the bins whose observed value is at least the value at the observed top "
    "1 % (the ⌊0.01 N⌋-th largest): how well real peaks are reproduced.",
    "mse1imp": "MSE over the bins whose imputed value is at least the value at the imputed top "
    "1 %: penalises peaks the model invents.",
    "match1": "Fraction of the observed top-1 % bins that are also in the imputed top 1 % "
    "(exactly ⌊0.01 N⌋ bins each; ties broken by bin order).",
    "catch1obs": "Fraction of the observed top-1 % bins found in the imputed top 5 %.",
    "catch1imp": "Fraction of the imputed top-1 % bins found in the observed top 5 %.",
    "aucobs1": "ROC AUC of the imputed signal as a classifier of the observed top-1 % bins.",
    "aucimp1": "ROC AUC of the observed signal as a classifier of the imputed top-1 % bins.",
    "msevar": "MSE weighted per bin by the variance of the assay's observed signal across cell "
    "types (ENCODE Imputation Challenge): errors where cell types differ count most.",
    "mseprom": "MSE over promoter bins: 2 kb upstream of each gene's TSS, strand-aware.",
    "msegene": "MSE over gene-body bins.",
    "mseenh": "MSE over enhancer bins (FANTOM5 enhancer spans).",
}

#: What the method names usually stand for, shown in the report when present.
METHOD_DESCRIPTIONS: dict[str, str] = {
    "model": "the trained PARAFAC model's imputation",
    "average": "baseline: mean of the same assay over the other cell types that have it",
    "sgd": "model trained with parallel SGD",
    "als": "model trained with alternating least squares",
    "ensemble": "average of several models' imputations",
}

_METHOD_COLORS = {"model": "#1f5fae", "average": "#9a9a9a"}
_OTHER_COLORS = ["#e07b26", "#2e9c4a", "#b5403a", "#7b52ab", "#8c6d31", "#17a2b8"]


# --------------------------------------------------------------------------------------------------
# rows and the TSV


def _to_float(value: Any, where: str) -> float:
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PredictdError(f"{where}: not a number: {value!r}") from None


def _clean_rows(metrics_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    known = set(METRIC_NAMES) | set(EXTRA_METRIC_NAMES)
    rows, seen = [], set()
    for i, row in enumerate(metrics_rows, 1):
        for key in KEY_COLUMNS:
            if key not in row or row[key] is None or str(row[key]) == "":
                raise PredictdError(f"metrics row {i}: missing '{key}'")
            if re.search(r"[\t\r\n]", str(row[key])):
                raise PredictdError(f"metrics row {i}: '{key}' contains a tab or newline")
        ident = tuple(str(row[k]) for k in KEY_COLUMNS)
        if ident in seen:
            raise PredictdError(f"metrics row {i}: duplicate track and method {'/'.join(ident)}")
        seen.add(ident)
        clean = {k: str(row[k]) for k in KEY_COLUMNS}
        for key, value in row.items():
            if key in KEY_COLUMNS:
                continue
            if key in known:
                clean[key] = _to_float(value, f"metrics row {i} ({'/'.join(ident)}), '{key}'")
            else:
                clean[key] = value
        rows.append(clean)
    return rows


def metrics_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Column order of ``metrics.tsv`` for these rows.

    ``cell_type, assay, method``, then :data:`~predictd.metrics.METRIC_NAMES` (always), then the
    extra metrics present in any row (``msevar, mseprom, msegene, mseenh`` order), then any
    other keys in first-seen order.
    """
    rows = list(rows)
    present = {k for r in rows for k in r}
    cols = KEY_COLUMNS + list(METRIC_NAMES) + [m for m in EXTRA_METRIC_NAMES if m in present]
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _tsv_value(value: Any) -> str:
    if value is None:
        return "nan"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        # repr round-trips exactly; nan/inf spelled the way float() reads them back.
        return "nan" if math.isnan(v) else repr(v)
    text = str(value)
    if re.search(r"[\t\r\n]", text):
        raise PredictdError(f"metrics value contains a tab or newline: {text!r}")
    return text


def write_metrics_tsv(path, metrics_rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Write ``metrics.tsv`` (tab-separated, header line, ``nan`` for missing values).

    Parameters
    ----------
    path : str or pathlib.Path
        Output file (written directly; :func:`write_report` makes it atomic).
    metrics_rows : sequence of mapping
        Rows with ``cell_type``, ``assay``, ``method`` and metric values.

    Returns
    -------
    list of str
        The columns written.
    """
    rows = _clean_rows(metrics_rows)
    cols = metrics_columns(rows)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE)
        writer.writerow(cols)
        for r in rows:
            writer.writerow([_tsv_value(r.get(c)) for c in cols])
    return cols


def read_metrics_tsv(path) -> list[dict[str, Any]]:
    """Read a ``metrics.tsv`` back: key columns as str, metric columns as float.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "metrics.tsv")
    >>> _ = write_metrics_tsv(p, [{"cell_type": "E003", "assay": "H3K4me3", "method": "model",
    ...                           "mse": 0.5}])
    >>> read_metrics_tsv(p)[0]["mse"], math.isnan(read_metrics_tsv(p)[0]["gwcorr"])
    (0.5, True)
    """
    numeric = set(METRIC_NAMES) | set(EXTRA_METRIC_NAMES)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [k for k in KEY_COLUMNS if k not in (reader.fieldnames or [])]
        if missing:
            raise PredictdError(f"{path}: header lacks column '{missing[0]}'")
        out = []
        for i, row in enumerate(reader, 2):
            out.append(
                {
                    k: (_to_float(v, f"{path}:{i} '{k}'") if k in numeric else v)
                    for k, v in row.items()
                }
            )
    return out


# --------------------------------------------------------------------------------------------------
# plots


def _method_order(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    seen = list(dict.fromkeys(r["method"] for r in rows))
    head = [m for m in ("model", "average") if m in seen]
    return head + [m for m in seen if m not in head]


def _track_order(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r["cell_type"], r["assay"]) for r in rows))


def _method_colors(methods: Sequence[str]) -> dict[str, str]:
    colors, k = {}, 0
    for m in methods:
        if m in _METHOD_COLORS:
            colors[m] = _METHOD_COLORS[m]
        else:
            colors[m] = _OTHER_COLORS[k % len(_OTHER_COLORS)]
            k += 1
    return colors


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=_DPI, format="png")


def _finite_mean(values: Iterable[float]) -> float:
    arr = np.array([v for v in values], dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


_DPI = 110
# Past this width a vertical grouped-bar chart no longer fits a page at a readable size; the chart
# turns horizontal (tracks down the page) and the page shows it in a scroll box.
_MAX_VERTICAL_WIDTH_IN = 11.0
_HORIZONTAL_WIDTH_IN = 5.6


def _vertical_width_inches(n_tracks: int, n_methods: int) -> float:
    return max(6.0, 1.3 + n_tracks * (0.17 * n_methods + 0.13))


def _bar_layout(n_tracks: int, n_methods: int) -> tuple[bool, float, float]:
    """(horizontal, width, height) in inches of the bar chart for this many tracks and methods."""
    width = _vertical_width_inches(n_tracks, n_methods)
    if width <= _MAX_VERTICAL_WIDTH_IN:
        return False, width, 4.2
    return True, _HORIZONTAL_WIDTH_IN, 1.4 + n_tracks * (0.1 * n_methods + 0.08)


def plot_metric_bars(path, metric: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Grouped bar chart of one metric: one group per track, one bar per method.

    Up to ~20 tracks the bars stand vertically; beyond, the chart is horizontal (one line of
    labels per track) so track names stay legible however many tracks were evaluated. Undefined
    values are marked ``n/a`` where their bar would be.

    Parameters
    ----------
    path : str or pathlib.Path
        PNG to write.
    metric : str
        Metric column.
    rows : sequence of mapping
        Cleaned metric rows (see :func:`write_report`).
    """
    tracks = _track_order(rows)
    methods = _method_order(rows)
    colors = _method_colors(methods)
    table = {(r["cell_type"], r["assay"], r["method"]): r.get(metric, float("nan")) for r in rows}
    n_t, n_m = len(tracks), len(methods)
    horizontal, width, height = _bar_layout(n_t, n_m)
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    bar_w = 0.8 / max(n_m, 1)
    pos = np.arange(n_t)
    values = {
        m: np.array([table.get((c, a, m), np.nan) for c, a in tracks], dtype=float)
        for m in methods
    }
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()] or [np.array([])])
    for j, m in enumerate(methods):
        vals = values[m]
        where = pos + (j - (n_m - 1) / 2) * bar_w
        mean = _finite_mean(vals)
        label = f"{m} (mean {mean:.4g})" if math.isfinite(mean) else f"{m} (n/a)"
        draw = ax.barh if horizontal else ax.bar
        draw(where, np.nan_to_num(vals, nan=0.0), bar_w, color=colors[m], label=label,
             edgecolor="white", linewidth=0.4)
        for p in where[~np.isfinite(vals)]:
            if horizontal:
                ax.text(0, p, " n/a", va="center", ha="left", fontsize=6, color="#888888")
            else:
                ax.text(p, 0, "n/a", va="bottom", ha="center", fontsize=7, color="#888888",
                        rotation=90)
    labels = [experiment_name(c, a) for c, a in tracks]
    direction = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
    ax.set_title(f"{metric}  ({direction})", fontsize=11, loc="left")
    unit_interval = (
        metric not in LOWER_IS_BETTER and finite.size and finite.min() >= 0 and finite.max() <= 1
    )
    if horizontal:
        ax.set_yticks(pos)
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_ylim(n_t - 0.4, -0.6)  # first track on top, like the table
        ax.set_xlabel(metric)
        if unit_interval:
            ax.set_xlim(0, 1.0)
        ax.grid(axis="x", color="#dddddd", linewidth=0.6)
        ax.xaxis.set_tick_params(labeltop=True)  # a value axis visible at both ends of a tall plot
    else:
        ax.set_xticks(pos)
        rotate = n_t > 4 or any(len(s) > 14 for s in labels)
        ax.set_xticklabels(labels, rotation=60 if rotate else 0, ha="right" if rotate else "center",
                           fontsize=9)
        ax.set_xlim(-0.6, n_t - 0.4)
        ax.set_ylabel(metric)
        if unit_interval:
            ax.set_ylim(0, 1.0)
        ax.grid(axis="y", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    # Legend in its own row (under a vertical chart, above a tall horizontal one): never covers a
    # bar nor the title, costs no width. Columns limited so it never runs off a narrow figure.
    ncol = max(1, min(n_m, int(width // 2.4)))
    loc = "outside upper center" if horizontal else "outside lower center"
    fig.legend(fontsize=9, frameon=False, loc=loc, ncol=ncol)
    _save(fig, Path(path))


def _validate_curves(curves: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    if "iteration" not in curves:
        raise PredictdError("curves: missing key 'iteration'")
    it = np.asarray(curves["iteration"], dtype=float)
    series = {}
    for key, values in curves.items():
        if key == "iteration":
            continue
        try:
            arr = np.array([np.nan if v is None else v for v in values], dtype=float)
        except (TypeError, ValueError):
            raise PredictdError(f"curves: series '{key}' is not a list of numbers") from None
        if arr.shape != it.shape:
            raise PredictdError(
                f"curves: series '{key}' has {arr.size} values but 'iteration' has {it.size}"
            )
        series[key] = arr
    return it, series


def plot_curves(path, curves: Mapping[str, Any]) -> None:
    """Training / validation curves against iteration.

    Series whose name contains ``mse`` or ``loss`` share the top axes (log scale when they span
    more than a factor 30); any other series (learning rate, time, ...) get a panel below. Missing
    points (None/NaN, e.g. validation checked every few iterations) are skipped, not drawn as gaps.
    The best validation point is marked.
    """
    it, series = _validate_curves(curves)
    main = {k: v for k, v in series.items() if "mse" in k.lower() or "loss" in k.lower()}
    other = {k: v for k, v in series.items() if k not in main}
    n_panels = 1 + (1 if other else 0)
    fig = Figure(figsize=(8.5, 3.8 + 2.2 * (n_panels - 1)), layout="constrained")
    axes = fig.subplots(n_panels, 1, sharex=True, squeeze=False,
                        height_ratios=[2.2] + [1.2] * (n_panels - 1))[:, 0]
    palette = {"train_mse": "#1f5fae", "valid_mse": "#e07b26"}
    k_other = 0

    def draw(ax, items):
        nonlocal k_other
        for name, vals in items.items():
            ok = np.isfinite(vals) & np.isfinite(it)
            if not ok.any():
                continue
            color = palette.get(name)
            if color is None:
                color = _OTHER_COLORS[(k_other + 2) % len(_OTHER_COLORS)]
                k_other += 1
            ax.plot(it[ok], vals[ok], color=color, label=name, linewidth=1.6,
                    marker="o" if ok.sum() <= 40 else None, markersize=3)

    draw(axes[0], main)
    if "valid_mse" in main:
        v = main["valid_mse"]
        ok = np.isfinite(v) & np.isfinite(it)
        if ok.any():
            best = np.flatnonzero(ok)[np.argmin(v[ok])]
            axes[0].axvline(it[best], color="#e07b26", linestyle=":", linewidth=1)
            axes[0].annotate(
                f"best valid {v[best]:.4g} @ {it[best]:g}",
                (it[best], v[best]),
                xytext=(6, 10),
                textcoords="offset points",
                fontsize=8,
                color="#9a4a0e",
            )
    vals = np.concatenate([v[np.isfinite(v)] for v in main.values()]) if main else np.array([])
    if vals.size and vals.min() > 0 and vals.max() / vals.min() > 30:
        axes[0].set_yscale("log")
    axes[0].set_ylabel("MSE")
    axes[0].set_title("Training and validation curves", fontsize=11, loc="left")
    if other:
        draw(axes[1], other)
        axes[1].set_ylabel("value")
    axes[-1].set_xlabel("iteration")
    for ax in axes:
        ax.grid(color="#e3e3e3", linewidth=0.6)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, frameon=False)
    _save(fig, Path(path))


def _example_arrays(ex: Mapping[str, Any], i: int) -> dict[str, np.ndarray]:
    for key in ("track", "chrom", "start_bin", "observed", "imputed"):
        if key not in ex:
            raise PredictdError(f"example {i}: missing '{key}'")
    out = {}
    for key in ("observed", "imputed", "baseline"):
        if ex.get(key) is None:
            continue
        arr = np.asarray(ex[key], dtype=float).ravel()
        if "observed" in out and arr.size != out["observed"].size:
            raise PredictdError(
                f"example {i} ({ex['track']}): '{key}' has {arr.size} bins, "
                f"'observed' has {out['observed'].size}"
            )
        out[key] = arr
    if out["observed"].size == 0:
        raise PredictdError(f"example {i} ({ex['track']}): 'observed' has no bins")
    return out


def plot_signal(
    path, track: str, examples: Sequence[Mapping[str, Any]], bin_size: int = 25
) -> None:
    """Observed, imputed and baseline signal of one track over one or more regions (one panel each).

    Each example needs ``chrom``, ``start_bin``, ``observed``, ``imputed`` and may have
    ``baseline``, ``bin_size`` (default ``bin_size``) and ``label`` (why the region is shown,
    printed beside its coordinates).
    """
    n = len(examples)
    fig = Figure(figsize=(10, 0.6 + 2.3 * n), layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for k, (ax, ex) in enumerate(zip(axes, examples)):
        arrays = _example_arrays(ex, k)
        bs = int(ex.get("bin_size", bin_size))
        start_bin = int(ex["start_bin"])
        nb = arrays["observed"].size
        # Step edges: nb + 1 boundaries so the last bin is drawn as wide as the others.
        edges = (start_bin + np.arange(nb + 1)) * bs
        def steps(v):
            return np.append(v, v[-1]) if v.size else v
        ax.fill_between(edges, steps(arrays["observed"]), step="post", color="#c9c9c9",
                        label="observed", linewidth=0)
        ax.step(edges, steps(arrays["imputed"]), where="post", color="#1f5fae", linewidth=1.2,
                label="imputed (model)")
        if "baseline" in arrays and np.isfinite(arrays["baseline"]).any():
            ax.step(edges, steps(arrays["baseline"]), where="post", color="#e07b26",
                    linewidth=1.0, linestyle="--", label="baseline (average)")
        start_bp, end_bp = start_bin * bs, (start_bin + nb) * bs
        ax.set_xlim(start_bp, end_bp)
        ax.set_ylim(bottom=0 if np.nanmin(np.concatenate(list(arrays.values()))) >= 0 else None)
        where = f"{ex['chrom']}:{start_bp:,}-{end_bp:,}" if ex["chrom"] else \
            f"bins {start_bin:,}-{start_bin + nb:,}"
        label = f"   ({ex['label']})" if ex.get("label") else ""
        ax.set_title(f"{track}   {where}{label}", fontsize=10, loc="left")
        ax.set_ylabel("signal")
        ax.ticklabel_format(axis="x", style="plain", useOffset=False)
        ax.xaxis.set_major_formatter(_bp_formatter())
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if k == 0:
            # Above the panel, beside the title, so it never hides signal.
            ax.legend(fontsize=8, frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0),
                      ncol=3, borderaxespad=0.2)
    axes[-1].set_xlabel("genomic position")
    _save(fig, Path(path))


def _bp_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{v:,.0f}")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "track"


# --------------------------------------------------------------------------------------------------
# HTML


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#222;
  background:#fafafa;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:1.6em;margin:0 0 4px}
h2{font-size:1.2em;margin:34px 0 10px;border-bottom:2px solid #1f5fae;padding-bottom:4px}
.sub{color:#666;font-size:.9em;margin:0 0 18px}
table{border-collapse:collapse;font-size:.82em;background:#fff;margin:6px 0 10px}
th,td{padding:4px 8px;border:1px solid #e2e2e2;text-align:right;white-space:nowrap}
th{background:#eef2f8;position:sticky;top:0;font-weight:600}
td.key,th.key{text-align:left}
tr.first td{border-top:2px solid #bbb}
td.best{background:#d9f0dc;font-weight:700}
.scroll{overflow-x:auto;max-height:620px;overflow-y:auto;border:1px solid #e2e2e2}
.scroll table{margin:0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:14px}
.stack figure{margin-bottom:14px;display:inline-block;max-width:100%}
.stack{display:flex;flex-direction:column;align-items:flex-start}
figure{margin:0;background:#fff;border:1px solid #e2e2e2;padding:6px}
figure img{max-width:100%;height:auto;display:block}
.tallbox{max-height:640px;overflow-y:auto}
figcaption{font-size:.8em;color:#555;padding:4px 2px 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;font-size:.9em}
dt{font-family:ui-monospace,Menlo,Consolas,monospace;font-weight:600}
dd{margin:0}
.note{font-size:.85em;color:#555}
code{font-family:ui-monospace,Menlo,Consolas,monospace}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "n/a" if not math.isfinite(float(v)) else f"{float(v):.4g}"
    return html.escape(str(v))


def _best_flags(values: Sequence[float], metric: str) -> list[bool]:
    arr = np.asarray(values, dtype=float)
    ok = np.isfinite(arr)
    if ok.sum() < 2:
        return [False] * len(arr)
    best = arr[ok].min() if metric in LOWER_IS_BETTER else arr[ok].max()
    return list(ok & (arr == best))


def _summary_table(rows, metrics: list[str], methods: list[str]) -> str:
    tracks = _track_order(rows)
    means = {
        m: [_finite_mean(r.get(k, np.nan) for r in rows if r["method"] == m) for k in metrics]
        for m in methods
    }
    # Wins: per track and metric, which method is best (ties credit every best method).
    wins = {m: 0 for m in methods}
    contests = 0
    table = {(r["cell_type"], r["assay"], r["method"]): r for r in rows}
    for c, a in tracks:
        for k in metrics:
            vals = [table.get((c, a, m), {}).get(k, np.nan) for m in methods]
            flags = _best_flags(vals, k)
            if any(flags):
                contests += 1
                for m, f in zip(methods, flags):
                    wins[m] += int(f)
    out = ['<table><tr><th class="key">method</th>']
    out += [f"<th>{html.escape(k)}</th>" for k in metrics]
    out.append(f'<th title="track × metric comparisons won, of {contests}">wins</th></tr>')
    cols = list(zip(*[means[m] for m in methods])) if methods else []
    flags_by_metric = [_best_flags(col, k) for col, k in zip(cols, metrics)]
    win_flags = _best_flags([wins[m] for m in methods], "wins")
    for i, m in enumerate(methods):
        out.append(f'<tr><td class="key">{html.escape(m)}</td>')
        for j, _k in enumerate(metrics):
            cls = ' class="best"' if flags_by_metric[j][i] else ""
            out.append(f"<td{cls}>{_fmt(means[m][j])}</td>")
        cls = ' class="best"' if win_flags[i] else ""
        out.append(f"<td{cls}>{wins[m]} / {contests}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _track_table(rows, metrics: list[str], methods: list[str]) -> str:
    table = {(r["cell_type"], r["assay"], r["method"]): r for r in rows}
    out = ['<div class="scroll"><table><tr><th class="key">track</th><th class="key">method</th>']
    out += [f"<th>{html.escape(k)}</th>" for k in metrics]
    out.append("</tr>")
    for c, a in _track_order(rows):
        present = [m for m in methods if (c, a, m) in table]
        flags = {
            k: _best_flags([table[(c, a, m)].get(k, np.nan) for m in present], k) for k in metrics
        }
        for i, m in enumerate(present):
            r = table[(c, a, m)]
            out.append('<tr class="first">' if i == 0 else "<tr>")
            if i == 0:
                out.append(
                    f'<td class="key" rowspan="{len(present)}"><b>{html.escape(c)}</b>'
                    f"&thinsp;·&thinsp;{html.escape(a)}</td>"
                )
            out.append(f'<td class="key">{html.escape(m)}</td>')
            for k in metrics:
                cls = ' class="best"' if flags[k][i] else ""
                out.append(f"<td{cls}>{_fmt(r.get(k, np.nan))}</td>")
            out.append("</tr>")
    out.append("</table></div>")
    return "".join(out)


def _pct(v: Any) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f} %"


def _error_table(errors: Sequence[Mapping[str, Any]]) -> str:
    out = ['<div class="scroll"><table><tr><th class="key">track</th><th>MSE</th>'
           "<th>share in worst 1 % of bins</th><th class=\"key\">worst window</th>"
           "<th>share there</th><th>MSE there</th><th>MSE elsewhere</th></tr>"]
    for e in errors:
        out.append(
            f'<tr><td class="key">{html.escape(str(e["track"]))}</td>'
            f"<td>{_fmt(e.get('mse', np.nan))}</td><td>{_pct(e.get('top1_share'))}</td>"
            f'<td class="key">{html.escape(str(e.get("worst") or "n/a"))}</td>'
            f"<td>{_pct(e.get('worst_share'))}</td><td>{_fmt(e.get('worst_mse', np.nan))}</td>"
            f"<td>{_fmt(e.get('rest_mse', np.nan))}</td></tr>")
    out.append("</table></div>")
    return "".join(out)


def _calibration_table(rows: Sequence[Mapping[str, Any]]) -> str:
    out = ['<div class="scroll"><table><tr><th class="key">track</th><th>coverage of ±1.645 sd'
           "</th><th>Spearman(|error|, sd)</th><th>mean sd</th><th>RMSE</th></tr>"]
    for r in rows:
        track = f"{r['cell_type']}.{r['assay']}"
        out.append(
            f'<tr><td class="key">{html.escape(track)}</td>'
            f"<td>{_pct(r.get('coverage', np.nan))}</td>"
            f"<td>{_fmt(r.get('spearman', np.nan))}</td>"
            f"<td>{_fmt(r.get('mean_sd', np.nan))}</td><td>{_fmt(r.get('rmse', np.nan))}</td></tr>")
    out.append("</table></div>")
    return "".join(out)


def _img(path: Path, caption: str, css_class: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    img = f'<img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
    if css_class == "tall":
        img = f'<div class="tallbox">{img}</div>'
    return (
        f"<figure>{img}"
        f"<figcaption>{html.escape(caption)} — <code>{html.escape(path.name)}</code>"
        "</figcaption></figure>"
    )


def _render_html(
    title: str,
    rows,
    metrics: list[str],
    methods: list[str],
    bar_files: list[tuple[str, Path]],
    curves_file: Path | None,
    signal_files: list[tuple[str, Path]],
    errors: Sequence[Mapping[str, Any]] | None = None,
    calibration: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_tracks = len(_track_order(rows))
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='sub'>{n_tracks} evaluated track{'s' if n_tracks != 1 else ''}; methods: "
        f"{html.escape(', '.join(methods)) or 'none'}; generated {now}. "
        "Values in the model's training space (arcsinh unless configured otherwise). "
        "Best value per comparison highlighted in green.</p>",
    ]
    if rows:
        parts += [
            "<h2>Summary: mean over tracks</h2>",
            _summary_table(rows, metrics, methods),
            "<p class='note'>Means skip n/a values. <i>wins</i> counts the (track, metric) "
            "comparisons where the method is best, ties crediting every best method.</p>",
            "<h2>Per track</h2>",
            _track_table(rows, metrics, methods),
        ]
    else:
        parts.append("<p>No evaluated tracks (no held-out experiments were scored).</p>")
    if errors:
        parts += [
            "<h2>Where the model's error is</h2>",
            _error_table(errors),
            "<p class='note'>The model's squared error of each track: the share of it in the "
            "track's worst 1 % of bins, and the window (250 kb at 25 bp bins) holding the most "
            "of it. A large share in one window is a region unlike anything the training cell "
            "types show there (a cell-type-specific domain); a small one, an error spread "
            "over the genome. A track's second signal panel, when it has one, shows where it "
            "misses most (with one panel, that is where its densest signal is).</p>",
        ]
    if calibration:
        parts += [
            "<h2>Uncertainty: calibration on the held-out tracks</h2>",
            _calibration_table(calibration),
            "<p class='note'>Coverage: the share of bins whose error is within ±1.645 times "
            "the uncertainty track's sd (about 90 % when calibrated). Spearman: the rank "
            "correlation of the error's size and the sd (does a larger sd mark a larger "
            "error). The same table is <code>calibration.tsv</code>.</p>",
        ]
    if bar_files:
        # Two plots a row when each stays legible at half the page (>= ~80 % of natural size).
        horizontal, width, _h = _bar_layout(n_tracks, len(methods))
        layout = "grid" if horizontal or width * _DPI <= 700 else "stack"
        parts.append(f"<h2>Metrics across tracks</h2><div class='{layout}'>")
        img_class = "tall" if horizontal else ""
        parts += [_img(p, m, img_class) for m, p in bar_files]
        parts.append("</div>")
    if curves_file is not None:
        parts += ["<h2>Training</h2>", _img(curves_file, "training and validation curves")]
    if signal_files:
        parts.append("<h2>Signal examples</h2>")
        parts += [_img(p, t) for t, p in signal_files]
    parts.append("<h2>What the metrics mean</h2><dl>")
    for k in metrics:
        direction = "lower is better" if k in LOWER_IS_BETTER else "higher is better"
        desc = METRIC_DESCRIPTIONS.get(k, "")
        parts.append(f"<dt>{html.escape(k)}</dt><dd>{html.escape(desc)} <i>({direction})</i></dd>")
    parts.append("</dl>")
    known = [m for m in methods if m in METHOD_DESCRIPTIONS]
    if known:
        parts.append("<h2>Methods</h2><dl>")
        for m in known:
            parts.append(f"<dt>{html.escape(m)}</dt><dd>{html.escape(METHOD_DESCRIPTIONS[m])}</dd>")
        parts.append("</dl>")
    parts.append(
        "<p class='note'>N is the number of evaluated bins of a track; the top 1 % holds "
        "⌊0.01 N⌋ bins, the top 5 % ⌊0.05 N⌋. Region metrics appear when gene and enhancer "
        "annotations were available for the genome.</p></main></body></html>"
    )
    return "".join(parts)


# --------------------------------------------------------------------------------------------------
# entry point


def write_report(
    report_dir,
    metrics_rows: Sequence[Mapping[str, Any]],
    curves: Mapping[str, Any] | None = None,
    examples: Sequence[Mapping[str, Any]] | None = None,
    *,
    title: str = "predictd evaluation report",
    bin_size: int = 25,
    errors: Sequence[Mapping[str, Any]] | None = None,
    calibration: Sequence[Mapping[str, Any]] | None = None,
    public: bool = False,
) -> str:
    """Write the evaluation report into a directory.

    Parameters
    ----------
    report_dir : str or pathlib.Path
        Local directory (created if needed) or object-store prefix; files already there with the
        same names are replaced.
    metrics_rows : sequence of mapping
        One per evaluated track and method: ``cell_type``, ``assay``, ``method`` (``model``,
        ``average``, ``als``, ...) and metric values (``None`` or NaN when undefined).
    curves : mapping, optional
        ``{"iteration": [...], "train_mse": [...], "valid_mse": [...]}`` and optionally more series
        of the same length (None for iterations without a value).
    examples : sequence of mapping, optional
        Signal examples ``{"track": "E003.H3K4me3", "chrom": ..., "start_bin": ...,
        "observed": array, "imputed": array, "baseline": array (optional)}``. Examples of the same
        track share one figure, one panel per region.
    title : str
        Page title.
    bin_size : int
        Bin width in bp for the signal plots' coordinates (an example's own ``bin_size`` wins).
    errors : sequence of mapping, optional
        Where each track's error sits (:func:`predictd.evaluate.error_profile` rows with a
        ``track``): a table on the page.
    calibration : sequence of mapping, optional
        The uncertainty tracks' calibration on the held-out tracks
        (:func:`predictd.evaluate.calibration_rows`, as ``calibration.tsv``): a table.
    public : bool, default False
        S3 only: make the report's objects public-read.

    Returns
    -------
    str
        Path (or URI) of ``index.html``.

    Raises
    ------
    PredictdError
        Malformed rows, curves or examples (message names the row / key), or ``report_dir`` is a
        file.
    """
    if not storage.is_remote(report_dir) and os.path.exists(report_dir) \
            and not os.path.isdir(report_dir):
        raise PredictdError(f"report directory is a file: {report_dir}")
    rows = _clean_rows(metrics_rows)
    methods = _method_order(rows)
    present = {k for r in rows for k in r}
    metrics = list(METRIC_NAMES) + [m for m in EXTRA_METRIC_NAMES if m in present]
    # Validate the cheap inputs before drawing anything.
    if curves is not None:
        _validate_curves(curves)
    by_track: dict[str, list[Mapping[str, Any]]] = {}
    for i, ex in enumerate(examples or []):
        _example_arrays(ex, i)
        by_track.setdefault(str(ex["track"]), []).append(ex)
    for i, e in enumerate(errors or []):
        if not isinstance(e, Mapping) or "track" not in e:
            raise PredictdError(f"error row {i}: missing 'track'")

    # index.html last: its presence means every other file is complete.
    with storage.staged(report_dir, public=public, last=("index.html",)) as staging:
        tmp = Path(staging)
        write_metrics_tsv(tmp / "metrics.tsv", rows)
        bar_files = []
        if rows:
            for m in metrics:
                p = tmp / f"bar_{m}.png"
                plot_metric_bars(p, m, rows)
                bar_files.append((m, p))
        curves_file = None
        if curves is not None:
            curves_file = tmp / "curves.png"
            plot_curves(curves_file, curves)
        signal_files = []
        used = set()
        for track, exs in by_track.items():
            name = _safe_name(track)
            while name in used:  # two track names sanitising to the same file name
                name += "_"
            used.add(name)
            p = tmp / f"signal_{name}.png"
            plot_signal(p, track, exs, bin_size=bin_size)
            signal_files.append((track, p))
        page = _render_html(title, rows, metrics, methods, bar_files, curves_file, signal_files,
                            errors, calibration)
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return storage.join(report_dir, "index.html")
