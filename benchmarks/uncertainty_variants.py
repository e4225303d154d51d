"""Variants of the per-bin uncertainty model on finished cross-validation runs, chosen by a
nested procedure (docs/accuracy.md, "Per-bin uncertainty").

A study kept outside the installed package. ``predictd run --folds T --uncertainty`` trains one
model per fold (one per held-out track when T is the number of tracks); this script reads each
fold's model and the run's tensor once and caches, per fold (``WORK/foldN.npz``):

- each held-out track on every bin: observed value, the stacked imputation (model space), the
  mean and variance of its assay over the other cell types, its similarity-weighted average,
  both averages over the widest context window, the bins without signal;
- every training experiment's *honest* stacked prediction (weights fitted without its track)
  with the same quantities, on the bins of the stacking sample — what the shipped model learns
  its variance and calibration from.

Every variant then fits on the training experiments only and is scored on the held-out track
(coverage of the ±1.645 sd interval and Spearman of |error| and sd, in output units, as
``OUT/report/calibration.tsv``), without retraining a fold. ``shipped`` is the package's own
model (:func:`predictd.solvers.stacking.fit_uncertainty` on the cached residuals; it reproduces
the run's calibration.tsv to within a point of coverage), ``unshrunk`` the same without its
priors (both 0). The others, all without the priors:

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

``--priors`` compares the package's shrinkage priors instead (``prior``, ``scale_prior`` of
:func:`~predictd.solvers.stacking.fit_uncertainty` over :data:`PRIOR_GRID` ×
:data:`SCALE_GRID`) on every run given (``--run`` repeated: e.g. ``--folds 20``, 4 and 2 of
the same inputs), with the same nested choice over all their tracks.

Usage::

    predictd run -m pilot/manifest.tsv -g pilot/pilot.chrom.sizes -o /tmp/loo --folds 20 \\
        --set ensemble_size=1 --no-spark --uncertainty
    python benchmarks/uncertainty_variants.py --run /tmp/loo --work /tmp/unc-study
    python benchmarks/uncertainty_variants.py --run /tmp/loo --run /tmp/f4 --run /tmp/f2 \\
        --work /tmp/unc-priors --priors

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
    held = list(model.meta["holdout"])
    obs, ec, ea = model.observed_indices()
    na, nw = len(model.assays), len(model.stack_windows)
    if not nw or model.stack_similar is None:
        raise SystemExit(f"{d}: the study needs context windows and similarity averages")
    so = stacking._similar_offset(na, nw)
    targets = [(model.cell_types.index(c), model.assays.index(a))
               for c, a in map(split_experiment, held)]
    H = [{k: [] for k in ("y", "yhat", "mean", "var", "sim", "wavg", "wsim", "own", "empty")}
         for _ in held]
    T = {k: [] for k in ("e", "y", "yhat", "mean", "var", "sim", "wavg", "wsim", "own")}

    hinges = stacking.has_hinges(model.stack.shape[2], na, model.stack_windows, True)

    def vectors(X, c, ctx):
        return stacking.cell_vectors(X, ec, ea, na, c, model.stack_windows, dtype=np.float32,
                                     context=ctx, similar=model.stack_similar,
                                     neighbours=model.stack_neighbours, hinges=hinges).T

    for chrom, block, start, n in header.blocks():
        _, XA = tensor.read_columns(root, chrom, block, list(obs) + held)
        X = np.ascontiguousarray(XA[:, :len(obs)], dtype=np.float32)
        GB = read_gf(gf_uri(os.path.join(d, "model", "genome_factors"), chrom, block))
        Xd = X.astype(np.float64)
        tot, cnt = stacking.assay_sums(Xd, ea, na)
        tot2, _ = stacking.assay_sums(Xd * Xd, ea, na)
        empty = no_signal(X)
        full = stacking.BlockContext(X, ea, na, model.stack_windows)
        Yh = model_values(model, GB, targets, (list(obs), X))
        for t, (hj, hk) in enumerate(targets):
            V = vectors(X, hj, full)
            mean, var = unc.other_cell_moments(tot[:, hk], tot2[:, hk], cnt[:, hk],
                                               np.full(n, np.nan))
            sim, wavg, wsim = _quantities(V, so, na, nw, hk)
            for key, v in zip(H[t], (XA[:, len(obs) + t], Yh[:, t], mean, var, sim, wavg,
                                     wsim, V[1:1 + na].T, empty)):
                H[t][key].append(v)
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
    out = {"held": np.array(held), "targets": np.array(targets), "ec": ec, "ea": ea}
    for t, Ht in enumerate(H):
        for k, v in Ht.items():
            out[f"H{t}_" + k] = np.concatenate(v).astype(bool if k == "empty" else np.float32)
    for k, v in T.items():
        out["T_" + k] = np.concatenate(v).astype(np.int32 if k == "e" else np.float32)
    tmp = dest + ".partial.npz"
    np.savez(tmp, **out)
    os.replace(tmp, dest)


def track_view(cached: dict, t: int) -> dict:
    """One held-out track's view of a fold's cache: its ``H_*`` arrays, the fold's ``T_*``."""
    d = {k: v for k, v in cached.items() if k.startswith("T_") or k in ("ec", "ea")}
    d.update({"H_" + k[len(f"H{t}_"):]: v for k, v in cached.items() if k.startswith(f"H{t}_")})
    d["h"] = cached["held"][t]
    d["hj"], d["hk"] = (int(x) for x in cached["targets"][t])
    d["shape"] = (int(max(cached["ec"].max(), cached["targets"][:, 0].max())) + 1,
                  int(max(cached["ea"].max(), cached["targets"][:, 1].max())) + 1)
    return d


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


def _moments(d: dict) -> tuple[dict, np.ndarray]:
    """The training experiments' residual moments (as training sums them) and observed grid."""
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
    n_cell, n_assay = d["shape"]
    observed = np.zeros((n_cell, n_assay), dtype=bool)
    observed[ec, ea] = True
    return mom, observed


def _histograms(d: dict, betas: np.ndarray) -> dict:
    """The calibration pass: each training experiment's standardised errors' histogram."""
    e, ec = d["T_e"], d["ec"]
    Z = features(d, "T_", "base")
    r = (d["T_y"] - d["T_yhat"]).astype(np.float64)
    hist = np.zeros((ec.size, unc.RATIO_EDGES.size - 1), np.int64)
    for i in range(ec.size):
        rows = e == i
        if rows.any() and np.isfinite(betas[i]).all():
            hist[i] = unc.ratio_histogram(r[rows], unc.predictive_variance(Z[:, rows], betas[i]))
    return {"hist": hist}


def shipped_sd(d: dict, prior: float | None = None, scale_prior: float | None = None
               ) -> np.ndarray:
    """The package's own uncertainty model (:func:`stacking.fit_uncertainty`) on the cache;
    ``prior``/``scale_prior`` as there (None: the package's defaults)."""
    mom, observed = _moments(d)
    ec, ea = d["ec"], d["ea"]
    betas = stacking.fit_uncertainty(mom, None, ec, ea, observed, leave_out=True, prior=prior)
    beta = stacking.fit_uncertainty(mom, _histograms(d, betas), ec, ea, observed, prior=prior,
                                    scale_prior=scale_prior)[int(d["hj"]), int(d["hk"])]
    return np.sqrt(unc.predictive_variance(features(d, "H_", "base"), beta))


VARIANTS = {
    "shipped": shipped_sd,
    "unshrunk": lambda d: shipped_sd(d, 0.0, 0.0),
    "assay": lambda d: variant_sd(d, effect="assay"),
    "pooled": lambda d: variant_sd(d, effect="pooled"),
    "output": lambda d: variant_sd(d, units="output"),
    "disagree": lambda d: variant_sd(d, kind="disagree"),
    "disagree_context": lambda d: variant_sd(d, kind="disagree_context"),
    "loglinear": lambda d: variant_sd(d, kind="loglinear", model="loglinear"),
    "loglinear_own": lambda d: variant_sd(d, kind="loglinear_own", model="loglinear"),
    "loglinear_ownmean": lambda d: variant_sd(d, kind="loglinear_ownmean", model="loglinear"),
}


def held_out_errors(d: dict, sd_model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|error| and sd of the held-out track's observed bins in output units, as
    calibration.tsv counts them (sd 0 where there is no signal)."""
    y, yh = d["H_y"].astype(np.float64), d["H_yhat"].astype(np.float64)
    sd = np.where(d["H_empty"], 0.0, unc.output_sd(yh, sd_model, "arcsinh"))
    ok = ~np.isnan(y)
    return np.abs(np.sinh(y[ok]) - np.sinh(yh[ok])), sd[ok]


def held_out_calibration(d: dict, sd_model: np.ndarray) -> tuple[float, float]:
    """(coverage, Spearman) of the held-out track in output units, as calibration.tsv."""
    err, sd = held_out_errors(d, sd_model)
    return float(np.mean(err <= Z90 * sd)), unc.spearman(err, sd)


def meets(coverage: float, rho: float) -> bool:
    return 0.85 <= coverage <= 0.95 and rho >= 0.3


def cell_of(track: str) -> str:
    """The cell type of a score's key: ``cell.assay`` or ``run:cell.assay``."""
    return split_experiment(track.rsplit(":", 1)[-1])[0]


def nested_choice(scores: dict[str, dict[str, tuple[float, float]]]) -> dict[str, str]:
    """Per cell type, the variant chosen on the other cell types' tracks: the most tracks
    meeting both goals, then the smaller mean |coverage − 0.90|, then the name. ``scores`` =
    {variant: {track: (coverage, Spearman)}}."""
    tracks = sorted(next(iter(scores.values())))
    chosen = {}
    for cell in sorted({cell_of(t) for t in tracks}):
        inner = [t for t in tracks if cell_of(t) != cell]

        def key(v):
            s = [scores[v][t] for t in inner]
            return (-sum(meets(*x) for x in s), float(np.mean([abs(c - 0.9) for c, _ in s])), v)
        chosen[cell] = min(scores, key=key)
    return chosen


#: The pseudo-experiments compared by ``--priors`` (β's prior, the scale's assay prior).
PRIOR_GRID = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
SCALE_GRID = (0.0, 0.5, 1.0, 2.0, 4.0)


def prior_scores(cached: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """{"prior,scale_prior": {track: (coverage, Spearman)}} of one fold's held-out tracks over
    :data:`PRIOR_GRID` × :data:`SCALE_GRID`. The calibration pass runs once per prior, and a
    track's Spearman once per prior too: the scale multiplies a target's sd by a constant,
    which does not change its ranks."""
    views = [track_view(cached, t) for t in range(len(cached["held"]))]
    d0 = views[0]
    mom, observed = _moments(d0)
    ec, ea = d0["ec"], d0["ea"]
    HZ = [features(d, "H_", "base") for d in views]
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for kb in PRIOR_GRID:
        betas = stacking.fit_uncertainty(mom, None, ec, ea, observed, leave_out=True, prior=kb)
        hist = _histograms(d0, betas)
        rho: dict[int, float] = {}
        for ks in SCALE_GRID:
            V = stacking.fit_uncertainty(mom, hist, ec, ea, observed, prior=kb, scale_prior=ks)
            for t, (d, hz) in enumerate(zip(views, HZ)):
                err, sd = held_out_errors(
                    d, np.sqrt(unc.predictive_variance(hz, V[d["hj"], d["hk"]])))
                if t not in rho:
                    rho[t] = unc.spearman(err, sd)
                out.setdefault(f"{kb:g},{ks:g}", {})[str(d["h"])] = (
                    float(np.mean(err <= Z90 * sd)), rho[t])
    return out


def report_priors(scores: dict[str, dict[str, tuple[float, float]]], runs: list[str]) -> dict:
    """Print each grid point's tracks meeting both goals per run, the nested choice and the
    package's defaults; return the summary."""
    def count(v, run):
        return sum(meets(*x) for t, x in scores[v].items() if t.startswith(run + ":"))

    def line(v):
        return "  ".join(f"{r} {count(v, r):>2}" for r in runs)

    for v in scores:
        print(f"prior,scale {v:<9} {line(v)}  total {sum(count(v, r) for r in runs)}")
    chosen = nested_choice(scores)
    nested = {r: sum(meets(*scores[chosen[cell_of(t)]][t]) for t in scores[next(iter(scores))]
                     if t.startswith(r + ":")) for r in runs}
    default = f"{unc.VARIANCE_PRIOR:g},{unc.SCALE_PRIOR:g}"
    print(f"nested choice per cell type: {chosen}")
    print("nested: " + "  ".join(f"{r} {n:>2}" for r, n in nested.items()))
    print(f"default ({default}): {line(default)}; unshrunk (0,0): {line('0,0')}")
    return {"chosen": chosen, "nested": nested, "default": default}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, action="append",
                    help="OUT of `predictd run --folds T --uncertainty` (repeat for several)")
    ap.add_argument("--work", required=True, help="directory for the per-fold caches")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--priors", action="store_true",
                    help="compare the shrinkage priors (PRIOR_GRID × SCALE_GRID) instead")
    ap.add_argument("--json", help="write {variant: {track: [coverage, spearman]}} here")
    a = ap.parse_args(argv)
    names = a.variants.split(",")
    scores: dict[str, dict[str, tuple[float, float]]] = {}
    labels = []
    for i, run in enumerate(a.run):
        label = os.path.basename(os.path.normpath(run))
        labels.append(label)
        work = os.path.join(a.work, f"{i}-{label}") if len(a.run) > 1 else a.work
        os.makedirs(work, exist_ok=True)
        folds = sorted(int(f[4:]) for f in os.listdir(os.path.join(run, "folds"))
                       if f.startswith("fold"))
        with open(layout.run_file(run)) as fh:   # the run's seed and stacking sample
            cfg = from_dict(json.load(fh)["config"], layout.run_file(run))
        for f in folds:
            path = os.path.join(work, f"fold{f}.npz")
            if not os.path.exists(path):
                cache_fold(run, f, path, cfg)
            cached = dict(np.load(path, allow_pickle=False))
            key = (lambda h: f"{label}:{h}") if a.priors or len(a.run) > 1 else str
            if a.priors:
                for v, s in prior_scores(cached).items():
                    scores.setdefault(v, {}).update({key(t): x for t, x in s.items()})
            else:
                for t, h in enumerate(cached["held"]):
                    d = track_view(cached, t)
                    for v in names:
                        scores.setdefault(v, {})[key(h)] = held_out_calibration(d, VARIANTS[v](d))
            print(f"{run} fold {f}: {', '.join(map(str, cached['held']))}", file=sys.stderr,
                  flush=True)
    if a.priors:
        summary = report_priors(scores, labels)
        if a.json:
            with open(a.json, "w") as fh:
                json.dump({"scores": scores, **summary}, fh, indent=1)
        return 0
    for v in names:
        s = scores[v]
        miss = [t for t in sorted(s) if not meets(*s[t])]
        print(f"{v:<18} {len(s) - len(miss):>2}/{len(s)} tracks meet both goals; "
              f"coverage {min(c for c, _ in s.values()):.3f}–{max(c for c, _ in s.values()):.3f},"
              f" min Spearman {min(r for _, r in s.values()):.3f}; missed: {', '.join(miss)}")
    chosen = nested_choice(scores)
    rows = {t: (chosen[cell_of(t)], *scores[chosen[cell_of(t)]][t])
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
