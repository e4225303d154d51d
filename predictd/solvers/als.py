"""Alternating least squares on the shared objective (:mod:`predictd.solvers.objective`).

One ALS pass updates G (closed form, per shard) and then one of the two small factors, C or A.
With G fixed, each cell type's ``[C_j; bC_j]`` is a ridge regression whose normal equations need
only per-experiment sums::

    S_e = Σ_{i observed in e} h_i h_iᵀ,   t_e = Σ_i h_i r_ie,   h_i = [G_i, 1]

    ( Σ_{e of j} S_e ⊙ d_e d_eᵀ + N Λ ) [C_j; bC_j] = Σ_{e of j} d_e ⊙ t_e,   d_e = [A_k, 1]

(and symmetrically for assays with d_e = [C_j, 1]). Shards return S and t; Spark sums them; the
driver solves n_cell_types (or n_assays) systems of size L+1.
"""

from __future__ import annotations

import numpy as np

from ..model import experiment_bias, experiment_features
from .closed_form import projection, resolve_missing_rows
from .objective import Factors, Penalties


def shard_stats(X, exp_cell, exp_assay, f: Factors, pen: Penalties, which: str,
                chunk: int = 128) -> dict:
    """Sufficient statistics of one shard for updating ``which`` ∈ {"C", "A"}.

    Returns ``S_all`` ((L+1)², over all bins), ``S_missing`` {e: (L+1)²} for experiments with
    missing bins in this shard, ``t`` ((L+1) × E), and the shard's training SSE and entry count
    under the current factors (with the G just solved).

    The shard is processed ``chunk`` bins at a time in reused float64 buffers: at Roadmap scale
    a shard is ~0.5 GB in float64 and whole-shard temporaries made every pass a trip to memory
    (and fresh allocations page faults); chunks stay in cache. Genome factors are one GEMM with the shared projection;
    bins with missing entries (NaN rows of that product) are solved again per observed pattern.
    """
    if which not in ("C", "A"):
        raise ValueError(which)
    X = np.asarray(X)
    n, E = X.shape
    L = f.C.shape[1]
    Z = experiment_features(f.C, f.A, exp_cell, exp_assay)
    b = experiment_bias(f.mu, f.bC, f.bA, exp_cell, exp_assay)
    # r = x − base − bG with base = μ + bA (C update) or μ + bC (A update): r = (x − b) + own − bG
    own = f.bC[exp_cell] if which == "C" else f.bA[exp_assay]
    P = projection(Z, pen.rhoG, pen.rhoB)
    t = np.zeros((L + 1, E))
    S_all = np.zeros((L + 1, L + 1))
    S_missing: dict[int, np.ndarray] = {}
    sse, count, g2 = 0.0, 0, 0.0
    Rbuf = np.empty((min(chunk, n), E))
    Dbuf = np.empty((min(chunk, n), E))
    for s in range(0, n, chunk):
        Xc = X[s:s + chunk]
        m = Xc.shape[0]
        R, D = Rbuf[:m], Dbuf[:m]
        np.subtract(Xc, b[None, :], out=R)
        GB = R @ P.T
        full = resolve_missing_rows(GB, R, Z, pen.rhoG, pen.rhoB).size == 0
        if not full:
            missing = np.isnan(R)
        G, bG = GB[:, :L], GB[:, L]
        H = np.empty((m, L + 1))
        H[:, :L] = G
        H[:, L] = 1.0
        R -= bG[:, None]                     # x − b − bG: the residual before G Zᵀ
        np.matmul(G, Z.T, out=D)
        np.subtract(R, D, out=D)             # x − prediction
        R += own[None, :]                    # r
        if not full:
            np.copyto(D, 0.0, where=missing)
            np.copyto(R, 0.0, where=missing)
            for e in np.flatnonzero(missing.any(axis=0)):
                Hm = H[missing[:, e]]
                S_missing[int(e)] = S_missing.get(int(e), 0.0) + Hm.T @ Hm
        t += H.T @ R
        S_all += H.T @ H
        np.square(D, out=D)
        sse += float(D.sum())
        count += m * E - (0 if full else int(missing.sum()))
        g2 += float(np.sum(G ** 2))
    return {"S_all": S_all, "S_missing": S_missing, "t": t, "sse": sse, "count": count,
            "g2": g2}


def sum_stats(parts: list[dict]) -> dict:
    """Add shard statistics in the given (partition) order — deterministic."""
    out = {"S_all": None, "S_missing": {}, "t": None, "sse": 0.0, "count": 0, "g2": 0.0}
    for p in parts:
        out["S_all"] = p["S_all"].copy() if out["S_all"] is None else out["S_all"] + p["S_all"]
        out["t"] = p["t"].copy() if out["t"] is None else out["t"] + p["t"]
        for e, S in p["S_missing"].items():
            out["S_missing"][e] = out["S_missing"].get(e, 0.0) + S
        out["sse"] += p["sse"]
        out["count"] += p["count"]
        out["g2"] += p["g2"]
    return out


def update_factor(stats: dict, exp_cell, exp_assay, f: Factors, pen: Penalties, which: str,
                  n_entries: int) -> Factors:
    """Solve the ridge systems of every cell type (``which="C"``) or assay (``"A"``)."""
    S_all, t = stats["S_all"], stats["t"]
    E = t.shape[1]
    L = S_all.shape[0] - 1
    S = np.broadcast_to(S_all, (E, L + 1, L + 1)).copy()
    for e, Sm in stats["S_missing"].items():
        S[e] -= Sm
    if which == "C":
        owner, other, n_rows, lam = exp_cell, f.A[exp_assay], f.C.shape[0], pen.lamC
    else:
        owner, other, n_rows, lam = exp_assay, f.C[exp_cell], f.A.shape[0], pen.lamA
    d = np.empty((E, L + 1))
    d[:, :L] = other
    d[:, L] = 1.0
    SD = S * d[:, :, None] * d[:, None, :]
    rhs_e = d * t.T
    M = np.zeros((n_rows, L + 1, L + 1))
    rhs = np.zeros((n_rows, L + 1))
    np.add.at(M, owner, SD)
    np.add.at(rhs, owner, rhs_e)
    N = max(n_entries, 1)
    idx = np.arange(L)
    M[:, idx, idx] += N * lam
    M[:, L, L] += N * pen.lamB
    new = f.copy()
    for row in range(n_rows):
        if not (owner == row).any():
            continue  # no training data: keep the current values
        try:
            sol = np.linalg.solve(M[row], rhs[row])
        except np.linalg.LinAlgError:
            sol = np.linalg.lstsq(M[row], rhs[row], rcond=None)[0]
        if which == "C":
            new.C[row], new.bC[row] = sol[:L], sol[L]
        else:
            new.A[row], new.bA[row] = sol[:L], sol[L]
    return new
