"""Parallel SGD: the Adam step, the vectorised shard steps against a plain reference loop,
parameter averaging, and whole fits (progress, reproducibility)."""

import numpy as np
import pytest

from predictd.config import Config
from predictd.solvers import sgd
from predictd.solvers.fit import LocalBackend, Shard, fit
from predictd.solvers.objective import Factors, Penalties, minibatch_gradients

N_CELL, N_ASSAY = 4, 3


def textbook_adam(p, grads, ts, lr, beta1, beta2, eps, decay):
    """Adam on a scalar as PREDICTD writes it: lr and β1 decay by (1 − decay)^t; the bias
    corrections use the undecayed β1, β2."""
    m = v = 0.0
    for g, t in zip(grads, ts):
        lr_t = lr * (1 - decay) ** t
        b1_t = beta1 * (1 - decay) ** t
        m = b1_t * m + (1 - b1_t) * g
        v = beta2 * v + (1 - beta2) * g * g
        mhat = m / (1 - beta1 ** t)
        vhat = v / (1 - beta2 ** t)
        p = p - lr_t * mhat / (vhat ** 0.5 + eps)
    return p, m, v


OPT = sgd.Adam(lr=0.1, beta1=0.9, beta2=0.99, eps=1e-3, decay=0.05)


def test_adam_step_matches_textbook_scalar():
    grads = [0.5, -1.25, 2.0, 0.1, -0.3]
    p, m, v = np.array([1.5]), np.zeros(1), np.zeros(1)
    for t, g in enumerate(grads, start=1):
        sgd._adam_step(p, np.array([g]), m, v, t, OPT)
    want = textbook_adam(1.5, grads, range(1, 6), OPT.lr, OPT.beta1, OPT.beta2, OPT.eps,
                         OPT.decay)
    np.testing.assert_allclose([p[0], m[0], v[0]], want, rtol=1e-12)
    assert p[0] != 1.5


def test_adam_step_per_row_counters():
    # row r has taken t_r steps before: its update must be the scalar one at t_r + 1
    rng = np.random.default_rng(0)
    p = rng.normal(size=(3, 2))
    m = 0.1 * rng.normal(size=(3, 2))
    v = 0.1 * rng.random((3, 2))
    g = rng.normal(size=(3, 2))
    t = np.array([1, 4, 9])
    p0, m0, v0 = p.copy(), m.copy(), v.copy()
    sgd._adam_step(p, g, m, v, t, OPT)
    for r in range(3):
        for c in range(2):
            pr, mr, vr = np.array([p0[r, c]]), np.array([m0[r, c]]), np.array([v0[r, c]])
            sgd._adam_step(pr, np.array([g[r, c]]), mr, vr, int(t[r]), OPT)
            assert (p[r, c], m[r, c], v[r, c]) == pytest.approx((pr[0], mr[0], vr[0]),
                                                                 rel=1e-12)
    # a 1-D parameter with per-element counters (bG)
    b, mb, vb = p0[:, 0].copy(), m0[:, 0].copy(), v0[:, 0].copy()
    sgd._adam_step(b, g[:, 0], mb, vb, t, OPT)
    np.testing.assert_allclose(b, p[:, 0], rtol=1e-12)


# ------------------------------------------------------------------------------- shard steps
def shard_problem(seed=0, n=50, L=3):
    rng = np.random.default_rng(seed)
    ec = np.array([0, 0, 1, 1, 2, 3, 3])
    ea = np.array([0, 1, 1, 2, 0, 0, 2])
    X = rng.normal(size=(n, ec.size))
    X[rng.random(X.shape) < 0.3] = np.nan
    X[7] = np.nan  # a bin with nothing observed
    f = Factors(0.2, 0.1 * rng.normal(size=N_CELL), 0.1 * rng.normal(size=N_ASSAY),
                rng.uniform(-0.5, 0.5, (N_CELL, L)), rng.uniform(-0.5, 0.5, (N_ASSAY, L)))
    pen = Penalties(lamC=0.05, lamA=0.01, lamB=0.02, rhoG=0.5, rhoB=0.1)
    state = sgd.init_state(X, ec, ea, f, pen, np.random.default_rng(seed + 1), 0.33)
    return X, ec, ea, f, pen, state


def reference_steps(X, ec, ea, state, f, moments, t0, pen, opt, n_steps, B, rng):
    """The same algorithm as plainly as possible: full-shape gradients and textbook Adam."""
    rows_all, cols_all = np.nonzero(~np.isnan(X))
    counts = (~np.isnan(X)).sum(axis=1)
    f = f.copy()
    mom = {k: (moments[k][0].copy(), moments[k][1].copy()) for k in sgd.FACTOR_KEYS}
    st = {k: v.copy() for k, v in state.items()}
    sse = 0.0
    for s in range(n_steps):
        pick = rng.integers(0, rows_all.size, size=B)
        rows, cols = rows_all[pick], cols_all[pick]
        x = X[rows, cols]
        xhat = (np.sum(f.C[ec[cols]] * f.A[ea[cols]] * st["G"][rows], axis=1) + st["bG"][rows]
                + f.mu + f.bC[ec[cols]] + f.bA[ea[cols]])
        sse += np.sum((x - xhat) ** 2)
        g = minibatch_gradients(x, rows, cols, ec, ea, f, st["G"], st["bG"], pen, counts,
                                scale=1.0 / B)
        t = t0 + s + 1
        for k in sgd.FACTOR_KEYS:
            lr_t, b1_t = opt.lr * (1 - opt.decay) ** t, opt.beta1 * (1 - opt.decay) ** t
            m, v = mom[k]
            m[...] = b1_t * m + (1 - b1_t) * g[k]
            v[...] = opt.beta2 * v + (1 - opt.beta2) * g[k] ** 2
            getattr(f, k)[...] -= lr_t * (m / (1 - opt.beta1 ** t)) / (
                np.sqrt(v / (1 - opt.beta2 ** t)) + opt.eps)
        touched = np.unique(rows)
        st["t"][touched] += 1
        for r in touched:  # per-row step counters
            t = st["t"][r]
            lr_t, b1_t = opt.lr * (1 - opt.decay) ** t, opt.beta1 * (1 - opt.decay) ** t
            for pk, mk, vk in (("G", "mG", "vG"), ("bG", "mb", "vb")):
                gr = g[pk][r]
                st[mk][r] = b1_t * st[mk][r] + (1 - b1_t) * gr
                st[vk][r] = opt.beta2 * st[vk][r] + (1 - opt.beta2) * gr ** 2
                st[pk][r] = st[pk][r] - lr_t * (st[mk][r] / (1 - opt.beta1 ** t)) / (
                    np.sqrt(st[vk][r] / (1 - opt.beta2 ** t)) + opt.eps)
    return st, f, mom, sse


def test_shard_steps_match_reference_loop():
    X, ec, ea, f, pen, state = shard_problem()
    moments = sgd.zero_moments(f)
    opt = sgd.Adam(0.02, 0.9, 0.999, 1e-8, 1e-3)
    got = sgd.shard_steps(X, ec, ea, state, f, moments, 5, pen, opt, 12, 40,
                          np.random.default_rng(9))
    st, f2, mom, sse = reference_steps(X, ec, ea, state, f, moments, 5, pen, opt, 12, 40,
                                       np.random.default_rng(9))
    assert set(got[0]) == set(st)
    for k in st:
        np.testing.assert_allclose(got[0][k], st[k], rtol=1e-9, atol=1e-12, err_msg=k)
    for k in sgd.FACTOR_KEYS:
        np.testing.assert_allclose(getattr(got[1], k), getattr(f2, k), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got[2][k][0], mom[k][0], rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(got[2][k][1], mom[k][1], rtol=1e-9, atol=1e-16)
    assert got[3] == {"sse": pytest.approx(sse, rel=1e-10), "count": 12 * 40}
    assert got[0]["t"].sum() > 0 and got[0]["t"][7] == 0  # the empty bin is never drawn
    assert got[1].mu == f.mu


def test_shard_steps_deterministic_and_pure():
    X, ec, ea, f, pen, state = shard_problem(seed=1)
    moments = sgd.zero_moments(f)
    frozen = ({k: v.copy() for k, v in state.items()}, f.copy())
    opt = sgd.Adam(0.01, 0.9, 0.999, 1e-8, 1e-6)
    a = sgd.shard_steps(X, ec, ea, state, f, moments, 0, pen, opt, 20, 32,
                        np.random.default_rng(3))
    b = sgd.shard_steps(X, ec, ea, state, f, moments, 0, pen, opt, 20, 32,
                        np.random.default_rng(3))
    c = sgd.shard_steps(X, ec, ea, state, f, moments, 0, pen, opt, 20, 32,
                        np.random.default_rng(4))
    for k in state:
        assert np.array_equal(a[0][k], b[0][k]), k
    for k in sgd.FACTOR_KEYS:
        assert np.array_equal(getattr(a[1], k), getattr(b[1], k))
        assert np.array_equal(a[2][k][0], b[2][k][0]) and np.array_equal(a[2][k][1], b[2][k][1])
    assert a[3] == b[3]
    assert not np.array_equal(a[0]["G"], c[0]["G"])
    # inputs are untouched: the driver rolls back to them
    for k in state:
        assert np.array_equal(state[k], frozen[0][k]), k
    for k in sgd.FACTOR_KEYS:
        assert np.array_equal(getattr(f, k), getattr(frozen[1], k))
        assert not moments[k][0].any() and not moments[k][1].any()


def test_shard_steps_without_observations():
    X, ec, ea, f, pen, state = shard_problem(n=10)
    X[:] = np.nan
    st, f2, mom, stats = sgd.shard_steps(X, ec, ea, state, f, sgd.zero_moments(f), 0, pen, OPT,
                                         5, 8, np.random.default_rng(0))
    assert stats == {"sse": 0.0, "count": 0}
    np.testing.assert_array_equal(f2.C, f.C)
    np.testing.assert_array_equal(st["G"], state["G"])


def test_init_state_bias_is_bin_mean_residual():
    X, ec, ea, f, pen, state = shard_problem(seed=2)
    resid = X - (f.mu + f.bC[ec] + f.bA[ea])[None, :]
    ok = ~np.isnan(X).all(axis=1)
    np.testing.assert_allclose(state["bG"][ok], np.nanmean(resid[ok], axis=1))
    assert state["bG"][7] == 0
    assert np.abs(state["G"]).max() <= 0.33 and state["G"].std() > 0.05
    assert state["t"].dtype.kind == "i" and not state["t"].any()


def test_average_factor_states_weighting():
    def fac(v):
        return Factors(1.0 + v, np.full(2, v), np.full(3, 2 * v), np.full((2, 2), 3 * v),
                       np.full((3, 2), 4 * v))

    def mom(v):
        return {k: (np.full_like(getattr(fac(0), k), v), np.full_like(getattr(fac(0), k), -v))
                for k in sgd.FACTOR_KEYS}

    parts = [(fac(1.0), mom(1.0)), (fac(5.0), mom(2.0))]
    avg, m = sgd.average_factor_states(parts, weights=[3, 1])
    np.testing.assert_allclose(avg.bC, 0.75 * 1 + 0.25 * 5)
    np.testing.assert_allclose(avg.A, 4 * (0.75 * 1 + 0.25 * 5))
    np.testing.assert_allclose(m["C"][0], 0.75 * 1 + 0.25 * 2)
    np.testing.assert_allclose(m["bA"][1], -(0.75 * 1 + 0.25 * 2))
    assert avg.mu == 2.0  # μ is not trained: it comes from the first shard unchanged
    avg, m = sgd.average_factor_states(parts)
    np.testing.assert_allclose(avg.C, 3 * 3.0)
    np.testing.assert_allclose(m["A"][0], 1.5)
    np.testing.assert_allclose(parts[0][0].C, 3.0)  # inputs untouched


# ------------------------------------------------------------------------------- whole fits
def low_rank_shards(seed=0, n_train=600, n_valid=120, rank=2, n_shards=2):
    rng = np.random.default_rng(seed)
    jj, kk = np.meshgrid(np.arange(N_CELL), np.arange(N_ASSAY), indexing="ij")
    jj, kk = jj.ravel(), kk.ravel()
    keep = np.setdiff1d(np.arange(jj.size), [0, 7])  # two pairs never observed
    C, A = rng.normal(size=(N_CELL, rank)), rng.normal(size=(N_ASSAY, rank))
    n = n_train + n_valid
    T = rng.normal(size=(n, rank)) @ (C[jj[keep]] * A[kk[keep]]).T + 0.5
    T += 0.05 * rng.normal(size=T.shape)
    T[rng.random(T.shape) < 0.1] = np.nan
    tr, va = T[:n_train], T[n_train:]
    shards = [Shard(tr[p::n_shards], va[p::n_shards], rng.integers(0, 3, va[p::n_shards].shape[0]))
              for p in range(n_shards)]
    return shards, jj[keep], kk[keep]


SGD_CFG = Config(solver="sgd", latent_factors=2, learning_rate=0.05, sgd_steps=25,
                 batch_size=128, max_iterations=8, validation_groups=3, rc=0.01, ra=0.01,
                 ri=0.0, ri2=0.1, patience=20)


def test_sgd_fit_reduces_validation_error():
    shards, ec, ea = low_rank_shards()
    res = fit(LocalBackend(shards), ec, ea, N_CELL, N_ASSAY, SGD_CFG)
    v = [h["valid_mse"] for h in res.history]
    assert len(v) == SGD_CFG.max_iterations
    assert res.best_valid_mse == min(v)
    assert res.best_valid_mse < 0.5 * v[0], v  # v[0] scores the initial factors
    assert res.history[-1]["train_mse"] < res.history[0]["train_mse"]
    assert all(np.isfinite(getattr(res.factors, k)).all() for k in ("C", "A", "bC", "bA"))


def test_sgd_fit_same_seed_is_bit_identical():
    def run(seed):
        shards, ec, ea = low_rank_shards()
        cfg = SGD_CFG.replace(seed=seed, max_iterations=3)
        return fit(LocalBackend(shards), ec, ea, N_CELL, N_ASSAY, cfg)

    a, b, c = run(11), run(11), run(12)
    for k in ("C", "A", "bC", "bA"):
        assert np.array_equal(getattr(a.factors, k), getattr(b.factors, k)), k
    assert [h["valid_mse"] for h in a.history] == [h["valid_mse"] for h in b.history]
    assert not np.array_equal(a.factors.C, c.factors.C)
