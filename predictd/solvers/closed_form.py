"""Closed-form genome factors (docs/design.md §5): with C, A and their biases fixed, each bin's
``[g_i; bG_i]`` is a ridge regression on its observed experiments.

Bins that share the same set of observed experiments share one (L+1)×(L+1) inverse, so a block
is one GEMM per observed pattern: ``[G | bG] = R · Pᵀ`` with ``P = (Z Zᵀ + Λ)⁻¹ Z``.
"""

from __future__ import annotations

import numpy as np


def observed_patterns(obs: np.ndarray) -> list[tuple[np.ndarray | slice, np.ndarray]]:
    """Group the rows of a boolean mask (bins × experiments) by their pattern.

    Returns ``[(rows, cols), ...]`` where ``rows`` selects the bins with the pattern (a slice
    when every bin has it) and ``cols`` is the boolean pattern itself.
    """
    n, E = obs.shape
    if n == 0:
        return []
    first = obs[0]
    if (obs == first).all():
        return [(slice(None), first.copy())]
    packed = np.packbits(obs, axis=1)
    # a void view turns each packed row into one hashable scalar so unique is a 1-D sort
    keys = np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first_idx, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    groups = []
    for p, rows in enumerate(np.split(order, bounds)):
        groups.append((rows, obs[rows[0]].copy()))
    return groups


def projection(Z: np.ndarray, ridge: float, bias_ridge: float = 0.0) -> np.ndarray:
    """P = (Zaᵀ Za + diag(ridge,…,ridge, bias_ridge))⁻¹ Zaᵀ with Za = [Z, 1]  ((L+1) × n_E).

    Computed in float64. With ``ridge > 0`` the system is positive definite (the bias direction
    is pinned by the column of ones) and is solved directly; with ``ridge == 0`` it may be
    singular (fewer experiments than factors, or collinear loadings) and the minimum-norm
    pseudo-inverse solution is used.
    """
    Z = np.asarray(Z, dtype=np.float64)
    nE, L = Z.shape
    Za = np.empty((nE, L + 1))
    Za[:, :L] = Z
    Za[:, L] = 1.0
    M = Za.T @ Za
    M[np.arange(L), np.arange(L)] += ridge
    M[L, L] += bias_ridge
    if ridge > 0:
        try:
            P = np.linalg.solve(M, Za.T)
            if np.isfinite(P).all():
                return P
        except np.linalg.LinAlgError:
            pass
    # A singular M is not reliably reported by solve: rounding leaves tiny pivots and it returns
    # a finite but arbitrary solution whose null-space part corrupts predictions of unobserved
    # experiments. The pseudo-inverse drops those directions.
    return np.linalg.pinv(M, hermitian=True) @ Za.T


def solve_genome_factors(R: np.ndarray, Z: np.ndarray, ridge: float, bias_ridge: float = 0.0,
                         obs: np.ndarray | None = None,
                         dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Genome factors and biases for a block of bins.

    Parameters
    ----------
    R : (n, E) array
        Residuals ``x − μ − bC_j − bA_k`` with NaN where the experiment is missing in that bin.
    Z : (E, L) array
        Experiment loadings ``C[j_e] ⊙ A[k_e]``.
    ridge, bias_ridge : float
        Penalties on g_i and on bG_i (the config's ``ri2`` and ``bias_penalty``).
    obs : (n, E) bool array, optional
        Observed mask; defaults to ``~isnan(R)``.

    Returns
    -------
    G : (n, L) array, bG : (n,) array
        Bins with no observed experiment get zeros.

    Examples
    --------
    >>> Z = np.array([[1.0], [2.0], [3.0]])
    >>> G, bG = solve_genome_factors(np.array([[2.0, 4.0, 6.0]]), Z, ridge=0.0)
    >>> np.round(G, 6).tolist(), np.round(bG, 6).tolist()
    ([[2.0]], [0.0])
    """
    n, E = R.shape
    L = Z.shape[1]
    if obs is None:
        obs = ~np.isnan(R)
    out = np.zeros((n, L + 1), dtype=dtype)
    for rows, cols in observed_patterns(obs):
        if not cols.any():
            continue
        P = projection(Z[cols], ridge, bias_ridge).astype(dtype, copy=False)
        if isinstance(rows, slice) and cols.all():
            Rp = R
        else:
            Rp = R[rows][:, cols] if not isinstance(rows, slice) else R[:, cols]
        out[rows] = np.asarray(Rp, dtype=dtype) @ P.T
    return out[:, :L], out[:, L].copy()


def resolve_missing_rows(GB: np.ndarray, X: np.ndarray, Z: np.ndarray, ridge: float,
                         bias_ridge: float = 0.0, offset=None) -> np.ndarray:
    """Repair a fast all-observed solve: re-solve the bins with missing entries, in place.

    ``GB`` (n × L+1, possibly a view) is ``(X − offset)`` times the all-observed projection's
    transpose. A NaN entry of X makes its bin's whole row of that product NaN — NaN times
    anything, even 0, is NaN — so the bins to redo are read off the small result instead of
    scanning X, and only they go through the per-pattern :func:`solve_genome_factors`.
    Returns the indices of the re-solved bins.
    """
    holes = np.flatnonzero(np.isnan(GB[:, -1]))
    if holes.size:
        R = X[holes] if offset is None else X[holes] - offset
        G, bG = solve_genome_factors(R, Z, ridge, bias_ridge, dtype=GB.dtype)
        GB[holes, :-1] = G
        GB[holes, -1] = bG
    return holes

