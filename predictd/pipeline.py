"""The whole run: ingest → train → impute → evaluate, resumable, with ``run.json``.

The run writes under its output prefix OUT as :mod:`predictd.layout` describes. Every stage
writes a completion marker last; a re-run skips completed stages, and inside a stage skips
completed blocks and tracks. A different manifest, genome, config or hold-out set on an
existing OUT is refused (``overwrite=True`` clears it first) — runs are never mixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from . import __version__, layout, storage, tensor
from .config import Config
from .errors import PredictdError
from .genome import Genome, load_genome
from .manifest import Track, manifest_checksum, read_manifest
from .model import MODEL_JSON, MODEL_NPZ, STACK_STATS_NPZ, Model, stack_gram_from_bytes
from .names import experiment_name, split_experiment
from .progress import shown as progress_shown, training_progress
from .selection import Selection, open_selection, parse_pairs

log = logging.getLogger("predictd")

STAGES = ("ingest", "train", "impute", "evaluate")


def parse_holdout(values) -> list[str]:
    """``CELL:ASSAY`` (or ``CELL.ASSAY``) → experiment names, validated."""
    return [experiment_name(c, a) for c, a in parse_pairs(values, "--holdout")]


def load_tracks(manifest: str) -> tuple[list[Track], str]:
    """Read a manifest from a local path or a remote URI (fetched to scratch first)."""
    if storage.is_remote(manifest):
        from .ingest import scratch_dir
        local = storage.fetch_to_local(manifest, scratch_dir())
        base = manifest.rsplit("/", 1)[0]
        tracks = read_manifest(local, base=base)
    else:
        tracks = read_manifest(manifest)
    return tracks, manifest_checksum(tracks)


def versions() -> dict:
    out = {"predictd": __version__, "python": platform.python_version()}
    for mod in ("numpy", "scipy", "pyspark", "pyarrow", "pyBigWig", "boto3"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "unknown")
        except Exception:  # noqa: BLE001 - a missing optional module is just not reported
            out[mod] = None
    return out


@dataclass
class Run:
    """One output prefix and everything needed to (re)run its stages."""

    out: str
    cfg: Config
    tracks: list[Track]
    genome: Genome
    holdout: list[str] = field(default_factory=list)
    manifest_uri: str = ""
    manifest_sum: str = ""
    sc: object = None
    public: bool = False
    progress: bool = True
    tensor_at: str | None = None  # fold models share their parent run's tensor
    checked: list | None = field(default=None, repr=False)  # check_tracks' infos, once run
    selection: Selection = field(default_factory=Selection)  # what the write stage produces
    #: the stages run.json reports (a class attribute, not a field)
    stage_names = (*STAGES, "folds")

    # ------------------------------------------------------------------ paths
    @property
    def tensor_root(self) -> str:
        return self.tensor_at or layout.tensor_dir(self.out)

    @property
    def model_dir(self) -> str:
        return layout.model_dir(self.out)

    @property
    def gf_root(self) -> str:
        return layout.genome_factors_dir(self.out)

    @property
    def work(self) -> str:
        return layout.training_subset_dir(self.out)

    def fold_model(self, fold: int, member: int, holdout: list[str]) -> "Run":
        """The run of model ``member`` of fold ``fold`` (``--folds``): its own OUT under this
        one's, ``holdout`` held out, the seed offset by ``member``, this run's tensor."""
        return Run(out=layout.fold_model_dir(self.out, fold, member),
                   cfg=self.cfg.replace(seed=self.cfg.seed + member), tracks=self.tracks,
                   genome=self.genome, holdout=holdout, manifest_uri=self.manifest_uri,
                   manifest_sum=self.manifest_sum, sc=self.sc, progress=self.progress,
                   tensor_at=self.tensor_root)

    def identity(self) -> dict:
        """What makes OUT this run: the same identity resumes it, a different one is refused.
        Contents only (the genome's chromosomes, checksums), not how paths were spelled, so a
        run resumes from another working directory or after OUT was moved."""
        ident = {"manifest": self.manifest_sum, "genome": genome_identity(self.genome.to_json()),
                 "config": self.cfg.checksum(), "holdout": sorted(self.holdout)}
        # --regions changes what a track holds, so it is part of the run; which tracks are
        # written is not (the impute stage writes those it has not, see run_stage)
        if self.selection.regions is not None:
            ident["regions"] = self.selection.regions.to_json()
        return ident

    def stored_identity(self) -> dict | None:
        """OUT's recorded identity in :meth:`identity`'s terms, or None."""
        uri = layout.identity_file(self.out)
        if not storage.exists(uri):
            return None
        old = json.loads(storage.read_text(uri))
        if "genome" in old:  # identities that named the genome by the path as given
            old["genome"] = genome_identity(old["genome"])
        legacy = old.pop("selection", None)  # identities that held the whole selection
        if legacy and legacy.get("regions") is not None:
            old["regions"] = legacy["regions"]
        return old

    def selected_tracks(self, model: Model) -> list[int] | None:
        """Indices of the tracks the write stage produces (None: every pair)."""
        return self.selection.track_indices(model.cell_types, model.assays)

    # ------------------------------------------------------------------ guard
    def claim(self, overwrite: bool = False, folds: int = 0, dry_run: bool = False) -> None:
        """Refuse an OUT that holds a different run; record this run's identity.

        ``dry_run`` only refuses: nothing is cleared or written (used before the inputs are
        checked, so a bad input leaves OUT untouched)."""
        uri = layout.identity_file(self.out)
        ident = self.identity()
        if folds:
            ident["folds"] = folds
        old = self.stored_identity()
        if old is not None:
            if old != ident:
                if not overwrite:
                    what = [k for k in sorted(set(ident) | set(old))
                            if old.get(k) != ident.get(k)]
                    raise PredictdError(
                        f"{self.out} holds a different run ({', '.join(what)} changed); "
                        "use another --out or --overwrite to replace it")
                if not dry_run:
                    self.clear()
        elif storage.exists(layout.run_file(self.out)) or \
                storage.exists(layout.tracks_dir(self.out)):
            if not overwrite:
                raise PredictdError(f"{self.out} holds outputs not made by this run; use another "
                                    "--out or --overwrite to replace it")
            if not dry_run:
                self.clear()
        if not dry_run:
            storage.write_text_atomic(uri, json.dumps(ident, sort_keys=True))

    def check_inputs(self) -> None:
        """Open every track (md5, bigWig structure, chromosome names, finite values) before
        anything is written at OUT. Skipped when OUT already holds a complete ingest of these
        tracks on this genome: a resume must not fetch them all again."""
        old = self.stored_identity() if self.done("ingest") is not None else None
        if old is not None:
            mine = self.identity()
            if all(old.get(k) == mine[k] for k in ("manifest", "genome")):
                return
        from .ingest import check_tracks
        self.checked = check_tracks(self.sc, self.tracks, self.genome)

    def sweep_temp_files(self) -> int:
        """Delete the temporary files a killed run left under OUT (on S3: its unfinished
        multipart uploads).

        Every atomic write makes a hidden ``.{name}.*.tmp`` file (a staged directory, such as the
        report's: a ``.tmp-*`` directory, see :func:`predictd.storage.staged`) beside its
        destination and renames it when complete, so these are never taken for outputs; but a
        ``kill -9`` leaves them behind (in tracks/ too). Only called before any stage runs: no
        writer of this OUT is alive then.
        """
        if storage.is_remote(self.out):
            n = storage.abort_pending_uploads(self.out)
            if n:
                log.info("aborted %d unfinished upload(s) left by an interrupted run", n)
            return n
        if not os.path.isdir(self.out):
            return 0
        stale = []
        for root, dirs, files in os.walk(self.out):
            stale += [os.path.join(root, f) for f in files
                      if f.startswith(".") and f.endswith(".tmp")]
            stale += [os.path.join(root, d) for d in dirs if d.startswith(".tmp-")]
            dirs[:] = [d for d in dirs if not d.startswith(".tmp-")]
        for path in stale:
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        if stale:
            log.info("removed %d temporary file(s) left by an interrupted run", len(stale))
        return len(stale)

    def clear(self) -> None:
        log.warning("--overwrite: removing the previous run in %s", self.out)
        for entry in layout.RUN_ENTRIES:
            storage.delete_prefix(storage.join(self.out, entry))

    def done(self, stage: str) -> dict | None:
        uri = layout.marker_file(self.out, stage)
        return json.loads(storage.read_text(uri)) if storage.exists(uri) else None

    def mark(self, stage: str, info: dict) -> None:
        storage.write_text_atomic(layout.marker_file(self.out, stage),
                                  json.dumps(info, sort_keys=True))

    # ------------------------------------------------------------------ stages
    def run_stage(self, stage: str, **kwargs) -> dict:
        prev = self.done(stage)
        if prev is not None and not self._asks_more(stage, prev):
            log.info("%s: already complete, skipped", stage)
            return {**prev, "skipped": True}
        t0 = time.perf_counter()
        with progress_shown(self.progress):
            info = getattr(self, f"_{stage}")(**kwargs) or {}
        info["seconds"] = round(time.perf_counter() - t0, 3)
        self.mark(stage, info)
        self.write_run_json()
        return info

    def wanted_tracks(self) -> list[str]:
        """The names of the tracks this run writes (its selection of the model's)."""
        model = self.load_model()
        names = model.track_names()
        only = self.selected_tracks(model)
        return names if only is None else [names[i] for i in only]

    def _asks_more(self, stage: str, prev: dict) -> bool:
        """Whether this run wants tracks a completed impute stage did not write (it records
        their names, or None for every track): then the stage runs again, and writes only
        those (its finished blocks and tracks are kept)."""
        if stage != "impute" or prev.get("selected") is None:
            return False
        return not set(self.wanted_tracks()) <= set(prev["selected"])

    def selected_so_far(self, wanted) -> list[str]:
        """``wanted`` and the tracks earlier runs of the impute stage wrote: what its marker
        records (see :meth:`_asks_more`)."""
        return sorted(set(wanted) | set((self.done("impute") or {}).get("selected") or ()))

    def _ingest(self) -> dict:
        from .ingest import ingest
        header = ingest(self.sc, self.tracks, self.genome, self.cfg, self.tensor_root,
                        self.manifest_sum, checked=self.checked)
        bins = header.genome_obj.total_bins(header.bin_size)
        return {"tracks": len(header.experiments), "bins": bins,
                "blocks": len(header.blocks())}

    def _train(self) -> dict:
        from .train import train
        header = tensor.read_header(self.tensor_root)
        if header.manifest_checksum != self.manifest_sum:
            raise PredictdError(f"tensor at {self.tensor_root} was built from another manifest")
        with training_progress(self.cfg.max_iterations) as bar:
            model, res = train(self.sc, header, self.tensor_root, self.work, self.cfg,
                               self.holdout, progress=bar.show_iteration)
        log.info("trained: best validation mse %.4f at iteration %d of %d (%s)",
                 res.best_valid_mse, res.best_iteration, len(res.history), res.stopped)
        self.save_model(model)
        storage.write_text_atomic(layout.history_file(self.out), json.dumps(res.history))
        return {"best_iteration": res.best_iteration, "best_valid_mse": res.best_valid_mse,
                "iterations": len(res.history), "training_bins": res.n_bins,
                "stopped": res.stopped, "model_sha256": model_checksum(self.out)}

    def _impute(self) -> dict:
        from .impute import solve_genome, write_tracks
        header = tensor.read_header(self.tensor_root)
        model = self.load_model()
        t0 = time.perf_counter()
        solve_genome(self.sc, header, self.tensor_root, self.gf_root, model, self.cfg)
        t1 = time.perf_counter()
        only = self.selected_tracks(model)
        written = write_tracks(self.sc, header, self.out, self.gf_root, model, self.cfg,
                               public=self.public, root=self.tensor_root, only=only,
                               regions=self.selection.regions)
        layout.write_track_index(self.out, public=self.public, hash_local=False)
        names = model.track_names()
        # the tracks OUT holds: every one, or those of each selection written so far
        selected = None if only is None else self.selected_so_far(names[i] for i in only)
        return {"solve_seconds": round(t1 - t0, 3),
                "write_seconds": round(time.perf_counter() - t1, 3),
                "tracks": len(names) if only is None else len(only), "written": len(written),
                "selected": selected}

    def _folds(self, folds: int) -> dict:
        from .folds import run_folds
        return run_folds(self, folds, self.cfg.ensemble_size)

    def _evaluate(self) -> dict:
        from . import evaluate
        if not self.holdout:
            return {"tracks": 0}
        header = tensor.read_header(self.tensor_root)
        model = self.load_model()
        vec = evaluate.collect(self.sc, header, self.tensor_root, self.gf_root, model,
                               self.holdout, self.cfg.uncertainty)
        masks, blacklist = evaluate.scoring_masks(header.genome, header.bin_size,
                                                  self.cfg.score_blacklist)
        rows = evaluate.score(vec, masks, blacklist)
        curves = None
        hist_uri = layout.history_file(self.out)
        if storage.exists(hist_uri):
            hist = json.loads(storage.read_text(hist_uri))
            curves = {"iteration": [h["iteration"] for h in hist],
                      "train_mse": [h["train_mse"] for h in hist],
                      "valid_mse": [h["valid_mse"] for h in hist]}
        examples, errors = evaluate.example_regions(vec, header.genome["chroms"],
                                                    header.bin_size)
        calibration = evaluate.holdout_calibration(self.out, vec, header.transform, blacklist,
                                                   public=self.public)
        evaluate.write_report(self.out, rows, curves, examples, public=self.public,
                              errors=errors, calibration=calibration)
        extra = {"calibration": calibration} if calibration else {}
        return {"tracks": len(self.holdout), "metrics": rows, **extra}

    # ------------------------------------------------------------------ model i/o
    def save_model(self, model: Model) -> None:
        model.meta["config"] = self.cfg.to_dict()
        model.meta["predictd"] = __version__
        with storage.staged(self.model_dir, in_place=True) as directory:
            model.save(directory)

    def load_model(self) -> Model:
        return load_model(self.out)

    def publish(self) -> int:
        """With ``public``, make every object a public run shares readable by anyone — the
        tracks, the report and the track index — including those an earlier, private run or
        an interrupted one wrote (a resumed stage skips them). Returns how many."""
        if not (self.public and storage.is_object_store(self.out)):
            return 0
        uris = [storage.join(self.out, d, rel) for d in (layout.TRACKS_DIR, layout.REPORT_DIR)
                for rel, _ in storage.list_prefix(storage.join(self.out, d))]
        if storage.exists(layout.index_file(self.out)):
            uris.append(layout.index_file(self.out))
        for uri in uris:
            storage.make_public(uri)
        return len(uris)

    # ------------------------------------------------------------------ run.json
    def write_run_json(self) -> None:
        storage.write_text_atomic(layout.run_file(self.out),
                                  json.dumps(self.run_doc(), indent=1, sort_keys=True,
                                             default=str))

    def run_doc(self) -> dict:
        """What ``run.json`` records."""
        return {
            "predictd": __version__,
            # URIs go through storage.display_uri: a pre-signed URL's signature must not be kept
            "command": [os.path.basename(sys.argv[0]),
                        *map(storage.display_uri, sys.argv[1:])],
            "config": self.cfg.to_dict(),
            "config_checksum": self.cfg.checksum(),
            "manifest": {"uri": storage.display_uri(self.manifest_uri),
                         "checksum": self.manifest_sum,
                         "tracks": [{"name": t.name, "uri": storage.display_uri(t.uri),
                                     "md5": t.md5,
                                     "accession": t.accession} for t in self.tracks]},
            "genome": {"name": self.genome.name, "chroms": len(self.genome.chroms),
                       "bp": sum(n for _, n in self.genome.chroms)},
            "holdout": self.holdout,
            "selection": self.selection.to_json() if self.selection else None,
            "versions": versions(),
            "spark": _spark_info(self.sc),
            "stages": {s: self.done(s) for s in self.stage_names},
        }


def load_stack_gram(out: str, model: Model) -> np.ndarray | None:
    """The stacking statistics saved beside OUT's model (checked against its model.json), or
    None when its run did not save them."""
    if "stack_stats_sha256" not in model.meta:
        return None
    uri = layout.model_file(out, STACK_STATS_NPZ)
    if not storage.exists(uri):
        raise PredictdError(f"{storage.display_uri(uri)}: missing (model.json records it)")
    return stack_gram_from_bytes(storage.read_bytes(uri), model, storage.display_uri(uri))


def load_model(out: str) -> Model:
    """The model saved under OUT (local or remote; only read)."""
    if not storage.is_remote(out):
        return Model.load(layout.model_dir(out))
    tmp = tempfile.mkdtemp(prefix="predictd-model-")
    try:
        for name in (MODEL_NPZ, MODEL_JSON):
            with open(os.path.join(tmp, name), "wb") as fh:
                fh.write(storage.read_bytes(layout.model_file(out, name)))
        return Model.load(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_checksum(out: str) -> str:
    """SHA-256 of OUT's ``model.json`` (which itself records the factors' checksum): the
    train stage's marker keeps it, and a reference imputation checks it."""
    return hashlib.sha256(storage.read_bytes(layout.model_file(out, MODEL_JSON))).hexdigest()


def _spark_info(sc) -> dict:
    if sc is None:
        return {"master": None}
    return {"master": sc.master, "default_parallelism": sc.defaultParallelism,
            "version": sc.version}


def open_run(manifest: str, genome: str, out: str, config: Config, holdout=(), sc=None,
             public: bool = False, progress: bool = True, targets=(), cell_types=(),
             assays=(), regions: str | None = None) -> Run:
    """Validate everything that can be validated before any heavy work."""
    storage.check_output_prefix(out)
    tracks, msum = load_tracks(manifest)
    g = load_genome(genome)
    hold = parse_holdout(holdout)
    names = {t.name for t in tracks}
    for h in hold:
        if h not in names:
            raise PredictdError(f"--holdout {':'.join(split_experiment(h))}: not a track of the "
                                f"manifest {manifest}")
    from .train import training_left
    training_left(sorted(names), hold)
    selection = open_selection(targets, cell_types, assays, regions,
                               cell_type_names=sorted({t.cell_type for t in tracks}),
                               assay_names=sorted({t.assay for t in tracks}),
                               chroms=g.chroms)
    return Run(out=out, cfg=config, tracks=tracks, genome=g, holdout=hold,
               manifest_uri=manifest, manifest_sum=msum, sc=sc, public=public,
               progress=progress, selection=selection)


def genome_identity(genome_json: str) -> str:
    """A genome's part of a run's identity: its chromosomes and lengths, in order (the name a
    chrom.sizes file was given by is a path, not the genome)."""
    parsed = json.loads(genome_json)
    return json.dumps(parsed["chroms"] if isinstance(parsed, dict) else parsed)


def run_all(r: Run, overwrite: bool = False, stages=STAGES, folds: int = 0) -> dict:
    """Run the stages (or, with ``folds`` >= 2, ingest then the cross-validated ensemble)."""
    # refuse a different run, then check every input, and only then write anything at OUT
    if folds:
        from .folds import make_folds
        make_folds([t.name for t in r.tracks], folds, r.cfg.seed)
    r.claim(overwrite, folds=folds, dry_run=True)
    r.check_inputs()
    r.claim(overwrite, folds=folds)
    r.sweep_temp_files()
    r.write_run_json()
    results = {}
    if folds:
        results["ingest"] = r.run_stage("ingest")
        results["folds"] = r.run_stage("folds", folds=folds)
    else:
        for s in stages:
            results[s] = r.run_stage(s)
    r.publish()
    return results

