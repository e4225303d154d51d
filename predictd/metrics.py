"""Accuracy metrics for imputed tracks (docs/design.md §8).

Every metric compares one observed track ``y`` with its imputation ``yhat`` over the same evaluated
bins (arcsinh space unless the caller says otherwise). They are plain functions
``f(y, yhat) -> float`` over 1-D numpy arrays, vectorized, O(N) or O(N log N).

Definitions (the names are a contract)
--------------------------------------
``N`` is the number of evaluated bins, ``n1 = floor(0.01 N)`` and ``n5 = floor(0.05 N)``.

- ``mse``: mean of ``(y - yhat)**2``.
- ``gwcorr``: Pearson correlation. ``gwspear``: Spearman correlation, i.e. the Pearson correlation
  of the average ranks (ties share the mean of their ranks).
- ``mse1obs`` / ``mse1imp``: mse over the bins whose ``y`` (resp. ``yhat``) is ``>=`` the value at
  the top 1 %, the ``n1``-th largest value. With ties at that value the set can hold more than
  ``n1`` bins; this matches the ENCODE Imputation Challenge scorer.
- ``top1%(x)`` / ``top5%(x)``: the exactly ``n1`` (resp. ``n5``) bins with the largest ``x``,
  taken from a stable descending sort: ties at the boundary go to the lower bin index. Exactly-sized
  sets keep ``match1``, ``catch1obs`` and ``catch1imp`` in [0, 1] even for tracks with many tied
  values (large runs of zeros, clipped signal), where threshold sets would blow up.
- ``match1 = |top1%(y) ∩ top1%(yhat)| / n1``;
  ``catch1obs = |top1%(y) ∩ top5%(yhat)| / n1``; ``catch1imp = |top1%(yhat) ∩ top5%(y)| / n1``.
  (The ENCODE scorer reports the raw counts and uses ``5 n1`` for the top 5 %; ours are fractions.)
- ``aucobs1``: ROC AUC of ``yhat`` as a score for the labels ``top1%(y)``; ``aucimp1``: ROC AUC of
  ``y`` for the labels ``top1%(yhat)``. Computed from average ranks (Mann-Whitney U), so a tie
  between a positive and a negative bin counts one half, as in ``sklearn.metrics.roc_auc_score``.
- ``msevar``: the squared error weighted per bin by ``v``, the variance (population, ``ddof=0``)
  of the observed signal of the same assay across cell types, the scored one included:
  ``sum((y - yhat)**2 * v) / sum(v)`` (:func:`msevar`; the ENCODE Imputation Challenge's
  definition). It stresses the bins where cell types differ, the ones imputation is for.
- ``mseprom`` / ``msegene`` / ``mseenh``: mse restricted to the bins of a region mask
  (:func:`mse_in_mask`; masks come from :mod:`predictd.annotations`).

Degenerate inputs return ``nan`` quietly: correlations of a constant track, top-1 % metrics when
``N < 100`` (``n1 = 0``), region mse over an empty mask, ``msevar`` when the variance is 0 in
every bin. Shape mismatches and non-finite values are input errors
(:class:`~predictd.errors.PredictdError`): a NaN here means a bug upstream, and a silently
NaN-poisoned score would hide it.

Examples
--------
>>> import numpy as np
>>> y = np.arange(200, dtype=float)
>>> round(mse(y, y + 1), 3)
1.0
>>> match1(y, y), aucobs1(y, y)
(1.0, 1.0)
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from predictd.errors import PredictdError

#: Whole-track metrics, in the fixed column order of ``metrics.tsv``.
METRIC_NAMES: list[str] = [
    "mse",
    "gwcorr",
    "gwspear",
    "mse1obs",
    "mse1imp",
    "match1",
    "catch1obs",
    "catch1imp",
    "aucobs1",
    "aucimp1",
]

#: Region metrics, in column order; ``mse<region>`` for the region keys of
#: :func:`predictd.annotations.region_masks`.
REGION_METRIC_NAMES: list[str] = ["mseprom", "msegene", "mseenh"]

#: Metrics that need more than the two tracks (the assay's variance across cell types, region
#: masks): present when their inputs are, in this column order after :data:`METRIC_NAMES`.
EXTRA_METRIC_NAMES: list[str] = ["msevar", *REGION_METRIC_NAMES]

#: Metrics where a smaller value is better (all the mse variants); the others are better larger.
LOWER_IS_BETTER: frozenset[str] = frozenset(
    ["mse", "mse1obs", "mse1imp", *EXTRA_METRIC_NAMES]
)


# --------------------------------------------------------------------------------------------------
# input checks and shared building blocks


def _as_track(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise PredictdError(f"metrics: {name} must be a 1-D array of bins, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise PredictdError(f"metrics: {name} must be real numbers, got dtype {arr.dtype}")
    # float64 accumulation: float32 sums over 10^8 bins lose several digits.
    arr = arr.astype(np.float64, copy=False)
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise PredictdError(
            f"metrics: {name} has {bad} non-finite values (NaN/inf); mask them out before scoring"
        )
    return arr


def _as_pair(y, yhat) -> tuple[np.ndarray, np.ndarray]:
    y = _as_track(y, "y (observed)")
    yhat = _as_track(yhat, "yhat (imputed)")
    if y.shape != yhat.shape:
        raise PredictdError(
            f"metrics: y (observed) has {y.shape[0]} bins but yhat (imputed) has {yhat.shape[0]}"
        )
    return y, yhat


def top_counts(n_bins: int) -> tuple[int, int]:
    """Sizes of the top-1 % and top-5 % sets for a track of ``n_bins`` bins.

    Parameters
    ----------
    n_bins : int
        Number of evaluated bins ``N``.

    Returns
    -------
    (int, int)
        ``(floor(0.01 N), floor(0.05 N))``, in integer arithmetic so that float rounding of
        ``0.01 * N`` can never move the boundary by one bin.

    Examples
    --------
    >>> top_counts(199), top_counts(200), top_counts(99)
    ((1, 9), (2, 10), (0, 4))
    """
    return n_bins // 100, (5 * n_bins) // 100


def _kth_largest(x: np.ndarray, k: int) -> float:
    # np.partition is O(N); a full sort is not needed to find one order statistic.
    n = x.size
    return float(np.partition(x, n - k)[n - k])


def top_mask(x: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of exactly ``k`` bins with the largest values.

    Equivalent to taking the first ``k`` indices of a stable descending sort: every bin above the
    ``k``-th largest value is in, and bins tied at that value are admitted in increasing bin index
    until the set holds ``k`` members. O(N).

    Parameters
    ----------
    x : numpy.ndarray
        1-D values.
    k : int
        Set size; ``k <= 0`` gives an empty mask, ``k >= len(x)`` a full one.

    Returns
    -------
    numpy.ndarray of bool

    Examples
    --------
    >>> top_mask(np.array([1.0, 3.0, 3.0, 2.0, 3.0]), 2).nonzero()[0]
    array([1, 2])
    """
    x = np.asarray(x)
    n = x.size
    mask = np.zeros(n, dtype=bool)
    if k <= 0:
        return mask
    if k >= n:
        mask[:] = True
        return mask
    t = _kth_largest(x, k)
    above = x > t
    mask |= above
    need = k - int(np.count_nonzero(above))
    mask[np.flatnonzero(x == t)[:need]] = True
    return mask


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing the mean of their ranks (``scipy.stats.rankdata`` "average").

    An unstable O(N log N) sort is enough because tied values get the same rank whatever their
    order, and it is faster than the stable sort scipy uses.

    Examples
    --------
    >>> average_ranks(np.array([10.0, 20.0, 10.0, 5.0]))
    array([2.5, 4. , 2.5, 1. ])
    """
    x = np.asarray(x)
    n = x.size
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    order = np.argsort(x)
    xs = x[order]
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(xs[1:], xs[:-1], out=new_group[1:])
    g_start = np.flatnonzero(new_group)
    g_stop = np.append(g_start[1:], n)
    # Sorted positions g_start..g_stop-1 hold ranks g_start+1..g_stop; their mean:
    mean_rank = (g_start + g_stop + 1) / 2.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, g_stop - g_start)
    return ranks


def _mse_sel(y: np.ndarray, yhat: np.ndarray, sel: np.ndarray | None = None) -> float:
    if sel is not None:
        y, yhat = y[sel], yhat[sel]
    if y.size == 0:
        return float("nan")
    d = y - yhat
    return float(np.dot(d, d) / d.size)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2:
        return float("nan")
    # Test constancy exactly: centring a constant track by its float mean leaves rounding noise
    # whose "correlation" would be garbage rather than undefined.
    if a.min() == a.max() or b.min() == b.max():
        return float("nan")
    ac = a - a.mean()
    bc = b - b.mean()
    den = np.sqrt(np.dot(ac, ac) * np.dot(bc, bc))
    if not np.isfinite(den) or den == 0.0:
        return float("nan")
    return float(np.clip(np.dot(ac, bc) / den, -1.0, 1.0))


def _auc_from_ranks(ranks: np.ndarray, positive: np.ndarray) -> float:
    # Mann-Whitney: AUC = (sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg),
    # with average ranks so that each positive/negative tie counts 1/2.
    n_pos = int(np.count_nonzero(positive))
    n_neg = ranks.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _overlap_fraction(a: np.ndarray, b: np.ndarray, n1: int) -> float:
    if n1 == 0:
        return float("nan")
    return float(np.count_nonzero(a & b) / n1)


# --------------------------------------------------------------------------------------------------
# public metrics


def mse(y, yhat) -> float:
    """Mean squared error over all bins.

    Parameters
    ----------
    y, yhat : array_like
        Observed and imputed values, 1-D, same length.

    Returns
    -------
    float
        ``mean((y - yhat)**2)``; ``nan`` for empty input.
    """
    y, yhat = _as_pair(y, yhat)
    return _mse_sel(y, yhat)


def gwcorr(y, yhat) -> float:
    """Genome-wide Pearson correlation; ``nan`` if either track is constant or has < 2 bins."""
    y, yhat = _as_pair(y, yhat)
    return _pearson(y, yhat)


def gwspear(y, yhat) -> float:
    """Genome-wide Spearman correlation (average ranks for ties); ``nan`` for a constant track."""
    y, yhat = _as_pair(y, yhat)
    if y.size < 2:
        return float("nan")
    return _pearson(average_ranks(y), average_ranks(yhat))


def mse1obs(y, yhat) -> float:
    """MSE over the bins whose observed value is ``>=`` the ``floor(0.01 N)``-th largest observed.

    Returns ``nan`` when ``N < 100``.
    """
    y, yhat = _as_pair(y, yhat)
    n1, _ = top_counts(y.size)
    if n1 == 0:
        return float("nan")
    return _mse_sel(y, yhat, y >= _kth_largest(y, n1))


def mse1imp(y, yhat) -> float:
    """MSE over the bins whose imputed value is ``>=`` the ``floor(0.01 N)``-th largest imputed.

    Returns ``nan`` when ``N < 100``.
    """
    y, yhat = _as_pair(y, yhat)
    n1, _ = top_counts(y.size)
    if n1 == 0:
        return float("nan")
    return _mse_sel(y, yhat, yhat >= _kth_largest(yhat, n1))


def match1(y, yhat) -> float:
    """Fraction of the observed top 1 % that is also in the imputed top 1 % (exact-size sets)."""
    y, yhat = _as_pair(y, yhat)
    n1, _ = top_counts(y.size)
    return _overlap_fraction(top_mask(y, n1), top_mask(yhat, n1), n1)


def catch1obs(y, yhat) -> float:
    """Fraction of the observed top 1 % caught by the imputed top 5 %."""
    y, yhat = _as_pair(y, yhat)
    n1, n5 = top_counts(y.size)
    return _overlap_fraction(top_mask(y, n1), top_mask(yhat, n5), n1)


def catch1imp(y, yhat) -> float:
    """Fraction of the imputed top 1 % caught by the observed top 5 %."""
    y, yhat = _as_pair(y, yhat)
    n1, n5 = top_counts(y.size)
    return _overlap_fraction(top_mask(yhat, n1), top_mask(y, n5), n1)


def aucobs1(y, yhat) -> float:
    """ROC AUC of the imputed values for classifying the observed top 1 %.

    Returns ``nan`` when ``N < 100``.
    """
    y, yhat = _as_pair(y, yhat)
    n1, _ = top_counts(y.size)
    if n1 == 0:
        return float("nan")
    return _auc_from_ranks(average_ranks(yhat), top_mask(y, n1))


def aucimp1(y, yhat) -> float:
    """ROC AUC of the observed values for classifying the imputed top 1 %.

    Returns ``nan`` when ``N < 100``.
    """
    y, yhat = _as_pair(y, yhat)
    n1, _ = top_counts(y.size)
    if n1 == 0:
        return float("nan")
    return _auc_from_ranks(average_ranks(y), top_mask(yhat, n1))


def mse_in_mask(y, yhat, mask) -> float:
    """MSE over the bins selected by a boolean mask (``mseprom``, ``msegene``, ``mseenh``).

    Parameters
    ----------
    y, yhat : array_like
        Observed and imputed values, 1-D, same length.
    mask : array_like of bool
        Same length; True marks the bins of the region.

    Returns
    -------
    float
        MSE over the masked bins; ``nan`` if the mask is empty.
    """
    y, yhat = _as_pair(y, yhat)
    m = np.asarray(mask)
    if m.dtype != bool:
        raise PredictdError(f"metrics: region mask must be boolean, got dtype {m.dtype}")
    if m.shape != y.shape:
        raise PredictdError(
            f"metrics: region mask has shape {m.shape} but the track has {y.shape[0]} bins"
        )
    return _mse_sel(y, yhat, m)


def assay_variance(tracks) -> np.ndarray:
    """Per-bin variance (``ddof=0``) of one assay's observed tracks across cell types, the
    weights of :func:`msevar`.

    Parameters
    ----------
    tracks : array_like, bins × cell types
        NaN where a cell type's track is not observed; such entries are left out of the bin's
        variance, and a bin with fewer than two observed values gets 0 (no spread to weigh).

    Examples
    --------
    >>> assay_variance(np.array([[0.0, 2.0], [1.0, 1.0], [3.0, np.nan]]))
    array([1., 0., 0.])
    """
    X = np.asarray(tracks, dtype=np.float64)
    if X.ndim != 2:
        raise PredictdError(f"metrics: assay tracks must be bins × cell types, got {X.shape}")
    ok = ~np.isnan(X)
    n = ok.sum(axis=1)
    Z = np.where(ok, X, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = Z.sum(axis=1) / n
        var = np.where(ok, (X - mean[:, None]) ** 2, 0.0).sum(axis=1) / n
    var[n < 2] = 0.0
    return var


def msevar(y, yhat, var) -> float:
    """MSE weighted per bin by the assay's variance across cell types (:func:`assay_variance`):
    ``sum((y - yhat)**2 * var) / sum(var)``; ``nan`` when ``var`` sums to 0.

    Examples
    --------
    >>> msevar(np.array([0.0, 1.0]), np.array([1.0, 1.0]), np.array([3.0, 1.0]))
    0.75
    """
    y, yhat = _as_pair(y, yhat)
    v = _as_track(var, "var (assay variance)")
    if v.shape != y.shape:
        raise PredictdError(
            f"metrics: var (assay variance) has {v.size} bins but the track has {y.size}")
    if (v < 0).any():
        raise PredictdError("metrics: var (assay variance) has negative values")
    total = float(v.sum())
    if total == 0.0:
        return float("nan")
    d = y - yhat
    return float(np.dot(d * d, v) / total)


def score_track(
    y, yhat, region_masks: Mapping[str, np.ndarray] | None = None, var=None
) -> dict[str, float]:
    """All §6 metrics of one track, sharing the sorts between metrics.

    Parameters
    ----------
    y, yhat : array_like
        Observed and imputed values over the evaluated bins, 1-D, same length.
    region_masks : mapping of str to bool array, optional
        Region masks over the same bins, keyed by region name; key ``prom`` yields ``mseprom``,
        ``gene`` yields ``msegene``, ``enh`` yields ``mseenh`` (any key ``k`` yields ``mse<k>``).
        See :func:`predictd.annotations.region_masks` and
        :func:`predictd.annotations.concat_chrom_masks`.
    var : array_like, optional
        The assay's per-bin variance across cell types (:func:`assay_variance`) over the same
        bins; yields ``msevar``.

    Returns
    -------
    dict of str to float
        Keys :data:`METRIC_NAMES` in order, then ``msevar`` when ``var`` is given, then the
        region metrics in the masks' order.

    Examples
    --------
    >>> y = np.linspace(0.0, 1.0, 300)
    >>> s = score_track(y, y ** 2, {"prom": y > 0.5})
    >>> list(s)[:3], s["gwspear"], s["match1"]
    (['mse', 'gwcorr', 'gwspear'], 1.0, 1.0)
    """
    y, yhat = _as_pair(y, yhat)
    n = y.size
    n1, n5 = top_counts(n)
    out: dict[str, float] = {
        "mse": _mse_sel(y, yhat),
        "gwcorr": _pearson(y, yhat),
    }
    # One rank pass per track serves Spearman and both AUCs.
    r_y = average_ranks(y) if n >= 2 else None
    r_yhat = average_ranks(yhat) if n >= 2 else None
    out["gwspear"] = _pearson(r_y, r_yhat) if n >= 2 else float("nan")
    if n1 == 0:
        for name in METRIC_NAMES[3:]:
            out[name] = float("nan")
    else:
        top1_y, top1_yhat = top_mask(y, n1), top_mask(yhat, n1)
        out["mse1obs"] = _mse_sel(y, yhat, y >= _kth_largest(y, n1))
        out["mse1imp"] = _mse_sel(y, yhat, yhat >= _kth_largest(yhat, n1))
        out["match1"] = _overlap_fraction(top1_y, top1_yhat, n1)
        out["catch1obs"] = _overlap_fraction(top1_y, top_mask(yhat, n5), n1)
        out["catch1imp"] = _overlap_fraction(top1_yhat, top_mask(y, n5), n1)
        out["aucobs1"] = _auc_from_ranks(r_yhat, top1_y)
        out["aucimp1"] = _auc_from_ranks(r_y, top1_yhat)
    if var is not None:
        out["msevar"] = msevar(y, yhat, var)
    for region, mask in (region_masks or {}).items():
        out[f"mse{region}"] = mse_in_mask(y, yhat, mask)
    return out
