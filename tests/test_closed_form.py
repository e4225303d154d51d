"""Closed-form genome factors against numpy's least squares on the augmented ridge system."""

import numpy as np
import pytest

from predictd.solvers.closed_form import (observed_patterns, projection, resolve_missing_rows,
                                          solve_genome_factors)

E, L = 6, 3
# several missing patterns in one block, interleaved, including "nothing observed"
PATTERNS = np.array([
    [1, 1, 1, 1, 1, 1],
    [1, 1, 0, 1, 1, 1],
    [0, 1, 1, 1, 0, 1],
    [0, 0, 0, 0, 0, 0],
    [0, 0, 0, 1, 0, 0],
    [1, 1, 1, 1, 1, 0],
], dtype=bool)


def block(seed=0, n=40):
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(PATTERNS), n)
    which[:len(PATTERNS)] = np.arange(len(PATTERNS))  # every pattern present
    rng.shuffle(which)
    obs = PATTERNS[which]
    R = rng.normal(size=(n, E))
    R[~obs] = np.nan
    Z = rng.normal(size=(E, L))
    return R, Z, obs, which


def lstsq_reference(r, Z, ridge, bias_ridge):
    """min ‖[Z 1][g; b] − r‖² + ridge‖g‖² + bias_ridge·b² as one stacked least-squares problem."""
    nE = r.size
    A = np.vstack([np.hstack([Z, np.ones((nE, 1))]),
                   np.sqrt(ridge) * np.eye(L, L + 1),
                   np.sqrt(bias_ridge) * np.eye(1, L + 1, L)])
    y = np.concatenate([r, np.zeros(L + 1)])
    return np.linalg.lstsq(A, y, rcond=None)[0]


@pytest.mark.parametrize("ridge, bias_ridge", [(2.9, 0.0), (0.7, 0.3), (0.05, 5.0)])
def test_matches_lstsq_per_bin(ridge, bias_ridge):
    R, Z, obs, which = block()
    G, bG = solve_genome_factors(R, Z, ridge, bias_ridge, dtype=np.float64)
    assert G.shape == (R.shape[0], L) and bG.shape == (R.shape[0],)
    for i in range(R.shape[0]):
        o = obs[i]
        if not o.any():
            assert np.all(G[i] == 0) and bG[i] == 0
            continue
        want = lstsq_reference(R[i, o], Z[o], ridge, bias_ridge)
        np.testing.assert_allclose(G[i], want[:L], rtol=1e-9, atol=1e-12, err_msg=f"bin {i}")
        np.testing.assert_allclose(bG[i], want[L], rtol=1e-9, atol=1e-12, err_msg=f"bin {i}")
    assert np.isfinite(G).all() and np.isfinite(bG).all()


def test_explicit_mask_ignores_values_outside_it():
    R, Z, obs, _ = block(seed=1)
    junk = np.where(obs, R, 1e30)  # unobserved entries hold garbage, not NaN
    G1, b1 = solve_genome_factors(R, Z, 2.9, obs=obs, dtype=np.float64)
    G2, b2 = solve_genome_factors(junk, Z, 2.9, obs=obs, dtype=np.float64)
    np.testing.assert_array_equal(G1, G2)
    np.testing.assert_array_equal(b1, b2)


def test_float32_default_and_fully_observed_fast_path():
    rng = np.random.default_rng(2)
    R = rng.normal(size=(25, E)).astype(np.float32)
    Z = rng.normal(size=(E, L))
    G, bG = solve_genome_factors(R, Z, 2.9)
    assert G.dtype == np.float32 and bG.dtype == np.float32
    P = np.linalg.solve(np.c_[Z, np.ones(E)].T @ np.c_[Z, np.ones(E)] + np.diag([2.9] * L + [0]),
                        np.c_[Z, np.ones(E)].T)
    want = R.astype(np.float64) @ P.T
    np.testing.assert_allclose(G, want[:, :L], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bG, want[:, L], rtol=1e-4, atol=1e-5)


def test_exact_fit_without_ridge():
    # the docstring's example, extended: r = Z g + b exactly is recovered with no ridge
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(E, L))
    g, b = np.array([1.5, -2.0, 0.25]), 0.75
    R = (Z @ g + b)[None, :].repeat(3, axis=0)
    R[1, 0] = np.nan  # still over-determined
    G, bG = solve_genome_factors(R, Z, 0.0, dtype=np.float64)
    np.testing.assert_allclose(G, np.tile(g, (3, 1)), atol=1e-10)
    np.testing.assert_allclose(bG, [b] * 3, atol=1e-10)


def test_observed_patterns_groups_rows():
    _, _, obs, which = block(seed=4, n=50)
    groups = observed_patterns(obs)
    assert len(groups) == len(PATTERNS)
    seen = np.concatenate([rows for rows, _ in groups])
    assert np.array_equal(np.sort(seen), np.arange(obs.shape[0]))  # each row exactly once
    keys = set()
    for rows, cols in groups:
        assert cols.dtype == bool and cols.shape == (E,)
        assert np.all(obs[rows] == cols)  # every row of the group has the group's pattern
        keys.add(cols.tobytes())
    assert len(keys) == len(groups)  # patterns are distinct


def test_observed_patterns_uniform_and_empty():
    obs = np.ones((7, 4), dtype=bool)
    obs[:, 2] = False
    (only,) = observed_patterns(obs)
    assert only[0] == slice(None)
    assert only[1].tolist() == [True, True, False, True]
    assert observed_patterns(np.zeros((0, 4), dtype=bool)) == []
    # more than 8 experiments: patterns differing only beyond the first packed byte
    wide = np.ones((3, 12), dtype=bool)
    wide[1, 10] = False
    groups = observed_patterns(wide)
    assert sorted(len(r) for r, _ in groups) == [1, 2]


def test_projection_with_ridge_is_the_ridge_solution():
    rng = np.random.default_rng(5)
    Z = rng.normal(size=(9, 4))
    Za = np.c_[Z, np.ones(9)]
    want = np.linalg.solve(Za.T @ Za + np.diag([1.5] * 4 + [0.2]), Za.T)
    np.testing.assert_allclose(projection(Z, 1.5, 0.2), want, rtol=1e-10)


def test_projection_singular_falls_back_to_pseudo_inverse():
    # no ridge and fewer experiments than factors + 1: (ZaᵀZa) is singular. The answer must be
    # the minimum-norm solution, not whatever a near-zero pivot makes of it.
    rng = np.random.default_rng(0)
    for trial in range(20):
        Z = rng.normal(size=(2, 4))
        Za = np.c_[Z, np.ones(2)]
        P = projection(Z, 0.0)
        assert np.isfinite(P).all()
        np.testing.assert_allclose(P, np.linalg.pinv(Za), atol=1e-10, err_msg=f"trial {trial}")
    # exactly collinear experiments
    P = projection(np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]]), 0.0)
    Za = np.array([[1.0, 2.0, 3.0, 1.0], [2.0, 4.0, 6.0, 1.0]])
    np.testing.assert_allclose(P, np.linalg.pinv(Za), atol=1e-10)


def test_resolve_missing_rows_equals_the_per_pattern_solve():
    rng = np.random.default_rng(11)
    Z = rng.normal(size=(7, 3))
    R = rng.normal(size=(40, 7))
    R[[2, 5, 5, 30], [0, 1, 4, 6]] = np.nan
    R[9] = np.nan                               # nothing observed
    GB = R @ projection(Z, 0.5, 0.1).T
    holes = resolve_missing_rows(GB, R, Z, 0.5, 0.1)
    G, bG = solve_genome_factors(R, Z, 0.5, 0.1, dtype=np.float64)
    assert holes.tolist() == [2, 5, 9, 30]
    np.testing.assert_allclose(GB[:, :-1], G, atol=1e-12)
    np.testing.assert_allclose(GB[:, -1], bG, atol=1e-12)
