"""Impute: closed-form genome factors for every block, then every (cell type, assay) track.

1. *solve* — one task per tensor block: with the broadcast C, A and biases, ``[G | bG]`` of the
   block is one GEMM per observed pattern (docs/design.md §5); written as Parquet under
   ``OUT/model/genome_factors/`` (bins × L+1 — far smaller than the tensor), so the tracks can
   be written without solving again.
2. *write* — tracks are split into groups, one task per group. A task streams the genome's
   blocks in order, computes its tracks' values as one GEMM per block
   (``G · (C_j ⊙ A_k)ᵀ + biases``), maps them back to the input's units, and feeds one open
   bigWig writer per track. Each finished file is published atomically (rename, or a multipart
   upload completed only when whole); a track already present is skipped on resume.
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import layout, storage, tensor
from .bigwig import BigWigWriter
from .errors import PredictdError
from .model import Model
from .names import experiment_name, split_experiment
from .solvers import stacking
from .solvers import uncertainty as unc
from .solvers.closed_form import projection, resolve_missing_rows
from .progress import within_item
from .spark import default_parallelism, map_tasks
from .transform import inverse

log = logging.getLogger("predictd.impute")


def gf_uri(gf_root: str, chrom: str, block: int) -> str:
    return storage.join(gf_root, f"chrom={chrom}", f"block={block:06d}.parquet")


def coarse_uri(gf_root: str, chrom: str, block: int) -> str:
    """Where the solve stores a block's coarse sums (:func:`write_coarse`): beside its genome
    factors, in their own directory."""
    return storage.join(gf_root, "coarse", f"chrom={chrom}", f"block={block:06d}.parquet")


def model_arrays(model: Model, experiments: list[str]):
    """Experiment loadings and biases of the model's observed experiments."""
    ci = {c: i for i, c in enumerate(model.cell_types)}
    ai = {a: i for i, a in enumerate(model.assays)}
    j = np.array([ci[split_experiment(e)[0]] for e in experiments])
    k = np.array([ai[split_experiment(e)[1]] for e in experiments])
    return model.experiment_features(j, k), model.experiment_bias(j, k)


# The all-observed product is computed as ``X Pᵀ`` (bins first) and transposed when the model
# has at most this many factors plus bias, as ``P Xᵀ`` above it. OpenBLAS's skinny-product
# kernels favour ``X Pᵀ`` (Haswell/Zen and SkylakeX alike, docs/performance.md), but numpy's
# transposed copy of an n × (L+1) result slows sharply as L+1 grows.
ROW_MAJOR_SOLVE_MAX_COLUMNS = 5


def solve_block(X: np.ndarray, model: Model, experiments: list[str], ridge: float,
                bias_ridge: float) -> np.ndarray:
    """[G | bG] (float32, n × L+1) for a block of observed data.

    Every bin is first solved as if all experiments were observed — one GEMM with the
    experiment biases folded in (``(X − b) Pᵀ = X Pᵀ − (P b)ᵀ`` saves a pass over the block),
    in the layout :data:`ROW_MAJOR_SOLVE_MAX_COLUMNS` picks. A missing (NaN) entry makes its
    bin's row of the product NaN, so the bins with missing entries are found from the small
    result, not by a second pass over the block, and only they are solved again per observed
    pattern. The result is the transposed view of an (L+1) × n array, so each factor's column
    is contiguous.
    """
    Z, b = model_arrays(model, experiments)
    P = projection(Z, ridge, bias_ridge)
    Pb = (P @ b).astype(np.float32)
    P = P.astype(np.float32)
    X = np.asarray(X, dtype=np.float32)
    if P.shape[0] <= ROW_MAJOR_SOLVE_MAX_COLUMNS:
        # the transposition and the bias term in one pass
        GBt = np.empty((P.shape[0], X.shape[0]), dtype=np.float32)
        np.subtract((X @ P.T).T, Pb[:, None], out=GBt)
    else:
        GBt = P @ X.T
        GBt -= Pb[:, None]
    resolve_missing_rows(GBt.T, X, Z, ridge, bias_ridge, offset=b.astype(np.float32))
    return GBt.T


def no_signal(X: np.ndarray) -> np.ndarray:
    """Bins (rows of a block, bins × experiments) where no observed experiment has signal:
    every entry is 0 or missing (NaN). Assembly gaps and unmappable regions look like this in
    every input; the model's intercepts and biases would otherwise paint a constant there, so
    such bins are imputed as 0 in every track (docs/design.md §5). Per bin and exact: one
    non-zero value in any input, however small, keeps the bin."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"no_signal: a block is bins × experiments, got shape {X.shape}")
    # NaN != 0 is True, so NaN is excluded explicitly; negative values count as signal
    return ~np.any((X != 0) & ~np.isnan(X), axis=1)


def impute_values(GB: np.ndarray, model: Model, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Model-space values of the given (cell type, assay) index pairs for a block (n × T).

    One GEMM with the track biases folded in as an extra factor (a column of ones beside
    ``[G | bG]``), computed with the long axis last (faster for these shapes) and
    returned as the transposed view: each track's column is contiguous, ready for a writer.
    """
    j = np.array([p[0] for p in pairs])
    k = np.array([p[1] for p in pairs])
    L = model.latent_factors
    n = GB.shape[0]
    Wt = np.empty((len(pairs), L + 2), dtype=np.float32)
    Wt[:, :L] = model.experiment_features(j, k)
    Wt[:, L] = 1.0
    Wt[:, L + 1] = model.experiment_bias(j, k)
    H = np.empty((L + 2, n), dtype=np.float32)
    H[:L + 1] = GB.T
    H[L + 1] = 1.0
    return (Wt @ H).T


SUM_COLUMN, COUNT_COLUMN = "stack_sum_", "stack_count_"
# 1 where no training experiment of the model has signal in the bin (:func:`no_signal`)
NO_SIGNAL_COLUMN = "no_signal_"
# The sums (2 columns per assay) are stored when the block has at least this many times as many
# columns: then they save a write task most of the block's columns (Roadmap: 48 against
# 1,014). On a small compendium (the 4 × 5 pilot: 10 against 20) reading the block whole is as
# cheap, and storing them would only slow the solve.
SUMS_MIN_RATIO = 4


def uses_sums(model: Model) -> bool:
    """Whether a model's stacked regression can be computed from stored per-assay sums and a
    few columns of the block: its target cell types' own, and with similarity-weighted
    averages those of their nearest cell types (weighing every other cell type needs every
    column)."""
    return model.stack is not None and (model.stack_similar is None
                                         or model.stack_neighbours is not None)


def stores_sums(model: Model) -> bool:
    """Whether the solve stores the block's per-assay sums with a model's genome factors."""
    return uses_sums(model) and len(model.observed) >= SUMS_MIN_RATIO * 2 * len(model.assays)


def stores_coarse(model: Model) -> bool:
    """Whether the solve stores the block's coarse sums of every training experiment with a
    model's genome factors: when its similarity-weighted averages weigh nearest cell types
    from stored per-assay sums. A write task then reads at full resolution only the columns
    the averages weigh, and takes the resemblance's coarse tracks from the stored sums
    (at Roadmap scale about 210 columns instead of 590 per cell type)."""
    return stores_sums(model) and model.stack_similar is not None


def coarse_step(model: Model) -> int:
    """Bins per cell of the grid a model's resemblance is measured on."""
    return stacking.similarity_step(model.stack_similar[0])


def coarse_cells(model: Model, n: int) -> int:
    """Cells of the grid a model's resemblance is measured on, in a block of ``n`` bins."""
    return -(-n // coarse_step(model))


def write_coarse(uri: str, names: list[str], sums: np.ndarray) -> None:
    """A block's :func:`predictd.solvers.stacking.coarse_sums` (experiments × cells,
    float32) as Parquet, one column per experiment: what every cell type's resemblance is
    measured on, computed once per block instead of once per write task."""
    cols = {e: pa.array(sums[i]) for i, e in enumerate(names)}
    buf = io.BytesIO()
    # LZ4: a write task reads hundreds of these columns per block, and zstd's decoding was
    # most of that read (0.043 s against 0.027 s for about 590 Roadmap columns)
    pq.write_table(pa.table(cols), buf, compression="lz4", use_dictionary=False)
    storage.write_bytes_atomic(uri, buf.getvalue())


def read_coarse(uri: str, names: list[str], cells: int | None = None
                ) -> tuple[list[str], np.ndarray] | None:
    """Those of ``names`` stored in a block's coarse sums (:func:`write_coarse`), as (their
    names, float32 experiments × cells); None when the block has none stored, or (with
    ``cells``) when they are not on a grid of that many cells (a reference solved with
    another :func:`predictd.solvers.stacking.similarity_step`: the columns are then read
    whole)."""
    if not storage.exists(uri):
        return None
    # read in place: only the asked columns' chunks (by byte ranges on object stores)
    with storage.open_random_access(uri) as fh:
        pf = pq.ParquetFile(fh)
        if cells is not None and pf.metadata.num_rows != cells:
            return None
        stored = set(pf.schema_arrow.names)
        have = [e for e in names if e in stored]
        t = pf.read(columns=have, use_threads=False)
    C = np.empty((len(have), t.num_rows), dtype=np.float32)
    for i, e in enumerate(have):
        C[i] = t.column(e).to_numpy()
    return have, C


def write_gf(uri: str, GB: np.ndarray, sums: tuple[np.ndarray, np.ndarray] | None = None,
             empty: np.ndarray | None = None, start_bin: int | None = None,
             bin_size: int | None = None) -> None:
    """A block's genome factors (columns g0…, bG) and, for a stacked model, the per-assay sums
    and counts of its observed values (``stack_sum_k``, ``stack_count_k`` for assay index k:
    what every cell type's averages are built from, so writing tracks does not read the whole
    tensor block again). The sums are float32 GEMM results and the counts small integers, so
    float32 holds both exactly. ``empty`` (bool per bin, :func:`no_signal` of the model's
    training experiments) is stored as ``no_signal_``. With ``start_bin`` and ``bin_size``
    the rows carry their coordinates first, as the tensor's do (``bin``, ``start`` in bp), so
    the factors can be read by position (pandas, duckdb)."""
    cols = ({} if start_bin is None
            else tensor.coordinate_columns(start_bin, GB.shape[0], bin_size))
    cols.update({f"g{l}": pa.array(GB[:, l]) for l in range(GB.shape[1] - 1)})
    cols["bG"] = pa.array(GB[:, -1])
    if sums is not None:
        tot, cnt = sums
        for k in range(tot.shape[1]):
            cols[f"{SUM_COLUMN}{k}"] = pa.array(tot[:, k].astype(np.float32))
        for k in range(cnt.shape[1]):
            cols[f"{COUNT_COLUMN}{k}"] = pa.array(cnt[:, k].astype(np.float32))
    if empty is not None:
        cols[NO_SIGNAL_COLUMN] = pa.array(np.asarray(empty, dtype=bool))
    buf = io.BytesIO()
    # no dictionary: factors are all distinct floats, and dictionary encoding only slows the
    # write; LZ4: every write task of the block reads the file again
    pq.write_table(pa.table(cols), buf, compression="lz4", use_dictionary=False,
                   column_encoding=tensor.COORDINATE_ENCODING if start_bin is not None
                   else None)
    storage.write_bytes_atomic(uri, buf.getvalue())


def read_gf_parts(uri: str, sums: bool = True
                  ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None, np.ndarray | None]:
    """``[G | bG]`` of a block (bins × L+1); when asked for and stored, the stacked model's
    per-assay sums and counts (float64, bins × assays each; None when the file has none); and
    the bins without signal in any training experiment (bool, None when not stored)."""
    pf = pq.ParquetFile(io.BytesIO(storage.read_bytes(uri)))
    names = pf.schema_arrow.names
    gcols = [c for c in names if not c.startswith((SUM_COLUMN, COUNT_COLUMN))
             and c != NO_SIGNAL_COLUMN and c not in tensor.COORDINATES]
    scols = [c for c in names if c.startswith(SUM_COLUMN)] if sums else []
    ccols = [c for c in names if c.startswith(COUNT_COLUMN)] if sums else []
    ecols = [NO_SIGNAL_COLUMN] if NO_SIGNAL_COLUMN in names else []
    t = pf.read(columns=gcols + scols + ccols + ecols, use_threads=False)
    # built transposed: one contiguous row per column, the layout impute_values wants
    GBt = np.empty((len(gcols), t.num_rows), dtype=np.float32)
    for i, c in enumerate(gcols):
        GBt[i] = t.column(c).to_numpy()
    empty = (t.column(NO_SIGNAL_COLUMN).to_numpy(zero_copy_only=False).astype(bool)
             if ecols else None)
    if not scols or len(scols) != len(ccols):
        return GBt.T, None, empty

    def stacked(cols, prefix):
        # built assay-major (contiguous rows), returned as bins × assays: the layout
        # stacking.BlockContext stacks them in
        order = sorted(cols, key=lambda c: int(c[len(prefix):]))
        At = np.empty((len(order), t.num_rows))
        for k, c in enumerate(order):
            At[k] = t.column(c).to_numpy()
        return At.T

    return GBt.T, (stacked(scols, SUM_COLUMN), stacked(ccols, COUNT_COLUMN)), empty


def read_gf(uri: str) -> np.ndarray:
    """``[G | bG]`` of a block (bins × L+1)."""
    return read_gf_parts(uri, sums=False)[0]


# --------------------------------------------------------------------------- tasks
def _solve_task(item, payload):
    chrom, block, start, n = item
    root, gf_root, model, experiments, ridge, bias_ridge, bin_size = payload
    uri = gf_uri(gf_root, chrom, block)
    if storage.exists(uri):
        return 0
    _, X = tensor.read_block(root, chrom, block, experiments)
    sums = None
    if stores_sums(model):
        # the stacked regression's averages over all training experiments, once per block
        sums = stacking.assay_sums(X, model.observed_indices()[2], len(model.assays))
    if stores_coarse(model):
        # written before the genome factors, whose file marks the block done
        write_coarse(coarse_uri(gf_root, chrom, block), experiments,
                     stacking.coarse_sums(np.asarray(X, dtype=np.float32).T,
                                          coarse_step(model)))
    write_gf(uri, solve_block(X, model, experiments, ridge, bias_ridge), sums, no_signal(X),
             start, bin_size)
    return 1


def member_weights(n_members: int, todo: list[int], use: dict | None) -> np.ndarray:
    """(members × tracks) averaging weights: each track averages the members ``use`` lists for
    it (all members when absent)."""
    W = np.zeros((n_members, len(todo)), dtype=np.float32)
    for t, p in enumerate(todo):
        idx = (use or {}).get(p) or range(n_members)
        W[list(idx), t] = 1.0 / len(idx)
    return W


def model_values(model: Model, GB: np.ndarray, pairs: list[tuple[int, int]],
                 block: tuple[list[str], np.ndarray] | None = None,
                 sums: tuple[np.ndarray, np.ndarray] | None = None,
                 empty: np.ndarray | None = None, sums_cover: int | None = None,
                 coarse: tuple[list[str], np.ndarray] | None = None) -> np.ndarray:
    """A model's values of ``pairs`` for a block: the factor model, with the stacked transfer
    regression on top when the model has one. That needs the block's observed data, ``block``
    = (experiment names, bins × experiments): every training experiment of the model, or —
    with the block's stored per-assay ``sums`` (:func:`read_gf_parts`) — only those
    :func:`needed_columns` lists. ``sums_cover``: the sums include only the first that many of
    the model's training experiments (a reference's, when the model extends it); the others
    are in ``block`` and added to them. ``empty`` marks the bins where no training experiment
    has signal (:func:`no_signal`): they are 0 in every track. When not given it is computed
    from ``block`` if that holds every training experiment. ``coarse``: the block's stored
    coarse sums (:func:`read_coarse`) of the experiments the resemblance reads; with them and
    the ``sums``, ``block`` need only hold the columns the similarity-weighted averages
    weigh (:func:`needed_columns` without ``resemblance``)."""
    if empty is None and block is not None:
        empty = block_no_signal(model, block)
    Y = _model_values(model, GB, pairs, block, sums, sums_cover, coarse)
    if empty is not None:
        Y[empty] = 0.0
    return Y


def block_no_signal(model: Model, block: tuple[list[str], np.ndarray]) -> np.ndarray | None:
    """:func:`no_signal` of the model's training experiments in ``block``; None when the block
    lacks some of them (only the target cell types' columns were read)."""
    names, X = block
    ci = {e: i for i, e in enumerate(names)}
    obs = [experiment_name(c, a) for c, a in model.observed]
    if any(e not in ci for e in obs):
        return None
    idx = [ci[e] for e in obs]
    return no_signal(X if idx == list(range(X.shape[1])) else X[:, idx])


def needed_columns(model: Model, pairs: list[tuple[int, int]],
                   sums_cover: int | None = None, resemblance: bool = True) -> list[str]:
    """The training experiments a block's stacked values of ``pairs`` read besides the stored
    per-assay sums: the target cell types' own columns, those their similarity-weighted
    averages weigh (:func:`predictd.solvers.stacking.similar_columns`; with
    ``resemblance``, also those whose coarse tracks their resemblance is measured on), and
    the experiments the sums do not cover."""
    cells = tuple(sorted({j for j, _ in pairs}))
    near = model.stack_neighbours
    # asked for several times per block with the same tracks: worked out once, keyed by
    # what the answer depends on
    key = (tuple(model.observed), model.stack_similar is not None,
           None if near is None else (near.shape, near.tobytes()), cells, sums_cover,
           resemblance)
    if key not in _NEEDED:
        obs, ec, ea = model.observed_indices()
        keep = np.isin(ec, cells)
        if model.stack_similar is not None:
            keep |= stacking.similar_columns(ec, ea, list(cells), near, resemblance)
        if sums_cover is not None:
            keep[sums_cover:] = True
        if len(_NEEDED) >= 64:
            _NEEDED.clear()
        _NEEDED[key] = [e for e, k in zip(obs, keep) if k]
    return list(_NEEDED[key])


#: :func:`needed_columns`' answers, by question
_NEEDED: dict = {}


def _model_values(model, GB, pairs, block, sums, sums_cover=None, coarse=None):
    Y = impute_values(GB, model, pairs)
    if model.stack is None:
        return Y
    names, X = block
    ci = {e: i for i, e in enumerate(names)}
    obs, ec, ea = model.observed_indices()
    context = None
    if sums is not None:
        tot, cnt = sums
        if sums_cover is not None and sums_cover < len(obs):
            # the experiments added since the sums were stored: their columns join the sums
            tot, cnt = tot.copy(), cnt.copy()
            for e in range(sums_cover, len(obs)):
                col = X[:, ci[obs[e]]]
                seen = ~np.isnan(col)
                tot[:, ea[e]] += np.where(seen, col, 0.0)
                cnt[:, ea[e]] += seen
        ea_all = ea
        # only the columns the targets need are read from the block; with stored coarse
        # sums, the resemblance's columns are not among them
        coarse = coarse if model.stack_similar is not None else None
        keep = set(needed_columns(model, pairs, resemblance=coarse is None))
        sel = np.array([e in keep for e in obs])
        obs = [e for e, k in zip(obs, sel) if k]
        ec, ea = ec[sel], ea[sel]
    idx = [ci[e] for e in obs]
    Xm = X if idx == list(range(X.shape[1])) else X[:, idx]
    if sums is not None:
        similarity = None if coarse is None else _coarse_inputs(model, pairs, X, ci, Xm,
                                                                 coarse)
        context = stacking.BlockContext(None, ea_all, len(model.assays), model.stack_windows,
                                        sums=(tot, cnt), similarity=similarity)
    # Y as impute_values returns it, track-major: predict_pairs starts from its transpose
    return stacking.predict_pairs(Xm, ec, ea, model.stack, pairs, Y,
                                  model.stack_windows, context=context,
                                  similar=model.stack_similar,
                                  neighbours=model.stack_neighbours)


def _coarse_inputs(model: Model, pairs, X: np.ndarray, ci: dict, Xm: np.ndarray,
                   coarse: tuple[list[str], np.ndarray]) -> stacking.SimilarityInputs:
    """The block's :class:`predictd.solvers.stacking.SimilarityInputs` for ``pairs`` from
    stored coarse sums: the experiments the resemblance reads (:func:`needed_columns`), the
    sums of those not stored (added since, so in the block: X, columns ``ci``) computed from
    the block, and Xm — the columns the averages weigh, in the model's order — at full
    resolution."""
    obs, ec, ea = model.observed_indices()
    rel = set(needed_columns(model, pairs))
    full = set(needed_columns(model, pairs, resemblance=False))
    pick = np.array([e in rel for e in obs])
    names = [e for e, k in zip(obs, pick) if k]
    step = coarse_step(model)
    stored, C = coarse
    row = {e: i for i, e in enumerate(stored)}
    S = np.empty((len(names), coarse_cells(model, X.shape[0])), dtype=np.float32)
    for i, e in enumerate(names):
        S[i] = C[row[e]] if e in row else stacking.coarse_sums(
            np.asarray(X[:, ci[e]], dtype=np.float32)[None, :], step)[0]
    return stacking.SimilarityInputs(
        np.asarray(Xm, dtype=np.float32).T, ea[pick], model.stack_similar[0], sums=S,
        full=[i for i, e in enumerate(names) if e in full], exp_cell=ec[pick])


def model_variance(model: Model, Y: np.ndarray, pairs: list[tuple[int, int]],
                   block: tuple[list[str], np.ndarray],
                   empty: np.ndarray | None = None) -> np.ndarray:
    """Model-space predictive variance (n × T, float64) of ``pairs`` whose values (from
    :func:`model_values`) are Y, from the model's uncertainty model
    (:mod:`predictd.solvers.uncertainty`). ``block`` = (names, bins × experiments) must hold
    every training experiment of the model: each target's quantities include the mean and
    variance of its assay over the other cell types. 0 at the bins of ``empty``."""
    if model.stack_variance is None:
        raise PredictdError("the model has no uncertainty model: train it with --uncertainty")
    names, X = block
    ci = {e: i for i, e in enumerate(names)}
    obs, ec, ea = model.observed_indices()
    if any(e not in ci for e in obs):
        raise ValueError("model_variance needs every training experiment of the block")
    col = {(j, k): ci[e] for j, k, e in zip(ec, ea, obs)}
    Xm = np.asarray(X[:, [ci[e] for e in obs]], dtype=np.float64)
    tot, cnt = stacking.assay_sums(Xm, ea, len(model.assays))
    tot2, _ = stacking.assay_sums(np.square(Xm), ea, len(model.assays))
    out = np.empty((Y.shape[0], len(pairs)))
    for t, (j, k) in enumerate(pairs):   # one vectorised pass per track
        beta = model.stack_variance[j, k]
        if not np.isfinite(beta).all():
            name = experiment_name(model.cell_types[j], model.assays[k])
            raise PredictdError(f"no uncertainty model for {name} (too few sampled bins of "
                                "its assay; raise stack_sample)")
        own = (np.asarray(X[:, col[(j, k)]], dtype=np.float64) if (j, k) in col
               else np.full(Y.shape[0], np.nan))
        mean, var = unc.other_cell_moments(tot[:, k], tot2[:, k], cnt[:, k], own)
        out[:, t] = unc.predictive_variance(unc.variance_features(Y[:, t], mean, var), beta)
    if empty is not None:
        out[empty] = 0.0
    return out


def needs_block(members: list[tuple[str, Model]]) -> bool:
    return any(m.stack is not None for _, m in members)


def ensemble_values(members: list[tuple[str, Model]], W: np.ndarray, chrom: str, block: int,
                    pairs: list[tuple[int, int]],
                    data: tuple[list[str], np.ndarray] | None = None,
                    factors: list | None = None, sums_cover: int | None = None,
                    uncertainty: bool = False, coarse: list | None = None):
    """Model-space values of ``pairs`` for a block, averaged over ensemble members with the
    weights W (members × pairs). A single model is the one-member case. ``data`` is the
    block's observed tensor (names, values), needed by stacked models; ``factors`` the
    members' :func:`read_gf_parts` of the block when already read, ``coarse`` their
    :func:`read_coarse` (None per member without; see :func:`model_values`).

    With ``uncertainty``, returns (values, variance): each member's predictive variance
    (:func:`model_variance`; ``data`` must then hold every training experiment) and, across
    members, the spread of their values — the mixture's variance ``Σ w (σ²_m + ŷ_m²) − ŷ²``."""
    Y = None
    V = None
    for m, (gf_root, model) in enumerate(members):
        if not W[m].any():
            continue
        GB, sums, empty = factors[m] if factors is not None else read_gf_parts(
            gf_uri(gf_root, chrom, block), sums=uses_sums(model))
        # each member is zero where its own training experiments have no signal
        Ym = model_values(model, GB, pairs, data, sums, empty, sums_cover,
                          coarse[m] if coarse is not None else None)
        if uncertainty:
            if empty is None:
                empty = block_no_signal(model, data)
            Vm = model_variance(model, Ym, pairs, data, empty)
            Vm += np.square(Ym, dtype=np.float64)
            Vm *= W[m][None, :]
            V = Vm if V is None else V + Vm
        if len(members) > 1:
            Ym = Ym * W[m][None, :]
        Y = Ym if Y is None else Y + Ym
    if not uncertainty:
        return Y
    return Y, np.maximum(V - np.square(Y, dtype=np.float64), 0.0)


def _write_task(group, payload):
    (out, root, exps, members, use, blocks, chroms, bin_size, transform, check, public,
     sums_cover, regions, uncertainty) = payload
    model = members[0][1]
    names = model.track_names()
    # (track, uncertainty?) files still to write: a resumed run writes only the missing ones
    files = [(p, False) for p in group if not storage.exists(layout.track_file(out, names[p]))]
    if uncertainty:
        files += [(p, True) for p in group
                  if not storage.exists(layout.uncertainty_file(out, names[p]))]
    if not files:
        return []
    todo = sorted({p for p, _ in files})
    pairs = [(p // len(model.assays), p % len(model.assays)) for p in todo]
    col = {p: t for t, p in enumerate(todo)}
    W = member_weights(len(members), todo, use)
    writers = []
    with storage.staged(layout.tracks_dir(out), public=public, in_place=True) as staging:
        try:
            for p, sd in files:
                dest = os.path.join(staging, layout.uncertainty_file_name(names[p]) if sd
                                    else layout.track_file_name(names[p]))
                writers.append(BigWigWriter(dest, chroms, bin_size).open())
            for chrom, block, start, n in within_item(blocks):
                mask = None if regions is None else regions.block_mask(chrom, start, n,
                                                                       bin_size)
                if mask is not None and not mask.any():
                    continue  # outside the regions: nothing computed, no data in the tracks
                if uncertainty:
                    Ym, V = block_values(root, exps, members, W, chrom, block, pairs,
                                         sums_cover, uncertainty=True)
                    S = unc.output_sd(Ym, np.sqrt(V), transform)
                    Y = inverse(Ym, transform)
                else:
                    Y = inverse(block_values(root, exps, members, W, chrom, block, pairs,
                                             sums_cover), transform)
                if check and not np.isfinite(Y).all():
                    raise PredictdError(f"imputed values for block {chrom}:{block} are not "
                                        "finite (diverged model?)")
                if uncertainty and check and not np.isfinite(S).all():
                    raise PredictdError(f"uncertainty for block {chrom}:{block} is not "
                                        "finite (diverged model?)")
                for lo, hi in _runs(mask, n):
                    for (p, sd), w in zip(files, writers):
                        w.add_block(chrom, start + lo, (S if sd else Y)[lo:hi, col[p]])
            for w in writers:
                w.close()
        except BaseException:
            for w in writers:
                w.abort()
            raise
    return [names[p] for p in todo]


def _runs(mask: np.ndarray | None, n: int) -> list[tuple[int, int]]:
    """[lo, hi) runs of consecutive True bins of a mask (the whole block without one)."""
    if mask is None:
        return [(0, n)]
    edges = np.flatnonzero(np.diff(np.concatenate([[False], mask, [False]]).astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def block_values(root, exps: list[str], members: list[tuple[str, Model]], W: np.ndarray,
                 chrom: str, block: int, pairs: list[tuple[int, int]],
                 sums_cover: int | None = None, uncertainty: bool = False):
    """Model-space values of ``pairs`` for one block, as the write task computes them: the
    members' genome factors, and for stacked models the block's observed data (``root`` a
    tensor root or :class:`predictd.tensor.TensorUnion`, ``exps`` its experiments).
    ``sums_cover``: the per-assay sums stored with the genome factors include only the first
    that many of the model's training experiments (a reference's, when the model extends it).
    ``uncertainty`` returns (values, model-space variance) (:func:`ensemble_values`); the
    block is then read whole."""
    # the members this task's tracks average (a fold's tracks use its own models)
    factors = [read_gf_parts(gf_uri(r, chrom, block), sums=uses_sums(m))
               if W[i].any() else None for i, (r, m) in enumerate(members)]
    data = coarse = None
    if needs_block(members):
        # with the stored per-assay sums, only the columns the targets need are read (at
        # Roadmap scale a few hundred of a thousand); the uncertainty's spread across cell
        # types needs every column
        whole = uncertainty or any(f is not None and m.stack is not None and f[1] is None
                                   for (_, m), f in zip(members, factors))
        cols = exps
        if not whole:
            # with stored coarse sums, the resemblance's columns are not read whole
            coarse = [read_coarse(coarse_uri(r, chrom, block), needed_columns(m, pairs),
                                  coarse_cells(m, f[0].shape[0]))
                      if f is not None and stores_coarse(m) else None
                      for (r, m), f in zip(members, factors)]
            need = {e for (_, m), f, c in zip(members, factors, coarse) if f is not None
                    for e in needed_columns(m, pairs, sums_cover, resemblance=c is None)}
            cols = [e for e in exps if e in need]
        data = (cols, tensor.read_columns(root, chrom, block, cols)[1])
    return ensemble_values(members, W, chrom, block, pairs, data, factors, sums_cover,
                           uncertainty, coarse)


# --------------------------------------------------------------------------- the stage
def solve_genome(sc, header: tensor.TensorHeader, root: str, gf_root: str, model: Model, cfg
                 ) -> None:
    experiments = [experiment_name(c, a) for c, a in model.observed]
    missing = [e for e in experiments if e not in header.experiments]
    if missing:
        raise PredictdError(f"model was trained on {missing[0]}, which the tensor at {root} "
                            "does not have")
    map_tasks(sc, _solve_task, header.blocks(),
              (root, gf_root, model, experiments, cfg.ri2, cfg.bias_penalty, header.bin_size),
              desc="solve genome factors", unit="block", cost=tensor.block_bins(header.blocks()))


def track_groups(tracks, n_tasks: int) -> list[list[int]]:
    """The write's tasks: ``tracks`` (indices, cell-type-major) cut into at most ``n_tasks``
    contiguous runs. A stacked model builds each cell type's features once per block, so a
    task should see as few cell types as possible."""
    tracks = np.asarray(tracks)
    n = max(1, min(tracks.size, n_tasks))
    return [list(map(int, g)) for g in np.array_split(tracks, n) if g.size]


def write_tracks(sc, header: tensor.TensorHeader, out: str, gf_root: str, model: Model, cfg,
                 public: bool = False, members: list[tuple[str, Model]] | None = None,
                 use: dict | None = None, root=None, only: list[int] | None = None,
                 regions=None, sums_cover: int | None = None, by_cell_type: bool = False
                 ) -> list[str]:
    """Write every (cell type, assay) track; ``public`` makes S3 uploads public-read.
    ``only`` restricts the run to these track indices (cell-type-major, as
    :meth:`Model.track_names`); ``regions`` (:class:`predictd.selection.Regions`) to those
    bins (the tracks have no data elsewhere). ``by_cell_type`` writes each cell type's tracks
    in one task (their values are then exactly those :func:`block_values` gives for the same
    tracks).

    With ``members`` (an ensemble of (genome-factor root, model)), each track is the average of
    the members ``use[track index]`` names (default: all). ``root`` is the tensor, read again
    per block by stacked models (or a :class:`predictd.tensor.TensorUnion`); ``sums_cover``:
    see :func:`block_values`."""
    members = members or [(gf_root, model)]
    if needs_block(members) and root is None:
        raise ValueError("write_tracks: a stacked model needs the tensor root")
    tracks = np.arange(len(model.cell_types) * len(model.assays))
    if only is not None:
        tracks = tracks[np.isin(tracks, only)]
    if by_cell_type:
        cells = tracks // len(model.assays)
        groups = [list(map(int, tracks[cells == c])) for c in np.unique(cells)]
    else:
        groups = track_groups(tracks, cfg.write_parallelism or (
            default_parallelism(sc) if sc is not None else 1))
    chroms = [tuple(c) for c in header.genome["chroms"]]
    done = map_tasks(sc, _write_task, groups,
                     (out, root, list(header.experiments), members, use, header.blocks(),
                      chroms, header.bin_size,
                      header.transform, cfg.output_dtype_check, public, sums_cover,
                      regions, cfg.uncertainty),
                     desc="write tracks", unit="track group")
    return [n for d in done for n in d]
