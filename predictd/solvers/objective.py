"""The training objective shared by both solvers, and its gradients.

With N observed training entries, E_i the number observed in bin i::

    f = (1/N) Σ_obs (x − x̂)²                        data term (mean squared error)
        + λC ‖C‖² + λA ‖A‖² + λb (‖bC‖² + ‖bA‖²)      cell-type / assay side
        + (1/N) (ρG Σ_i ‖G_i‖² + ρb Σ_i bG_i²)        genome side

λC = rc / (L · n_cell_types) and λA = ra / (L · n_assays) follow PREDICTD's scaling
(docs/design.md §3). The genome side is written in per-bin units so that, multiplied by N, each
bin's problem is exactly the closed-form ridge of docs/design.md §5 with ρG = ri2: the factors
that training optimises are the ones imputation uses. (Setting ``ri`` > 0 instead gives
PREDICTD's λG = ri/(L·n_bins).)

The genome penalty is spread over a bin's entries (ρG‖G_i‖²/E_i per entry), so a uniformly drawn
mini-batch gives an unbiased estimate of the whole gradient (:func:`minibatch_gradients`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from ..model import experiment_bias, experiment_features, predict


@dataclass
class Factors:
    """The broadcast side of the model: global mean, biases and cell-type/assay factors."""

    mu: float
    bC: np.ndarray
    bA: np.ndarray
    C: np.ndarray
    A: np.ndarray

    def copy(self) -> "Factors":
        return Factors(self.mu, self.bC.copy(), self.bA.copy(), self.C.copy(), self.A.copy())


@dataclass(frozen=True)
class Penalties:
    lamC: float
    lamA: float
    lamB: float   # on bC and bA
    rhoG: float   # per-bin ridge on G_i (closed form: ri2)
    rhoB: float   # per-bin ridge on bG_i


def penalties(cfg, n_cell_types: int, n_assays: int, n_entries: int, n_bins: int) -> Penalties:
    """Penalty weights from a :class:`predictd.config.Config` and the training set's size."""
    L = cfg.latent_factors
    lamC = cfg.rc / (L * n_cell_types)
    lamA = cfg.ra / (L * n_assays)
    if cfg.ri > 0:  # PREDICTD's own scaling, converted to per-bin units
        rhoG = cfg.ri / (L * max(n_bins, 1)) * max(n_entries, 1)
    else:
        rhoG = cfg.ri2
    return Penalties(lamC, lamA, cfg.bias_penalty, rhoG, cfg.bias_penalty)


def residuals(X, exp_cell, exp_assay, f: Factors, G, bG) -> np.ndarray:
    """x − x̂ (NaN where missing)."""
    Z = experiment_features(f.C, f.A, exp_cell, exp_assay)
    xhat = predict(G, bG, Z, experiment_bias(f.mu, f.bC, f.bA, exp_cell, exp_assay))
    return X - xhat


def objective(X, exp_cell, exp_assay, f: Factors, G, bG, pen: Penalties) -> float:
    r = residuals(X, exp_cell, exp_assay, f, G, bG)
    obs = ~np.isnan(r)
    N = max(int(obs.sum()), 1)
    val = float(np.sum(np.where(obs, r, 0.0) ** 2)) / N
    val += pen.lamC * float(np.sum(f.C ** 2)) + pen.lamA * float(np.sum(f.A ** 2))
    val += pen.lamB * float(np.sum(f.bC ** 2) + np.sum(f.bA ** 2))
    val += (pen.rhoG * float(np.sum(G ** 2)) + pen.rhoB * float(np.sum(bG ** 2))) / N
    return val


def gradients(X, exp_cell, exp_assay, f: Factors, G, bG, pen: Penalties) -> dict[str, np.ndarray]:
    """Exact gradient of :func:`objective` over all observed entries (for tests and small data)."""
    obs = ~np.isnan(X)
    rows, cols = np.nonzero(obs)
    N = max(rows.size, 1)
    counts = obs.sum(axis=1)
    return minibatch_gradients(X[rows, cols], rows, cols, exp_cell, exp_assay, f, G, bG, pen,
                               counts, scale=1.0 / N)


def minibatch_gradients(x, rows, cols, exp_cell, exp_assay, f: Factors, G, bG, pen: Penalties,
                        row_counts, scale: float) -> dict[str, np.ndarray]:
    """Gradient of the objective estimated from a batch of observed entries.

    Parameters
    ----------
    x, rows, cols : (B,) arrays
        Observed values and their bin (row of G) and experiment indices.
    row_counts : (n,) array
        E_i, observed entries per bin (spreads the genome penalty over entries).
    scale : float
        1/B for a mini-batch mean (unbiased for the mean over entries), 1/N for the full sum.

    Returns a dict with ``C, A, bC, bA`` (full shapes) and ``G, bG`` (full shapes; only rows in
    the batch are non-zero).
    """
    j = exp_cell[cols]
    k = exp_assay[cols]
    Cj = f.C[j]
    Ak = f.A[k]
    Gi = G[rows]
    Z = experiment_features(f.C, f.A, j, k)
    xhat = np.einsum("bl,bl->b", Z, Gi) + bG[rows] + experiment_bias(f.mu, f.bC, f.bA, j, k)
    d = (-2.0 * scale) * (x - xhat)  # d(loss)/d(xhat) per entry
    n = G.shape[0]
    w = (2.0 * scale) / row_counts[rows]
    gG_entries = d[:, None] * Z
    gG_entries += (pen.rhoG * w)[:, None] * Gi
    gG = _group_sum(rows, gG_entries, n).astype(G.dtype, copy=False)
    gbG = np.bincount(rows, weights=d + pen.rhoB * w * bG[rows], minlength=n).astype(G.dtype)
    gC = _group_sum(j, d[:, None] * (Ak * Gi), f.C.shape[0]).astype(f.C.dtype, copy=False)
    gA = _group_sum(k, d[:, None] * (Cj * Gi), f.A.shape[0]).astype(f.A.dtype, copy=False)
    gC += 2.0 * pen.lamC * f.C
    gA += 2.0 * pen.lamA * f.A
    gbC = np.bincount(j, weights=d, minlength=f.C.shape[0]) + 2.0 * pen.lamB * f.bC
    gbA = np.bincount(k, weights=d, minlength=f.A.shape[0]) + 2.0 * pen.lamB * f.bA
    return {"C": gC, "A": gA, "bC": gbC, "bA": gbA, "G": gG, "bG": gbG}


def _group_sum(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """out[i] = Σ_{b: index[b] = i} values[b] as a sparse × dense product (a compiled loop over
    the entries; np.add.at on rows is an order of magnitude slower)."""
    B = index.size
    S = sparse.csc_matrix((np.ones(B), index, np.arange(B + 1)), shape=(n, B))
    return np.asarray(S @ values)
