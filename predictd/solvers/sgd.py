"""Parallel SGD with parameter averaging (docs/design.md §4), as pure functions over one shard.

Each shard owns its bins' genome factors G, bG and their Adam moments (the shard *state*). One
iteration: the driver broadcasts the factors C, A, bC, bA with their Adam moments; every shard
runs ``sgd_steps`` vectorised mini-batch Adam steps on its own entries, updating its G rows and a
local copy of the factors; the driver averages the shards' factors and moments
(:func:`average_factor_states`).

Adam follows PREDICTD: β1 and the learning rate decay by (1 − lr_decay)^t; G rows keep their own
step counters (a row is only updated when a mini-batch touches it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from ..model import experiment_bias, experiment_features
from .objective import Factors, Penalties

FACTOR_KEYS = ("C", "A", "bC", "bA")


@dataclass
class Adam:
    lr: float
    beta1: float
    beta2: float
    eps: float
    decay: float

    def rates(self, t):
        """Decayed learning rate and β1 at step(s) t (scalar or array)."""
        keep = (1.0 - self.decay) ** t
        return self.lr * keep, self.beta1 * keep


def init_state(X, exp_cell, exp_assay, f: Factors, pen: Penalties, rng: np.random.Generator,
               scale: float) -> dict:
    """A shard's starting genome factors: G ~ U(−scale, scale) like C and A, and bG the bin
    mean of the residual after μ, bC, bA (docs/design.md §3's hierarchical initialisation).

    (Starting G at its closed form is tempting but wrong here: with G at its optimum for the
    random C, A, the gradients on C and A nearly vanish and SGD stalls.)
    """
    n, E = X.shape
    L = f.C.shape[1]
    resid = X - experiment_bias(f.mu, f.bC, f.bA, exp_cell, exp_assay)[None, :]
    obs = ~np.isnan(resid)
    cnt = obs.sum(axis=1)
    bG = np.divide(np.where(obs, resid, 0.0).sum(axis=1), cnt, out=np.zeros(n), where=cnt > 0)
    G = rng.uniform(-scale, scale, size=(n, L))
    return {"G": G, "bG": bG, "mG": np.zeros((n, L)), "vG": np.zeros((n, L)),
            "mb": np.zeros(n), "vb": np.zeros(n), "t": np.zeros(n, dtype=np.int64)}


def _adam_step(p, g, m, v, t, opt: Adam):
    """In-place Adam update of array p; t may be per-row (then broadcast over columns).

    The bias corrections are folded into one per-row step size (``lr / (1 − β1^t)``) and one
    per-row factor on v, and the moment updates run in place, leaving two full-size
    temporaries (the result equals the textbook form up to float rounding).
    """
    lr, b1 = opt.rates(t)
    step = lr / (1.0 - opt.beta1 ** t)
    vscale = 1.0 / (1.0 - opt.beta2 ** t)
    if np.ndim(t) and p.ndim == 2:
        b1, step, vscale = b1[:, None], step[:, None], vscale[:, None]
    # m ← b1·m + (1 − b1)·g and v ← β2·v + (1 − β2)·g², in place
    m -= g
    m *= b1
    m += g
    g2 = g * g
    v -= g2
    v *= opt.beta2
    v += g2
    denom = np.multiply(v, vscale, out=g2)  # g2 is dead: reuse its memory
    np.sqrt(denom, out=denom)
    denom += opt.eps
    upd = m * step
    upd /= denom
    p -= upd


def shard_steps(X, exp_cell, exp_assay, state: dict, f: Factors, moments: dict, t0: int,
                pen: Penalties, opt: Adam, n_steps: int, batch_size: int,
                rng: np.random.Generator) -> tuple[dict, Factors, dict, dict]:
    """Run ``n_steps`` mini-batch Adam steps on one shard.

    Each step draws ``batch_size`` observed entries uniformly with replacement and takes one
    Adam step on the factors and on the G, bG rows the batch touches, with the gradient of
    :func:`predictd.solvers.objective.minibatch_gradients` (``scale = 1/batch_size``). The input
    ``state``, ``f`` and ``moments`` are not modified.

    Returns the new shard state, the shard's copy of the factors, their Adam moments, and
    ``{"sse": ..., "count": ...}`` of the mini-batch errors seen (a running training loss).
    """
    n, E = X.shape
    L = f.C.shape[1]
    nC, nA = f.C.shape[0], f.A.shape[0]
    exp_cell = np.asarray(exp_cell)
    exp_assay = np.asarray(exp_assay)
    Xf = X.reshape(-1)
    # flat indices in row-major order: the same entry numbering as np.nonzero, at half the memory
    obs_flat = np.flatnonzero(~np.isnan(Xf))
    n_obs = obs_flat.size
    row_counts = (~np.isnan(X)).sum(axis=1).astype(np.float64)

    # The four small factors live in one flat vector (with views for each) so that their Adam
    # update is a single call; gradients are written into views of one flat buffer likewise.
    shapes = {"C": f.C.shape, "A": f.A.shape, "bC": f.bC.shape, "bA": f.bA.shape}
    theta = np.concatenate([np.ravel(getattr(f, k)).astype(np.float64) for k in FACTOR_KEYS])
    m_theta = np.concatenate([np.ravel(moments[k][0]).astype(np.float64) for k in FACTOR_KEYS])
    v_theta = np.concatenate([np.ravel(moments[k][1]).astype(np.float64) for k in FACTOR_KEYS])
    g_theta = np.empty_like(theta)
    views, gviews, mviews, vviews, off = {}, {}, {}, {}, 0
    for k in FACTOR_KEYS:
        size = int(np.prod(shapes[k]))
        for dst, buf in ((views, theta), (gviews, g_theta), (mviews, m_theta),
                         (vviews, v_theta)):
            dst[k] = buf[off:off + size].reshape(shapes[k])
        off += size
    C, A, bC, bA = views["C"], views["A"], views["bC"], views["bA"]

    def finish(G_aug, M_aug, V_aug, t_rows, sse, count):
        st = {"G": np.ascontiguousarray(G_aug[:, :L]), "bG": G_aug[:, L].copy(),
              "mG": np.ascontiguousarray(M_aug[:, :L]), "vG": np.ascontiguousarray(V_aug[:, :L]),
              "mb": M_aug[:, L].copy(), "vb": V_aug[:, L].copy(), "t": t_rows}
        new_f = Factors(f.mu, bC.copy(), bA.copy(), C.copy(), A.copy())
        new_m = {k: (mviews[k].copy(), vviews[k].copy()) for k in FACTOR_KEYS}
        return st, new_f, new_m, {"sse": sse, "count": count}

    # G and bG side by side ([G | bG], n × (L+1)) so that one gather, one gradient and one Adam
    # step serve both; the prediction's bias column pairs with a constant 1 in the loadings.
    G_aug = np.empty((n, L + 1))
    G_aug[:, :L], G_aug[:, L] = state["G"], state["bG"]
    M_aug = np.empty((n, L + 1))
    M_aug[:, :L], M_aug[:, L] = state["mG"], state["mb"]
    V_aug = np.empty((n, L + 1))
    V_aug[:, :L], V_aug[:, L] = state["vG"], state["vb"]
    t_rows = np.array(state["t"], dtype=np.int64, copy=True)
    if n_obs == 0:
        return finish(G_aug, M_aug, V_aug, t_rows, 0.0, 0)

    B = min(batch_size, n_obs)
    scale = 1.0 / B
    # Grouped sums (per bin, per experiment, per cell type / assay) are sparse × dense products:
    # a compiled loop over the batch, far cheaper than np.add.at scatters.
    unit = np.ones(E)
    by_cell = sparse.csr_matrix((unit, (exp_cell, np.arange(E))), shape=(nC, E))
    by_assay = sparse.csr_matrix((unit, (exp_assay, np.arange(E))), shape=(nA, E))
    batch_ptr = np.arange(B + 1)
    Z_aug = np.ones((E, L + 1))
    rho = np.append(np.full(L, pen.rhoG), pen.rhoB)
    sse, count = 0.0, 0
    for s in range(n_steps):
        # sorting the draw groups the batch by bin (obs_flat is row-major); the set of entries,
        # hence the gradient, is that of the unsorted draw
        pick = np.sort(rng.integers(0, n_obs, size=B))
        flat = np.take(obs_flat, pick)
        rows = flat // E
        cols = flat - rows * E
        x = np.take(Xf, flat).astype(np.float64)
        experiment_features(C, A, exp_cell, exp_assay, out=Z_aug[:, :L])
        b_exp = experiment_bias(f.mu, bC, bA, exp_cell, exp_assay)
        Zb = np.take(Z_aug, cols, axis=0)  # np.take: ~2x faster than fancy indexing
        Gb = np.take(G_aug, rows, axis=0)
        r = x - b_exp[cols]
        r -= np.einsum("bl,bl->b", Zb, Gb)
        sse += float(np.dot(r, r))
        count += B
        d = (-2.0 * scale) * r  # d(loss)/d(x̂) per entry

        new_row = np.empty(B, dtype=bool)
        new_row[0] = True
        np.not_equal(rows[1:], rows[:-1], out=new_row[1:])
        starts = np.flatnonzero(new_row)
        touched = rows[starts]
        row_of = np.cumsum(new_row) - 1
        per_row = sparse.csc_matrix((d, row_of, batch_ptr), shape=(starts.size, B))
        g_rows = per_row @ Zb  # [∂G | ∂bG] of the touched bins
        G_t = np.take(Gb, starts, axis=0)
        # the genome ridge, spread over a bin's entries: mult/E_i of it per batch
        mult = np.diff(np.append(starts, B))
        w = (2.0 * scale) * mult / row_counts[touched]
        g_rows += (w[:, None] * rho) * G_t

        # per-experiment sums Σ d·G_i and Σ d (the constant column) feed every small factor
        Gb[:, L] = 1.0
        per_exp = sparse.csc_matrix((d, cols, batch_ptr), shape=(E, B))
        W = per_exp @ Gb
        gviews["C"][...] = by_cell @ (A[exp_assay] * W[:, :L])
        gviews["A"][...] = by_assay @ (C[exp_cell] * W[:, :L])
        gviews["bC"][...] = by_cell @ W[:, L]
        gviews["bA"][...] = by_assay @ W[:, L]
        gviews["C"] += (2.0 * pen.lamC) * C
        gviews["A"] += (2.0 * pen.lamA) * A
        gviews["bC"] += (2.0 * pen.lamB) * bC
        gviews["bA"] += (2.0 * pen.lamB) * bA
        _adam_step(theta, g_theta, m_theta, v_theta, t0 + s + 1, opt)

        t_rows[touched] += 1
        M_t, V_t = np.take(M_aug, touched, axis=0), np.take(V_aug, touched, axis=0)
        _adam_step(G_t, g_rows, M_t, V_t, t_rows[touched], opt)
        G_aug[touched], M_aug[touched], V_aug[touched] = G_t, M_t, V_t
    return finish(G_aug, M_aug, V_aug, t_rows, sse, count)


def zero_moments(f: Factors) -> dict:
    return {k: (np.zeros_like(getattr(f, k)), np.zeros_like(getattr(f, k))) for k in FACTOR_KEYS}


def average_factor_states(results: list[tuple[Factors, dict]], weights=None
                          ) -> tuple[Factors, dict]:
    """Parameter averaging: the (weighted) mean of the shards' factors and Adam moments,
    summed in the given order (deterministic)."""
    n = len(results)
    w = np.ones(n) / n if weights is None else np.asarray(weights, float) / np.sum(weights)
    f0 = results[0][0]
    avg = Factors(f0.mu, *(np.zeros_like(getattr(f0, k)) for k in ("bC", "bA", "C", "A")))
    mom = {k: (np.zeros_like(getattr(f0, k)), np.zeros_like(getattr(f0, k)))
           for k in FACTOR_KEYS}
    for wi, (f, m) in zip(w, results):
        for k in FACTOR_KEYS:
            getattr(avg, k).__iadd__(wi * getattr(f, k))
            mom[k][0].__iadd__(wi * m[k][0])
            mom[k][1].__iadd__(wi * m[k][1])
    return avg, mom
