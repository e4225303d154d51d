"""The training driver: initialisation, early stopping, keeping the best iteration, SGD's
learning-rate drop with roll-back."""

import numpy as np
import pytest

from predictd.config import Config
from predictd.solvers.fit import (THREADS_MIN_ENTRIES, LocalBackend, Shard, _als_shard,
                                  experiment_groups, fit, init_factors, shard_summary,
                                  validation_sse)
from predictd.solvers.objective import penalties

N_CELL, N_ASSAY = 4, 3


def low_rank_shards(seed=0, n_train=400, n_valid=120, rank=2, n_shards=2):
    rng = np.random.default_rng(seed)
    jj, kk = np.meshgrid(np.arange(N_CELL), np.arange(N_ASSAY), indexing="ij")
    jj, kk = jj.ravel(), kk.ravel()
    keep = np.setdiff1d(np.arange(jj.size), [1, 9])
    C, A = rng.normal(size=(N_CELL, rank)), rng.normal(size=(N_ASSAY, rank))
    n = n_train + n_valid
    T = rng.normal(size=(n, rank)) @ (C[jj[keep]] * A[kk[keep]]).T + 0.5
    T += 0.05 * rng.normal(size=T.shape)
    T[rng.random(T.shape) < 0.1] = np.nan
    tr, va = T[:n_train], T[n_train:]
    shards = [Shard(tr[p::n_shards], va[p::n_shards],
                    rng.integers(0, 3, va[p::n_shards].shape[0])) for p in range(n_shards)]
    return shards, jj[keep], kk[keep]


class DriftingBackend(LocalBackend):
    """A local backend whose validation bins turn to noise after ``clean`` training iterations,
    so that every later validation score is worse — a deterministic stall."""

    def __init__(self, shards, clean):
        super().__init__(shards)
        self.clean, self.iterations = clean, 0
        self.clean_V = [s.V for s in shards]

    def _tick(self):
        if self.iterations == self.clean:
            rng = np.random.default_rng(0)
            for s in self.shards:
                s.V = s.V + 3.0 * rng.normal(size=s.V.shape)
        self.iterations += 1

    def map(self, fn, payload):
        if fn is _als_shard:
            self._tick()
        return super().map(fn, payload)

    def map_state(self, fn, payload):
        self._tick()
        return super().map_state(fn, payload)

    def use_clean_validation(self):
        for s, V in zip(self.shards, self.clean_V):
            s.V = V


def validation_mse(shards, f, ec, ea, cfg, res):
    groups = experiment_groups(len(ec), cfg.validation_groups, cfg.seed)
    pen = penalties(cfg, N_CELL, N_ASSAY, res.n_entries, res.n_bins)
    parts = [validation_sse(s, ec, ea, groups, f, pen) for s in shards]
    return sum(p[0] for p in parts) / sum(p[1] for p in parts)


BASE = dict(latent_factors=2, rc=0.01, ra=0.01, ri=0.0, ri2=0.1, validation_groups=3)


def test_init_factors_hierarchical_means():
    X = np.array([[1.0, 2.0, np.nan], [3.0, 6.0, 5.0]])
    shards = [Shard(X[:1], X[:0], np.zeros(0, int)), Shard(X[1:], X[:0], np.zeros(0, int))]
    ec, ea = np.array([0, 0, 1]), np.array([0, 1, 0])
    f, N, n_bins = init_factors([shard_summary(s, None, i) for i, s in enumerate(shards)],
                                ec, ea, 2, 2, 3, 0, 0.33)
    assert (N, n_bins) == (5, 2)
    assert f.mu == pytest.approx(17 / 5)
    # cell 0: its 4 entries average 3 → bC0 = 3 − 3.4; cell 1: its one entry 5 → 1.6
    np.testing.assert_allclose(f.bC, [3 - 3.4, 5 - 3.4])
    # assay means of what is left: assay 0 entries (1, 3 | cell 0; 5 | cell 1) → residual mean
    r_a0 = ((1 - 3.4 - f.bC[0]) + (3 - 3.4 - f.bC[0]) + (5 - 3.4 - f.bC[1])) / 3
    r_a1 = ((2 - 3.4 - f.bC[0]) + (6 - 3.4 - f.bC[0])) / 2
    np.testing.assert_allclose(f.bA, [r_a0, r_a1], atol=1e-12)
    assert f.C.shape == (2, 3) and np.abs(f.C).max() < 0.33 and np.abs(f.A).max() < 0.33


def test_experiment_groups_balanced_and_seeded():
    g = experiment_groups(11, 3, seed=5)
    assert sorted(np.bincount(g).tolist()) == [3, 4, 4]
    assert np.array_equal(g, experiment_groups(11, 3, seed=5))
    assert not np.array_equal(g, experiment_groups(11, 3, seed=6))
    assert experiment_groups(2, 5, seed=1).max() <= 1  # never more groups than experiments


def test_als_early_stopping_on_a_natural_plateau():
    shards, ec, ea = low_rank_shards()
    cfg = Config(solver="als", max_iterations=300, patience=2, min_improvement=0.01, **BASE)
    res = fit(LocalBackend(shards), ec, ea, N_CELL, N_ASSAY, cfg)
    assert res.stopped == "validation stalled"
    assert len(res.history) < cfg.max_iterations
    v = [h["valid_mse"] for h in res.history]
    assert v[-1] > 0.99 * min(v)  # it did stop on a plateau, not while still improving fast


def test_als_keeps_the_best_iteration_not_the_last():
    shards, ec, ea = low_rank_shards(seed=1)
    clean, patience = 5, 3  # validation improves at each of iterations 0-4 on this data
    cfg = Config(solver="als", max_iterations=50, patience=patience, min_improvement=0.0,
                 **BASE)
    backend = DriftingBackend(shards, clean)
    res = fit(backend, ec, ea, N_CELL, N_ASSAY, cfg)
    v = [h["valid_mse"] for h in res.history]
    assert res.stopped == "validation stalled"
    assert len(v) == clean + patience  # the first bad check after `patience` stops it
    assert res.best_iteration == int(np.argmin(v)) < clean
    assert res.best_valid_mse == min(v)
    assert min(v[clean:]) > 2 * res.best_valid_mse
    # the factors returned are the ones that scored best: re-scoring them on the clean
    # validation bins reproduces that score exactly
    backend.use_clean_validation()
    assert validation_mse(shards, res.factors, ec, ea, cfg, res) == pytest.approx(
        res.best_valid_mse, rel=1e-12)


def test_als_check_every_spaces_the_checks():
    shards, ec, ea = low_rank_shards(seed=1)
    cfg = Config(solver="als", max_iterations=50, patience=2, check_every=3, min_improvement=0,
                 **BASE)
    res = fit(DriftingBackend(shards, 4), ec, ea, N_CELL, N_ASSAY, cfg)
    # checks at 0, 3, 6, 9 (3 improves on 0): the bad ones at 6 and 9 stop it after iteration 9,
    # and only checked iterations can be the best
    assert len(res.history) == 10
    assert res.best_iteration == 3


def test_sgd_drops_learning_rate_rolls_back_then_stops():
    shards, ec, ea = low_rank_shards(seed=3)
    clean, patience = 4, 2
    cfg = Config(solver="sgd", learning_rate=0.05, sgd_steps=20, batch_size=64,
                 max_iterations=40, patience=patience, min_improvement=0.0, max_lr_drops=1,
                 **BASE)
    backend = DriftingBackend(shards, clean)
    logs = []
    res = fit(backend, ec, ea, N_CELL, N_ASSAY, cfg, log=logs.append)
    lrs = [h["lr"] for h in res.history]
    v = [h["valid_mse"] for h in res.history]
    assert res.stopped == "validation stalled"
    # `patience` bad checks at the full rate, then `patience` more at half the rate
    assert len(v) == clean + 2 * patience
    assert lrs == [0.05] * (clean + patience) + [0.025] * patience
    assert len(logs) == 1 and "learning rate -> 0.025" in logs[0]
    assert res.best_iteration == int(np.argmin(v)) < clean
    # roll-back: the first iteration after the drop scores the best factors again (on the
    # drifted bins)
    drifted = validation_mse(shards, res.factors, ec, ea, cfg, res)
    assert v[clean + patience] == pytest.approx(drifted, rel=1e-12)
    backend.use_clean_validation()
    assert validation_mse(shards, res.factors, ec, ea, cfg, res) == pytest.approx(
        res.best_valid_mse, rel=1e-12)


@pytest.mark.parametrize("solver,iterations", [("als", 8), ("sgd", 1)])
def test_shards_mapped_on_threads_fit_the_same_bits(solver, iterations):
    shards, ec, ea = low_rank_shards(seed=2, n_shards=3)
    cfg = Config(solver=solver, max_iterations=iterations, **BASE)
    one = fit(LocalBackend(shards, threads=1), ec, ea, N_CELL, N_ASSAY, cfg)
    three = fit(LocalBackend(shards, threads=3), ec, ea, N_CELL, N_ASSAY, cfg)
    for a, b in zip(one.factors.__dict__.values(), three.factors.__dict__.values()):
        assert np.array_equal(a, b)
    assert [h["valid_mse"] for h in one.history] == [h["valid_mse"] for h in three.history]


def test_a_small_training_subset_is_mapped_on_one_thread():
    # per-iteration thread pools cost more than a second core saves on small shards
    shards, _, _ = low_rank_shards(seed=2, n_shards=3)
    assert sum(s.X.size + s.V.size for s in shards) < THREADS_MIN_ENTRIES
    assert LocalBackend(shards).threads == 1
    assert LocalBackend(shards, threads=3).threads == 3
    E = shards[0].X.shape[1]
    rows = THREADS_MIN_ENTRIES // E + 1
    big = Shard(np.zeros((rows, E), np.float32), np.zeros((0, E), np.float32),
                np.zeros(0, np.int16))
    assert LocalBackend([big]).threads is None   # every usable core
