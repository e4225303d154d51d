"""Variants of the per-bin uncertainty model on a finished leave-one-track-out run, chosen by a
nested procedure (docs/accuracy.md, "Per-bin uncertainty").

A study kept outside the installed package. ``predictd run --folds T --uncertainty`` trains one
model per held-out track; this script reads each fold's model and the run's tensor once and
caches, per fold (``WORK/foldN.npz``):

- the held-out track on every bin: observed value, the stacked imputation (model space), the
  mean and variance of its assay over the other cell types, its similarity-weighted average,
  both averages over the widest context window, the bins without signal;
- every training experiment's *honest* stacked prediction (weights fitted without its track)
  with the same quantities, on the bins of the stacking sample — what the shipped model learns
  its variance and calibration from.

Every variant then fits on the training experiments only and is scored on the held-out track
(coverage of the ±1.645 sd interval and Spearman of |error| and sd, in output units, as
``OUT/report/calibration.tsv``), without retraining a fold. ``shipped`` is the package's own
model (:func:`predictd.solvers.stacking.fit_uncertainty` on the cached residuals; it reproduces
the run's calibration.tsv up to the cache's float32 rounding). The others:

- ``assay`` / ``pooled``: the calibration scale without the cell-type effect (the assay's
  other cell types only) / pooled over every experiment of the other cell types;
- ``output``: each training experiment's scale read from its standardised errors in output
  units (|sinh x − sinh ŷ| / (cosh ŷ σ)) instead of model space;
- ``disagree``: the variance features plus the ensemble-like disagreement of the stack's
  components, (ŷ − similarity-weighted average)² and (average − similarity-weighted average)²;
  ``disagree_context`` adds the context window's average and (ŷ − its similarity average)²;
- ``loglinear``: log σ² linear in the features (least squares on log(r² + 10⁻³), its level
  set by the calibration); ``loglinear_own`` adds the disagreement and the target cell type's
  own other assays; ``loglinear_ownmean`` their mean instead.

Nested choice: for each cell type C, the variant meeting both goals (coverage 85–95 %,
Spearman ≥ 0.3) on the most held-out tracks of the *other* cell types (ties: the smaller mean
|coverage − 90 %|) is applied to C's tracks, so no track's score picks its own variant.

Usage::

    predictd run -m pilot/manifest.tsv -g pilot/pilot.chrom.sizes -o /tmp/loo --folds 20 \\
        --set ensemble_size=1 --no-spark --uncertainty
    python benchmarks/uncertainty_variants.py --run /tmp/loo --work /tmp/unc-study

Prints each variant's per-track figures and the nested result; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from predictd import layout, tensor, train
from predictd.config import Config, from_dict
from predictd.impute import gf_uri, model_values, no_signal, read_gf
from predictd.model import Model
from predictd.names import split_experiment
from predictd.solvers import stacking
from predictd.solvers import uncertainty as unc

Z90 = unc.Z_90
LOG_EPS = 1e-3


# ----------------------------------------------------------------------------------- caching

def _quantities(V, so, n_assay, n_windows, k):
    """The similarity-weighted average, the widest window's average and its similarity
    average of assay k, from a cell type's feature rows ``V`` (features × bins)."""
    return (V[so + k], V[1 + 2 * n_assay * n_windows + n_assay + k],
            V[so + n_assay * n_windows + k])


def cache_fold(run: str, fold: int, dest: str, cfg: Config) -> None:
    """Write ``dest`` (npz) for fold ``fold`` of the finished run ``run``."""
    root = os.path.join(run, "tensor")
    header = tensor.read_header(root)
    chrom_index = {c: i for i, (c, _) in enumerate(header.genome["chroms"])}
    d = os.path.join(run, "folds", f"fold{fold}", "model0")
    model = Model.load(os.path.join(d, "model"))
    if model.stack is None:
        raise SystemExit(f"{d}: the model has no stacked regression")
    h = model.meta["holdout"][0]
    obs, ec, ea = model.observed_indices()
    na, nw = len(model.assays), len(model.stack_windows)
    if not nw or model.stack_similar is None:
        raise SystemExit(f"{d}: the study needs context windows and similarity averages")
    so = stacking._similar_offset(na, nw)
    cell, assay = split_experiment(h)
    hj, hk = model.cell_types.index(cell), model.assays.index(assay)
    H = {k: [] for k in ("y", "yhat", "mean", "var", "sim", "wavg", "wsim", "own", "empty")}
    T = {k: [] for k in ("e", "y", "yhat", "mean", "var", "sim", "wavg", "wsim", "own")}

    def vectors(X, c, ctx):
        return stacking.cell_vectors(X, ec, ea, na, c, model.stack_windows, dtype=np.float32,
                                     context=ctx, similar=model.stack_similar,
                                     neighbours=model.stack_neighbours).T

    for chrom, block, start, n in header.blocks():
        _, XA = tensor.read_columns(root, chrom, block, list(obs) + [h])
        X = np.ascontiguousarray(XA[:, :len(obs)], dtype=np.float32)
        GB = read_gf(gf_uri(os.path.join(d, "model", "genome_factors"), chrom, block))
        Xd = X.astype(np.float64)
        tot, cnt = stacking.assay_sums(Xd, ea, na)
        tot2, _ = stacking.assay_sums(Xd * Xd, ea, na)
        empty = no_signal(X)
        V = vectors(X, hj, stacking.BlockContext(X, ea, na, model.stack_windows))
        mean, var = unc.other_cell_moments(tot[:, hk], tot2[:, hk], cnt[:, hk],
                                           np.full(n, np.nan))
        sim, wavg, wsim = _quantities(V, so, na, nw, hk)
        for key, v in zip(H, (XA[:, -1], model_values(model, GB, [(hj, hk)], (list(obs), X))[:, 0],
                              mean, var, sim, wavg, wsim, V[1:1 + na].T, empty)):
            H[key].append(v)
        # the training experiments' honest residuals, on the stacking sample as in training
        rows = train.stack_rows(cfg.seed, chrom_index[chrom], block, n, cfg.stack_sample)
        rows &= ~empty
        ctx = stacking.BlockContext(X, ea, na, model.stack_windows, rows)
        for c in np.unique(ec):
            Vt = vectors(X, int(c), ctx)
            for e in np.flatnonzero(ec == c):
                k = ea[e]
                if not np.isfinite(model.stack[c, k]).all():
                    continue
                x = Xd[rows, e]
                m_, v_ = unc.other_cell_moments(tot[rows, k], tot2[rows, k], cnt[rows, k], x)
                sim, wavg, wsim = _quantities(Vt, so, na, nw, k)
                for key, v in zip(T, (np.full(x.size, e), x, model.stack[c, k] @ Vt, m_, v_,
                                      sim, wavg, wsim, Vt[1:1 + na].T)):
                    T[key].append(v)
    out = {"h": h, "hj": hj, "hk": hk, "ec": ec, "ea": ea}
    for k, v in H.items():
        out["H_" + k] = np.concatenate(v).astype(bool if k == "empty" else np.float32)
    for k, v in T.items():
        out["T_" + k] = np.concatenate(v).astype(np.int32 if k == "e" else np.float32)
    tmp = dest + ".partial.npz"
    np.savez(tmp, **out)
    os.replace(tmp, dest)


# ----------------------------------------------------------------------------------- variants

def features(d: dict, p: str, kind: str) -> np.ndarray:
    """Variance features of the held-out track (``p`` = "H_") or the training rows ("T_")."""
    g = lambda k: d[p + k].astype(np.float64)  # noqa: E731
    yh, a, s2, sim = g("yhat"), g("mean"), g("var"), g("sim")
    a = np.where(np.isnan(a), yh, a)
    sim = np.where(np.isnan(sim), yh, sim)
    if kind.startswith("loglinear"):
        yp = np.maximum(yh, 0.0)
        F = [np.ones_like(yh), yp, yp * yp, np.abs(yh - a), np.sqrt(np.nan_to_num(s2))]
        if kind != "loglinear":
            F += [np.abs(yh - sim), np.abs(a - sim)]
            own = np.nan_to_num(g("own"))
            others = [k for k in range(own.shape[1]) if k != int(d["hk"])]
            F += ([own[:, k] for k in others] if kind == "loglinear_own"
                  else [own[:, others].mean(axis=1)])
        return np.vstack(F)
    Z = unc.variance_features(yh, g("mean"), s2)
    if kind == "base":
        return Z
    extra = [(yh - sim) ** 2, (a - sim) ** 2]
    if kind == "disagree_context":
        extra += [np.maximum(np.nan_to_num(g("wavg")), 0.0), (yh - np.nan_to_num(g("wsim"))) ** 2]
    return np.vstack([Z] + extra)


def fit_loglinear(Z: np.ndarray, r2: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """θ of log σ² = θ · z by least squares on log(r² + LOG_EPS) (its level is left to the
    calibration, which absorbs the log-scale bias)."""
    M = Z @ Z.T
    M = M + ridge * np.trace(M) / M.shape[0] * np.eye(M.shape[0])
    return np.linalg.solve(M, Z @ np.log(r2 + LOG_EPS))


def variant_sd(d: dict, kind: str = "base", model: str = "nnls", units: str = "model",
               effect: str = "twoway") -> np.ndarray:
    """Model-space sd of the held-out track under a variant, fitted on the training rows."""
    e, ec, ea = d["T_e"], d["ec"], d["ea"]
    hj, hk = int(d["hj"]), int(d["hk"])
    Z = features(d, "T_", kind)
    x, yh = d["T_y"].astype(np.float64), d["T_yhat"].astype(np.float64)
    r2 = (x - yh) ** 2

    def fit(sel):
        rows = np.isin(e, np.flatnonzero(sel))
        if rows.sum() < 100:
            return None
        if model == "loglinear":
            return fit_loglinear(Z[:, rows], r2[rows])
        return unc.fit_variance(unc.residual_moments(Z[:, rows], np.sqrt(r2[rows])))

    def sd_of(theta, Zm):
        return (np.exp(0.5 * (theta @ Zm)) if model == "loglinear"
                else np.sqrt(np.maximum(theta @ Zm, 0.0)))

    log_s = np.full(ec.size, np.nan)
    for i in range(ec.size):
        theta = fit((ea == ea[i]) & (ec != ec[i]))
        rows = e == i
        if theta is None or not rows.any():
            continue
        sd = sd_of(theta, Z[:, rows])
        err = (np.sqrt(r2[rows]) if units == "model" else
               np.abs(np.sinh(x[rows]) - np.sinh(yh[rows])) / np.cosh(yh[rows]))
        log_s[i] = np.log(unc.calibration_scale(unc.ratio_histogram(err, sd * sd)))

    def mean_log(sel):
        v = log_s[sel]
        v = v[np.isfinite(v)]
        return float(v.mean()) if v.size else 0.0

    sel = (ea == hk) & (ec != hj)
    theta = fit(sel)
    ls = mean_log(ec != hj) if effect == "pooled" else mean_log(sel)
    if effect == "twoway":
        gaps = [log_s[i] - mean_log((ea == ea[i]) & (ec != hj))
                for i in np.flatnonzero((ec == hj) & (ea != hk)) if np.isfinite(log_s[i])]
        ls += float(np.mean(gaps)) if gaps else 0.0
    return sd_of(theta, features(d, "H_", kind)) * np.exp(ls)


def shipped_sd(d: dict) -> np.ndarray:
    """The package's own uncertainty model (:func:`stacking.fit_uncertainty`) on the cache."""
    e, ec, ea = d["T_e"], d["ec"], d["ea"]
    Z = features(d, "T_", "base")
    r = (d["T_y"] - d["T_yhat"]).astype(np.float64)
    E, m = ec.size, unc.N_FEATURES
    mom = {"zz": np.zeros((E, m, m)), "zr": np.zeros((E, m)), "n": np.zeros(E)}
    for i in range(E):
        rows = e == i
        if rows.any():
            mm = unc.residual_moments(Z[:, rows], r[rows])
            mom["zz"][i], mom["zr"][i], mom["n"][i] = mm["zz"], mm["zr"], mm["n"]
    n_cell, n_assay = int(max(ec.max(), d["hj"])) + 1, int(max(ea.max(), d["hk"])) + 1
    observed = np.zeros((n_cell, n_assay), dtype=bool)
    observed[ec, ea] = True
    betas = stacking.fit_uncertainty(mom, None, ec, ea, observed, leave_out=True)
    hist = np.zeros((E, unc.RATIO_EDGES.size - 1), np.int64)
    for i in range(E):
        rows = e == i
        if rows.any() and np.isfinite(betas[i]).all():
            hist[i] = unc.ratio_histogram(r[rows], unc.predictive_variance(Z[:, rows], betas[i]))
    beta = stacking.fit_uncertainty(mom, {"hist": hist}, ec, ea, observed)[int(d["hj"]),
                                                                           int(d["hk"])]
    return np.sqrt(unc.predictive_variance(features(d, "H_", "base"), beta))


VARIANTS = {
    "shipped": shipped_sd,
    "assay": lambda d: variant_sd(d, effect="assay"),
    "pooled": lambda d: variant_sd(d, effect="pooled"),
    "output": lambda d: variant_sd(d, units="output"),
    "disagree": lambda d: variant_sd(d, kind="disagree"),
    "disagree_context": lambda d: variant_sd(d, kind="disagree_context"),
    "loglinear": lambda d: variant_sd(d, kind="loglinear", model="loglinear"),
    "loglinear_own": lambda d: variant_sd(d, kind="loglinear_own", model="loglinear"),
    "loglinear_ownmean": lambda d: variant_sd(d, kind="loglinear_ownmean", model="loglinear"),
}


def held_out_calibration(d: dict, sd_model: np.ndarray) -> tuple[float, float]:
    """(coverage, Spearman) of the held-out track in output units, as calibration.tsv."""
    y, yh = d["H_y"].astype(np.float64), d["H_yhat"].astype(np.float64)
    sd = np.where(d["H_empty"], 0.0, unc.output_sd(yh, sd_model, "arcsinh"))
    c = unc.calibration(np.sinh(y), np.sinh(yh), sd)
    return c["coverage"], c["spearman"]


def meets(coverage: float, rho: float) -> bool:
    return 0.85 <= coverage <= 0.95 and rho >= 0.3


def nested_choice(scores: dict[str, dict[str, tuple[float, float]]]) -> dict[str, str]:
    """Per cell type, the variant chosen on the other cell types' tracks: the most tracks
    meeting both goals, then the smaller mean |coverage − 0.90|, then the name. ``scores`` =
    {variant: {track: (coverage, Spearman)}}."""
    tracks = sorted(next(iter(scores.values())))
    chosen = {}
    for cell in sorted({split_experiment(t)[0] for t in tracks}):
        inner = [t for t in tracks if split_experiment(t)[0] != cell]

        def key(v):
            s = [scores[v][t] for t in inner]
            return (-sum(meets(*x) for x in s), float(np.mean([abs(c - 0.9) for c, _ in s])), v)
        chosen[cell] = min(scores, key=key)
    return chosen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="OUT of `predictd run --folds T --uncertainty`")
    ap.add_argument("--work", required=True, help="directory for the per-fold cache")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", help="write {variant: {track: [coverage, spearman]}} here")
    a = ap.parse_args(argv)
    os.makedirs(a.work, exist_ok=True)
    folds = sorted(int(f[4:]) for f in os.listdir(os.path.join(a.run, "folds"))
                   if f.startswith("fold"))
    with open(layout.run_file(a.run)) as fh:   # the run's seed and stacking sample
        cfg = from_dict(json.load(fh)["config"], layout.run_file(a.run))
    names = a.variants.split(",")
    scores = {v: {} for v in names}
    for f in folds:
        path = os.path.join(a.work, f"fold{f}.npz")
        if not os.path.exists(path):
            cache_fold(a.run, f, path, cfg)
        d = dict(np.load(path, allow_pickle=False))
        for v in names:
            scores[v][str(d["h"])] = held_out_calibration(d, VARIANTS[v](d))
        print(f"fold {f}: {d['h']}", file=sys.stderr, flush=True)
    for v in names:
        s = scores[v]
        miss = [t for t in sorted(s) if not meets(*s[t])]
        print(f"{v:<18} {len(s) - len(miss):>2}/{len(s)} tracks meet both goals; "
              f"coverage {min(c for c, _ in s.values()):.3f}–{max(c for c, _ in s.values()):.3f},"
              f" min Spearman {min(r for _, r in s.values()):.3f}; missed: {', '.join(miss)}")
    chosen = nested_choice(scores)
    rows = {t: (chosen[split_experiment(t)[0]], *scores[chosen[split_experiment(t)[0]]][t])
            for t in sorted(scores[names[0]])}
    print(f"nested: {chosen}; {sum(meets(c, r) for _, c, r in rows.values())}/{len(rows)} "
          "tracks meet both goals")
    for t, (v, c, r) in rows.items():
        print(f"  {t:<16} {v:<18} coverage {100 * c:.1f} %  Spearman {r:.3f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"scores": scores, "nested": chosen}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
