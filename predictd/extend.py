"""Reference imputation: impute new cell types against a finished run without retraining it
(docs/design.md §11).

A *reference* REF is the OUT of a finished ``predictd run``; it is only ever read. New cell
types (a manifest NEW of tracks on REF's assays) are imputed in four stages under their own OUT:

1. *ingest* — NEW's tracks are checked and binned on REF's genome, bin size, transform and
   block layout (:mod:`predictd.ingest`) into ``OUT/tensor``.
2. *fit* — with REF's model frozen (A, bA, μ, the genome factors [G | bG] and REF's observed
   tracks), each new cell type gets ``[C_j; bC_j]`` in closed form
   (:mod:`predictd.solvers.reference`) and, for a stacked REF, its transfer-regression weights,
   learned from the stacking statistics REF's training saved (``model/stack_stats.npz``: the
   weights of REF's own cell types came from them) and the new cell type's own statistics over
   the same sampled bins, solved as training solves them (:func:`predictd.train.fit_stacking`'s
   pieces). A REF saved without them has its cell types' statistics recomputed with the new
   cell type among them. Saved as ``OUT/model`` (a model of the new cell types on REF's
   assays).
3. *impute* — ``OUT/tracks/{cell}.{assay}.imputed.bw`` for every (new cell type, REF assay)
   pair not observed in NEW (or the chosen assays), optionally only inside ``regions``.
4. *evaluate* — held-out NEW tracks are scored as ``predictd run`` scores them.

Each new cell type is imputed against REF alone: its tracks do not depend on which other new
cell types share NEW. Everything is summed in a fixed order, so the same REF and NEW give the
same bits in process, under local Spark and on a cluster.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field

import numpy as np

from . import config as config_mod
from . import layout, pipeline, storage, tensor
from .errors import PredictdError
from .impute import block_values, gf_uri, read_gf, write_tracks
from .model import Model
from .names import experiment_name, listed, split_experiment
from .selection import Regions, read_regions
from .solvers import reference as ref_solver
from .solvers import stacking
from .spark import map_tasks
from .train import resemblance_task, stack_blocks, stack_groups, stack_rows
from .transform import inverse

log = logging.getLogger("predictd.extend")

STAGES = ("ingest", "fit", "impute", "evaluate")
#: REF's saved stacking statistics stand for its cell types' only from this many cell types
#: on. They were computed without the new cell type, which every REF cell type's averages
#: over the others would include in a retrain: a share of 1/(n − 1) of their sources, which
#: is negligible at Roadmap scale (127) but not with a handful, where recomputing them is
#: cheap anyway (the cost grows with REF's cell types).
SAVED_STATS_MIN_CELL_TYPES = 16
#: Keys REF fixes: the grid its tensor and genome factors are on, its factors' size, and how
#: many nearest cell types its similarity-weighted averages weigh.
FIXED_KEYS = ("bin_size", "block_bins", "transform", "latent_factors",
              "stack_similar_neighbours")


# --------------------------------------------------------------------------- the reference
@dataclass
class Reference:
    """A finished run opened read-only: its model, tensor header and config."""

    uri: str
    model: Model
    header: tensor.TensorHeader
    cfg: config_mod.Config
    model_sha256: str
    # the stacking statistics REF was fitted from (None: its run did not save them, and a
    # new cell type's weights then need REF's cell types' statistics recomputed)
    stack_gram: np.ndarray | None = None

    def __repr__(self) -> str:  # its arrays would fill a notebook cell
        return (f"Reference({storage.display_uri(self.uri)!r}: {len(self.model.cell_types)} "
                f"cell types x {len(self.model.assays)} assays, "
                f"{len(self.model.observed)} observed tracks)")

    @property
    def tensor_root(self) -> str:
        return layout.tensor_dir(self.uri)

    @property
    def gf_root(self) -> str:
        return layout.genome_factors_dir(self.uri)

    @property
    def experiments(self) -> list[str]:
        """REF's training experiments (its held-out tracks are never used)."""
        return [experiment_name(c, a) for c, a in self.model.observed]

    def config(self, overrides: dict | None = None) -> config_mod.Config:
        """REF's config with ``overrides``; a key REF fixes may only repeat REF's value."""
        overrides = dict(overrides or {})
        checked = config_mod.from_dict(overrides, source="config")  # unknown keys, types
        for k in FIXED_KEYS:
            if k in overrides and getattr(checked, k) != getattr(self.cfg, k):
                raise PredictdError(f"config key {k!r}: fixed by the reference "
                                    f"{storage.display_uri(self.uri)} ({getattr(self.cfg, k)!r})")
        return self.cfg.replace(**{k: getattr(checked, k) for k in overrides})

    def extend(self, manifest, assays=(), regions: str | None = None, holdout=(),
               workdir: str | None = None, sc=None, progress: bool = True,
               **config) -> "Extension":
        """Fit new cell types against this reference (Python API).

        ``manifest`` is a manifest path or URI, or ``{(cell_type, assay): bigWig uri}``;
        ``assays`` and ``holdout`` a name or a list of them. ``workdir`` keeps NEW's tensor
        and fitted model (default: a temporary directory, removed with the
        :class:`Extension`); ``sc`` a SparkContext or a master URL (default: in this
        process); ``config`` overrides config keys. Returns an :class:`Extension`."""
        temporary = workdir is None
        workdir = (tempfile.mkdtemp(prefix="predictd-extend-") if temporary
                   else _local_absolute(workdir))
        try:
            labels = None
            if isinstance(manifest, dict):
                manifest, labels = _manifest_from_dict(manifest, workdir)
            if isinstance(sc, str):
                from .spark import get_context
                sc = get_context(sc)
            run = open_extension(self, manifest, workdir, self.config(config),
                                 holdout=listed(holdout, "holdout"),
                                 assays=listed(assays, "assays"), regions=regions, sc=sc,
                                 progress=progress, labels=labels)
            extend_all(run, stages=("ingest", "fit"))
            ext = Extension(run)
        except BaseException:
            if temporary:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        if temporary:
            # NEW's tensor and model live as long as the Extension that reads them
            weakref.finalize(ext, shutil.rmtree, workdir, True)
        return ext


def _manifest_from_dict(tracks: dict, directory: str) -> tuple[str, dict]:
    """A manifest written under ``directory`` from ``{(cell_type, assay): uri}``, and the
    label naming each of its rows in messages (the dict's key, not a row of a file the user
    never saw)."""
    from .manifest import Track, write_manifest
    from .names import check_cell_type, check_name
    rows, labels = [], {}
    for key, uri in tracks.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str)
                                                                  for k in key)):
            raise PredictdError(f"extend: key {key!r}: expected (cell_type, assay), two strings")
        where = f"extend: track {key!r}: "
        check_cell_type(key[0], "cell_type", where)
        check_name(key[1], "assay", where)
        if not isinstance(uri, (str, os.PathLike)) or not str(uri):
            raise PredictdError(f"{where}expected a bigWig path or URI, got {uri!r}")
        uri = str(uri)
        if not storage.is_remote(uri):
            uri = _local_absolute(uri)
        rows.append(Track(key[0], key[1], uri))
        labels[len(rows) + 1] = f"extend: track {key!r}"  # row 1 is the header
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "manifest.tsv")
    write_manifest(rows, path)
    return path, labels


def _local_absolute(uri) -> str:
    """A local path or ``file://`` URI as an absolute path (``~`` expanded), so that it names
    the same place after the working directory changes; other URIs unchanged."""
    uri = os.fspath(uri)
    if storage.is_remote(uri):
        return uri
    return os.path.abspath(storage.parse_uri(uri)[1])


def open_reference(uri: str) -> Reference:
    """Open the OUT of a finished ``predictd run`` (local or remote) read-only, checking that
    it is finished and that its model files are the ones its run saved."""
    uri = _local_absolute(uri)
    shown = storage.display_uri(uri)
    if not storage.exists(layout.model_file(uri)):
        raise PredictdError(f"reference {shown}: no model (model/model.json missing): not the "
                            "output of a finished `predictd run`")
    if not storage.exists(layout.marker_file(uri, "impute")):
        raise PredictdError(f"reference {shown}: unfinished run (its impute stage has not "
                            "completed, so its genome factors are incomplete)")
    model = pipeline.load_model(uri)  # checks the factors against model.json's checksum
    mark = json.loads(storage.read_text(layout.marker_file(uri, "train"))) \
        if storage.exists(layout.marker_file(uri, "train")) else {}
    sha = pipeline.model_checksum(uri)
    if mark.get("model_sha256") not in (None, sha):
        raise PredictdError(f"reference {shown}: model files altered (model/model.json does "
                            "not match the checksum its run recorded)")
    header = tensor.read_header(layout.tensor_dir(uri))
    if "config" not in model.meta:
        raise PredictdError(f"reference {shown}: its model records no config")
    cfg = config_mod.from_dict(model.meta["config"], source=f"reference {shown} config")
    return Reference(uri=uri, model=model, header=header, cfg=cfg, model_sha256=sha,
                     stack_gram=pipeline.load_stack_gram(uri, model))


# --------------------------------------------------------------------------- the new model
def extended_model(ref: Model, new: Model, cell: str) -> Model:
    """REF's model with one new cell type appended (the last cell type), as the imputation of
    that cell type's tracks uses it: REF's factors and training experiments, the new cell
    type's factors, bias, training experiments and stacking weights."""
    j = new.cell_types.index(cell)
    stack = None
    if new.stack is not None:
        # REF's own weights are never used here (only the new cell type's targets are
        # imputed), and the new ones may have other features: NaN rows for REF
        stack = np.full((len(ref.cell_types) + 1, *new.stack.shape[1:]), np.nan)
        stack[-1] = new.stack[j]
    variance = None
    if new.stack_variance is not None:
        variance = np.full((len(ref.cell_types) + 1, *new.stack_variance.shape[1:]), np.nan)
        variance[-1] = new.stack_variance[j]
    return Model(cell_types=[*ref.cell_types, cell], assays=list(ref.assays), mu=ref.mu,
                 bC=np.append(ref.bC, new.bC[j]), bA=ref.bA,
                 C=np.vstack([ref.C, new.C[j:j + 1]]), A=ref.A,
                 observed=[*ref.observed, *[p for p in new.observed if p[0] == cell]],
                 meta=dict(ref.meta), stack=stack, stack_windows=new.stack_windows,
                 stack_similar=new.stack_similar,
                 stack_neighbours=None if new.stack_neighbours is None else np.concatenate(
                     [ref.stack_neighbours, new.stack_neighbours[j:j + 1]]),
                 stack_variance=variance)


def _fit_task(group, payload):
    """Per new cell type, the sums of its factor regression and the stacking statistics of
    REF's cell types and it, over a group of blocks (the training and stacking samples drawn
    as in training)."""
    (union, ref_exps, gf_root, ref, cells, cfg, fraction, chrom_index, stored,
     neighbours) = payload
    n_ref = len(ref.cell_types)
    aidx = {a: i for i, a in enumerate(ref.assays)}
    _, ec_ref, ea_ref = ref.observed_indices()
    windows, similar = cfg.stack_windows(), cfg.stack_similarity()
    out = {cell: {"sums": [], "stats": []} for cell, _ in cells}
    for chrom, block, start, n in group:
        cols = list(ref_exps) + [e for _, exps in cells for e in exps]
        _, X = tensor.read_columns(union, chrom, block, cols)
        GB = read_gf(gf_uri(gf_root, chrom, block))
        ci = chrom_index[chrom]
        # the training bins (train._sample_task's first draw) and the stacking sample
        train_rows = np.random.default_rng([cfg.seed, ci, block]).random(n) < fraction
        sample = stack_rows(cfg.seed, ci, block, n, cfg.stack_sample)
        off = len(ref_exps)
        for cell, exps in cells:
            mine = list(range(off, off + len(exps)))
            off += len(exps)
            assays = np.array([aidx[split_experiment(e)[1]] for e in exps], dtype=int)
            if train_rows.any():
                out[cell]["sums"].append(ref_solver.cell_type_sums(
                    GB[train_rows], X[train_rows][:, mine], ref.A, ref.bA, ref.mu, assays))
            if cfg.stack and sample.any():
                Xc = X[:, list(range(len(ref_exps))) + mine]
                ec = np.concatenate([ec_ref, np.full(len(exps), n_ref)])
                ea = np.concatenate([ea_ref, assays])
                near = None if neighbours is None else \
                    with_new_cell(neighbours[0], neighbours[1][cell], assays,
                                  others=not stored)
                gram = stacking.stack_stats(
                    Xc, ec, ea, n_ref + 1, len(ref.assays), windows, rows=sample,
                    similar=similar, cells=[n_ref] if stored else None, neighbours=near,
                    hinges=cfg.stack_hinges)["gram"]
                # with REF's statistics stored, only the new cell type's are computed: the
                # others' (zeros) are not kept (a copy: the slice would hold them all)
                out[cell]["stats"].append({"gram": gram[n_ref:].copy() if stored else gram})
    return {cell: {"sums": ref_solver.sum_cell_type_sums(v["sums"]) if v["sums"] else None,
                   "stats": stacking.pack_stack_stats(stacking.sum_stack_stats(v["stats"]))
                   if v["stats"] else None}
            for cell, v in out.items()}


def with_new_cell(ref_near: np.ndarray, new_near: np.ndarray, new_assays, others: bool
                  ) -> np.ndarray:
    """The neighbours of REF's cell types and a new one (its row last: n_ref + 1 × n_assay ×
    K). With ``others``, as a retrain would choose them for REF's cell types' statistics: the
    new cell type joins each REF cell type's neighbours of the assays it observes
    (``new_assays``) wherever they hold every candidate (fewer than K); a full list keeps
    REF's choice."""
    near = np.concatenate([ref_near, np.asarray(new_near)[None]])
    if not others:
        return near
    n_ref = ref_near.shape[0]
    for a in np.unique(new_assays):
        rows = near[:n_ref, a]
        room = (rows < 0).any(axis=1)
        # the first free slot, then back to ascending cell type order (−1 last)
        slot = np.argmax(rows < 0, axis=1)
        rows[room, slot[room]] = n_ref
        rows[room] = np.sort(np.where(rows[room] < 0, np.iinfo(np.int64).max, rows[room]),
                             axis=1)
        rows[rows == np.iinfo(np.int64).max] = -1
    return near


def new_neighbours(sc, ref: Reference, union: tensor.TensorUnion,
                   cells: list[tuple[str, list[str]]], cfg, groups, chrom_index) -> dict:
    """Each new cell type's nearest REF cell types per assay (n_assay × K, as
    :func:`predictd.solvers.stacking.choose_neighbours` chooses REF's own), from its tracks'
    correlation with REF's over the stacking sample."""
    model = ref.model
    K = model.stack_neighbours.shape[2]
    aidx = {a: i for i, a in enumerate(model.assays)}
    cidx = {c: i for i, c in enumerate(model.cell_types)}
    theirs = {split_experiment(e)[1] for _, exps in cells for e in exps}
    ref_cols = [e for e in ref.experiments if split_experiment(e)[1] in theirs]
    cols = ref_cols + [e for _, exps in cells for e in exps]
    ea = np.array([aidx[split_experiment(e)[1]] for e in cols])
    parts = [p for p in map_tasks(sc, resemblance_task, groups,
                                  (union, cols, ea, cfg.stack_sample, cfg.seed, chrom_index),
                                  desc="cell type resemblance", unit="block group",
                                  threads=0, cost=tensor.block_bins(groups))
             if p is not None]
    if not parts:
        raise PredictdError("stacking: no bins sampled; raise stack_sample")
    sums = stacking.sum_resemblance_sums(parts)
    n_ref = len(model.cell_types)
    out = {}
    for cell, exps in cells:
        idx = list(range(len(ref_cols))) + [cols.index(e) for e in exps]
        sub = {"n": sums["n"], "sum": sums["sum"][idx], "sumsq": sums["sumsq"][idx],
               "cross": sums["cross"][np.ix_(idx, idx)]}
        ec = np.array([cidx[split_experiment(e)[0]] for e in ref_cols] + [n_ref] * len(exps))
        # candidates: every REF cell type observing the assay (the sums cover only the new
        # cell type's assays, which the resemblance is measured on)
        near = stacking.choose_neighbours(sub, ec, ea[idx], n_ref + 1, len(model.assays), K,
                                          cells=[n_ref], observed=model.observed_matrix(1))
        out[cell] = near[n_ref]
    return out


def _stats_match(ref: Reference, cfg) -> bool:
    """Whether REF's saved stacking statistics are those ``cfg``'s stacked regression needs:
    the same features (context windows, similarity-weighted averages) over the same sampled
    bins."""
    keys = ("stack_window_short", "stack_window_long", "stack_window_wide", "stack_similar",
            "stack_similar_tau", "stack_similar_neighbours", "stack_hinges", "stack_sample",
            "stack_max_blocks", "seed")
    return ref.stack_gram is not None and all(getattr(cfg, k) == getattr(ref.cfg, k)
                                              for k in keys)
def _cell_design(ref: Model, exps: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(cell type, assay) indices of REF's training experiments followed by a new cell type's
    ``exps`` (index len(REF's cell types)): the columns of its stacking statistics."""
    aidx = {a: i for i, a in enumerate(ref.assays)}
    _, ec, ea = ref.observed_indices()
    return (np.concatenate([ec, np.full(len(exps), len(ref.cell_types), dtype=int)]),
            np.concatenate([ea, [aidx[split_experiment(e)[1]] for e in exps]]).astype(int))


def _residual_task(group, payload):
    """Per new cell type, the uncertainty model's statistics
    (:func:`predictd.solvers.stacking.residual_stats`) of REF's experiments and its own, with
    its fitted weights, on the stacking sample of a group of blocks."""
    from .impute import no_signal
    union, ref_exps, ref, cells, cfg, chrom_index, fitted, near = payload
    out = {cell: [] for cell, _ in cells}
    for chrom, block, start, n in group:
        cols = list(ref_exps) + [e for _, exps in cells for e in exps]
        _, X = tensor.read_columns(union, chrom, block, cols)
        rows = stack_rows(cfg.seed, chrom_index[chrom], block, n, cfg.stack_sample)
        if not rows.any():
            continue
        off = len(ref_exps)
        for cell, exps in cells:
            mine = list(range(off, off + len(exps)))
            off += len(exps)
            Xc = X[:, list(range(len(ref_exps))) + mine]
            ec, ea = _cell_design(ref, exps)
            W, betas = fitted[cell]
            out[cell].append(stacking.residual_stats(
                Xc, ec, ea, len(ref.assays), W, cfg.stack_windows(), rows=rows,
                similar=cfg.stack_similarity(), keep=~no_signal(Xc[rows]), betas=betas,
                neighbours=None if near is None else near[cell]))
    return {cell: stacking.sum_residual_stats(v) for cell, v in out.items()}


def fit_new_uncertainty(sc, ref: Reference, union: tensor.TensorUnion,
                        cells: list[tuple[str, list[str]]], cfg, weights: dict,
                        observed: dict, neighbours: dict | None = None) -> dict:
    """Each new cell type's uncertainty model (``uncertainty``), as
    :func:`predictd.train.fit_uncertainty` fits a run's: the honest residuals of REF's
    experiments and the new cell type's own under the weights fitted with it (``weights[cell]``,
    all cell types' rows), then the calibration histograms. Returns {cell: its targets' scaled
    β (n_assay × m)}."""
    groups = stack_groups(stack_blocks(ref.header.blocks(), cfg.stack_max_blocks))
    chrom_index = {c: i for i, (c, _) in enumerate(ref.header.genome["chroms"])}

    def pass_(betas, desc):
        fitted = {cell: (weights[cell], betas[cell] if betas else None) for cell, _ in cells}
        parts = map_tasks(sc, _residual_task, groups,
                          (union, tuple(ref.experiments), ref.model, cells, cfg, chrom_index,
                           fitted, neighbours), desc=desc, unit="block group", threads=0,
                          cost=tensor.block_bins(groups))
        return {cell: stacking.sum_residual_stats([p[cell] for p in parts])
                for cell, _ in cells}

    moments = pass_(None, "uncertainty: residuals")
    betas = {}
    for cell, exps in cells:
        if moments[cell] is None:
            raise PredictdError("uncertainty: no bins sampled; raise stack_sample")
        ec, ea = _cell_design(ref.model, exps)
        betas[cell] = stacking.fit_uncertainty(moments[cell], None, ec, ea, observed[cell],
                                               leave_out=True)
    hist = pass_(betas, "uncertainty: calibration")
    n_ref = len(ref.model.cell_types)
    return {cell: stacking.fit_uncertainty(moments[cell], hist[cell],
                                           *_cell_design(ref.model, exps),
                                           observed[cell])[n_ref]
            for cell, exps in cells}


def fit_new_cell_types(sc, ref: Reference, union: tensor.TensorUnion,
                       cells: list[tuple[str, list[str]]], cfg) -> Model:
    """The new cell types' factors, biases and stacking weights against the frozen REF
    (``cells`` = [(cell type, its training experiments), ...]); a :class:`Model` of the new
    cell types on REF's assays."""
    model = ref.model
    blocks = stack_blocks(ref.header.blocks(), cfg.stack_max_blocks)
    # a fixed grouping: the sums, hence the factors, are the same bits on any master
    groups = stack_groups(blocks)
    total = ref.header.genome_obj.total_bins(ref.header.bin_size)
    fraction = min(cfg.training_fraction, cfg.max_training_bins / max(total, 1))
    chrom_index = {c: i for i, (c, _) in enumerate(ref.header.genome["chroms"])}
    # REF's cell types' statistics as REF's training computed them, when it saved them: the
    # new cell type's weights are learned from them and its own (for the blend), so only its
    # own are computed here
    stored = ref.stack_gram if cfg.stack and _stats_match(ref, cfg) and \
        len(model.cell_types) >= SAVED_STATS_MIN_CELL_TYPES else None
    near = None
    if cfg.stack and model.stack_neighbours is not None:
        near = (model.stack_neighbours,
                new_neighbours(sc, ref, union, cells, cfg, groups, chrom_index))
    parts = map_tasks(sc, _fit_task, groups,
                      (union, tuple(ref.experiments), ref.gf_root, model, cells, cfg, fraction,
                       chrom_index, stored is not None, near), threads=0,
                      cost=tensor.block_bins(groups))
    n_ref = len(model.cell_types)
    aidx = {a: i for i, a in enumerate(model.assays)}
    L = model.latent_factors
    lam_c = cfg.rc / (L * (n_ref + 1))
    C, bC, rows, observed = [], [], [], []
    fitted_weights, fitted_observed = {}, {}
    for cell, exps in cells:
        sums = ref_solver.sum_cell_type_sums([p[cell]["sums"] for p in parts
                                              if p[cell]["sums"] is not None])
        if sums is None or sums["n"] == 0:
            raise PredictdError(f"cell type {cell}: no observed value in the sampled bins; "
                                "raise training_fraction")
        c, b = ref_solver.solve_cell_type(sums, lam_c, cfg.bias_penalty)
        C.append(c)
        bC.append(b)
        observed += [split_experiment(e) for e in exps]
        if cfg.stack:
            stats = stacking.sum_stack_stats([p[cell]["stats"] for p in parts
                                              if p[cell]["stats"] is not None])
            if stats is None:
                raise PredictdError("stacking: no bins sampled; raise stack_sample")
            if stored is not None:
                stats = {"gram": np.concatenate([stored, stats["gram"]])}
            obs = model.observed_matrix(1)
            for e in exps:
                obs[n_ref, aidx[split_experiment(e)[1]]] = True
            windows, similar = cfg.stack_windows(), cfg.stack_similarity() is not None
            # the uncertainty model needs every cell type's weights (its residuals are REF's
            # tracks' too); otherwise only the new cell type's
            targets = None if cfg.uncertainty else [n_ref]
            W = stacking.fit_stack(stats, obs, cfg.stack_ridge, windows, cfg.stack_per_cell,
                                   similar, cells=targets)
            if cfg.stack_blend:
                W, _ = stacking.blend_with_average(
                    stats, obs, W, min(cfg.stack_blend_context, len(windows)), similar,
                    cells=targets, hinges=cfg.stack_hinges)
            rows.append(W[n_ref])
            fitted_weights[cell], fitted_observed[cell] = W, obs
    new = Model(cell_types=[c for c, _ in cells], assays=list(model.assays), mu=model.mu,
                bC=np.array(bC), bA=model.bA, C=np.array(C).reshape(len(cells), L), A=model.A,
                observed=observed,
                meta={"reference": storage.display_uri(ref.uri),
                      "reference_model_sha256": ref.model_sha256,
                      "transform": ref.header.transform, "bin_size": ref.header.bin_size})
    if cfg.stack:
        new.stack = np.array(rows)
        new.stack_windows = cfg.stack_windows()
        new.stack_similar = cfg.stack_similarity()
        if near is not None:
            new.stack_neighbours = np.array([near[1][c] for c, _ in cells])
        if cfg.uncertainty:
            var = fit_new_uncertainty(
                sc, ref, union, cells, cfg, fitted_weights, fitted_observed,
                None if near is None else {
                    c: with_new_cell(near[0], near[1][c],
                                     [aidx[split_experiment(e)[1]] for e in exps],
                                     others=stored is None)
                    for c, exps in cells})
            new.stack_variance = np.array([var[cell] for cell, _ in cells])
    return new


# --------------------------------------------------------------------------- the run
@dataclass
class ExtendRun(pipeline.Run):
    """``predictd extend``: NEW's tensor, model, tracks and report under OUT, REF only read.

    The stages run through :class:`predictd.pipeline.Run`'s machinery (claim, markers,
    resume, run.json); ingest is the ordinary one on REF's genome and grid."""

    ref: Reference | None = None
    assays: list[str] = field(default_factory=list)   # empty: every assay not observed
    regions: Regions | None = None
    stage_names = STAGES

    def identity(self) -> dict:
        # the reference by its model's checksum, not by the URI it was given as; --assay
        # chooses tracks, not the run (the impute stage writes those OUT lacks)
        return {**super().identity(), "reference_model": self.ref.model_sha256,
                "regions": None if self.regions is None else self.regions.to_json()}

    def stored_identity(self) -> dict | None:
        old = super().stored_identity()
        if old is not None:
            # identities that named the reference by its URI as given, and held --assay
            old.pop("reference", None)
            old.pop("assays", None)
        return old

    def wanted_tracks(self) -> list[str]:
        """The tracks this extension writes: each new cell type's :meth:`targets`."""
        return [experiment_name(c, a) for c, _ in self.new_cells() for a in self.targets(c)]

    def check_inputs(self) -> None:
        super().check_inputs()
        if self.checked is None:
            return  # a resume with the ingest complete
        sizes = self.genome.sizes
        for t, info in zip(self.tracks, self.checked):
            for c, n in info["chroms"].items():
                if c in sizes and n != sizes[c]:
                    raise PredictdError(
                        f"{storage.display_uri(t.uri)} (manifest row {t.row}): chromosome {c} "
                        f"of {n} bp, the reference's genome {self.genome.name} has {sizes[c]} "
                        "bp (other chrom sizes than the reference)")

    # ------------------------------------------------------------------ pieces
    def new_cells(self) -> list[tuple[str, list[str]]]:
        """[(new cell type, its training experiments)], in name order."""
        cells = sorted({t.cell_type for t in self.tracks})
        return [(c, [t.name for t in self.tracks
                     if t.cell_type == c and t.name not in self.holdout]) for c in cells]

    def union(self) -> tensor.TensorUnion:
        return tensor.TensorUnion(((self.ref.tensor_root, tuple(self.ref.experiments)),
                                   (self.tensor_root, tuple(t.name for t in self.tracks))))

    def targets(self, cell: str) -> list[str]:
        """The assays imputed for a new cell type: the chosen ones, or every REF assay it has
        no training track of."""
        if self.assays:
            return [a for a in self.ref.model.assays if a in self.assays]
        have = {split_experiment(e)[1] for c, exps in self.new_cells() if c == cell
                for e in exps}
        return [a for a in self.ref.model.assays if a not in have]

    def cell_parts(self, new: Model, cell: str):
        """(extended model, tensor header of its experiments, target track indices)."""
        ext = extended_model(self.ref.model, new, cell)
        exps = [experiment_name(c, a) for c, a in ext.observed]
        exps += [h for h in self.holdout if split_experiment(h)[0] == cell]
        header = dataclasses.replace(self.ref.header, experiments=exps)
        j = len(ext.cell_types) - 1
        idx = [j * len(ext.assays) + ext.assays.index(a) for a in self.targets(cell)]
        return ext, header, idx

    def write_tracks_to(self, out: str, new: Model | None = None) -> list[str]:
        """Write every new cell type's target tracks under ``out`` (then its track index)."""
        new = new or self.load_model()
        written = []
        for cell in new.cell_types:
            ext, header, idx = self.cell_parts(new, cell)
            if not idx:
                continue
            written += write_tracks(self.sc, header, out, self.ref.gf_root, ext, self.cfg,
                                    public=self.public, root=self.union(), only=idx,
                                    regions=self.regions,
                                    sums_cover=len(self.ref.model.observed),
                                    by_cell_type=True)
        layout.write_track_index(out, public=self.public, hash_local=False)
        return written

    # ------------------------------------------------------------------ stages
    def _fit(self) -> dict:
        new = fit_new_cell_types(self.sc, self.ref, self.union(), self.new_cells(), self.cfg)
        self.save_model(new)
        return {"cell_types": new.cell_types, "model_sha256": pipeline.model_checksum(self.out)}

    def _impute(self) -> dict:
        selected = self.selected_so_far(self.wanted_tracks())
        written = self.write_tracks_to(self.out)
        return {"written": len(written),
                "tracks": sum(len(self.targets(c)) for c, _ in self.new_cells()),
                "selected": selected}

    def _evaluate(self) -> dict:
        from . import evaluate
        if not self.holdout:
            return {"tracks": 0}
        new = self.load_model()
        vec = {}
        for cell in new.cell_types:
            mine = [h for h in self.holdout if split_experiment(h)[0] == cell]
            if mine:
                ext, header, _ = self.cell_parts(new, cell)
                vec.update(evaluate.collect(self.sc, header, self.union(), self.ref.gf_root,
                                            ext, mine, self.cfg.uncertainty))
        from .annotations import genome_region_masks
        masks = genome_region_masks(self.ref.header.genome, self.ref.header.bin_size)
        rows = evaluate.score(vec, masks)
        examples, errors = evaluate.example_regions(vec, self.ref.header.genome["chroms"],
                                                    self.ref.header.bin_size)
        calibration = evaluate.holdout_calibration(self.out, vec, self.ref.header.transform,
                                                   public=self.public)
        evaluate.write_report(self.out, rows, None, examples, public=self.public,
                              errors=errors, calibration=calibration)
        extra = {"calibration": calibration} if calibration else {}
        return {"tracks": len(self.holdout), "metrics": rows, **extra}

    def run_doc(self) -> dict:
        doc = super().run_doc()
        doc["reference"] = {"uri": storage.display_uri(self.ref.uri),
                            "model_sha256": self.ref.model_sha256}
        doc["assays"] = self.assays
        doc["regions"] = None if self.regions is None else self.regions.to_json()
        return doc


def open_extension(ref: Reference, manifest: str, out: str, cfg, holdout=(), assays=(),
                   regions: str | None = None, sc=None, public: bool = False,
                   progress: bool = True, labels: dict | None = None) -> ExtendRun:
    """Validate NEW against REF before anything is written (one line naming the culprit;
    ``labels`` names manifest rows by what the user gave, see :func:`_manifest_from_dict`)."""
    refuse_inside(ref, out, "--out")
    storage.check_output_prefix(out)
    tracks, msum = pipeline.load_tracks(manifest)
    model = ref.model
    for t in tracks:
        where = (labels or {}).get(t.row) or f"{manifest}, row {t.row}"
        if t.cell_type in model.cell_types:
            raise PredictdError(f"{where}: cell type {t.cell_type} is already in the reference")
        if t.assay not in model.assays:
            raise PredictdError(f"{where}: assay {t.assay} is unknown to the reference "
                                f"(its assays: {', '.join(model.assays)})")
    for a in assays or ():
        if a not in model.assays:
            raise PredictdError(f"--assay {a}: not an assay of the reference "
                                f"({', '.join(model.assays)})")
    hold = pipeline.parse_holdout(holdout)
    names = {t.name for t in tracks}
    for h in hold:
        if h not in names:
            raise PredictdError(f"--holdout {':'.join(split_experiment(h))}: not a track of "
                                f"the manifest {manifest}")
    for c in sorted({t.cell_type for t in tracks}):
        if all(t.name in hold for t in tracks if t.cell_type == c):
            raise PredictdError(f"cell type {c} has no track left after --holdout")
    reg = read_regions(regions, ref.header.genome["chroms"]) if regions else None
    return ExtendRun(out=out, cfg=cfg, tracks=tracks, genome=ref.header.genome_obj,
                     holdout=hold, manifest_uri=manifest, manifest_sum=msum, sc=sc,
                     public=public, progress=progress, ref=ref, assays=list(assays or ()),
                     regions=reg)


def _place(uri: str) -> str:
    uri = str(uri)
    return uri.rstrip("/") if storage.is_remote(uri) else os.path.realpath(
        storage.parse_uri(uri)[1])


def refuse_inside(ref: Reference, out: str, what: str) -> None:
    """REF is only read: refuse an output place at or under it."""
    if _place(out) == _place(ref.uri) or _place(out).startswith(_place(ref.uri) + "/"):
        raise PredictdError(f"{what} {out}: inside the reference, which is only read; "
                            "use a place of its own")


def extend_all(r: ExtendRun, overwrite: bool = False, stages=STAGES) -> dict:
    """Run the extension's stages under its OUT (resumable, as :func:`pipeline.run_all`)."""
    r.claim(overwrite, dry_run=True)
    r.check_inputs()
    r.claim(overwrite)
    r.sweep_temp_files()
    r.write_run_json()
    results = {s: r.run_stage(s) for s in stages}
    r.publish()
    return results


# --------------------------------------------------------------------------- Python API
class Extension:
    """New cell types fitted against a reference (:meth:`Reference.extend`)."""

    def __init__(self, run: ExtendRun):
        self.run = run
        self.model = run.load_model()

    def __repr__(self) -> str:
        return (f"Extension(cell types {', '.join(self.model.cell_types)} against "
                f"{storage.display_uri(self.run.ref.uri)!r})")

    @property
    def cell_types(self) -> list[str]:
        return list(self.model.cell_types)

    def impute(self, cell_type: str, assay: str, chrom: str, start: int, end: int
               ) -> np.ndarray:
        """Imputed values of one track over ``[start, end)`` bp of ``chrom``: float32, in the
        input's units, one value per bin (bins overlapping the interval). Reads only the
        genome-factor and tensor blocks the interval overlaps; the values are those
        :meth:`write` writes to the track."""
        run, h = self.run, self.run.ref.header
        if cell_type not in self.model.cell_types:
            raise PredictdError(f"impute: {cell_type} is not a new cell type of this extension "
                                f"({', '.join(self.model.cell_types)})")
        if assay not in self.model.assays:
            raise PredictdError(f"impute: assay {assay} is unknown to the reference")
        sizes = dict(h.genome_obj.sizes)
        if chrom not in sizes:
            raise PredictdError(f"impute: chromosome {chrom} is not in the genome")
        if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool)
                   for x in (start, end)):
            raise PredictdError(f"impute: start and end are bp positions (integers), got "
                                f"{start!r} and {end!r}")
        if start == end:
            raise PredictdError(f"impute: [{start}, {end}) is an empty interval")
        if not 0 <= start < end <= sizes[chrom]:
            raise PredictdError(f"impute: [{start}, {end}) is not inside {chrom} "
                                f"(0-{sizes[chrom]})")
        ext, header, idx = run.cell_parts(self.model, cell_type)
        A = len(ext.assays)
        # the cell type's tracks as a write task computes them (same tracks, same products)
        todo = idx if assay in run.targets(cell_type) else [
            (len(ext.cell_types) - 1) * A + ext.assays.index(assay)]
        pairs = [(p // A, p % A) for p in todo]
        t = todo.index((len(ext.cell_types) - 1) * A + ext.assays.index(assay))
        b0, b1 = start // h.bin_size, -(-end // h.bin_size)
        W = np.ones((1, len(todo)), dtype=np.float32)
        parts = []
        for c, block, first, n in h.blocks():
            if c != chrom or first + n <= b0 or first >= b1:
                continue
            Y = block_values(run.union(), list(header.experiments), [(run.ref.gf_root, ext)],
                             W, c, block, pairs,
                             sums_cover=len(self.run.ref.model.observed))
            Y = inverse(Y, h.transform)
            parts.append(Y[max(b0 - first, 0):min(b1 - first, n), t])
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    def evaluate(self) -> list[dict]:
        """Score the held-out tracks (``extend(..., holdout=...)``) as ``predictd extend
        --holdout`` does: one row per track and method (``model``, ``average``) with the
        columns of ``metrics.tsv`` (``pandas.DataFrame(rows)`` makes the table). The report
        (and, with ``uncertainty=True``, ``calibration.tsv``) is written under the work
        directory's ``report/``; a second call reads the first's scores."""
        if not self.run.holdout:
            raise PredictdError("evaluate: no held-out track to score; give extend(..., "
                                "holdout=['CELL:ASSAY'])")
        # the run was claimed and its inputs checked when extend() fitted it
        return list(self.run.run_stage("evaluate")["metrics"])

    def write(self, out: str) -> list[str]:
        """Write the imputed tracks under ``out`` (``out/tracks/…``, as ``predictd extend``);
        returns the names written. Tracks already there from this same extension are kept
        (a second call writes nothing); ``out`` holding another run or extension, or inside
        the reference, is refused."""
        out = _local_absolute(out)
        refuse_inside(self.run.ref, out, "write:")
        dataclasses.replace(self.run, out=out).claim()
        return self.run.write_tracks_to(out, self.model)
