"""Reference imputers (average, plain CP-ALS) and the cross-cell-type stacking layer."""

import itertools

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


# the missing-value rule of the average baseline: three cell types with assay 0, one with assay 1
RULE_X = np.array([[1.0, 2.0, 6.0, 5.0],
                   [1.0, np.nan, 6.0, 5.0],
                   [np.nan, np.nan, 6.0, np.nan]], dtype=np.float32)
RULE_CELL, RULE_ASSAY = [0, 1, 2, 2], [0, 0, 0, 1]


def test_average_baseline_leaves_a_missing_source_out_of_that_bins_mean():
    out = baselines.average_baseline(RULE_X, RULE_CELL, RULE_ASSAY, [(3, 0), (2, 0)])
    assert out.dtype == np.float32
    assert out[0].tolist() == [3.0, 1.5]
    assert out[1].tolist() == [3.5, 1.0]   # cell type 1 missing: the mean of the other two
    assert out[2, 0] == 6.0                # only cell type 2 observed in this bin


def test_average_baseline_is_nan_where_every_source_is_missing():
    out = baselines.average_baseline(RULE_X, RULE_CELL, RULE_ASSAY, [(2, 0), (0, 1)])
    assert np.isnan(out[2]).all()          # both sources missing in the last bin
    assert out[:2, 1].tolist() == [5.0, 5.0]


def test_average_baseline_is_nan_without_another_cell_type_of_the_assay():
    out = baselines.average_baseline(RULE_X, RULE_CELL, RULE_ASSAY, [(2, 1), (0, 2)])
    assert out.shape == (3, 2) and np.isnan(out).all()


def test_average_baseline_sums_its_sources_in_column_order_in_float32():
    rng = np.random.default_rng(5)
    X = rng.exponential(size=(500, 4)).astype(np.float32)
    out = baselines.average_baseline(X, [1, 2, 3, 0], [0, 0, 0, 0], [(0, 0)])[:, 0]
    np.testing.assert_array_equal(out, ((X[:, 0] + X[:, 1]) + X[:, 2]) / np.float32(3))


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


def test_packed_stack_statistics_sum_to_the_whole_ones_bit_for_bit():
    X, cell, assay = relation_tensor()
    parts = [stacking.stack_stats(X[lo:lo + 1000], cell, assay, 4, 3, (3,))
             for lo in range(0, 3000, 1000)]
    whole = stacking.sum_stack_stats(parts)["gram"]
    # packing halves what a task sends, and the sum comes back whole and symmetric
    packed = [stacking.pack_stack_stats(p) for p in parts]
    assert packed[0]["gram_upper"].nbytes < 0.6 * parts[0]["gram"].nbytes
    np.testing.assert_array_equal(stacking.sum_stack_stats(iter(packed))["gram"], whole)
    assert stacking.sum_stack_stats(iter([])) is None


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


def test_each_training_cell_type_regresses_on_the_assays_it_shares_with_the_target():
    obs = np.array([[1, 1, 1, 1],     # target cell 0 has assays 1..3
                    [1, 1, 0, 1],     # training cells share 1 and 3, not 2
                    [1, 1, 0, 0],     # and 1 only
                    [0, 1, 1, 1]], bool)  # cell 3 has no assay 0: not a training cell type
    design = {c: set(f.tolist()) for c, f in stacking.target_design(obs, 0, 0)}
    avg = 1 + 4 + 0                   # assay 0's average over the other cell types
    assert design == {1: {0, 1 + 1, 1 + 3, avg}, 2: {0, 1 + 1, avg}}
    # one pooled regression needs features every training cell type has: the rarest dropped
    train, feats = stacking.pooled_design(obs, 0, 0)
    assert train == [1] and set(feats) == {0, 1 + 1, 1 + 3, avg}


def test_per_cell_weights_average_each_training_cell_types_own_regression():
    rng = np.random.default_rng(5)
    X, cell, assay = relation_tensor(n=1500)
    X = (X + 0.3 * rng.normal(size=X.shape)).astype(np.float64)
    # target (0, 0); cell 2 lacks assay 2, which cell 0 has: it still trains on assay 1
    keep = np.flatnonzero(~(((cell == 0) & (assay == 0)) | ((cell == 2) & (assay == 2))))
    Xk, ck, ak = X[:, keep], cell[keep], assay[keep]
    obs = np.zeros((4, 3), bool)
    obs[ck, ak] = True
    st = stacking.stack_stats(Xk, ck, ak, 4, 3)
    design = dict(stacking.target_design(obs, 0, 0))
    assert sorted(design) == [1, 2, 3] and 1 + 2 not in design[2] and 1 + 2 in design[1]
    D = stacking.n_features(3)
    want = np.mean([stacking._ridge_solve(st["gram"][c], f, 0, 1e-3, D)
                    for c, f in design.items()], axis=0)
    W = stacking.fit_stack(st, obs, ridge=1e-3)
    np.testing.assert_allclose(W[0, 0], want)


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
    train, feats = stacking.pooled_design(obs, 0, 0)
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


def blend_on_data(V, W, avg_cols, n_avg):
    """The blend of target (0, 0) computed on the data V: (α, weights), given the columns of
    each assay's averages (shrink target first) — what the closed form must equal."""
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
    basis = np.zeros((1 + n_avg + 1, W.shape[2]))
    basis[0] = W[0, 0]
    for i, col in enumerate(avg_cols(0)):
        basis[1 + i, col] = 1.0
    basis[-1, 0] = 1.0
    return al, 0.5 * (al * W[0, 0] + (1 - al) * basis[1]) + 0.5 * (c @ basis)


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

    def avg_cols(k):                              # the bin's own average, then each window's
        return [1 + 2 * 3 * seg + 3 + k for seg in range(1 + context)]

    al, want = blend_on_data(V, W, avg_cols, 1 + context)
    assert alpha[0, 0] == pytest.approx(al, rel=1e-8)
    np.testing.assert_allclose(Wb[0, 0], want, rtol=1e-6, atol=1e-9)
    # the window averages really take part: the result differs from context 0
    W0, _ = stacking.blend_with_average(st, obs, W, context=0)
    assert np.abs(W0[0, 0] - Wb[0, 0]).max() > 1e-6
    with pytest.raises(ValueError, match="context 3"):
        stacking.blend_with_average(st, obs, W, context=3)


def _window_corr(x, y, i, h):
    """Pearson r of x and y over the window [i − h, i + h] (truncated), NaN as 0; 0 when one
    of them is constant there."""
    sl = slice(max(0, i - h), i + h + 1)
    a, b = np.nan_to_num(x[sl]), np.nan_to_num(y[sl])
    if a.std() < 1e-6 or b.std() < 1e-6:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def test_coarse_means_average_cells_of_bins_missing_as_zero():
    X = np.arange(22, dtype=np.float32).reshape(11, 2)
    X[3, 0] = np.nan
    got = stacking.coarse_means(X.T, 4)
    want = np.array([[(0 + 2 + 4) / 4, (8 + 10 + 12 + 14) / 4, (16 + 18 + 20) / 3],
                     [(1 + 3 + 5 + 7) / 4, (9 + 11 + 13 + 15) / 4, (17 + 19 + 21) / 3]])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert stacking.similarity_step(1001) == 10 and stacking.similarity_step(150) == 1


def test_local_correlations_match_the_windowed_pearson_r():
    rng = np.random.default_rng(11)
    n = 80
    x = rng.random(n)
    Y = np.stack([x + 0.3 * rng.random(n), -x, rng.random(n), rng.random(n)])
    Y[2, 20:50] = 1.5                # constant stretch: r = 0 inside it
    Y[3, rng.random(n) < 0.2] = np.nan
    for width in (7, 11):
        got = stacking.local_correlations(x, Y, width, chunk=3)   # chunks of the rows too
        want = np.array([[_window_corr(x, y, i, width // 2) for i in range(n)] for y in Y])
        np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.allclose(stacking.local_correlations(x, Y[1:2], 7), -1.0, atol=1e-5)
    assert np.all(stacking.local_correlations(x, Y[2:3], 7)[0, 24:46] == 0.0)


def test_resemblance_statistics_made_row_by_row_equal_those_made_at_once():
    # SimilarityInputs makes an assay's window statistics only for the rows asked for: asked
    # in pieces, in any order, the correlations are those of one call over every row
    rng = np.random.default_rng(15)
    XT = rng.random((6, 3000)).astype(np.float32)
    XT[4] = XT[0] + 0.1 * rng.random(3000)
    XT[5, 1000:1400] = 0.7                                 # flat: r = 0 there
    assay = np.zeros(6, dtype=int)
    width = 1001                                           # cells of 10 bins, every 4th one
    at_once = stacking.SimilarityInputs(XT, assay, width).correlations(0, 2)
    piecewise = stacking.SimilarityInputs(XT, assay, width)
    got = np.empty_like(at_once)
    for rows in ([5, 1], [0], [3, 4, 2]):
        got[rows] = piecewise.correlations(0, 2, np.array(rows))
    np.testing.assert_array_equal(got, at_once)
    # a track resembles itself fully, an independent one little
    np.testing.assert_allclose(at_once[2], 1.0, atol=1e-6)
    assert np.abs(at_once[4]).mean() < 0.5


def _direct_similar(X, cell, assay, n_assay, c, width, tau):
    """similar_averages by definition, one bin at a time: resemblance from the tracks' means
    over cells of `step` bins (NaN as 0), correlated over the window of whole groups of
    `stride` cells around each group (every cell when the stride is 1), and each cell's
    weights interpolated linearly between those of the two nearest groups' centres."""
    n = X.shape[0]
    step = max(1, width // 100)
    cells = max(1, width // step)
    stride = max(1, cells // 25)
    h = (cells // 2) // stride
    Z = np.nan_to_num(X)
    G = -(-n // step)
    coarse = np.stack([Z[g * step:(g + 1) * step].mean(axis=0)
                       for g in range(G)], axis=1)       # experiments × cells
    P = -(-G // stride)
    centre = np.array([(q * stride + min((q + 1) * stride, G) - 1) / 2 for q in range(P)])
    col = {(int(a), int(b)): j for j, (a, b) in enumerate(zip(cell, assay))}

    def point_weight(o, k, q):
        # exp(−(1 − mean r)/tau) at group q, over the cells of its window
        lo, hi = max(0, (q - h) * stride), min(G, (q + h + 1) * stride)
        shared = [m for m in range(n_assay) if m != k and (c, m) in col and (o, m) in col]
        rs = []
        for m in shared:
            a, b = coarse[col[(c, m)], lo:hi], coarse[col[(o, m)], lo:hi]
            rs.append(0.0 if a.std() < 1e-6 or b.std() < 1e-6 else np.corrcoef(a, b)[0, 1])
        return np.exp(-(1 - (np.mean(rs) if rs else 0.0)) / tau)

    def cell_weight(o, k, g):
        if P == 1 or g <= centre[0]:
            return point_weight(o, k, 0)
        if g >= centre[-1]:
            return point_weight(o, k, P - 1)
        q = int(np.searchsorted(centre, g, side="right")) - 1
        t = (g - centre[q]) / (centre[q + 1] - centre[q])
        return (1 - t) * point_weight(o, k, q) + t * point_weight(o, k, q + 1)

    out = np.zeros((n_assay, n))
    for k in range(n_assay):
        others = sorted(o for (o, kk) in col if kk == k and o != c)
        if not others:
            continue
        for i in range(n):
            w, v = [], []
            for o in others:
                x = X[i, col[(o, k)]]
                if np.isnan(x):
                    continue
                w.append(cell_weight(o, k, i // step))
                v.append(x)
            if not v:
                out[k, i] = np.nan
                continue
            out[k, i] = np.array(w) @ np.array(v) / np.sum(w)
    return out


@pytest.mark.slow
def test_similar_averages_match_their_definition():
    rng = np.random.default_rng(12)
    cell = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    assay = np.array([0, 1, 2, 0, 2, 0, 1, 2, 1, 2])     # cell 1 lacks 1, cell 3 lacks 0
    X = rng.random((90, 10))
    X[:, 5] = X[:, 0] + 0.1 * rng.random(90)              # cell 2 resembles cell 0 ...
    X[:, 6] = X[:, 1] + 0.1 * rng.random(90)
    X[40:60, 4] = np.nan                                 # cell 1's assay 2 missing a while
    X[10:15, [3, 5]] = np.nan                            # nobody else has assay 0 here
    for c in range(4):
        # windows of 9 and 21 bins: resemblance bin by bin
        for width, tau in ((9, 0.2), (21, 1.0)):
            got = stacking.similar_averages(X.T, cell, assay, 3, c, width, tau)
            want = _direct_similar(X, cell, assay, 3, c, width, tau)
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, equal_nan=True)
    # 300 and 450 bins: on cells of 3 and 4 bins (a partial one at the end)
    Xl = rng.random((250, 10))
    Xl[:, 5] = Xl[:, 0] + 0.1 * rng.random(250)
    Xl[100:130, 4] = np.nan
    for c in (0, 3):
        for width, tau in ((300, 0.2), (450, 0.5)):
            got = stacking.similar_averages(Xl.T, cell, assay, 3, c, width, tau)
            want = _direct_similar(Xl, cell, assay, 3, c, width, tau)
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, equal_nan=True)
    # assay 0 has no source besides cell 3 ... for cell 0 it has: rows 10-15 are NaN
    assert np.isnan(stacking.similar_averages(X.T, cell, assay, 3, 0, 9, 0.2)[0, 10:15]).all()


def test_similar_averages_follow_the_locally_resembling_cell_type():
    # cell 0 is a copy of cell 1 in the first half of the block and of cell 2 in the second:
    # the similarity-weighted average finds the right one, the plain average cannot
    rng = np.random.default_rng(13)
    n = 4000
    cells = [rng.random((n, 3)) for _ in range(3)]
    half = np.arange(n) < n // 2
    target = np.where(half[:, None], cells[1], cells[2]) + 0.05 * rng.random((n, 3))
    X = np.concatenate([target, *cells], axis=1)
    cell = np.repeat(np.arange(4), 3)
    assay = np.tile(np.arange(3), 4)
    sim = stacking.similar_averages(X.T, cell, assay, 3, 0, 101, 0.2)[0]
    plain = baselines.average_baseline(X, cell, assay, [(0, 0)])[:, 0]
    inner = np.r_[100:1900, 2100:3900]                  # away from the switch
    err_sim = np.mean((sim[inner] - X[inner, 0]) ** 2)
    err_plain = np.mean((plain[inner] - X[inner, 0]) ** 2)
    assert err_sim < 0.25 * err_plain


def test_the_similarity_weighted_average_replaces_the_plain_one():
    rng = np.random.default_rng(14)
    cell = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    assay = np.array([0, 1, 2] * 3)
    X = rng.random((300, 9)).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan
    windows, sim = (3, 11), (21, 0.3)
    V = stacking.cell_vectors(X, cell, assay, 3, 1, windows, similar=sim)
    plain = stacking.cell_vectors(X, cell, assay, 3, 1, windows)
    D0 = plain.shape[1]
    assert V.shape[1] == stacking.n_features(3, windows, True) == D0 + 3 * 3
    np.testing.assert_array_equal(V[:, :D0], plain)
    S = stacking.similar_averages(X.T, cell, assay, 3, 1, *sim)
    np.testing.assert_allclose(V[:, D0:D0 + 3], S.T, rtol=1e-6, equal_nan=True)
    for s, w in enumerate(windows, 1):               # window means of it, NaNs skipped
        h = w // 2
        want = np.array([[np.nanmean(S[k, max(0, i - h):i + h + 1]) for k in range(3)]
                         for i in range(300)])
        np.testing.assert_allclose(V[:, D0 + 3 * s:D0 + 3 * (s + 1)], want, rtol=1e-5)
    sums = stacking.assay_sums(X, assay, 3)
    ctx = stacking.BlockContext(None, assay, 3, windows, sums=sums)
    with pytest.raises(ValueError, match="every column"):
        stacking.cell_vectors(X, cell, assay, 3, 1, windows, context=ctx, similar=sim)
    obs = np.ones((3, 3), bool)
    plain_feats = stacking.target_design(obs, 1, 2, 2)[0][1]
    sim_feats = stacking.target_design(obs, 1, 2, 2, similar=True)[0][1]
    avg = [1 + 2 * 3 * s + 3 + 2 for s in range(3)]
    assert set(plain_feats) - set(sim_feats) == set(avg)
    assert set(sim_feats) - set(plain_feats) == {D0 + 3 * s + 2 for s in range(3)}


def test_blend_with_similarity_is_the_fit_on_the_data():
    # shrinkage towards the similarity-weighted average; recalibration on both averages
    windows, sim, context = (3, 7), (15, 0.3), 1
    Xk, ck, ak, obs = noisy_target_held_out(seed=9)
    st = stacking.stack_stats(Xk, ck, ak, 4, 3, windows, similar=sim)
    W = stacking.fit_stack(st, obs, windows=windows, similar=True)
    Wb, alpha = stacking.blend_with_average(st, obs, W, context=context, similar=True)
    V = stacking.cell_vectors(Xk, ck, ak, 3, 0, windows, similar=sim)
    V = V[~np.isnan(V).any(axis=1)]
    D0 = stacking.n_features(3, windows)

    def avg_cols(k):                              # similarity-weighted first, then plain
        return [D0 + 3 * seg + k for seg in range(1 + context)] + \
            [1 + 2 * 3 * seg + 3 + k for seg in range(1 + context)]

    al, want = blend_on_data(V, W, avg_cols, 2 * (1 + context))
    assert alpha[0, 0] == pytest.approx(al, rel=1e-8)
    np.testing.assert_allclose(Wb[0, 0], want, rtol=1e-6, atol=1e-9)
    # the weights never touch the plain average as a feature, only in the blend
    for seg in range(3):
        assert W[0, 0, 1 + 2 * 3 * seg + 3] == 0.0
    with pytest.raises(ValueError, match="similar=False"):
        stacking.fit_stack(st, obs, windows=windows)


def test_assay_sums_of_column_major_blocks_equal_the_row_major_ones():
    # tensor blocks decode column-major; their per-assay sums add whole columns
    rng = np.random.default_rng(15)
    X = rng.random((500, 12)).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = np.nan
    assay = rng.integers(0, 4, 12)
    t_c, c_c = stacking.assay_sums(np.ascontiguousarray(X), assay, 4)
    t_f, c_f = stacking.assay_sums(np.asfortranarray(X), assay, 4)
    np.testing.assert_array_equal(c_f, c_c)
    np.testing.assert_allclose(t_f, t_c, rtol=1e-6)
    want = np.stack([np.nansum(np.where(assay == a, X, np.nan), axis=1) for a in range(4)], 1)
    np.testing.assert_allclose(t_f, want, rtol=1e-5)


def test_similarity_features_of_an_assay_no_other_cell_type_has_are_zero():
    rng = np.random.default_rng(16)
    X = rng.random((400, 7)).astype(np.float32)
    cell = np.array([0, 0, 0, 1, 1, 2, 2])
    assay = np.array([0, 1, 2, 0, 1, 0, 1])          # assay 2 only in cell 0
    windows = (3, 11)
    V = stacking.cell_vectors(X, cell, assay, 3, 0, windows, similar=(21, 0.2))
    D0 = stacking.n_features(3, windows)
    assert not np.isnan(V).any()
    assert np.all(V[:, [D0 + 3 * s + 2 for s in range(3)]] == 0.0)
    assert np.all(V[:, [D0 + 3 * s for s in range(3)]] > 0.0)


def test_stack_stats_of_chosen_cell_types_are_those_of_the_full_pass():
    # a reference imputation computes only the new cell type's statistics
    windows, sim = (3, 7), (15, 0.3)
    Xk, ck, ak, obs = noisy_target_held_out(seed=4)
    full = stacking.stack_stats(Xk, ck, ak, 4, 3, windows, similar=sim)["gram"]
    part = stacking.stack_stats(Xk, ck, ak, 4, 3, windows, similar=sim, cells=[2])["gram"]
    # (the similarity-weighted averages of a batch of cell types round alike, not bit for bit)
    np.testing.assert_allclose(part[2], full[2], rtol=1e-5)
    assert full[[0, 1, 3]].any() and not part[[0, 1, 3]].any()
    W = stacking.fit_stack({"gram": full}, obs, windows=windows, similar=True)
    W2 = stacking.fit_stack({"gram": full}, obs, windows=windows, similar=True, cells=[2])
    np.testing.assert_array_equal(W2[2], W[2])
    assert np.isnan(W2[[0, 1, 3]]).all() and np.isfinite(W[0]).any()
    Wb, _ = stacking.blend_with_average({"gram": full}, obs, W, 1, similar=True)
    Wb2, _ = stacking.blend_with_average({"gram": full}, obs, W, 1, similar=True, cells=[2])
    np.testing.assert_array_equal(Wb2[2], Wb[2])
    np.testing.assert_array_equal(Wb2[0], W[0])


def test_similar_averages_of_many_cell_types_are_each_one_s():
    # computed together (one product per grid cell for all targets) or one at a time
    rng = np.random.default_rng(3)
    X, cell, assay = relation_tensor(n=600)
    X = X + 0.2 * rng.normal(size=X.shape)
    X[40:90, 2] = np.nan
    together = stacking.similar_averages(X.T, cell, assay, 3, [0, 2, 3], 51, 0.2)
    for t, c in enumerate([0, 2, 3]):
        alone = stacking.similar_averages(X.T, cell, assay, 3, c, 51, 0.2)
        np.testing.assert_allclose(together[t], alone, rtol=1e-5, atol=1e-6)
        assert np.array_equal(np.isnan(together[t]), np.isnan(alone))


def test_neighbours_are_the_most_resembling_cell_types_with_the_assay_left_out():
    # cell types 1 and 2 follow cell type 0 in assays 1 and 2 (1 closely), 3 is unrelated;
    # in assay 0 cell type 3 copies 0 exactly, which must not count for assay 0's neighbours
    rng = np.random.default_rng(5)
    n = 4000
    base = rng.normal(size=(n, 3))
    X, cell, assay = [], [], []
    for c, noise in enumerate([0.0, 0.1, 0.6, None]):
        for a in range(3):
            if noise is None:
                x = base[:, a] if a == 0 else rng.normal(size=n)
            else:
                x = base[:, a] + noise * rng.normal(size=n)
            X.append(x)
            cell.append(c)
            assay.append(a)
    X = np.column_stack(X)
    sums = stacking.sum_resemblance_sums([stacking.resemblance_sums(X[:2000], assay),
                                          stacking.resemblance_sums(X[2000:], assay)])
    near = stacking.choose_neighbours(sums, cell, assay, 4, 3, 2)
    assert near.shape == (4, 3, 2)
    assert list(near[0, 0]) == [1, 2]          # not 3, whose resemblance is from assay 0
    assert list(near[0, 1]) == [1, 2]
    assert set(near[1, 2]) == {0, 2}
    wide = stacking.choose_neighbours(sums, cell, assay, 4, 3, 5)
    assert list(wide[0, 0]) == [1, 2, 3, -1, -1]
    # with every other cell type a neighbour, the averages are the unrestricted ones
    full = stacking.similar_averages(X[:600].T, cell, assay, 3, [0, 1], 51, 0.2)
    same = stacking.similar_averages(X[:600].T, cell, assay, 3, [0, 1], 51, 0.2,
                                     neighbours=wide)
    np.testing.assert_array_equal(full, same)
    # restricted: exactly the unrestricted averages of the data without the other cell types,
    # and the columns similar_columns lists are all it reads
    keep = stacking.similar_columns(cell, assay, [0], near)
    assert not keep[np.asarray(cell) == 3].any() and keep[np.asarray(cell) != 3].all()
    cell, assay = np.asarray(cell), np.asarray(assay)
    got = stacking.similar_averages(X[:600, keep].T, cell[keep], assay[keep], 3, 0, 51, 0.2,
                                    neighbours=near)
    want = stacking.similar_averages(X[:600, cell != 3].T, cell[cell != 3],
                                     assay[cell != 3], 3, 0, 51, 0.2)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_hinge_features_bend_own_assays_and_similarity_weighted_averages():
    rng = np.random.default_rng(21)
    cell = np.repeat(np.arange(4), 3)
    assay = np.tile(np.arange(3), 4)
    X = (2.5 * rng.random((2000, 12)) ** 2).astype(np.float32)
    windows, sim = (3, 11), (21, 0.3)
    V = stacking.cell_vectors(X, cell, assay, 3, 1, windows, similar=sim, hinges=True)
    D0 = stacking.n_features(3, windows, True)
    # 3 own assays over 2 windows and 3 similarity-weighted averages at the bin, 3 knots
    assert V.shape[1] == stacking.n_features(3, windows, True, True) == D0 + 9 * 3
    np.testing.assert_array_equal(
        V[:, :D0], stacking.cell_vectors(X, cell, assay, 3, 1, windows, similar=sim))
    rows = stacking.hinged_rows(3, len(windows))
    # own assays over each window (1 + 6·s + k, s = 1, 2), then the similarity-weighted
    # averages at the bin (19 + k)
    assert rows.tolist() == [7, 8, 9, 13, 14, 15, 19, 20, 21]
    for i, r in enumerate(rows):
        for j, t in enumerate(stacking.HINGE_KNOTS):
            np.testing.assert_allclose(V[:, D0 + 3 * i + j], np.maximum(V[:, r] - t, 0),
                                       atol=1e-6)
    # the constant and an own assay at the bin are not hinged
    assert stacking.hinge_columns(3, 2, [0, 4, 20]).tolist() == [D0 + 21, D0 + 22, D0 + 23]
    obs = np.ones((4, 3), bool)
    feats = stacking.target_design(obs, 1, 2, 2, similar=True, hinges=True)[0][1]
    base = stacking.target_design(obs, 1, 2, 2, similar=True)[0][1]
    extra = set(feats) - set(base)
    # own assays 0 and 1 over 2 windows and assay 2's similarity-weighted average, 3 knots
    assert extra == set(stacking.hinge_columns(3, 2, base).tolist()) and len(extra) == 15
    with pytest.raises(ValueError, match="similarity-weighted"):
        stacking.cell_vectors(X, cell, assay, 3, 1, windows, hinges=True)
    # fitted with them (weights on the hinges), predicted from the same features
    st = stacking.stack_stats(X, cell, assay, 4, 3, windows, similar=sim, hinges=True)
    W = stacking.fit_stack(st, obs, windows=windows, similar=True)
    assert W.shape[2] == D0 + 27
    # every hinge of the target's features carries a weight, except those that are 0 on
    # every training bin (window means of these data stay below the top knots)
    Vt = stacking.cell_vectors(X, cell, assay, 3, 0, windows, similar=sim, hinges=True)
    live = [c for c in sorted(extra) if Vt[:, c].any()]
    assert len(live) >= 9 and np.all(W[1, 2, live] != 0)
    # the target's own row (assay 2 of cell 1) is no feature, nor its hinges
    assert not W[1, 2, stacking.hinge_columns(3, 2, [3, 9, 15])].any()
    keep = ~((cell == 1) & (assay == 2))
    pred = stacking.predict_pairs(X[:, keep], cell[keep], assay[keep], W, [(1, 2)],
                                  np.zeros((2000, 1)), windows, similar=sim)[:, 0]
    Vk = stacking.cell_vectors(X[:, keep], cell[keep], assay[keep], 3, 1, windows,
                               similar=sim, hinges=True)
    np.testing.assert_allclose(pred, Vk @ W[1, 2], rtol=1e-4, atol=1e-5)
    # a bin missing a feature keeps the fallback, there only
    Xn = X[:, keep].copy()
    Xn[5:9, np.flatnonzero((cell[keep] == 1) & (assay[keep] == 0))] = np.nan
    held = stacking.predict_pairs(Xn, cell[keep], assay[keep], W, [(1, 2)],
                                  np.full((2000, 1), -7.0), windows, similar=sim)[:, 0]
    assert np.all(held[5:9] == -7.0)
    # (the windows and the resemblance reach a few dozen bins past the hole)
    np.testing.assert_allclose(held[100:], pred[100:], rtol=1e-4, atol=1e-5)
    # ... also when only the feature's hinges carry weights: own assay 0 missing over 40
    # bins leaves its bin value and window means (rows 1, 7, 13) missing in the middle
    Xn[100:140, np.flatnonzero((cell[keep] == 1) & (assay[keep] == 0))] = np.nan
    W2 = W.copy()
    W2[1, 2, [1, 7, 13]] = 0.0
    held = stacking.predict_pairs(Xn, cell[keep], assay[keep], W2, [(1, 2)],
                                  np.full((2000, 1), -7.0), windows, similar=sim)[:, 0]
    assert np.all(held[110:130] == -7.0)
    W2[1, 2, stacking.hinge_columns(3, 2, [7, 13])] = 0.0
    held = stacking.predict_pairs(Xn, cell[keep], assay[keep], W2, [(1, 2)],
                                  np.full((2000, 1), -7.0), windows, similar=sim)[:, 0]
    assert np.all(np.isfinite(held[110:130]) & (held[110:130] != -7.0))
    Wb, _ = stacking.blend_with_average(st, obs, W, 2, True, hinges=True)
    assert Wb.shape == W.shape and np.isfinite(Wb[1, 2]).all()


def test_features_made_span_by_span_are_those_of_the_whole_block(monkeypatch):
    rng = np.random.default_rng(22)
    cell = np.repeat(np.arange(4), 3)
    assay = np.tile(np.arange(3), 4)
    X = (2.5 * rng.random((5000, 12)) ** 2).astype(np.float32)
    X[100:180, 4] = np.nan  # one of cell type 1's own columns
    X[3000:3050, 7] = np.nan  # another cell type's
    windows, sim = (3, 11), (21, 0.3)
    ctx = stacking.BlockContext(X, assay, 3, windows)
    whole = stacking.cell_vectors(X, cell, assay, 3, 1, windows, dtype=np.float32,
                                  context=ctx, similar=sim)
    shared: dict = {}
    # spans cut inside the windows' reach of the block's ends and of the missing values
    parts = [stacking.cell_vectors(X, cell, assay, 3, 1, windows, dtype=np.float32,
                                   context=ctx.span(lo, hi), similar=sim, shared=shared)
             for lo, hi in [(0, 3), (3, 150), (150, 3020), (3020, 4995), (4995, 5000)]]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert {"XS", "XS_prefix", "sim", "sim_prefix"} <= set(shared)
    with pytest.raises(ValueError, match="span"):
        stacking.BlockContext(X, assay, 3, windows, rows=np.arange(10)).span(0, 5)
    # predict_pairs makes and multiplies the features a chunk at a time: the values (and
    # the bins left to the fallback) are those of the whole block at once
    st = stacking.stack_stats(X, cell, assay, 4, 3, windows, similar=sim, hinges=True)
    W = stacking.fit_stack(st, np.ones((4, 3), bool), windows=windows, similar=True)
    pairs = [(1, 0), (1, 2), (3, 1)]
    fallback = np.full((5000, 3), -7.0)

    def predicted(chunk_bytes):
        monkeypatch.setattr(stacking, "FEATURE_CHUNK_BYTES", chunk_bytes)
        return stacking.predict_pairs(X, cell, assay, W, pairs, fallback, windows,
                                      similar=sim)

    n_feat = stacking.n_features(3, windows, True)
    assert stacking.feature_chunk(n_feat) % stacking.HINGE_CHUNK == 0
    assert stacking.feature_chunk(61) == 32768 and stacking.feature_chunk(289) == 6144
    # one chunk for the whole block, and chunks of 2,048 bins (3 of them)
    at_once, chunked = predicted(1 << 30), predicted(4 * n_feat * stacking.HINGE_CHUNK)
    np.testing.assert_array_equal(chunked == -7.0, at_once == -7.0)
    assert (at_once[100:180, :2] == -7.0).all() and np.isfinite(at_once).all()
    np.testing.assert_allclose(chunked, at_once, rtol=1e-6, atol=1e-6)


def test_similar_averages_from_coarse_sums_read_only_the_weighed_columns():
    # the resemblance from stored coarse sums of every experiment, the averages from the full
    # resolution of the experiments they weigh: the same as from every column at full
    # resolution, bit for bit (grid cells whole), and within float rounding with a short
    # last cell
    rng = np.random.default_rng(8)
    n_cell, n_assay = 6, 3
    cell = np.repeat(np.arange(n_cell), n_assay)
    assay = np.tile(np.arange(n_assay), n_cell)
    base = rng.normal(size=(1, n_assay, 1))
    for n in (2000, 1995):
        X = (base + rng.normal(size=(n_cell, n_assay, n))).reshape(-1, n).T.astype(np.float32)
        X[rng.random(X.shape) < 0.01] = np.nan
        sums = stacking.sum_resemblance_sums([stacking.resemblance_sums(X, assay)])
        near = stacking.choose_neighbours(sums, cell, assay, n_cell, n_assay, 2)
        want = stacking.similar_averages(X.T, cell, assay, n_assay, 0, 101, 0.2,
                                         neighbours=near)
        read = stacking.similar_columns(cell, assay, [0], near)
        full = stacking.similar_columns(cell, assay, [0], near, resemblance=False)
        assert full.sum() < read.sum()
        step = stacking.similarity_step(101)
        C = stacking.coarse_sums(X.T, step)
        np.testing.assert_array_equal(stacking.coarse_means(X.T[:4], step),
                                      C[:4] / stacking.coarse_cell_sizes(n, step))
        XT = np.ascontiguousarray(X[:, full].T)
        si = stacking.SimilarityInputs(XT, assay[read], 101, sums=C[read],
                                       full=np.flatnonzero(full[read]), exp_cell=cell[read])
        got = stacking.similar_averages(XT, cell[read], assay[read], n_assay, 0, 101, 0.2,
                                        inputs=si, neighbours=near)
        if n % step == 0:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="exp_cell"):
            stacking.SimilarityInputs(XT, assay[read], 101, sums=C[read],
                                      full=np.flatnonzero(full[read]))


def test_window_sums_of_constant_count_rows_are_the_cumulative_sums_ones():
    # rows of one integer value (counts, observed masks) skip the cumulative sums: the same
    # bits as the rows that take them
    rng = np.random.default_rng(9)
    n, pad, widths = 300, 12, (3, 9, 25)
    values = [rng.random(n), np.full(n, 0.1), np.where(rng.random(n) < 0.1, 0.0, 1.0)]
    counts = [np.ones(n), np.full(n, 7.0), np.zeros(n)]
    for A, rows in itertools.product([np.stack(values + counts), np.stack(counts + values),
                                      np.stack(counts)],
                                     (None, np.array([0, 5, 150, 299]))):
        C = stacking._padded_cumsum(A, pad)
        want = [stacking._window_sum(C, pad, w // 2, n, rows) for w in widths]
        for dtype in (np.float64, np.float32):
            got = stacking._window_sums_of(A.astype(dtype), pad, widths, n, rows)
            C = stacking._padded_cumsum(A.astype(dtype), pad)
            for g, w in zip(got, widths):
                np.testing.assert_array_equal(g, stacking._window_sum(C, pad, w // 2, n, rows))
        for g, w in zip(stacking._window_sums_of(A, pad, widths, n, rows), want):
            np.testing.assert_array_equal(g, w)
        for g, w in zip(stacking._window_sums_of(A, pad, widths, n, rows, np.float32), want):
            assert g.dtype == np.float32
            np.testing.assert_array_equal(g, w.astype(np.float32))


@pytest.mark.parametrize("gap", [False, True])
def test_similarity_features_at_sampled_rows_are_those_of_every_bin(gap):
    # from cell sums and cumulative sums (complete rows) or every bin (a row with a gap): the
    # segments cell_vectors builds from the every-bin averages, up to float rounding
    rng = np.random.default_rng(8)
    X, cell, assay = relation_tensor(n=1003)
    X = (X + 0.2 * rng.normal(size=X.shape)).astype(np.float32)
    if gap:
        X[40:90, 2] = np.nan
    windows, (width, tau) = (3, 11, 41), (501, 0.2)     # coarse cells of 5 bins
    rows = np.sort(rng.choice(X.shape[0], 60, replace=False))
    rows[0], rows[-1] = 0, X.shape[0] - 1                # windows cut at both ends
    cell, assay = np.asarray(cell), np.asarray(assay)
    sums = stacking.sum_resemblance_sums([stacking.resemblance_sums(X, assay)])
    for near in (None, stacking.choose_neighbours(sums, cell, assay, 4, 3, 2)):
        si = stacking.SimilarityInputs(np.ascontiguousarray(X.T), assay, width)
        got = stacking.similar_features(si, cell, 3, [0, 1, 2, 3], tau, windows, rows, near)
        lo = stacking._similar_offset(3, len(windows))
        for t in range(4):
            want = stacking.cell_vectors(X, cell, assay, 3, t, windows, rows=rows,
                                         similar=(width, tau), neighbours=near)[:, lo:].T
            np.testing.assert_allclose(got[t], want, rtol=2e-5, atol=2e-6)
            assert np.array_equal(np.isnan(got[t]), np.isnan(want))
            # the hinges bend the sampled rows' averages as they do every bin's
            V = stacking.cell_vectors(X, cell, assay, 3, t, windows, rows=rows,
                                      similar=(width, tau), neighbours=near, hinges=True,
                                      sim_rows=got[t])
            np.testing.assert_allclose(V[:, lo:], stacking.cell_vectors(
                X, cell, assay, 3, t, windows, rows=rows, similar=(width, tau),
                neighbours=near, hinges=True)[:, lo:], rtol=2e-5, atol=2e-6)
