"""Evaluate: score held-out tracks against their observed signal, beside the average baseline.

One task per tensor block returns, for each held-out experiment, the observed values, the
model's imputation (from the stored genome factors) and the ``average`` baseline — the mean of
the same assay over the other cell types that have it among the training tracks (DESIGN §6).
The driver scores whole-genome vectors with :func:`predictd.metrics.score_track` (arcsinh space)
and writes ``OUT/report/``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import numpy as np

from . import storage, tensor
from .impute import gf_uri, model_values, read_gf
from .metrics import score_track
from .model import Model
from .spark import map_tasks

log = logging.getLogger("predictd.evaluate")


def baseline_sources(model: Model, holdout: list[str]) -> dict[str, list[str]]:
    """For each held-out experiment, the training experiments of the same assay in other cell
    types."""
    train = [f"{c}.{a}" for c, a in model.observed]
    out = {}
    for h in holdout:
        cell, assay = h.split(".", 1)
        out[h] = [e for e in train if e.split(".", 1)[1] == assay and e.split(".", 1)[0] != cell]
    return out


def _eval_task(item, payload):
    chrom, block, start, n = item
    root, gf_root, model, holdout, sources = payload
    obs = [f"{c}.{a}" for c, a in model.observed]
    cols = sorted(set(holdout) | set(obs))
    _, X = tensor.read_block(root, chrom, block, cols)
    ci = {c: i for i, c in enumerate(cols)}
    GB = read_gf(gf_uri(gf_root, chrom, block))
    pairs = [(model.cell_types.index(h.split(".", 1)[0]), model.assays.index(h.split(".", 1)[1]))
             for h in holdout]
    Yhat = model_values(model, GB, pairs, (cols, X))
    out = {}
    for t, h in enumerate(holdout):
        y = X[:, ci[h]]
        src = sources[h]
        base = np.nanmean(X[:, [ci[s] for s in src]], axis=1) if src else np.full(n, np.nan)
        out[h] = (y, Yhat[:, t], base)  # full length: region masks stay aligned
    return out


def collect(sc, header: tensor.TensorHeader, root: str, gf_root: str, model: Model,
            holdout: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Genome-wide (observed, imputed, baseline) vectors for each held-out experiment."""
    sources = baseline_sources(model, holdout)
    parts = map_tasks(sc, _eval_task, header.blocks(), (root, gf_root, model, holdout, sources))
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
        cell, assay = h.split(".", 1)
        y = v["y"]
        ok = ~np.isnan(y)  # bins of chromosomes the observed track lacks are not scored
        masks = {k: m[ok] for k, m in region_masks.items()} if region_masks else None
        for method, yhat in v.items():
            if method == "y" or not np.isfinite(yhat[ok]).all():
                continue
            rows.append({"cell_type": cell, "assay": assay, "method": method,
                         **score_track(y[ok], yhat[ok], masks)})
    return rows


def example_regions(vectors: dict, width: int = 2000) -> list[dict]:
    """A window around each held-out track's strongest observed signal, for the report plots."""
    ex = []
    for h, (y, yhat, base) in vectors.items():
        ok = ~np.isnan(y)
        y, yhat, base = y[ok], yhat[ok], base[ok]
        if y.size == 0:
            continue
        # the densest window of observed signal, so the plot shows peaks, not a flat line
        w = min(width, y.size)
        cs = np.concatenate([[0.0], np.cumsum(y, dtype=np.float64)])
        s = int(np.argmax(cs[w:] - cs[:-w]))
        ex.append({"track": h, "chrom": "", "start_bin": s, "observed": y[s:s + w],
                   "imputed": yhat[s:s + w], "baseline": base[s:s + w]})
    return ex


def write_report(out: str, rows: list[dict], curves: dict | None, examples: list[dict],
                 public: bool = False) -> str:
    """Write OUT/report (locally, or built in a temp dir and uploaded for s3://)."""
    from .report import write_report as _write

    if not storage.is_remote(out):
        return _write(os.path.join(out, "report"), rows, curves, examples)
    tmp = tempfile.mkdtemp(prefix="predictd-report-")
    try:
        path = _write(os.path.join(tmp, "report"), rows, curves, examples)
        for name in sorted(os.listdir(os.path.join(tmp, "report"))):
            storage.upload_file(os.path.join(tmp, "report", name),
                                storage.join(out, "report", name), public=public)
        return storage.join(out, "report", os.path.basename(path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
