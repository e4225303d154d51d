"""The training driver: initialisation, the ALS / SGD loops, validation and early stopping.

It is written against a tiny *backend* protocol so that the same loop runs in-process over a
list of shards (:class:`LocalBackend`, used by tests and notebooks) or over Spark partitions
(:class:`predictd.spark.SparkBackend`). A backend maps a pure shard function over every shard
and returns the results in shard order, which keeps every reduction deterministic::

    backend.map(fn, payload)                 -> [fn(shard, payload, index) for each shard]
    backend.init_state(fn, payload)          # state_i = fn(shard, payload, index)
    backend.map_state(fn, payload)           -> results; state_i, result_i = fn(shard, state_i, ...)
    backend.snapshot() / backend.restore(h)  # keep / roll back to the states of an iteration
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from ..model import experiment_bias, experiment_features
from . import als, sgd
from .closed_form import projection, resolve_missing_rows
from .objective import Factors, Penalties, penalties


@dataclass
class Shard:
    """A partition of the training subset: training bins X and validation bins V (bins ×
    experiments, NaN = missing); ``vgroup[i]`` is the experiment group hidden in V's row i."""

    X: np.ndarray
    V: np.ndarray
    vgroup: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.X.nbytes + self.V.nbytes + self.vgroup.nbytes


@dataclass
class FitResult:
    factors: Factors
    history: list[dict] = field(default_factory=list)
    best_iteration: int = 0
    best_valid_mse: float = float("nan")
    n_entries: int = 0
    n_bins: int = 0
    stopped: str = ""


# --------------------------------------------------------------------------- shard functions
def shard_summary(shard: Shard, payload, index) -> dict:
    X = shard.X
    obs = ~np.isnan(X)
    return {"sum": np.where(obs, X, 0.0).sum(axis=0, dtype=np.float64),
            "count": obs.sum(axis=0), "n_bins": X.shape[0], "n_valid": shard.V.shape[0]}


def validation_sse(shard: Shard, exp_cell, exp_assay, exp_group, f: Factors, pen: Penalties,
                   chunk: int = 256) -> tuple[float, int]:
    """Hide one experiment group per validation bin, solve its G from the rest in closed form,
    and score the hidden entries.

    Bins are taken ``chunk`` at a time (small float64 temporaries that stay in cache) and solved
    with one GEMM by the group's shared projection; the few bins with something else missing
    (their row of the product is NaN) are solved again per observed pattern."""
    V = shard.V
    if V.shape[0] == 0:
        return 0.0, 0
    Z = experiment_features(f.C, f.A, exp_cell, exp_assay)
    b = experiment_bias(f.mu, f.bC, f.bA, exp_cell, exp_assay)
    sse, count = 0.0, 0
    for g in np.unique(shard.vgroup):
        rows = np.flatnonzero(shard.vgroup == g)
        hide = exp_group == g
        keep = ~hide
        Zk, Zh = Z[keep], Z[hide]
        Pk = projection(Zk, pen.rhoG, pen.rhoB)
        L = Z.shape[1]
        for s in range(0, rows.size, chunk):
            R = V[rows[s:s + chunk]] - b[None, :]
            Rin, target = R[:, keep], R[:, hide]
            GB = Rin @ Pk.T
            resolve_missing_rows(GB, Rin, Zk, pen.rhoG, pen.rhoB)
            G, bG = GB[:, :L], GB[:, L]
            pred = G @ Zh.T + bG[:, None]
            ok = ~np.isnan(target)
            sse += float(np.sum(np.where(ok, target - pred, 0.0) ** 2))
            count += int(ok.sum())
    return sse, count


def _als_shard(shard: Shard, payload, index):
    exp_cell, exp_assay, exp_group, f, pen, which = payload
    stats = als.shard_stats(shard.X, exp_cell, exp_assay, f, pen, which)
    stats["vsse"], stats["vcount"] = validation_sse(shard, exp_cell, exp_assay, exp_group, f, pen)
    return stats


def _sgd_init(shard: Shard, payload, index):
    exp_cell, exp_assay, f, pen, seed, scale = payload
    rng = np.random.default_rng([seed, 1_000_003, index])
    return sgd.init_state(shard.X, exp_cell, exp_assay, f, pen, rng, scale)


def _sgd_shard(shard: Shard, state, payload, index):
    (exp_cell, exp_assay, exp_group, f, moments, t0, pen, opt, steps, batch, seed,
     iteration) = payload
    vsse, vcount = validation_sse(shard, exp_cell, exp_assay, exp_group, f, pen)
    rng = np.random.default_rng([seed, iteration, index])
    state, f_new, mom, stats = sgd.shard_steps(shard.X, exp_cell, exp_assay, state, f, moments,
                                               t0, pen, opt, steps, batch, rng)
    n_obs = int((~np.isnan(shard.X)).sum())
    return state, {"f": f_new, "moments": mom, "sse": stats["sse"], "count": stats["count"],
                   "vsse": vsse, "vcount": vcount, "weight": n_obs}


# --------------------------------------------------------------------------- backends
def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # no affinity call on this platform
        return max(1, os.cpu_count() or 1)


def thread_map(fn, items, threads: int | None = None, done=None) -> list:
    """``[fn(item) for item in items]`` on up to ``threads`` threads (default
    :func:`usable_cores`), each with one BLAS thread; results in item order. numpy releases
    the GIL in its array loops and BLAS calls, so shards of work use every core; BLAS's own
    threads would only spin on the small products these tasks make. Each item's result does
    not depend on the threads, so sums over them in item order stay the same bits. ``done``
    (no arguments) is called as each item finishes (a progress bar's update)."""
    items = list(items)
    n = min(threads or usable_cores(), len(items))
    if n <= 1:
        out = []
        for it in items:
            out.append(fn(it))
            if done is not None:
                done()
        return out
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(fn, it) for it in items]
        for f in as_completed(futures):
            f.result()
            if done is not None:
                done()
        return [f.result() for f in futures]


#: Below this many training entries (all shards together) :class:`LocalBackend` maps its shards
#: on one thread: each iteration's thread pool and BLAS limits, and the GIL the small numpy
#: calls then contend for, cost more than a second core saves (the pilot bench's 4 shards of
#: 2,500 bins × 20 experiments: 0.44 CPU s for 60 ALS iterations on one thread, 0.7–0.8 on two,
#: and no faster).
THREADS_MIN_ENTRIES = 1 << 21


class LocalBackend:
    """Shards held in this process (no Spark), mapped on ``threads`` threads
    (:func:`thread_map`); by default every usable core, or one for a training subset under
    :data:`THREADS_MIN_ENTRIES` entries."""

    def __init__(self, shards: list[Shard], threads: int | None = None):
        self.shards = shards
        self.states = None
        if threads is None and sum(s.X.size + s.V.size for s in shards) < THREADS_MIN_ENTRIES:
            threads = 1
        self.threads = threads

    def _map(self, fn, args):
        return thread_map(lambda a: fn(*a), args, self.threads)

    def map(self, fn, payload):
        return self._map(fn, [(s, payload, i) for i, s in enumerate(self.shards)])

    def init_state(self, fn, payload):
        self.states = self._map(fn, [(s, payload, i) for i, s in enumerate(self.shards)])

    def map_state(self, fn, payload):
        out = self._map(fn, [(s, st, payload, i)
                             for i, (s, st) in enumerate(zip(self.shards, self.states))])
        self.states = [o[0] for o in out]
        return [o[1] for o in out]

    def snapshot(self):
        return self.states

    def restore(self, handle):
        self.states = handle

    def release(self, handle):
        pass


# --------------------------------------------------------------------------- initialisation
def init_factors(summaries: list[dict], exp_cell, exp_assay, n_cell: int, n_assay: int,
                 L: int, seed: int, scale: float) -> tuple[Factors, int, int]:
    """μ = mean of the training entries; bC = cell means of the residual; bA = assay means of
    what is left (docs/design.md §3's hierarchical initialisation); C, A ~ U(−scale, scale)."""
    s = np.sum([x["sum"] for x in summaries], axis=0)
    c = np.sum([x["count"] for x in summaries], axis=0).astype(np.float64)
    N = int(c.sum())
    n_bins = int(sum(x["n_bins"] for x in summaries))
    mu = float(s.sum() / max(N, 1))
    exp_mean = np.divide(s, c, out=np.full_like(s, mu), where=c > 0) - mu
    bC = np.zeros(n_cell)
    for_w = np.bincount(exp_cell, weights=c, minlength=n_cell)
    bC = np.bincount(exp_cell, weights=exp_mean * c, minlength=n_cell) / np.maximum(for_w, 1)
    rest = exp_mean - bC[exp_cell]
    aw = np.bincount(exp_assay, weights=c, minlength=n_assay)
    bA = np.bincount(exp_assay, weights=rest * c, minlength=n_assay) / np.maximum(aw, 1)
    rng = np.random.default_rng(seed)
    C = rng.uniform(-scale, scale, size=(n_cell, L))
    A = rng.uniform(-scale, scale, size=(n_assay, L))
    return Factors(mu, bC, bA, C, A), N, n_bins


def experiment_groups(n_exp: int, n_groups: int, seed: int) -> np.ndarray:
    """Balanced random assignment of experiments to validation groups."""
    g = min(n_groups, n_exp)
    return np.random.default_rng([seed, 7]).permutation(n_exp) % g


# --------------------------------------------------------------------------- the loop
class _Stopper:
    def __init__(self, patience: int, min_improvement: float):
        self.patience, self.min_improvement = patience, min_improvement
        self.best = np.inf
        self.bad = 0

    def update(self, value: float) -> tuple[bool, bool]:
        """-> (improved, stalled)"""
        if value < self.best * (1.0 - self.min_improvement):
            self.best, self.bad = value, 0
            return True, False
        if value < self.best:
            self.best = value
            improved = True
        else:
            improved = False
        self.bad += 1
        return improved, self.bad >= self.patience


def fit(backend, exp_cell, exp_assay, n_cell: int, n_assay: int, cfg, progress=None,
        log=None) -> FitResult:
    """Fit the factors on the backend's shards with ``cfg.solver``.

    ``progress`` (optional) is called with each history row; ``log`` with text lines.
    """
    exp_cell = np.asarray(exp_cell)
    exp_assay = np.asarray(exp_assay)
    summaries = backend.map(shard_summary, None)
    f, N, n_bins = init_factors(summaries, exp_cell, exp_assay, n_cell, n_assay,
                                cfg.latent_factors, cfg.seed, cfg.init_scale)
    if N == 0:
        raise ValueError("no observed training entries")
    pen = penalties(cfg, n_cell, n_assay, N, n_bins)
    exp_group = experiment_groups(len(exp_cell), cfg.validation_groups, cfg.seed)
    if cfg.solver == "als":
        res = _fit_als(backend, exp_cell, exp_assay, exp_group, f, pen, N, cfg, progress)
    else:
        res = _fit_sgd(backend, exp_cell, exp_assay, exp_group, f, pen, N, cfg, progress, log)
    res.n_entries, res.n_bins = N, n_bins
    return res


def _record(history, progress, **row):
    history.append(row)
    if progress is not None:
        progress(row)


def _fit_als(backend, exp_cell, exp_assay, exp_group, f, pen, N, cfg, progress) -> FitResult:
    history: list[dict] = []
    stopper = _Stopper(cfg.patience, cfg.min_improvement)
    best_f, best_it, best_v = f.copy(), 0, np.inf
    t_start = time.perf_counter()
    stopped = "max_iterations"
    for it in range(cfg.max_iterations):
        which = "C" if it % 2 == 0 else "A"
        parts = backend.map(_als_shard, (exp_cell, exp_assay, exp_group, f, pen, which))
        stats = als.sum_stats(parts)
        vsse = sum(p["vsse"] for p in parts)
        vcount = sum(p["vcount"] for p in parts)
        v = vsse / vcount if vcount else stats["sse"] / max(stats["count"], 1)
        _record(history, progress, iteration=it, train_mse=stats["sse"] / max(stats["count"], 1),
                valid_mse=v, seconds=time.perf_counter() - t_start, update=which)
        if it % cfg.check_every == 0:
            improved, stalled = stopper.update(v)
            if v < best_v:
                best_f, best_it, best_v = f.copy(), it, v
            if stalled:
                stopped = "validation stalled"
                break
        f = als.update_factor(stats, exp_cell, exp_assay, f, pen, which, N)
    return FitResult(best_f, history, best_it, float(best_v), stopped=stopped)


def _fit_sgd(backend, exp_cell, exp_assay, exp_group, f, pen, N, cfg, progress, log
             ) -> FitResult:
    history: list[dict] = []
    backend.init_state(_sgd_init, (exp_cell, exp_assay, f, pen, cfg.seed, cfg.init_scale))
    moments = sgd.zero_moments(f)
    lr = cfg.learning_rate
    t0 = 0
    stopper = _Stopper(cfg.patience, cfg.min_improvement)
    best = (f.copy(), moments, t0, backend.snapshot())
    best_it, best_v = 0, np.inf
    drops = 0
    t_start = time.perf_counter()
    stopped = "max_iterations"
    for it in range(cfg.max_iterations):
        opt = sgd.Adam(lr, cfg.beta1, cfg.beta2, cfg.epsilon, cfg.lr_decay)
        payload = (exp_cell, exp_assay, exp_group, f, moments, t0, pen, opt, cfg.sgd_steps,
                   cfg.batch_size, cfg.seed, it)
        before = backend.snapshot()
        parts = backend.map_state(_sgd_shard, payload)
        vsse = sum(p["vsse"] for p in parts)
        vcount = sum(p["vcount"] for p in parts)
        tr = sum(p["sse"] for p in parts) / max(sum(p["count"] for p in parts), 1)
        v = vsse / vcount if vcount else tr
        _record(history, progress, iteration=it, train_mse=tr, valid_mse=v, lr=lr,
                seconds=time.perf_counter() - t_start)
        # v scores the factors broadcast at the start of this iteration (state ``before``)
        if v < best_v:
            if best[3] is not before:
                backend.release(best[3])
            best, best_it, best_v = (f.copy(), moments, t0, before), it, v
        elif before is not best[3]:
            backend.release(before)
        f, moments = sgd.average_factor_states([(p["f"], p["moments"]) for p in parts],
                                               weights=[p["weight"] for p in parts])
        t0 += cfg.sgd_steps
        if it % cfg.check_every == 0:
            _, stalled = stopper.update(v)
            if stalled:
                if drops >= cfg.max_lr_drops:
                    stopped = "validation stalled"
                    break
                drops += 1
                lr /= 2.0
                f, moments, t0 = best[0].copy(), best[1], best[2]
                backend.restore(best[3])
                stopper.bad = 0
                if log:
                    log(f"validation stalled at iteration {it}: learning rate -> {lr:g}, "
                        f"rolled back to iteration {best_it}")
    return FitResult(best[0], history, best_it, float(best_v), stopped=stopped)
