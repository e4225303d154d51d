"""Parallel SGD with parameter averaging (DESIGN §3), as pure functions over one shard.

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

from .objective import Factors, Penalties, minibatch_gradients

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
    mean of the residual after μ, bC, bA (DESIGN §2's hierarchical initialisation).

    (Starting G at its closed form is tempting but wrong here: with G at its optimum for the
    random C, A, the gradients on C and A nearly vanish and SGD stalls.)
    """
    n, E = X.shape
    L = f.C.shape[1]
    resid = X - (f.mu + f.bC[exp_cell] + f.bA[exp_assay])[None, :]
    obs = ~np.isnan(resid)
    cnt = obs.sum(axis=1)
    bG = np.divide(np.where(obs, resid, 0.0).sum(axis=1), cnt, out=np.zeros(n), where=cnt > 0)
    G = rng.uniform(-scale, scale, size=(n, L))
    return {"G": G, "bG": bG, "mG": np.zeros((n, L)), "vG": np.zeros((n, L)),
            "mb": np.zeros(n), "vb": np.zeros(n), "t": np.zeros(n, dtype=np.int64)}


def _adam_step(p, g, m, v, t, opt: Adam):
    """In-place Adam update of array p; t may be per-row (then broadcast over columns)."""
    lr, b1 = opt.rates(t)
    if np.ndim(t):
        if p.ndim == 2:
            lr, b1, tt = lr[:, None], b1[:, None], t[:, None]
        else:
            tt = t
    else:
        tt = t
    m *= b1
    m += (1.0 - b1) * g
    v *= opt.beta2
    v += (1.0 - opt.beta2) * g * g
    mhat = m / (1.0 - opt.beta1 ** tt)
    vhat = v / (1.0 - opt.beta2 ** tt)
    p -= lr * mhat / (np.sqrt(vhat) + opt.eps)


def shard_steps(X, exp_cell, exp_assay, state: dict, f: Factors, moments: dict, t0: int,
                pen: Penalties, opt: Adam, n_steps: int, batch_size: int,
                rng: np.random.Generator) -> tuple[dict, Factors, dict, dict]:
    """Run ``n_steps`` mini-batch Adam steps on one shard.

    Returns the new shard state, the shard's copy of the factors, their Adam moments, and
    ``{"sse": ..., "count": ...}`` of the mini-batch errors seen (a running training loss).
    """
    obs_rows, obs_cols = np.nonzero(~np.isnan(X))
    row_counts = np.bincount(obs_rows, minlength=X.shape[0]).astype(np.float64)
    f = f.copy()
    moments = {k: (moments[k][0].copy(), moments[k][1].copy()) for k in FACTOR_KEYS}
    st = {k: v.copy() for k, v in state.items()}
    sse, count = 0.0, 0
    n_obs = obs_rows.size
    if n_obs == 0:
        return st, f, moments, {"sse": 0.0, "count": 0}
    B = min(batch_size, n_obs)
    for s in range(n_steps):
        pick = rng.integers(0, n_obs, size=B)
        rows, cols = obs_rows[pick], obs_cols[pick]
        x = X[rows, cols].astype(np.float64)
        g = minibatch_gradients(x, rows, cols, exp_cell, exp_assay, f, st["G"], st["bG"], pen,
                                row_counts, scale=1.0 / B)
        # the loss before the step, from the same forward pass's pieces
        Z = f.C[exp_cell[cols]] * f.A[exp_assay[cols]]
        xhat = np.einsum("bl,bl->b", Z, st["G"][rows]) + st["bG"][rows] + f.mu + \
            f.bC[exp_cell[cols]] + f.bA[exp_assay[cols]]
        sse += float(np.sum((x - xhat) ** 2))
        count += B
        t = t0 + s + 1
        for k in FACTOR_KEYS:
            m, v = moments[k]
            _adam_step(getattr(f, k), g[k], m, v, t, opt)
        touched = np.unique(rows)
        st["t"][touched] += 1
        tr = st["t"][touched]
        for pk, mk, vk, gk in (("G", "mG", "vG", "G"), ("bG", "mb", "vb", "bG")):
            p = st[pk][touched]
            m = st[mk][touched]
            v = st[vk][touched]
            _adam_step(p, g[gk][touched], m, v, tr, opt)
            st[pk][touched], st[mk][touched], st[vk][touched] = p, m, v
    return st, f, moments, {"sse": sse, "count": count}


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
