"""The shared training objective: its value by hand, its gradients against finite differences,
and the mini-batch estimate of the gradient (exact for the whole set, unbiased on average)."""

import numpy as np
import pytest

from predictd.solvers.objective import (Factors, Penalties, gradients, minibatch_gradients,
                                        objective, penalties, residuals)
from predictd.config import Config

# 3 cell types × 4 assays, 8 of the 12 pairs observed as experiments
EXP_CELL = np.array([0, 0, 0, 1, 1, 2, 2, 2])
EXP_ASSAY = np.array([0, 1, 3, 0, 2, 1, 2, 3])
PEN = Penalties(lamC=0.3, lamA=0.2, lamB=0.15, rhoG=0.7, rhoB=0.4)


def problem(seed=0, n=10, L=3, missing=0.35):
    """Small float64 problem with NaNs; every bin keeps at least one observed experiment."""
    rng = np.random.default_rng(seed)
    E = EXP_CELL.size
    X = rng.normal(size=(n, E))
    hole = rng.random((n, E)) < missing
    hole[np.arange(n), rng.integers(0, E, n)] = False
    X[hole] = np.nan
    f = Factors(0.4, rng.normal(size=3), rng.normal(size=4), rng.normal(size=(3, L)),
                rng.normal(size=(4, L)))
    return X, f, rng.normal(size=(n, L)), rng.normal(size=n)


def test_objective_by_hand():
    # one bin, two experiments (cell 0 × assay 0 observed, cell 0 × assay 1 missing), L = 1
    f = Factors(1.0, np.array([0.5]), np.array([0.25, -1.0]), np.array([[2.0]]),
                np.array([[3.0], [1.0]]))
    G, bG = np.array([[0.5]]), np.array([0.125])
    X = np.array([[5.0, np.nan]])
    ec, ea = np.array([0, 0]), np.array([0, 1])
    # x̂ = 1 + 0.5 + 0.25 + 0.125 + 2·3·0.5 = 4.875 → residual 0.125
    np.testing.assert_allclose(residuals(X, ec, ea, f, G, bG)[0, 0], 0.125)
    assert np.isnan(residuals(X, ec, ea, f, G, bG)[0, 1])
    pen = Penalties(lamC=0.1, lamA=0.01, lamB=1.0, rhoG=2.0, rhoB=4.0)
    want = (0.125 ** 2                                 # N = 1
            + 0.1 * 4.0 + 0.01 * (9.0 + 1.0)           # λC‖C‖², λA‖A‖²
            + 1.0 * (0.25 + 0.0625 + 1.0)              # λb (‖bC‖² + ‖bA‖²)
            + 2.0 * 0.25 + 4.0 * 0.125 ** 2)           # (ρG‖G‖² + ρb‖bG‖²) / N
    assert objective(X, ec, ea, f, G, bG, pen) == pytest.approx(want, rel=1e-12)


def test_penalties_scaling():
    cfg = Config(latent_factors=4, rc=8.0, ra=2.0, ri=0.0, ri2=2.9, bias_penalty=0.5)
    p = penalties(cfg, n_cell_types=2, n_assays=5, n_entries=1000, n_bins=100)
    assert (p.lamC, p.lamA, p.lamB, p.rhoG, p.rhoB) == pytest.approx((1.0, 0.1, 0.5, 2.9, 0.5))
    # PREDICTD's λG = ri/(L·n_bins) expressed per bin: times N
    p = penalties(cfg.replace(ri=0.4), 2, 5, n_entries=1000, n_bins=100)
    assert p.rhoG == pytest.approx(0.4 / (4 * 100) * 1000)


def _numeric_gradient(X, f, G, bG, name, h=1e-6):
    def value(f_, G_, bG_):
        return objective(X, EXP_CELL, EXP_ASSAY, f_, G_, bG_, PEN)

    base = {"G": G, "bG": bG}
    target = base[name] if name in base else getattr(f, name)
    out = np.zeros_like(target)
    for idx in np.ndindex(target.shape):
        vals = []
        for sign in (1.0, -1.0):
            f2, G2, bG2 = f.copy(), G.copy(), bG.copy()
            arr = {"G": G2, "bG": bG2}.get(name)
            arr = getattr(f2, name) if arr is None else arr
            arr[idx] += sign * h
            vals.append(value(f2, G2, bG2))
        out[idx] = (vals[0] - vals[1]) / (2 * h)
    return out


@pytest.mark.parametrize("name", ["C", "A", "bC", "bA", "G", "bG"])
def test_gradients_match_central_differences(name):
    X, f, G, bG = problem()
    got = gradients(X, EXP_CELL, EXP_ASSAY, f, G, bG, PEN)[name]
    want = _numeric_gradient(X, f, G, bG, name)
    assert got.shape == want.shape
    assert np.abs(want).max() > 1e-3  # the check is not vacuous
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def test_minibatch_of_everything_equals_full_gradient():
    X, f, G, bG = problem(seed=1)
    rows, cols = np.nonzero(~np.isnan(X))
    # any order of the same entries: the gradient is a sum
    order = np.random.default_rng(2).permutation(rows.size)
    rows, cols = rows[order], cols[order]
    counts = (~np.isnan(X)).sum(axis=1)
    got = minibatch_gradients(X[rows, cols], rows, cols, EXP_CELL, EXP_ASSAY, f, G, bG, PEN,
                              counts, scale=1.0 / rows.size)
    want = gradients(X, EXP_CELL, EXP_ASSAY, f, G, bG, PEN)
    assert set(got) == set(want) == {"C", "A", "bC", "bA", "G", "bG"}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_minibatch_rows_outside_batch_are_zero():
    X, f, G, bG = problem(seed=3)
    rows, cols = np.nonzero(~np.isnan(X))
    keep = rows == 4
    counts = (~np.isnan(X)).sum(axis=1)
    g = minibatch_gradients(X[rows[keep], cols[keep]], rows[keep], cols[keep], EXP_CELL,
                            EXP_ASSAY, f, G, bG, PEN, counts, scale=1.0)
    others = np.arange(X.shape[0]) != 4
    assert np.all(g["G"][others] == 0) and np.all(g["bG"][others] == 0)
    assert np.abs(g["G"][4]).sum() > 0


def test_minibatch_average_is_unbiased():
    X, f, G, bG = problem(seed=4)
    rows, cols = np.nonzero(~np.isnan(X))
    counts = (~np.isnan(X)).sum(axis=1)
    full = gradients(X, EXP_CELL, EXP_ASSAY, f, G, bG, PEN)
    keys = list(full)
    rng = np.random.default_rng(5)
    B, n_batches = 8, 3000
    samples = np.empty((n_batches, sum(full[k].size for k in keys)))
    for b in range(n_batches):
        pick = rng.integers(0, rows.size, size=B)  # uniform, with replacement
        g = minibatch_gradients(X[rows[pick], cols[pick]], rows[pick], cols[pick], EXP_CELL,
                                EXP_ASSAY, f, G, bG, PEN, counts, scale=1.0 / B)
        samples[b] = np.concatenate([g[k].ravel() for k in keys])
    want = np.concatenate([full[k].ravel() for k in keys])
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / np.sqrt(n_batches)
    # deterministic components (no data term, e.g. the C penalty) have se = 0
    z = np.abs(mean - want) / np.maximum(se, 1e-12)
    assert np.all((z < 5.0) | (np.abs(mean - want) < 1e-10)), z.max()
    # a biased estimator would be caught: e.g. scale 1/N instead of 1/B is off by a factor
    assert np.abs(mean - want).max() < 0.1 * np.abs(want).max()
