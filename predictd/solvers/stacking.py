"""Cross-cell-type transfer regression stacked on the model (issue 3).

For a target pair (cell type j, assay k) the prediction for bin i is linear in that bin's own
observed values::

    ŷ_jki = w_0 + Σ_{k' ∈ K} w_k' x_jk'i + w_avg · avg_k(j)_i

with K ⊆ the other assays observed in cell type j, and ``avg_k(j)`` the ``average`` baseline
(mean of assay k over the other cell types that have it). The weights are learned on the
*other* cell types that have assay k observed — in each such cell type c the same features
(x_ck', avg_k(c)) are regressed on the observed track x_ck — so the regression transfers "how
assay k relates to the other assays of a cell" across cell types, and a held-out pair never
contributes to its own weights. It is the PARAFAC model's fall-back companion: targets with no
training cell type, and bins where a feature is missing, take the model's value.

Everything is computed from per-cell-type Gram matrices of the vectors::

    v_ci = [1, x_c1i … x_cKi, avg_1(c)_i … avg_K(c)_i]      (1 + 2·n_assays)

which shards sum (:func:`stack_stats`, :func:`sum_stack_stats`) and the driver solves per
target (:func:`fit_stack`). Prediction (:func:`predict_pairs`) needs only a tensor block and
the small weight array: one GEMM per cell type per block.
"""

from __future__ import annotations

import numpy as np


def n_features(n_assay: int, windows=()) -> int:
    """Length of a cell type's feature vector ``v``: 1 + 2·n_assays·(1 + len(windows))."""
    return 1 + 2 * n_assay * (1 + len(windows))


def moving_mean(V: np.ndarray, width: int) -> np.ndarray:
    """Centred moving mean over ``width`` bins along axis 0, ignoring NaNs (windows are
    truncated at the block's ends; all-NaN windows give NaN). Cumulative sums: O(n) per column
    whatever the width."""
    n = V.shape[0]
    h = width // 2
    ok = ~np.isnan(V)
    cs = np.zeros((n + 1,) + V.shape[1:], dtype=np.float64)
    np.cumsum(np.where(ok, V, 0.0), axis=0, out=cs[1:])
    cc = np.zeros((n + 1,) + V.shape[1:], dtype=np.float64)
    np.cumsum(ok, axis=0, out=cc[1:])
    lo = np.clip(np.arange(n) - h, 0, n)
    hi = np.clip(np.arange(n) + h + 1, 0, n)
    tot = cs[hi] - cs[lo]
    cnt = cc[hi] - cc[lo]
    return np.divide(tot, cnt, out=np.full(tot.shape, np.nan), where=cnt > 0).astype(V.dtype)


def cell_vectors(X: np.ndarray, exp_cell, exp_assay, n_assay: int, cell: int, windows=(),
                 dtype=np.float64) -> np.ndarray:
    """``v_ci`` for every bin of a block (n × :func:`n_features`).

    Layout: ``[1, x_c1 … x_cK, avg_1(c) … avg_K(c)]`` followed by the same 2K columns smoothed
    by :func:`moving_mean` over each width in ``windows`` (bins; the genome context). Unobserved
    experiments of the cell type, and averages of assays that no other cell type has, are 0
    (constant columns the fit never selects); NaN means missing in that bin.
    """
    X = np.asarray(X)
    exp_cell = np.asarray(exp_cell)
    exp_assay = np.asarray(exp_assay)
    n = X.shape[0]
    base = np.zeros((n, 2 * n_assay), dtype=dtype)
    own = np.flatnonzero(exp_cell == cell)
    base[:, exp_assay[own]] = X[:, own]
    other = exp_cell != cell
    obs = ~np.isnan(X[:, other])
    xz = np.where(obs, X[:, other], 0.0)
    a = exp_assay[other]
    # per-assay sums and counts over the other cell types, as two small GEMMs
    onehot = np.zeros((a.size, n_assay), dtype=dtype)
    onehot[np.arange(a.size), a] = 1.0
    tot = xz.astype(dtype) @ onehot
    cnt = obs.astype(dtype) @ onehot
    has_source = np.bincount(a, minlength=n_assay) > 0
    avg = np.divide(tot, cnt, out=np.full_like(tot, np.nan), where=cnt > 0)
    avg[:, ~has_source] = 0.0
    base[:, n_assay:] = avg
    V = np.empty((n, n_features(n_assay, windows)), dtype=dtype)
    V[:, 0] = 1.0
    V[:, 1:1 + 2 * n_assay] = base
    for s, w in enumerate(windows, 1):
        V[:, 1 + 2 * n_assay * s:1 + 2 * n_assay * (s + 1)] = moving_mean(base, int(w))
    return V


def stack_stats(X: np.ndarray, exp_cell, exp_assay, n_cell: int, n_assay: int, windows=(),
                rows=None) -> dict:
    """Sufficient statistics of a block of training bins: ``gram[c] = Σ_i v_ci v_ciᵀ`` over the
    bins where every feature of cell type c is present (float64, n_cell × D × D).

    With context ``windows`` the block must be contiguous bins (a tensor block), not a random
    sample: the features are computed on the whole block and ``rows`` (a boolean mask or index
    array, e.g. the block's training sample) then selects the bins that are summed."""
    D = n_features(n_assay, windows)
    gram = np.zeros((n_cell, D, D))
    for c in np.unique(np.asarray(exp_cell)):
        # features in float32 over the whole block (context), the sampled rows' Gram in float64
        V = cell_vectors(X, exp_cell, exp_assay, n_assay, int(c), windows, dtype=np.float32)
        if rows is not None:
            V = V[rows]
        V = V[~np.isnan(V).any(axis=1)].astype(np.float64)
        gram[c] = V.T @ V
    return {"gram": gram}


def sum_stack_stats(parts: list[dict]) -> dict:
    """Add shard statistics in shard order (deterministic)."""
    gram = None
    for p in parts:
        gram = p["gram"].copy() if gram is None else gram + p["gram"]
    return {"gram": gram}


def target_design(observed: np.ndarray, cell: int, assay: int, n_windows: int = 0
                  ) -> tuple[list[int], np.ndarray]:
    """Training cell types and feature indices (into ``v``) of one target pair.

    ``observed`` is the (n_cell × n_assay) boolean matrix of training experiments. Training cell
    types are the others that have ``assay``; features are the constant, the target cell's other
    observed assays and, when the assay is observed in at least two cell types (so every training
    cell type has a source too), its average — each also at every context width. Feature assays
    that no training cell type shares are dropped, rarest first, until some training cell type
    has them all.
    """
    n_cell, n_assay = observed.shape
    train = [c for c in range(n_cell) if c != cell and observed[c, assay]]
    if not train:
        return [], np.zeros(0, dtype=int)
    K = [k for k in range(n_assay) if k != assay and observed[cell, k]]
    while K:
        full = [c for c in train if observed[c, K].all()]
        if full:
            train = full
            break
        seen = observed[np.ix_(train, K)].sum(axis=0)
        K.pop(int(np.argmin(seen)))
    per_segment = list(K)
    if observed[:, assay].sum() >= 2:
        per_segment.append(n_assay + assay)
    feats = [0] + [1 + 2 * n_assay * s + f for s in range(1 + n_windows) for f in per_segment]
    return train, np.asarray(feats, dtype=int)


def fit_stack(stats: dict, observed: np.ndarray, ridge: float = 1e-3, windows=()
              ) -> np.ndarray:
    """Weights of every (cell type, assay) pair: (n_cell × n_assay × D), NaN rows for targets
    without training cell types (they keep the model's imputation).

    ``ridge`` is relative: ``ridge × (number of training rows)`` is added to the diagonal of the
    non-constant features, so it does not depend on the size of the training subset.
    ``windows`` must be those the statistics were computed with.
    """
    gram = stats["gram"]
    observed = np.asarray(observed, dtype=bool)
    n_cell, n_assay = observed.shape
    D = n_features(n_assay, windows)
    if gram.shape[1] != D:
        raise ValueError(f"statistics have {gram.shape[1]} features, windows {windows} need {D}")
    W = np.full((n_cell, n_assay, D), np.nan)
    for j in range(n_cell):
        for k in range(n_assay):
            train, feats = target_design(observed, j, k, len(windows))
            if not train:
                continue
            G = gram[train].sum(axis=0)
            if G[0, 0] < 10 * len(feats):
                continue  # too few training rows for this many weights
            M = G[np.ix_(feats, feats)].copy()
            rhs = G[feats, 1 + k]
            M[np.arange(1, len(feats)), np.arange(1, len(feats))] += ridge * G[0, 0]
            w = np.zeros(D)
            try:
                w[feats] = np.linalg.solve(M, rhs)
            except np.linalg.LinAlgError:
                w[feats] = np.linalg.lstsq(M, rhs, rcond=None)[0]
            W[j, k] = w
    return W


def predict_pairs(X: np.ndarray, exp_cell, exp_assay, weights: np.ndarray, pairs,
                  fallback: np.ndarray, windows=()) -> np.ndarray:
    """Stacked imputation of target pairs for a block of bins.

    Parameters
    ----------
    X : (n, E) array
        The block's observed training experiments (NaN = missing), columns as in training.
    exp_cell, exp_assay : (E,) int arrays
        Cell type / assay of each column of ``X``.
    weights : (n_cell, n_assay, 1 + 2·n_assay) array
        From :func:`fit_stack`.
    pairs : sequence of (cell, assay) index pairs
        The targets.
    fallback : (n, T) array
        The model's imputation of the same pairs; used for targets without weights and for bins
        where one of a target's features is missing.
    windows : sequence of int
        The context widths the weights were fitted with. ``X`` must then be contiguous bins
        (a tensor block); windows are truncated at its ends, as in training.

    Returns
    -------
    (n, T) float32 array
    """
    n = X.shape[0]
    n_assay = weights.shape[1]
    out = np.array(fallback, dtype=np.float32, copy=True)
    pairs = [(int(j), int(k)) for j, k in pairs]
    for j in sorted({p[0] for p in pairs}):
        cols = [t for t, p in enumerate(pairs) if p[0] == j and np.isfinite(weights[p]).all()]
        if not cols:
            continue
        Wj = np.stack([weights[pairs[t]] for t in cols], axis=1).astype(np.float32)  # D × T
        V = cell_vectors(X, exp_cell, exp_assay, n_assay, j, windows, dtype=np.float32)
        missing = np.isnan(V)
        Vz = np.where(missing, np.float32(0.0), V)
        # one matrix-vector product per target, not one GEMM for the group: the value of a
        # track must not depend on which other tracks share its task (GEMM blocking, hence
        # rounding, changes with the number of columns)
        pred = np.empty((n, len(cols)), dtype=np.float32)
        for t in range(len(cols)):
            pred[:, t] = Vz @ Wj[:, t]
        if missing.any():
            bad = missing.astype(np.float32) @ (Wj != 0).astype(np.float32) > 0
            pred = np.where(bad, out[:, cols], pred)
        out[:, cols] = pred
    return out
