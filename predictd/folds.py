"""Cross-validation folds over experiments and ensembles of fold models (docs/design.md §7).

``predictd run --folds T`` splits the observed experiments into T balanced test folds (every
cell type and assay keeps training data in every fold). For each fold it trains
``ensemble_size`` models (different seeds, hence different training subsets and starts) with
that fold held out, and solves their genome factors. Then:

* every observed track is imputed by the models that did not train on it (its own fold's
  models, averaged) — an honest, genome-wide imputation of every observed experiment;
* every never-observed pair is the average of all models;
* every observed track is scored three ways: one model (``model``), its fold's ensemble
  (``ensemble``) and the ``average`` baseline — so the report shows whether, and by how much,
  the ensemble beats single models.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from . import evaluate, layout, storage, tensor
from .errors import PredictdError
from .impute import ensemble_values, member_weights, solve_genome, write_tracks
from .solvers.baselines import average_baseline
from .names import split_experiment
from .progress import Progress

log = logging.getLogger("predictd.folds")
#: The vectors' entry of the ensemble's model-space standard deviation (with ``uncertainty``).
SD = "sd"


def make_folds(experiments: list[str], n_folds: int, seed: int) -> list[list[str]]:
    """Balanced test folds of experiments: folds differ in size by at most one, each spreads
    every cell type's and every assay's experiments over as many folds as it can, and removing
    any one fold leaves every cell type and assay with at least one training experiment.
    Deterministic for a seed; folds in order of their first experiment.

    >>> make_folds(["A.x", "A.y", "B.x", "B.y"], 2, seed=0)
    [['A.x', 'B.y'], ['A.y', 'B.x']]
    """
    exps = sorted(experiments)
    if n_folds < 2 or n_folds > len(exps):
        raise PredictdError(f"--folds {n_folds}: need 2 <= folds <= {len(exps)} (the number of "
                            "observed tracks)")
    # tagged, so that a cell type and an assay of the same name are not counted together
    cell = [("cell", split_experiment(e)[0]) for e in exps]
    assay = [("assay", split_experiment(e)[1]) for e in exps]
    rng = np.random.default_rng([seed, 4242])
    cap = -(-len(exps) // n_folds)
    total = Counter(cell + assay)
    # the most of one cell type's (assay's) experiments a fold needs to hold
    fair = {k: -(-n // n_folds) for k, n in total.items()}
    best, best_excess = None, None
    for _ in range(64):
        # deal the experiments in a random order, each to a fold with room that holds the
        # fewest of its cell type and assay (then the fewest experiments, then at random)
        folds: list[list[int]] = [[] for _ in range(n_folds)]
        held = [Counter() for _ in range(n_folds)]
        for i in rng.permutation(len(exps)):
            load = {f: (held[f][cell[i]] + held[f][assay[i]], len(folds[f]))
                    for f in range(n_folds) if len(folds[f]) < cap}
            low = min(load.values())
            pick = [f for f, v in load.items() if v == low]
            f = pick[rng.integers(len(pick))]
            folds[f].append(i)
            held[f].update((cell[i], assay[i]))
        # removing a fold must leave every cell type and assay some training experiment
        if any(h[k] == total[k] for h in held for k in h):
            continue
        excess = sum(max(0, n - fair[k]) for h in held for k, n in h.items())
        if best is None or excess < best_excess:
            best, best_excess = folds, excess
        if excess == 0:
            break
    if best is None:
        raise PredictdError(f"--folds {n_folds}: cannot split the tracks so that every cell "
                            "type and assay keeps training data in each fold; use fewer folds")
    return sorted(sorted(exps[j] for j in f) for f in best)


def run_folds(run, n_folds: int, ensemble_size: int) -> dict:
    """Train fold × member models on the shared tensor, write ensemble tracks, score every
    observed track. ``run`` is a claimed :class:`predictd.pipeline.Run` whose ingest is done;
    its ``fold_model(fold, member, holdout)`` gives each fold model's own run."""
    header = tensor.read_header(run.tensor_root)
    folds = make_folds(header.experiments, n_folds, run.cfg.seed)
    members = []   # (fold, member, gf_root, model)
    references = {}  # fold -> (gf_root, model) of the CP-ALS reference
    models = Progress("fold models", n_folds * ensemble_size, "model")
    for f, fold in enumerate(folds):
        for m in range(ensemble_size):
            sub = run.fold_model(f, m, fold)
            log.info("fold %d/%d, model %d/%d: holding out %s", f + 1, n_folds, m + 1,
                     ensemble_size, ", ".join(fold))
            sub.run_stage("train")
            model = sub.load_model()
            if sub.done("solve") is None:
                solve_genome(run.sc, header, run.tensor_root, sub.gf_root, model, run.cfg)
                sub.mark("solve", {})
            members.append((f, m, sub.gf_root, model))
            if m == 0 and run.cfg.cp_reference:
                references[f] = _reference(run, header, sub, fold)
            models.update()
    models.close()
    names = members[0][3].track_names()
    fold_of = {e: f for f, fold in enumerate(folds) for e in fold}
    use = {}
    for p, name in enumerate(names):
        if name in fold_of:
            use[p] = [i for i, mem in enumerate(members) if mem[0] == fold_of[name]]
    write_tracks(run.sc, header, run.out, None, members[0][3], run.cfg, public=run.public,
                 members=[(mem[2], mem[3]) for mem in members], use=use, root=run.tensor_root,
                 only=run.selected_tracks(members[0][3]), regions=run.selection.regions)
    layout.write_track_index(run.out, public=run.public, hash_local=False)
    vectors = collect(run.sc, header, run.tensor_root, members, folds, references,
                      run.cfg.uncertainty)
    masks, blacklist = evaluate.scoring_masks(header.genome, header.bin_size,
                                              run.cfg.score_blacklist)
    sds = {h: v.pop(SD) for h, v in vectors.items() if SD in v}
    calibration = []
    if sds:
        calibration = evaluate.calibration_rows(
            {h: (v["y"], v["ensemble"], sds[h]) for h, v in vectors.items()},
            header.transform, blacklist)
    rows = evaluate.score_methods(vectors, masks, blacklist)
    examples, errors = evaluate.example_regions(
        {h: (v["y"], v["ensemble"], v["average"]) for h, v in vectors.items()},
        header.genome["chroms"], header.bin_size)
    if calibration:
        evaluate.write_calibration(run.out, calibration, public=run.public)
    evaluate.write_report(run.out, rows, None, examples, public=run.public, errors=errors,
                          calibration=calibration)
    summary = summarize(rows)
    extra = {"calibration": calibration} if calibration else {}
    return {"folds": folds, "ensemble_size": ensemble_size, "metrics": rows, **summary,
            **extra}


def _reference(run, header, sub, fold) -> tuple[str, object]:
    """The plain rank-4 CP-ALS reference (biases, ridge 1.0 on C, A and G) fitted on a fold's
    training subset, with its genome factors solved (ridge 1.0) for scoring."""
    from .model import Model
    from .solvers.baselines import cp_als_baseline
    from .train import load_shard
    exps = [e for e in header.experiments if e not in set(fold)]
    pieces = tuple((storage.join(sub.work, key), 0, 1)
                   for key, _ in sorted(storage.list_prefix(sub.work)) if key.endswith(".parquet"))
    shard = load_shard(pieces, tuple(exps))
    X = np.concatenate([shard.X, shard.V])
    ec, ea = header.indices(exps)
    f = cp_als_baseline(X, ec, ea, len(header.cell_types), len(header.assays), rank=4,
                        ridge=1.0, seed=run.cfg.seed)
    model = Model(cell_types=list(header.cell_types), assays=list(header.assays), mu=f.mu,
                  bC=f.bC, bA=f.bA, C=f.C, A=f.A, observed=[split_experiment(e) for e in exps])
    gf_root = layout.reference_genome_factors_dir(sub.out)
    if sub.done("reference") is None:
        solve_genome(run.sc, header, run.tensor_root, gf_root, model,
                     run.cfg.replace(ri2=1.0, bias_penalty=0.0))
        sub.mark("reference", {})
    return gf_root, model


def _fold_eval_task(item, payload):
    chrom, block, start, n = item
    root, members, folds, exps, references, uncertainty = payload
    _, X = tensor.read_block(root, chrom, block, exps)
    ci = {e: i for i, e in enumerate(exps)}
    out = {}
    for f, fold in enumerate(folds):
        mine = [(gf, model) for (ff, _m, gf, model) in members if ff == f]
        model = mine[0][1]
        pairs = [(model.cell_types.index(c), model.assays.index(a))
                 for c, a in map(split_experiment, fold)]
        data = (exps, X)
        singles = ensemble_values(mine[:1], np.ones((1, len(pairs)), np.float32), chrom, block,
                                  pairs, data)
        W = member_weights(len(mine), list(range(len(pairs))), None)
        if uncertainty:
            ens, var = ensemble_values(mine, W, chrom, block, pairs, data, uncertainty=True)
        else:
            ens = ensemble_values(mine, W, chrom, block, pairs, data)
        ref = None
        if f in references:
            ref = ensemble_values([references[f]], np.ones((1, len(pairs)), np.float32), chrom,
                                  block, pairs, data)
        train = [e for e in exps if e not in set(fold)]
        cells, assays = zip(*map(split_experiment, train))
        exp_cell = np.array([model.cell_types.index(c) for c in cells], int)
        exp_assay = np.array([model.assays.index(a) for a in assays], int)
        base = average_baseline(X[:, [ci[e] for e in train]], exp_cell, exp_assay, pairs)
        for t, h in enumerate(fold):
            out[h] = {"y": X[:, ci[h]], "model": singles[:, t], "ensemble": ens[:, t],
                      "average": base[:, t], "var": evaluate.assay_variance_of(h, exps, X)}
            if ref is not None:
                out[h]["cp_als4"] = ref[:, t]
            if uncertainty:
                out[h][SD] = np.sqrt(var[:, t]).astype(np.float32)
    return out


def collect(sc, header, root, members, folds, references=None, uncertainty: bool = False
            ) -> dict[str, dict[str, np.ndarray]]:
    """Genome-wide vectors of every observed track: ``y``, each method's imputation (model
    space), ``var`` (msevar's weights) and, with ``uncertainty``, :data:`SD` (the ensemble's
    model-space standard deviation)."""
    from .spark import map_tasks
    exps = list(header.experiments)
    parts = map_tasks(sc, _fold_eval_task, header.blocks(),
                      (root, members, folds, exps, references or {}, uncertainty),
                      desc="evaluate folds", unit="block",
                      cost=tensor.block_bins(header.blocks()))
    return {h: {k: np.concatenate([p[h][k] for p in parts]) for k in parts[0][h]}
            for h in exps}


def summarize(rows: list[dict]) -> dict:
    """Mean MSE / Pearson per method, and the ensemble's gain over single models."""
    out = {}
    for method in ("model", "ensemble", "average", "cp_als4"):
        sel = [r for r in rows if r["method"] == method]
        if sel:
            out[f"{method}_mean_mse"] = float(np.mean([r["mse"] for r in sel]))
            out[f"{method}_mean_gwcorr"] = float(np.nanmean([r["gwcorr"] for r in sel]))
    if "model_mean_mse" in out and "ensemble_mean_mse" in out:
        out["ensemble_mse_reduction"] = 1.0 - out["ensemble_mean_mse"] / out["model_mean_mse"]
    return out

