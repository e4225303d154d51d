"""A new cell type's factors against a frozen model (reference imputation, docs/design.md
§11).

With the assay factors A, the biases μ and bA, and the genome factors [G | bG] of a trained
model held fixed, a new cell type j's ``[C_j; bC_j]`` is a ridge regression on its observed
assays K_j — the same system as the ALS cell-type update (:mod:`predictd.solvers.als`)::

    r_ki = x_jki − μ − bA_k − bG_i,      h_ki = [G_i ⊙ A_k, 1]
    ( Σ h hᵀ + N·diag(λC, …, λC, λb) ) [C_j; bC_j] = Σ h r

summed over the observed (k, i) entries. Blocks of bins return the sums
(:func:`cell_type_sums`), which are added in block order (deterministic) and solved once
(:func:`solve_cell_type`).
"""

from __future__ import annotations

import numpy as np


def cell_type_sums(GB: np.ndarray, X: np.ndarray, A: np.ndarray, bA: np.ndarray, mu: float,
                   assays) -> dict:
    """The normal equations' sums of one cell type over a block of bins.

    Parameters
    ----------
    GB : (n, L+1) array
        The frozen genome factors and biases ``[G | bG]`` of the bins.
    X : (n, K) array
        The cell type's observed values of its assays (NaN = missing).
    A : (n_assays, L) array, bA : (n_assays,) array, mu : float
        The frozen assay factors and biases and the global mean.
    assays : (K,) int array
        The assay index of each column of X.

    Returns
    -------
    dict
        ``M`` ((L+1)², Σ h hᵀ), ``t`` (L+1, Σ h r) and ``n`` (entries), float64.
    """
    GB = np.asarray(GB, dtype=np.float64)
    n, L1 = GB.shape
    L = L1 - 1
    M = np.zeros((L1, L1))
    t = np.zeros(L1)
    count = 0
    H = np.empty((n, L1))
    for col, k in enumerate(np.asarray(assays, dtype=int)):
        x = np.asarray(X[:, col], dtype=np.float64)
        seen = ~np.isnan(x)
        np.multiply(GB[:, :L], A[k][None, :], out=H[:, :L])
        H[:, L] = 1.0
        r = x - mu - bA[k] - GB[:, L]
        if not seen.all():
            Hs, r = H[seen], r[seen]
        else:
            Hs = H
        M += Hs.T @ Hs
        t += Hs.T @ r
        count += int(r.size)
    return {"M": M, "t": t, "n": count}


def sum_cell_type_sums(parts: list[dict]) -> dict:
    """Add block sums in the given order (deterministic)."""
    out = None
    for p in parts:
        out = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in p.items()} \
            if out is None else {k: out[k] + p[k] for k in out}
    return out


def solve_cell_type(sums: dict, lam_c: float, lam_b: float = 0.0
                    ) -> tuple[np.ndarray, float]:
    """``(C_j, bC_j)`` from :func:`cell_type_sums`: penalties per entry, as in training
    (``N·λ`` on the diagonal; λb on the bias)."""
    M = sums["M"].copy()
    L = M.shape[0] - 1
    N = max(int(sums["n"]), 1)
    M[np.arange(L), np.arange(L)] += N * lam_c
    M[L, L] += N * lam_b
    try:
        sol = np.linalg.solve(M, sums["t"])
    except np.linalg.LinAlgError:
        sol = np.linalg.lstsq(M, sums["t"], rcond=None)[0]
    if not np.isfinite(sol).all():
        sol = np.linalg.lstsq(M, sums["t"], rcond=None)[0]
    return sol[:L], float(sol[L])
