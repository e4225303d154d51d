"""Reference imputers (average, plain CP-ALS) and the cross-cell-type stacking layer."""

import numpy as np
import pytest

from predictd.solvers import baselines, stacking


def low_rank_tensor(seed=0, n=3000, n_cell=4, n_assay=3, rank=2, noise=0.01):
    rng = np.random.default_rng(seed)
    C, A = rng.normal(size=(n_cell, rank)), rng.normal(size=(n_assay, rank))
    G = rng.normal(size=(n, rank))
    jj, kk = np.meshgrid(np.arange(n_cell), np.arange(n_assay), indexing="ij")
    jj, kk = jj.ravel(), kk.ravel()
    T = G @ (C[jj] * A[kk]).T + 0.3 * jj[None, :] - 0.2 * kk[None, :] + 1.0
    T += noise * rng.normal(size=T.shape)
    return T, jj, kk


def test_average_baseline_ignores_the_target_cell_and_missing_values():
    X = np.array([[1.0, 3.0, np.nan, 7.0],
                  [2.0, np.nan, np.nan, 8.0]])
    cell, assay = [0, 1, 2, 0], [0, 0, 0, 1]
    out = baselines.average_baseline(X, cell, assay, [(3, 0), (0, 0), (1, 1)])
    assert out[0, 0] == pytest.approx(2.0) and out[1, 0] == pytest.approx(2.0)
    assert out[0, 1] == pytest.approx(3.0)          # own column excluded
    assert np.isnan(out[1, 1])                       # its only source is missing in this bin
    assert out[0, 2] == pytest.approx(7.0)


def test_cp_als_recovers_a_held_out_pair_of_a_low_rank_tensor():
    T, jj, kk = low_rank_tensor()
    hold = 5
    keep = np.setdiff1d(np.arange(T.shape[1]), [hold])
    f = baselines.cp_als_baseline(T[:, keep], jj[keep], kk[keep], 4, 3, rank=2, ridge=1.0,
                                  iters=200)
    pred = baselines.impute_pairs(T[:, keep], jj[keep], kk[keep], f, 1.0,
                                  [(jj[hold], kk[hold])])[:, 0]
    y = T[:, hold]
    assert np.mean((y - pred) ** 2) < 0.02 * y.var()
    # a rank too small for the data cannot do this well
    f1 = baselines.cp_als_baseline(T[:, keep], jj[keep], kk[keep], 4, 3, rank=1, iters=200)
    pred1 = baselines.impute_pairs(T[:, keep], jj[keep], kk[keep], f1, 1.0,
                                   [(jj[hold], kk[hold])])[:, 0]
    assert np.mean((y - pred1) ** 2) > 5 * np.mean((y - pred) ** 2)


def test_cp_als_is_deterministic_for_a_seed():
    T, jj, kk = low_rank_tensor(n=500)
    a = baselines.cp_als_baseline(T, jj, kk, 4, 3, rank=2, iters=20, seed=3)
    b = baselines.cp_als_baseline(T, jj, kk, 4, 3, rank=2, iters=20, seed=3)
    assert np.array_equal(a.C, b.C) and np.array_equal(a.bA, b.bA)


def _direct_features(X, cell, assay, n_assay, c, windows):
    """cell_vectors by definition, one bin at a time over windows: own values, averages over
    the other cell types, and per window the own mean and Σ others / count others."""
    n = X.shape[0]
    own = {int(a): X[:, j] for j, a in enumerate(assay) if cell[j] == c}
    others = {k: X[:, (cell != c) & (assay == k)] for k in range(n_assay)}
    D = stacking.n_features(n_assay, windows)
    V = np.zeros((n, D))
    V[:, 0] = 1.0
    for s, w in enumerate((1, *windows)):
        h = w // 2
        lo = 1 + 2 * n_assay * s
        for i in range(n):
            sl = slice(max(0, i - h), i + h + 1)
            for k in range(n_assay):
                if k in own:
                    x = own[k][sl]
                    V[i, lo + k] = np.nanmean(x) if np.isfinite(x).any() else np.nan
                o = others[k][sl]
                if o.shape[1]:
                    cnt = np.isfinite(o).sum()
                    V[i, lo + n_assay + k] = np.nansum(o) / cnt if cnt else np.nan
    return V


def test_cell_vectors_match_their_definition_and_rows_select_bins():
    rng = np.random.default_rng(4)
    cell = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3])
    assay = np.array([0, 1, 2, 0, 2, 0, 1, 2, 1])
    X = rng.random((120, 9)).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = np.nan
    X[30:60, 3] = np.nan                     # a stretch where cell 1 lacks assay 0
    X[70:75, [0, 3, 5]] = np.nan             # ... and where nobody has it
    windows = (3, 11)
    rows = np.sort(rng.choice(120, 25, replace=False))
    for c in range(4):
        want = _direct_features(X.astype(np.float64), cell, assay, 3, c, windows)
        got = stacking.cell_vectors(X, cell, assay, 3, c, windows)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)
        sub = stacking.cell_vectors(X, cell, assay, 3, c, windows, rows=rows)
        np.testing.assert_array_equal(sub, got[rows])
    # shared block context: the same features for every cell type
    ctx = stacking.BlockContext(X, assay, 3, windows, dtype=np.float64)
    np.testing.assert_array_equal(
        stacking.cell_vectors(X, cell, assay, 3, 2, windows, context=ctx),
        stacking.cell_vectors(X, cell, assay, 3, 2, windows))


def relation_tensor(seed=0, n=4000, n_cell=4):
    """Assay 0 = 2·assay 1 − assay 2 + 0.5 in every cell type (plus noise): a relation the
    stack can learn from some cell types and transfer to another."""
    rng = np.random.default_rng(seed)
    cols, cell, assay = [], [], []
    for c in range(n_cell):
        a1, a2 = rng.normal(size=n), rng.normal(size=n)
        a0 = 2 * a1 - a2 + 0.5 + 0.05 * rng.normal(size=n)
        for k, v in enumerate((a0, a1, a2)):
            cols.append(v)
            cell.append(c)
            assay.append(k)
    return np.stack(cols, axis=1), np.array(cell), np.array(assay)


@pytest.mark.parametrize("windows", [(), (3,)])
def test_stack_transfers_a_within_cell_relation_to_a_held_out_pair(windows):
    X, cell, assay = relation_tensor()
    hold = 0  # cell 0, assay 0
    keep = np.arange(1, X.shape[1])
    obs = np.zeros((4, 3), bool)
    obs[cell[keep], assay[keep]] = True
    st = stacking.sum_stack_stats([
        stacking.stack_stats(X[:2000, keep], cell[keep], assay[keep], 4, 3, windows),
        stacking.stack_stats(X[2000:, keep], cell[keep], assay[keep], 4, 3, windows)])
    W = stacking.fit_stack(st, obs, ridge=1e-6, windows=windows)
    fallback = np.full((X.shape[0], 1), -99.0)
    pred = stacking.predict_pairs(X[:, keep], cell[keep], assay[keep], W, [(0, 0)], fallback,
                                  windows)[:, 0]
    assert np.mean((pred - X[:, hold]) ** 2) < 0.01
    # the average of the other cell types knows nothing of this bin's relation
    avg = baselines.average_baseline(X[:, keep], cell[keep], assay[keep], [(0, 0)])[:, 0]
    assert np.mean((avg - X[:, hold]) ** 2) > 1.0


def test_stack_falls_back_to_the_model_where_it_has_no_weights_or_features():
    X, cell, assay = relation_tensor(n=500)
    keep = np.flatnonzero(assay != 0)          # assay 0 observed nowhere: no training cell type
    keep = np.append(keep, [0])                # ... except cell 0
    obs = np.zeros((4, 3), bool)
    obs[cell[keep], assay[keep]] = True
    st = stacking.stack_stats(X[:, keep], cell[keep], assay[keep], 4, 3)
    W = stacking.fit_stack(st, obs)
    assert np.isnan(W[0, 0]).all() and np.isfinite(W[1, 0]).all()
    Xb = X[:, keep].copy()
    Xb[:10, np.flatnonzero((cell[keep] == 1) & (assay[keep] == 1))] = np.nan
    fallback = np.full((500, 2), 7.0, np.float32)
    out = stacking.predict_pairs(Xb, cell[keep], assay[keep], W, [(0, 0), (1, 0)], fallback)
    assert (out[:, 0] == 7.0).all()              # no weights: the model's value
    assert (out[:10, 1] == 7.0).all()            # a feature missing in these bins
    assert not (out[10:, 1] == 7.0).any()


def test_target_design_drops_feature_assays_no_training_cell_shares():
    obs = np.array([[1, 1, 1, 1],     # target cell 0 has assays 1..3
                    [1, 1, 0, 1],     # training cells share 1 and 3, not 2
                    [1, 1, 0, 0]], bool)
    train, feats = stacking.target_design(obs, 0, 0)
    assert train == [1] and set(feats) == {0, 1 + 1, 1 + 3, 1 + 4 + 0}


def test_a_tracks_stacked_values_do_not_depend_on_the_tracks_beside_it():
    # write tasks group tracks differently on different clusters; a track's bytes must not
    X, cell, assay = relation_tensor(n=3000)
    X = X.astype(np.float32)
    X[100:110, 4] = np.nan
    obs = np.ones((4, 3), bool)
    windows = (3, 11)
    W = stacking.fit_stack(stacking.stack_stats(X, cell, assay, 4, 3, windows), obs,
                           windows=windows)
    fb = np.zeros((3000, 4), np.float32)
    everything = stacking.predict_pairs(X, cell, assay, W, [(0, 0), (1, 2), (1, 0), (3, 1)],
                                        fb, windows)
    alone = stacking.predict_pairs(X, cell, assay, W, [(1, 0)], fb[:, :1], windows)
    np.testing.assert_array_equal(everything[:, 2], alone[:, 0])
    assert np.isfinite(everything).all()


def test_stored_sums_and_only_the_target_columns_give_the_same_values():
    # writing tracks reads the per-assay sums stored with the genome factors and only the
    # target cell types' columns of the block: the values must not change by a bit
    X, cell, assay = relation_tensor(n=3000)
    X = X.astype(np.float32)
    X[100:110, 4] = np.nan
    X[2000:2400, 7] = np.nan
    windows = (3, 11)
    W = stacking.fit_stack(stacking.stack_stats(X, cell, assay, 4, 3, windows),
                           np.ones((4, 3), bool), windows=windows)
    fb = np.arange(3000 * 3, dtype=np.float32).reshape(3000, 3)
    pairs = [(1, 0), (1, 2), (3, 1)]
    whole = stacking.predict_pairs(X, cell, assay, W, pairs, fb, windows)
    ctx = stacking.BlockContext(None, assay, 3, windows, sums=stacking.assay_sums(X, assay, 3))
    keep = np.isin(cell, [1, 3])
    part = stacking.predict_pairs(X[:, keep], cell[keep], assay[keep], W, pairs, fb, windows,
                                  context=ctx)
    np.testing.assert_array_equal(part, whole)
    assert not np.array_equal(whole, fb)  # the regressions did replace the fallback
    with pytest.raises(ValueError, match="windows"):
        stacking.predict_pairs(X, cell, assay, W, pairs, fb, (3,), context=ctx)
    with pytest.raises(ValueError, match="not bins × 3"):
        stacking.BlockContext(None, assay, 3, sums=(np.zeros((5, 2)), np.zeros((5, 2))))


def noisy_target_held_out(seed: int):
    """The relation tensor with noise, (cell 0, assay 0) held out: (X, cells, assays, observed)."""
    rng = np.random.default_rng(seed)
    X, cell, assay = relation_tensor(n=2000)
    X = (X + 0.3 * rng.normal(size=X.shape)).astype(np.float64)
    keep = np.arange(1, X.shape[1])               # (cell 0, assay 0) is the target
    Xk, ck, ak = X[:, keep], cell[keep], assay[keep]
    obs = np.zeros((4, 3), bool)
    obs[ck, ak] = True
    return Xk, ck, ak, obs


def test_blend_with_average_is_the_pooled_fit_on_the_cell_types_other_assays():
    # the closed forms from the Gram matrix equal the same fits done on the data directly
    Xk, ck, ak, obs = noisy_target_held_out(seed=7)
    st = stacking.stack_stats(Xk, ck, ak, 4, 3)
    W = stacking.fit_stack(st, obs)
    Wb, alpha = stacking.blend_with_average(st, obs, W)
    V = stacking.cell_vectors(Xk, ck, ak, 3, 0)
    num = den = 0.0
    rows, ys = [], []
    for kp in (1, 2):                             # cell 0's observed assays
        y, a, s = V[:, 1 + kp], V[:, 4 + kp], V @ W[0, kp]
        num += (y - a) @ (s - a)
        den += (s - a) @ (s - a)
        rows.append(np.stack([s, a, np.ones_like(s)], axis=1))
        ys.append(y)
    al = np.clip(num / den, 0, 1)
    c = np.linalg.lstsq(np.concatenate(rows), np.concatenate(ys), rcond=None)[0]
    e = np.zeros(W.shape[2])
    e[4] = 1.0                                    # the average of assay 0
    one = np.zeros(W.shape[2])
    one[0] = 1.0
    want = 0.5 * (al * W[0, 0] + (1 - al) * e) + 0.5 * (c[0] * W[0, 0] + c[1] * e + c[2] * one)
    assert alpha[0, 0] == pytest.approx(al, rel=1e-8)
    np.testing.assert_allclose(Wb[0, 0], want, rtol=1e-6, atol=1e-9)
    # the relation holds in every cell type here: the regression is kept, mostly
    assert al > 0.8


def test_fit_stack_per_cell_is_the_mean_of_each_training_cells_own_regression():
    # from the Gram matrices equals ridge regressions done on each cell type's data directly;
    # pooled (per_cell=False) is one regression on all training cell types' bins
    rng = np.random.default_rng(3)
    X, cell, assay = relation_tensor(n=1500)
    X = (X + 0.4 * rng.normal(size=X.shape)).astype(np.float64)
    X[:, cell == 2] *= 1.7                        # cell types relate the assays differently
    keep = np.arange(1, X.shape[1])               # target: cell 0, assay 0
    Xk, ck, ak = X[:, keep], cell[keep], assay[keep]
    obs = np.zeros((4, 3), bool)
    obs[ck, ak] = True
    st = stacking.stack_stats(Xk, ck, ak, 4, 3)
    ridge = 1e-2
    train, feats = stacking.target_design(obs, 0, 0)
    assert train == [1, 2, 3]

    def ridge_fit(cells):
        A = np.concatenate([stacking.cell_vectors(Xk, ck, ak, 3, c)[:, feats] for c in cells])
        y = np.concatenate([stacking.cell_vectors(Xk, ck, ak, 3, c)[:, 1 + 0] for c in cells])
        pen = np.full(len(feats), ridge * A.shape[0])
        pen[0] = 0.0                              # the constant is not penalised
        w = np.zeros(stacking.n_features(3))
        w[feats] = np.linalg.solve(A.T @ A + np.diag(pen), A.T @ y)
        return w

    per_cell = stacking.fit_stack(st, obs, ridge=ridge)
    pooled = stacking.fit_stack(st, obs, ridge=ridge, per_cell=False)
    np.testing.assert_allclose(per_cell[0, 0], np.mean([ridge_fit([c]) for c in train], axis=0),
                               rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(pooled[0, 0], ridge_fit(train), rtol=1e-8, atol=1e-10)
    assert np.abs(per_cell[0, 0] - pooled[0, 0]).max() > 1e-3   # they are different estimators
    # a cell type with too few rows for its weights sits out of the mean
    thin = {"gram": st["gram"].copy()}
    thin["gram"][3] *= 1e-3
    np.testing.assert_allclose(stacking.fit_stack(thin, obs, ridge=ridge)[0, 0],
                               np.mean([ridge_fit([c]) for c in (1, 2)], axis=0),
                               rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("context", [1, 2])
def test_blend_recalibration_with_context_averages_is_the_fit_on_the_data(context):
    # with context windows, the recalibration's basis adds the target assay's average over the
    # first `context` windows; the closed form equals the least-squares fit on the data
    windows = (3, 7)
    Xk, ck, ak, obs = noisy_target_held_out(seed=8)
    st = stacking.stack_stats(Xk, ck, ak, 4, 3, windows)
    W = stacking.fit_stack(st, obs, windows=windows)
    Wb, alpha = stacking.blend_with_average(st, obs, W, context=context)
    V = stacking.cell_vectors(Xk, ck, ak, 3, 0, windows)
    V = V[~np.isnan(V).any(axis=1)]
    D = W.shape[2]

    def avg_cols(k):                              # the bin's own average, then each window's
        return [1 + 2 * 3 * seg + 3 + k for seg in range(1 + context)]

    num = den = 0.0
    rows, ys = [], []
    for kp in (1, 2):
        y, s = V[:, 1 + kp], V @ W[0, kp]
        a = V[:, avg_cols(kp)]
        num += (y - a[:, 0]) @ (s - a[:, 0])
        den += (s - a[:, 0]) @ (s - a[:, 0])
        rows.append(np.column_stack([s, a, np.ones_like(s)]))
        ys.append(y)
    al = np.clip(num / den, 0, 1)
    c = np.linalg.lstsq(np.concatenate(rows), np.concatenate(ys), rcond=None)[0]
    basis = np.zeros((2 + context + 1, D))
    basis[0] = W[0, 0]
    for i, col in enumerate(avg_cols(0)):
        basis[1 + i, col] = 1.0
    basis[-1, 0] = 1.0
    want = 0.5 * (al * W[0, 0] + (1 - al) * basis[1]) + 0.5 * (c @ basis)
    assert alpha[0, 0] == pytest.approx(al, rel=1e-8)
    np.testing.assert_allclose(Wb[0, 0], want, rtol=1e-6, atol=1e-9)
    # the window averages really take part: the result differs from context 0
    W0, _ = stacking.blend_with_average(st, obs, W, context=0)
    assert np.abs(W0[0, 0] - Wb[0, 0]).max() > 1e-6
    with pytest.raises(ValueError, match="context 3"):
        stacking.blend_with_average(st, obs, W, context=3)
