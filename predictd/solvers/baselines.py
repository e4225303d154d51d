"""Reference imputers that the model is measured against (docs/design.md §8).

* :func:`average_baseline` — the ``average`` baseline: for a target (cell type, assay) pair, the
  mean over the other cell types' observed tracks of the same assay, bin by bin.
* :func:`cp_als_baseline` — a plain CP (PARAFAC) decomposition with biases, fitted by
  alternating least squares with one ridge weight on C, A and G. Its factors have the same
  form as the model's (:class:`~predictd.solvers.objective.Factors`), so it imputes through the
  same closed-form path (ridge = the same weight) and can be scored beside the model.

Both are pure functions of a dense bins × experiments block (NaN = missing).
"""

from __future__ import annotations

import numpy as np

from ..model import experiment_bias, experiment_features, predict
from .closed_form import solve_genome_factors
from .objective import Factors


def average_sources(exp_cell, exp_assay, cell: int, assay: int) -> np.ndarray:
    """Indices of the experiments that the ``average`` baseline of (cell, assay) averages:
    the same assay in every other cell type, in column order."""
    exp_cell = np.asarray(exp_cell)
    exp_assay = np.asarray(exp_assay)
    return np.flatnonzero((exp_assay == assay) & (exp_cell != cell))


def average_baseline(X: np.ndarray, exp_cell, exp_assay, pairs) -> np.ndarray:
    """The ``average`` baseline of each target pair for a block of bins.

    The baseline of (cell type j, assay k) is, bin by bin, the mean of assay k over the other
    cell types that have it: the columns of ``X`` with assay k and a cell type other than j
    (:func:`average_sources`). The one rule for missing values: a source whose value is
    missing (NaN) in a bin is left out of that bin's mean, so the mean is over the sources
    observed there; a bin where no source is observed — every source missing there, or assay
    k in no other cell type at all — is NaN. The evaluation and the cross-validation report
    both score this function's values.

    Parameters
    ----------
    X : (n, E) array
        Observed values of the block's experiments (the training tracks: every column is a
        possible source), NaN where missing.
    exp_cell, exp_assay : (E,) int arrays
        Cell type and assay index of each column of ``X``.
    pairs : sequence of (cell, assay) index pairs
        The targets.

    Returns
    -------
    (n, T) float32 array
        Column t is the baseline of ``pairs[t]``: the float32 sum of its observed sources (in
        column order) divided by their number; NaN where none is observed.

    Examples
    --------
    Three cell types with assay 0 (the third one missing in the second bin), one with
    assay 1:

    >>> X = np.array([[1.0, 3.0, 5.0, 10.0],
    ...               [1.0, 3.0, np.nan, 10.0]])
    >>> cell, assay = [0, 1, 2, 2], [0, 0, 0, 1]
    >>> average_baseline(X, cell, assay, [(3, 0), (2, 0), (0, 1), (2, 1)]).tolist()
    [[3.0, 2.0, 10.0, nan], [2.0, 2.0, 10.0, nan]]
    """
    X = np.asarray(X)
    n = X.shape[0]
    out = np.full((n, len(pairs)), np.nan, dtype=np.float32)
    obs = ~np.isnan(X)
    Xz = np.where(obs, X, 0.0).astype(np.float32)
    for t, (j, k) in enumerate(pairs):
        src = average_sources(exp_cell, exp_assay, j, k)
        if src.size == 0:
            continue
        cnt = obs[:, src].sum(axis=1)
        tot = Xz[:, src].sum(axis=1)
        np.divide(tot, cnt, out=out[:, t], where=cnt > 0)
    return out


def _hierarchical_biases(X, obs, exp_cell, exp_assay, n_cell, n_assay):
    """μ, then cell-type means of what is left, then assay means (the initialisation of
    docs/design.md §3)."""
    c = obs.sum(axis=0).astype(np.float64)
    s = np.where(obs, X, 0.0).sum(axis=0, dtype=np.float64)
    mu = float(s.sum() / max(c.sum(), 1))
    m = np.divide(s, c, out=np.full_like(s, mu), where=c > 0) - mu
    bC = np.bincount(exp_cell, m * c, n_cell) / np.maximum(np.bincount(exp_cell, c, n_cell), 1)
    rest = m - bC[exp_cell]
    bA = np.bincount(exp_assay, rest * c, n_assay) / np.maximum(
        np.bincount(exp_assay, c, n_assay), 1)
    return mu, bC, bA


def cp_als_baseline(X: np.ndarray, exp_cell, exp_assay, n_cell: int, n_assay: int,
                    rank: int = 4, ridge: float = 1.0, iters: int = 100, seed: int = 0,
                    tol: float = 1e-7) -> Factors:
    """Rank-``rank`` CP decomposition with biases by plain ALS.

    Minimises ``Σ_obs (x − μ − bC_j − bA_k − bG_i − Σ_l C_jl A_kl G_il)² +
    ridge (‖C‖² + ‖A‖² + ‖G‖²)`` (biases unpenalised), cycling G → [C, bC] → G → [A, bA] with
    exact block solves. μ stays at the mean of the observed entries.

    Parameters
    ----------
    X : (n, E) array
        Training block (bins × observed experiments, NaN = missing).
    exp_cell, exp_assay : (E,) int arrays
        Cell type / assay of each column.
    n_cell, n_assay : int
        Sizes of the cell-type and assay axes (rows of C and A).
    rank, ridge, iters, seed : model size, ridge weight, number of ALS sweeps, initial factors'
        random seed.
    tol : float
        Stop when a sweep lowers the objective by less than this relative amount.

    Returns
    -------
    Factors
        Impute with :func:`predictd.solvers.closed_form.solve_genome_factors` using
        ``ridge`` as the genome ridge (this is exactly the G step of the fit).
    """
    X = np.asarray(X, dtype=np.float64)
    exp_cell = np.asarray(exp_cell)
    exp_assay = np.asarray(exp_assay)
    obs = ~np.isnan(X)
    Xz = np.where(obs, X, 0.0)
    n, E = X.shape
    mu, bC, bA = _hierarchical_biases(X, obs, exp_cell, exp_assay, n_cell, n_assay)
    rng = np.random.default_rng(seed)
    C = rng.uniform(-0.33, 0.33, (n_cell, rank))
    A = rng.uniform(-0.33, 0.33, (n_assay, rank))
    missing = [e for e in range(E) if not obs[:, e].all()]
    prev = np.inf
    for _ in range(iters):
        for which in ("C", "A"):
            Z = experiment_features(C, A, exp_cell, exp_assay)
            b = experiment_bias(mu, bC, bA, exp_cell, exp_assay)
            G, bG = solve_genome_factors(np.where(obs, X - b, np.nan), Z, ridge, 0.0, obs=obs,
                                         dtype=np.float64)
            H = np.concatenate([G, np.ones((n, 1))], axis=1)
            base = mu + (bA[exp_assay] if which == "C" else bC[exp_cell])
            r = (Xz - base[None, :] - bG[:, None]) * obs
            t = H.T @ r                                   # (rank+1) × E
            S_all = H.T @ H
            S = np.broadcast_to(S_all, (E, rank + 1, rank + 1)).copy()
            for e in missing:
                Hm = H[~obs[:, e]]
                S[e] -= Hm.T @ Hm
            if which == "C":
                owner, other, rows = exp_cell, A[exp_assay], n_cell
            else:
                owner, other, rows = exp_assay, C[exp_cell], n_assay
            d = np.concatenate([other, np.ones((E, 1))], axis=1)
            M = np.zeros((rows, rank + 1, rank + 1))
            rhs = np.zeros((rows, rank + 1))
            np.add.at(M, owner, S * d[:, :, None] * d[:, None, :])
            np.add.at(rhs, owner, d * t.T)
            M[:, np.arange(rank), np.arange(rank)] += ridge
            for row in np.unique(owner):
                sol = np.linalg.lstsq(M[row], rhs[row], rcond=None)[0]
                if which == "C":
                    C[row], bC[row] = sol[:rank], sol[rank]
                else:
                    A[row], bA[row] = sol[:rank], sol[rank]
        Z = experiment_features(C, A, exp_cell, exp_assay)
        pred = predict(G, bG, Z, experiment_bias(mu, bC, bA, exp_cell, exp_assay))
        obj = float(np.sum(((Xz - pred) * obs) ** 2)) + ridge * float(
            np.sum(C ** 2) + np.sum(A ** 2) + np.sum(G ** 2))
        if prev - obj < tol * abs(prev):
            break
        prev = obj
    return Factors(mu, bC, bA, C, A)


def impute_pairs(X: np.ndarray, exp_cell, exp_assay, f: Factors, ridge: float, pairs,
                 bias_ridge: float = 0.0) -> np.ndarray:
    """Closed-form imputation of target pairs for a block (n × T): G from the block's observed
    experiments, then ``G (C_j ⊙ A_k) + bG + μ + bC_j + bA_k``."""
    exp_cell = np.asarray(exp_cell)
    exp_assay = np.asarray(exp_assay)
    Z = experiment_features(f.C, f.A, exp_cell, exp_assay)
    b = experiment_bias(f.mu, f.bC, f.bA, exp_cell, exp_assay)
    G, bG = solve_genome_factors(np.asarray(X, dtype=np.float64) - b[None, :], Z, ridge,
                                 bias_ridge, dtype=np.float64)
    j = np.array([p[0] for p in pairs], dtype=int)
    k = np.array([p[1] for p in pairs], dtype=int)
    out = predict(G, bG, experiment_features(f.C, f.A, j, k),
                  experiment_bias(f.mu, f.bC, f.bA, j, k))
    return out.astype(np.float32)
