"""Train: sample a reproducible training subset of bins, then fit C, A and the biases.

1. *sample* — one task per tensor block draws its training and validation bins with a random
   generator seeded by (seed, chromosome, block), so the subset does not depend on how the work
   was scheduled. Optionally only bins overlapping a BED of regions are eligible. Each block's
   sample is written as a small Parquet piece.
2. *fit* — pieces are grouped into shards (Spark partitions); :func:`predictd.solvers.fit.fit`
   runs ALS or parallel SGD over them through :class:`predictd.spark.SparkBackend` (or in this
   process with ``sc=None``).
"""

from __future__ import annotations

import gzip
import io
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from . import storage, tensor
from .errors import PredictdError
from .model import Model
from .names import split_experiment
from .solvers import stacking
from .solvers.fit import FitResult, LocalBackend, Shard, fit, thread_map
from .spark import SparkBackend, default_parallelism, map_tasks

log = logging.getLogger("predictd.train")


def training_experiments(header: tensor.TensorHeader, holdout: list[str]) -> list[str]:
    """The tensor's experiments minus the held-out ones (:func:`training_left`)."""
    unknown = [h for h in holdout if h not in header.experiments]
    if unknown:
        raise PredictdError(f"--holdout {unknown[0]}: no such observed track in the manifest "
                            f"(observed: {', '.join(header.experiments[:6])}...)")
    return training_left(header.experiments, holdout)


def training_left(experiments: list[str], holdout: list[str]) -> list[str]:
    """``experiments`` minus ``holdout``; every cell type and assay must keep at least one
    (their factors would be unidentifiable otherwise). Checked from the manifest before a run
    writes anything, and again by training."""
    held = set(holdout)
    keep = [e for e in experiments if e not in held]
    cells_left = {split_experiment(e)[0] for e in keep}
    assays_left = {split_experiment(e)[1] for e in keep}
    for e in experiments:
        c, a = split_experiment(e)
        if c not in cells_left:
            raise PredictdError(f"cell type {c} has no training track left after --holdout")
        if a not in assays_left:
            raise PredictdError(f"assay {a} has no training track left after --holdout")
    return keep


def read_bed_regions(path: str) -> dict[str, np.ndarray]:
    """chrom -> (n, 2) int64 array of [start, end) from a (gzipped) BED."""
    data = storage.read_bytes(path)
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    regions: dict[str, list] = {}
    for n, line in enumerate(data.decode().splitlines(), 1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        try:
            regions.setdefault(parts[0], []).append((int(parts[1]), int(parts[2])))
        except (IndexError, ValueError):
            raise PredictdError(f"training_regions {path}, line {n}: not a BED line") from None
    return {c: np.array(v, dtype=np.int64) for c, v in regions.items()}


def _region_mask(regions, chrom, start_bin, n, bin_size) -> np.ndarray:
    iv = regions.get(chrom)
    mask = np.zeros(n, dtype=bool)
    if iv is None or len(iv) == 0:
        return mask
    first = np.clip(iv[:, 0] // bin_size - start_bin, 0, n)
    last = np.clip((iv[:, 1] - 1) // bin_size - start_bin + 1, 0, n)
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, first, 1)
    np.add.at(diff, last, -1)
    return np.cumsum(diff[:-1]) > 0


def _sample_task(item, payload):
    """A block's training subset piece ((uri, bins) or None) and, for a block of the stacking
    sample (``resemble``), the :func:`predictd.solvers.stacking.resemblance_sums` of its
    sampled bins (:func:`pack_resemblance`; None otherwise): both from one read of the block,
    in one Spark job."""
    chrom_idx, chrom, block, start, n, resemble = item
    (root, work, experiments, fraction, vfrac, groups, seed, bin_size, regions,
     stack) = payload
    rng = np.random.default_rng([seed, chrom_idx, block])
    u = rng.random(n)
    role = rng.random(n)
    grp = rng.integers(0, groups, n)
    pick = u < fraction
    if regions is not None:
        pick &= _region_mask(regions, chrom, start, n, bin_size)
    X = sums = None
    if resemble:
        exp_assay, stack_fraction = stack
        rows = stack_rows(seed, chrom_idx, block, n, stack_fraction)
        if rows.any():
            X = tensor.read_block(root, chrom, block, experiments)[1]
            sums = pack_resemblance(stacking.resemblance_sums(X, exp_assay, rows), exp_assay)
    if not pick.any():
        return None, sums
    if X is None:
        X = tensor.read_block(root, chrom, block, experiments)[1]
    X = X[pick]
    keep = ~np.isnan(X).all(axis=1)
    X, is_valid, grp = X[keep], (role[pick] < vfrac)[keep], grp[pick][keep]
    if X.shape[0] == 0:
        return None, sums
    cols = {"valid": pa.array(is_valid), "group": pa.array(grp.astype(np.int16))}
    for j, e in enumerate(experiments):
        cols[e] = pa.array(X[:, j], mask=np.isnan(X[:, j]))
    buf = io.BytesIO()
    # no dictionary encoding: signal values are nearly all distinct (it only slows the write)
    pq.write_table(pa.table(cols), buf, compression="zstd", use_dictionary=False)
    uri = storage.join(work, f"{chrom}.{block:06d}.parquet")
    storage.write_bytes_atomic(uri, buf.getvalue())
    return (uri, int(X.shape[0])), sums


def pack_resemblance(sums: dict, exp_assay) -> dict:
    """:func:`predictd.solvers.stacking.resemblance_sums` with its cross products kept only
    within each assay (the rest is 0): what a task sends back (at Roadmap scale 8 MB per block
    as a full E × E matrix, about 0.4 MB this way). :func:`unpack_resemblance` restores it
    bit for bit."""
    exp_assay = np.asarray(exp_assay)
    cross = sums["cross"]
    blocks = [cross[np.ix_(idx, idx)] for idx in
              (np.flatnonzero(exp_assay == a) for a in np.unique(exp_assay))]
    return {**{k: v for k, v in sums.items() if k != "cross"}, "cross": blocks}


def unpack_resemblance(packed: dict, exp_assay) -> dict:
    """The :func:`predictd.solvers.stacking.resemblance_sums` a :func:`pack_resemblance`
    holds."""
    exp_assay = np.asarray(exp_assay)
    cross = np.zeros((exp_assay.size, exp_assay.size))
    for a, block in zip(np.unique(exp_assay), packed["cross"]):
        idx = np.flatnonzero(exp_assay == a)
        cross[np.ix_(idx, idx)] = block
    return {**{k: v for k, v in packed.items() if k != "cross"}, "cross": cross}


def load_shard(pieces: tuple, experiments: tuple) -> Shard:
    """Build a shard from ``((uri, part, n_parts), ...)``: rows ``part::n_parts`` of each piece."""
    Xs, Vs, gs = [], [], []
    for uri, part, nparts in pieces:
        # ParquetFile, not read_table (which imports pyarrow.dataset: see tensor.decode_block)
        t = pq.ParquetFile(io.BytesIO(storage.read_bytes(uri))).read(use_threads=False)
        valid = t.column("valid").to_numpy(zero_copy_only=False)[part::nparts]
        grp = t.column("group").to_numpy()[part::nparts]
        X = np.empty((valid.size, len(experiments)), dtype=np.float32)
        for j, e in enumerate(experiments):
            X[:, j] = t.column(e).to_numpy(zero_copy_only=False)[part::nparts]
        Xs.append(X[~valid])
        Vs.append(X[valid])
        gs.append(grp[valid])
    E = len(experiments)
    cat = lambda a: np.concatenate(a) if a else np.zeros((0, E), np.float32)  # noqa: E731
    return Shard(cat(Xs), cat(Vs), np.concatenate(gs) if gs else np.zeros(0, np.int16))


def shard_plan(pieces: list[tuple[str, int]], n_shards: int) -> list[tuple]:
    """Assign sample pieces to ``n_shards`` shards of similar size (pieces may be split by
    rows when there are fewer pieces than shards). Deterministic."""
    pieces = [p for p in pieces if p is not None]
    if not pieces:
        return []
    total = sum(n for _, n in pieces)
    n_shards = max(1, min(n_shards, total))
    if len(pieces) < n_shards:
        split = -(-n_shards // len(pieces))
        units = [((u, k, split), n / split) for u, n in pieces for k in range(split)]
    else:
        units = [((u, 0, 1), n) for u, n in pieces]
    shards: list[list] = [[] for _ in range(n_shards)]
    load = np.zeros(n_shards)
    for unit, size in sorted(units, key=lambda x: -x[1]):
        i = int(np.argmin(load))
        shards[i].append(unit)
        load[i] += size
    return [tuple(sorted(s)) for s in shards if s]


def sample(sc, header: tensor.TensorHeader, root: str, work: str, experiments: list[str], cfg,
           resemble: list | None = None) -> tuple[list[tuple[str, int]], dict]:
    """Draw the training subset into ``work``: its pieces ((uri, bins) per block with sampled
    bins) and, for the blocks ``resemble`` lists (``header.blocks()`` entries: the stacking
    sample's, when the similarity-weighted averages choose nearest cell types), each block's
    :func:`predictd.solvers.stacking.resemblance_sums` packed (:func:`pack_resemblance`), by
    (chrom, block) — read in the same tasks, so training needs one Spark job fewer."""
    total = header.genome_obj.total_bins(header.bin_size)
    fraction = min(cfg.training_fraction, cfg.max_training_bins / max(total, 1))
    regions = read_bed_regions(cfg.training_regions) if cfg.training_regions else None
    chrom_index = {c: i for i, (c, _) in enumerate(header.genome["chroms"])}
    wanted = {(c, b) for c, b, _, _ in (resemble or ())}
    items = [(chrom_index[c], c, b, s, n, (c, b) in wanted) for c, b, s, n in header.blocks()]
    exp_assay = header.indices(experiments)[1]
    out = map_tasks(sc, _sample_task, items,
                    (root, work, experiments, fraction, cfg.validation_fraction,
                     cfg.validation_groups, cfg.seed, header.bin_size, regions,
                     (exp_assay, cfg.stack_sample)),
                    desc="training subset", unit="block", threads=0,
                    cost=tensor.block_bins(header.blocks()))
    pieces = [p for p, _ in out if p is not None]
    if not pieces:
        raise PredictdError("the training subset is empty: raise training_fraction or check "
                            "training_regions and the tracks' chromosomes")
    # kept packed: unpacked a group at a time (at Roadmap scale 64 blocks would hold 0.5 GB)
    sums = {(it[1], it[2]): r for it, (_, r) in zip(items, out) if r is not None}
    return pieces, sums


STACK_GROUPS = 16


def stack_rows(seed: int, chrom_index: int, block: int, n: int, fraction: float) -> np.ndarray:
    """The bins of a block in the stacking sample (a ``fraction`` of them, seeded per block:
    the same in training and in a reference imputation)."""
    return np.random.default_rng([seed, 17, chrom_index, block]).random(n) < fraction


def sampled_blocks(group, root, exps, seed: int, fraction: float, chrom_index: dict):
    """(X, rows) of each block of ``group`` with bins in the stacking sample (:func:`stack_rows`):
    the block's columns ``exps`` of ``root`` and the sampled bins."""
    for chrom, block, start, n in group:
        rows = stack_rows(seed, chrom_index[chrom], block, n, fraction)
        if rows.any():
            yield tensor.read_columns(root, chrom, block, list(exps))[1], rows


def _stack_task(group, payload):
    """Sum the stacking layer's Gram statistics over a group of blocks (a random
    ``stack_sample`` of each block's bins, seeded per block)."""
    (root, exps, ec, ea, n_cell, n_assay, windows, frac, seed, chrom_index, similar,
     neighbours, hinges) = payload
    # one block's statistics at a time, summed as they come, sent packed: at Roadmap scale
    # with the hinges a cell type's Gram matrix is 577² numbers, and 16 groups reach the
    # driver
    stats = stacking.sum_stack_stats(
        stacking.stack_stats(X, ec, ea, n_cell, n_assay, windows, rows=rows, similar=similar,
                             neighbours=neighbours, hinges=hinges)
        for X, rows in sampled_blocks(group, root, exps, seed, frac, chrom_index))
    return None if stats is None else stacking.pack_stack_stats(stats)


def resemblance_task(group, payload):
    """Sum :func:`predictd.solvers.stacking.resemblance_sums` over a group of blocks' stacking
    samples (``exps`` of ``root``)."""
    root, exps, ea, frac, seed, chrom_index = payload
    parts = [stacking.resemblance_sums(X, ea, rows)
             for X, rows in sampled_blocks(group, root, exps, seed, frac, chrom_index)]
    return stacking.sum_resemblance_sums(parts) if parts else None


def stack_groups(blocks: list) -> list[list]:
    """The stacking sample's blocks in a fixed grouping (not the cluster's parallelism): sums
    over them, hence the weights, are then bit-identical in-process, in local mode and on any
    cluster."""
    n_groups = max(1, min(len(blocks), STACK_GROUPS))
    return [blocks[g::n_groups] for g in range(n_groups)]


def stack_blocks(blocks: list, limit: int) -> list:
    """The blocks whose sampled bins feed the stacking statistics: all of them, or ``limit``
    evenly spaced over the genome (in order). A block's statistics cost time per cell type
    (the similarity-weighted averages compare it with every other one), and 64 blocks × 2 % of
    262,144 bins still give each cell type's regression ~335,000 rows."""
    if len(blocks) <= limit:
        return list(blocks)
    pick = np.unique(np.linspace(0, len(blocks) - 1, limit).round().astype(int))
    return [blocks[i] for i in pick]


def uses_resemblance(cfg) -> bool:
    """Whether training measures the cell types' resemblance: its similarity-weighted
    averages weigh each pair's nearest cell types."""
    return bool(cfg.stack and cfg.stack_similarity() is not None
                and cfg.stack_similar_neighbours > 0)


def group_resemblance(groups: list[list], sums: dict, exp_assay) -> dict | None:
    """The stacking sample's :func:`predictd.solvers.stacking.resemblance_sums` from each
    block's (``sums``: packed by :func:`pack_resemblance`, by (chrom, block)), added as
    :func:`resemblance_task` adds them — per group of :func:`stack_groups`, then the groups in
    order — so the total is the same bits however the blocks' sums were computed. None when
    no block has sampled bins."""
    parts = []
    for group in groups:
        mine = [unpack_resemblance(sums[(c, b)], exp_assay) for c, b, _, _ in group
                if (c, b) in sums]
        if mine:
            parts.append(stacking.sum_resemblance_sums(mine))
    return stacking.sum_resemblance_sums(parts) if parts else None


def fit_stacking(sc, header: tensor.TensorHeader, root: str, experiments: list[str], cfg,
                 resemblance: dict | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Learn the cross-cell-type transfer regression on the training experiments only (so a
    held-out pair never trains its own weights). Returns the weights (n_cell × n_assay × D),
    the Gram statistics they were fitted from (n_cell × D × D), which a reference imputation
    fits new cell types' weights from, and each pair's nearest cell types for the
    similarity-weighted averages (None: every other cell type). ``resemblance``: the
    stacking sample's blocks' packed resemblance sums, by (chrom, block), when :func:`sample`
    drew them (:func:`uses_resemblance`); otherwise a Spark job of their own measures them."""
    ec, ea = header.indices(experiments)
    n_cell, n_assay = len(header.cell_types), len(header.assays)
    windows = cfg.stack_windows()
    blocks = stack_blocks(header.blocks(), cfg.stack_max_blocks)
    groups = stack_groups(blocks)
    chrom_index = {c: i for i, (c, _) in enumerate(header.genome["chroms"])}
    neighbours = None
    if uses_resemblance(cfg):
        if resemblance is not None:
            total = group_resemblance(groups, resemblance, ea)
        else:
            parts = [p for p in map_tasks(sc, resemblance_task, groups,
                                          (root, tuple(experiments), ea, cfg.stack_sample,
                                           cfg.seed, chrom_index),
                                          desc="cell type resemblance", unit="block group",
                                          threads=0, cost=tensor.block_bins(groups))
                     if p is not None]
            total = stacking.sum_resemblance_sums(parts) if parts else None
        if total is None:
            raise PredictdError("stacking: no bins sampled; raise stack_sample")
        neighbours = stacking.choose_neighbours(total, ec, ea, n_cell, n_assay,
                                                cfg.stack_similar_neighbours)
    parts = map_tasks(sc, _stack_task, groups,
                      (root, tuple(experiments), ec, ea, n_cell, n_assay, windows,
                       cfg.stack_sample, cfg.seed, chrom_index, cfg.stack_similarity(),
                       neighbours, cfg.stack_hinges),
                      desc="stacking statistics", unit="block group", threads=0,
                      cost=tensor.block_bins(groups))
    parts = [p for p in parts if p is not None]
    if not parts:
        raise PredictdError("stacking: no bins sampled; raise stack_sample")
    observed = np.zeros((n_cell, n_assay), dtype=bool)
    observed[ec, ea] = True
    stats = stacking.sum_stack_stats(parts)
    similar = cfg.stack_similarity() is not None
    # one small product per target: BLAS's own threads would only spin (at Roadmap scale the
    # blend took 16× the CPU time with two)
    with threadpool_limits(1, user_api="blas"):
        W = stacking.fit_stack(stats, observed, cfg.stack_ridge, windows, cfg.stack_per_cell,
                               similar)
        if cfg.stack_blend:
            W, alpha = stacking.blend_with_average(
                stats, observed, W, min(cfg.stack_blend_context, len(windows)), similar,
                hinges=cfg.stack_hinges)
    if cfg.stack_blend:
        ok = np.isfinite(alpha)
        per_cell = np.where(ok, alpha, 0.0).sum(axis=1) / np.maximum(ok.sum(axis=1), 1)
        log.info("stacking: blend with the average, mean alpha per cell type %s",
                 np.round(per_cell, 2))
    return W, stats["gram"], neighbours


def _residual_task(group, payload):
    """The uncertainty model's statistics (:func:`predictd.solvers.stacking.residual_stats`)
    over a group of blocks, on the bins of the stacking sample."""
    from .impute import no_signal
    (root, exps, ec, ea, n_assay, windows, frac, seed, chrom_index, similar, W, betas,
     neighbours) = payload
    parts = [stacking.residual_stats(X, ec, ea, n_assay, W, windows, rows=rows,
                                     similar=similar, keep=~no_signal(X[rows]), betas=betas,
                                     neighbours=neighbours)
             for X, rows in sampled_blocks(group, root, exps, seed, frac, chrom_index)]
    return stacking.sum_residual_stats(parts)


def fit_uncertainty(sc, header: tensor.TensorHeader, root: str, experiments: list[str], cfg,
                    W: np.ndarray, neighbours: np.ndarray | None = None) -> np.ndarray:
    """The stacked regression's predictive-variance model (``uncertainty``): two passes over
    the stacking sample, the residual moments of every training experiment, then their
    standardised errors' histograms for the calibration scale. Returns the scaled β of every
    target (n_cell × n_assay × m; :func:`predictd.solvers.stacking.fit_uncertainty`)."""
    ec, ea = header.indices(experiments)
    n_cell, n_assay = len(header.cell_types), len(header.assays)
    groups = stack_groups(stack_blocks(header.blocks(), cfg.stack_max_blocks))
    chrom_index = {c: i for i, (c, _) in enumerate(header.genome["chroms"])}
    observed = np.zeros((n_cell, n_assay), dtype=bool)
    observed[ec, ea] = True

    def pass_(betas, desc):
        common = (root, tuple(experiments), ec, ea, n_assay, cfg.stack_windows(),
                  cfg.stack_sample, cfg.seed, chrom_index, cfg.stack_similarity(), W, betas,
                  neighbours)
        parts = map_tasks(sc, _residual_task, groups, common, desc=desc, unit="block group",
                          threads=0, cost=tensor.block_bins(groups))
        return stacking.sum_residual_stats(parts)

    moments = pass_(None, "uncertainty: residuals")
    if moments is None:
        raise PredictdError("uncertainty: no bins sampled; raise stack_sample")
    betas = stacking.fit_uncertainty(moments, None, ec, ea, observed, leave_out=True)
    hist = pass_(betas, "uncertainty: calibration")
    return stacking.fit_uncertainty(moments, hist, ec, ea, observed)


def train(sc, header: tensor.TensorHeader, root: str, work: str, cfg, holdout: list[str],
          progress=None, timings: dict | None = None) -> tuple[Model, FitResult]:
    """Sample the training subset into ``work`` and fit the model. ``timings`` (a dict) gets
    each step's wall seconds: sample, fit (the factors), stacking, uncertainty."""
    clock = [time.perf_counter()]

    def lap(step):
        now = time.perf_counter()
        if timings is not None:
            timings[step] = round(now - clock[0], 3)
        clock[0] = now

    experiments = training_experiments(header, holdout)
    # the stacking sample's resemblance is measured as the training subset is drawn
    resemble = (stack_blocks(header.blocks(), cfg.stack_max_blocks) if uses_resemblance(cfg)
                else None)
    pieces, resemblance = sample(sc, header, root, work, experiments, cfg, resemble)
    lap("sample")
    n_shards = cfg.partitions or (2 * default_parallelism(sc) if sc is not None else 2)
    plan = shard_plan(pieces, n_shards)
    exps = tuple(experiments)
    exp_cell, exp_assay = header.indices(experiments)
    subset_mb = sum(n for _, n in pieces) * len(exps) * 4 / 2**20
    if sc is None or subset_mb <= cfg.driver_fit_max_mb:
        # small subsets train in the driver: on Spark every iteration is a job whose latency
        # (~0.1-0.3 s) would exceed the work; the shards and the sums are the same
        if sc is not None:
            log.info("training subset %.0f MB <= driver_fit_max_mb: fitting in the driver",
                     subset_mb)
        backend = LocalBackend(thread_map(lambda p: load_shard(p, exps), plan))
    else:
        backend = SparkBackend(sc, load_shard, [(p, exps) for p in plan])
    log.info("training on %d bins in %d shards (%s solver)", sum(n for _, n in pieces),
             len(plan), cfg.solver)
    res = fit(backend, exp_cell, exp_assay, len(header.cell_types), len(header.assays), cfg,
              progress=progress, log=log.info)
    lap("fit")
    f = res.factors
    model = Model(cell_types=list(header.cell_types), assays=list(header.assays), mu=f.mu,
                  bC=f.bC, bA=f.bA, C=f.C, A=f.A,
                  observed=[split_experiment(e) for e in experiments],
                  meta={"solver": cfg.solver, "best_iteration": res.best_iteration,
                        "best_valid_mse": res.best_valid_mse, "stopped": res.stopped,
                        "training_bins": res.n_bins, "training_entries": res.n_entries,
                        "shards": len(plan), "holdout": list(holdout),
                        "transform": header.transform, "bin_size": header.bin_size,
                        "ri2": cfg.ri2, "bias_penalty": cfg.bias_penalty})
    if cfg.stack:
        model.stack, model.stack_gram, model.stack_neighbours = fit_stacking(
            sc, header, root, experiments, cfg, resemblance if resemble is not None else None)
        model.stack_windows = cfg.stack_windows()
        model.stack_similar = cfg.stack_similarity()
        lap("stacking")
        if cfg.uncertainty:
            model.stack_variance = fit_uncertainty(sc, header, root, experiments, cfg,
                                                   model.stack, model.stack_neighbours)
            lap("uncertainty")
    return model, res
