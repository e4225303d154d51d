"""Per-bin uncertainty of the stacked transfer regression (docs/design.md §6a).

The predictive variance of a target (cell type j, assay k) is modelled in model space
(arcsinh) as a non-negative linear function of cheap per-bin quantities known at prediction::

    σ²_i = β · z_i,   z_i = [1, ŷ₊, ŷ₊², (ŷ − a)², s²]              (β ≥ 0)

with ŷ the stacked prediction (ŷ₊ = max(ŷ, 0)), a the mean of assay k over the other cell types
at the bin and s² their variance there (how much the cell types disagree). β is learned from
*honest* residuals: every observed experiment (c, k) has stacking weights fitted without its
own track (the transfer regression learns on the other cell types, the blend on c's other
assays), so ``x_ck − ŷ_ck`` is a held-out error. Its sufficient statistics, ``Σ z zᵀ`` and
``Σ z r²`` per experiment (:func:`residual_moments`), are sums that shards add; a target's β
is a non-negative least-squares fit on the experiments of its training cell types
(:func:`fit_variance`), never on its own track.

A calibration scale then makes ``ŷ ± 1.645 σ`` hold 90 % of the bins: each training
experiment's standardised errors ``|r| / σ`` (σ from a β fitted without that experiment's cell
type) are counted in a fixed histogram (:func:`ratio_histogram`, again additive); its 90 %
quantile divided by 1.645 is the experiment's scale (:func:`calibration_scale`), and a target's
scale is a two-way (assay + cell type) model of their logarithms
(:func:`predictd.solvers.stacking.fit_uncertainty`). The target's track is used by neither
step.

Output units: by the delta method of the inverse transform (:func:`output_sd`), for arcsinh
``sd_out = cosh(ŷ) · σ``.
"""

from __future__ import annotations

import numpy as np

#: Names of the per-bin quantities z (in order).
FEATURES = ("constant", "level", "level_squared", "off_average_squared", "spread_squared")
N_FEATURES = len(FEATURES)
#: The central interval ŷ ± Z_90 σ of a normal variable holds 90 % of it.
Z_90 = 1.6448536269514722
COVERAGE = 0.90
#: Pseudo-experiments that shrink a target's β toward every experiment of the other cell types
#: (:func:`predictd.solvers.stacking.fit_uncertainty`), and its calibration's assay effect
#: toward their mean log scale. Chosen on the pilot's leave-one-track-out, 4-fold and 2-fold
#: cross-validation together (docs/accuracy.md, "Few training cell types"): β's prior is the
#: smallest on the plateau of 8 and more, the scale's the best of 0–4.
VARIANCE_PRIOR = 8.0
SCALE_PRIOR = 2.0
#: Edges of the standardised-error histogram |r| / σ: 0, then 10⁻³ … 10³ log-spaced (about
#: 2.4 % apart, so the 90 % quantile is read to that precision), then ∞.
RATIO_EDGES = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 601), [np.inf]])


def variance_features(yhat: np.ndarray, average: np.ndarray, spread2: np.ndarray
                      ) -> np.ndarray:
    """The per-bin quantities ``z`` (:data:`FEATURES`, N_FEATURES × bins, float64) of a track.

    ``yhat`` — its model-space prediction; ``average`` and ``spread2`` — the mean and variance of
    its assay over the other cell types at each bin (NaN where none observes it: the
    prediction then counts as its own average and the spread as 0)."""
    y = np.asarray(yhat, dtype=np.float64)
    a = np.asarray(average, dtype=np.float64)
    s2 = np.asarray(spread2, dtype=np.float64)
    Z = np.empty((N_FEATURES, y.size))
    Z[0] = 1.0
    np.maximum(y, 0.0, out=Z[1])
    np.square(Z[1], out=Z[2])
    d = np.where(np.isnan(a), 0.0, y - a)
    np.square(d, out=Z[3])
    Z[4] = np.where(np.isnan(s2), 0.0, np.maximum(s2, 0.0))
    return Z


def other_cell_moments(tot: np.ndarray, tot2: np.ndarray, cnt: np.ndarray,
                       own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) variance of an assay over the other cell types at each bin.

    ``tot``, ``tot2``, ``cnt`` are the assay's sum, sum of squares and count over every cell
    type (bins,), ``own`` the cell type's own value (NaN when it has none). NaN where no other
    cell type observes the assay; variance 0 where one does."""
    seen = ~np.isnan(own)
    o = np.where(seen, own, 0.0)
    t = tot - o
    t2 = tot2 - o * o
    c = cnt - seen
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(c > 0.5, t / c, np.nan)
        var = np.where(c > 0.5, np.maximum(t2 / c - mean * mean, 0.0), np.nan)
    return mean, var


def residual_moments(Z: np.ndarray, r: np.ndarray) -> dict:
    """Sufficient statistics of one experiment's residuals ``r`` (bins,) with their quantities
    ``Z`` (N_FEATURES × bins): ``zz = Σ z zᵀ``, ``zr = Σ z r²``, ``n`` bins."""
    r2 = np.square(np.asarray(r, dtype=np.float64))
    return {"zz": Z @ Z.T, "zr": Z @ r2, "n": float(r2.size)}


def add_moments(parts) -> dict | None:
    """Sum :func:`residual_moments` (in order; None when there are none)."""
    out = None
    for p in parts:
        if p is None:
            continue
        out = {k: np.array(v, dtype=np.float64, copy=True) for k, v in p.items()} \
            if out is None else {k: out[k] + p[k] for k in out}
    return out


def fit_variance(moments: dict | None, min_bins: int = 100) -> np.ndarray | None:
    """β ≥ 0 minimising Σ (r² − β·z)² from summed :func:`residual_moments`; None with fewer
    than ``min_bins`` bins. The quantities are scaled to unit diagonal first (their sizes
    differ by orders of magnitude), the fit is a non-negative least-squares problem on the
    Cholesky factor of the normal equations (equivalent up to a constant)."""
    if moments is None or moments["n"] < min_bins:
        return None
    # a quantity (almost) always 0 in training — the spread when one other cell type has the
    # assay — has no identifiable weight: it is left out (weight 0) rather than extrapolated
    active = np.flatnonzero(np.diag(moments["zz"]) > 1e-8 * moments["n"])
    beta = np.zeros(moments["zz"].shape[0])
    M = moments["zz"][np.ix_(active, active)]
    b = moments["zr"][active]
    d = np.sqrt(np.diag(M))
    Ms = M / np.outer(d, d) + 1e-10 * np.eye(active.size)
    # Σ(r² − βz)² = const − 2 βᵀb + βᵀMβ: with M = LLᵀ, ‖Lᵀβ − L⁻¹b‖² up to a constant
    # imported here: scipy.optimize takes ~0.3 s to import, which every Spark Python worker
    # writing tracks (they import this module) would pay for a function only training calls
    from scipy.optimize import nnls
    L = np.linalg.cholesky(Ms)
    rhs = np.linalg.solve(L, b / d)
    beta[active] = nnls(L.T, rhs)[0] / d
    b = moments["zr"]
    if not beta.any():   # residuals too small to fit: a constant variance
        beta[0] = max(float(b[0]) / max(moments["n"], 1.0), 0.0)
    return beta


def predictive_variance(Z: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """σ² per bin (float64, ≥ 0) for quantities Z (N_FEATURES × bins)."""
    return np.maximum(np.asarray(beta, dtype=np.float64) @ Z, 0.0)


def ratio_histogram(r: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Counts of the standardised errors |r| / σ in :data:`RATIO_EDGES` (int64). A bin with
    σ = 0 counts as 0 when its error is 0, as ∞ otherwise."""
    r = np.abs(np.asarray(r, dtype=np.float64))
    sd = np.sqrt(np.asarray(var, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(sd > 0, r / np.where(sd > 0, sd, 1.0), np.where(r > 0, np.inf, 0.0))
    idx = np.searchsorted(RATIO_EDGES, u, side="right") - 1
    idx = np.clip(idx, 0, RATIO_EDGES.size - 2)
    return np.bincount(idx, minlength=RATIO_EDGES.size - 1).astype(np.int64)


def calibration_scale(hist: np.ndarray, coverage: float = COVERAGE, z: float = Z_90
                      ) -> float:
    """The factor s making ``|r| ≤ z · s · σ`` hold ``coverage`` of the counted bins: the
    ``coverage`` quantile of |r| / σ (the upper edge of the histogram cell it falls in, so the
    interval errs on the wide side) divided by z. 1.0 for an empty histogram."""
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    if total <= 0:
        return 1.0
    cell = int(np.searchsorted(np.cumsum(hist), coverage * total, side="left"))
    cell = min(cell, RATIO_EDGES.size - 3)   # the ∞ cell: read at the last finite edge
    return float(RATIO_EDGES[cell + 1]) / z


def output_sd(yhat: np.ndarray, sd: np.ndarray, transform: str) -> np.ndarray:
    """A model-space standard deviation in the input's units, by the delta method of the
    inverse transform at the prediction: ``cosh(ŷ) · σ`` for arcsinh (d sinh / dy), σ itself
    for ``none`` (float32)."""
    y = np.asarray(yhat, dtype=np.float64)
    s = np.asarray(sd, dtype=np.float64)
    if transform == "arcsinh":
        out = np.cosh(y) * s
    elif transform == "none":
        out = s.copy()
    else:
        raise ValueError(f"unknown transform {transform!r}")
    return out.astype(np.float32)


def calibration(y: np.ndarray, yhat: np.ndarray, sd: np.ndarray, z: float = Z_90) -> dict:
    """How well a track's standard deviations describe its errors (all in the same units):
    ``coverage`` — the share of bins with |y − ŷ| ≤ z · sd (the ±1.645 sd interval: 0.90
    for calibrated normal errors); ``spearman`` — the rank correlation of |y − ŷ| and sd
    (average ranks for ties; NaN when either is constant); ``mean_sd`` and ``rmse``; ``bins``.
    Bins where y is NaN are not counted."""
    y = np.asarray(y, dtype=np.float64)
    ok = ~np.isnan(y)
    err = np.abs(y[ok] - np.asarray(yhat, dtype=np.float64)[ok])
    s = np.asarray(sd, dtype=np.float64)[ok]
    n = int(ok.sum())
    if n == 0:
        return {"bins": 0, "coverage": float("nan"), "spearman": float("nan"),
                "mean_sd": float("nan"), "rmse": float("nan")}
    return {"bins": n, "coverage": float(np.mean(err <= z * s)),
            "spearman": spearman(err, s), "mean_sd": float(s.mean()),
            "rmse": float(np.sqrt(np.mean(err * err)))}


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), vectorised."""
    order = np.argsort(v, kind="stable")
    sv = v[order]
    starts = np.flatnonzero(np.concatenate([[True], sv[1:] != sv[:-1]]))
    ends = np.concatenate([starts[1:], [sv.size]])
    avg = (starts + ends - 1) / 2.0
    ranks = np.empty(v.size)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two vectors (NaN when either is constant)."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")
