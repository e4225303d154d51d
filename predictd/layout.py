"""Where a run's outputs live under its output prefix OUT, and the track index that lists them
(docs/design.md §9).

OUT is a local directory or an object-store prefix (``s3://``, ``gs://``, ``az://``, ``abfss://``,
...; a run published over ``http(s)://`` is read with the same paths)::

    OUT/run.json                 config, versions, manifest checksums, stage timings, results
    OUT/tracks.json              the track index: every imputed track with its size and MD5
    OUT/tensor/                  the data tensor (Parquet + header.json)
    OUT/model/                   model.json + factors.npz, history.json; genome_factors/ (Parquet)
    OUT/tracks/                  {cell_type}.{assay}.imputed.bw for every pair of the model;
                                 with ``uncertainty``, {cell_type}.{assay}.uncertainty.bw too
    OUT/report/                  metrics.tsv, PNG plots, index.html (when tracks are held out)
    OUT/hub.txt, genomes.txt, trackDb.txt    a UCSC track hub of the tracks (``predictd hub``)
    OUT/_predictd/               run identity and stage completion markers
    OUT/work/                    the training subset (kept for resume; small)
    OUT/folds/fold{f}/model{m}/  each model of a ``--folds`` run, itself laid out as an OUT

Paths relative to OUT (``tracks/E003.H3K4me3.imputed.bw``) name files in the track index and
in downloads; the functions taking ``out`` return full URIs (:func:`predictd.storage.join`).

The track index
---------------
A web server cannot be listed, so :func:`write_track_index` writes ``OUT/tracks.json`` after
imputation: with it a run can be listed and downloaded over plain HTTP(S). It sits beside
``tracks/`` rather than inside it so that ``tracks/`` holds only bigWigs (users glob it). Its
format::

    {"format": "predictd-tracks/1",
     "tracks": [{"path": "tracks/E003.H3K4me3.imputed.bw", "cell_type": "E003",
                 "assay": "H3K4me3", "bytes": 994992, "md5": "0f34...", }, ...],
     "files":  [{"path": "model/model.json", "bytes": 2310, "md5": null}, ...]}

An uncertainty track (``tracks/E003.H3K4me3.uncertainty.bw``) is listed among the tracks with
``"kind": "uncertainty"``; imputed tracks have no ``kind``. Paths are relative to OUT; ``md5``
is null when it was not computed (e.g. tracks written to S3, whose ETags are not MD5s for
multipart uploads or under SSE-KMS).

Examples
--------
>>> track_file("s3://bucket/run1", "E003.H3K4me3")
's3://bucket/run1/tracks/E003.H3K4me3.imputed.bw'
>>> split_track_path("tracks/E003.H3K4me3.imputed.bw")
('E003', 'H3K4me3')
>>> split_track_path("tracks/index.json") is None
True
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import storage
from .errors import PredictdError
from .model import MODEL_JSON, MODEL_NPZ
from .names import experiment_name, split_experiment

__all__ = [
    "calibration_file",
    "HUB_FILE",
    "HUB_FILES",
    "INDEX_FILE",
    "MODEL_FILES",
    "REPORT_PAGE",
    "RUN_ENTRIES",
    "RUN_FILE",
    "OutputFile",
    "fold_model_dir",
    "genome_factors_dir",
    "history_file",
    "hub_file",
    "identity_file",
    "index_file",
    "load_track_index",
    "marker_file",
    "model_dir",
    "model_file",
    "model_output_files",
    "output_files",
    "read_track_index",
    "reference_genome_factors_dir",
    "report_dir",
    "report_page",
    "run_file",
    "split_track_path",
    "tensor_dir",
    "track_file",
    "track_file_name",
    "track_index",
    "track_kind",
    "track_path",
    "tracks_dir",
    "training_subset_dir",
    "uncertainty_file",
    "uncertainty_file_name",
    "uncertainty_path",
    "write_track_index",
]

#: Paths relative to OUT.
RUN_FILE = "run.json"
INDEX_FILE = "tracks.json"
TRACKS_DIR = "tracks"
TRACK_SUFFIX = ".imputed.bw"
UNCERTAINTY_SUFFIX = ".uncertainty.bw"
MODEL_DIR = "model"
HISTORY_FILE = "history.json"
REPORT_DIR = "report"
REPORT_PAGE = f"{REPORT_DIR}/index.html"
HUB_FILE = "hub.txt"
HUB_FILES = (HUB_FILE, "genomes.txt", "trackDb.txt")
#: Small model files fetched with a download's ``include_model`` (the genome factors, bins × L
#: floats, are left out: for a human genome they are tens of GB and only needed to re-write
#: tracks).
MODEL_FILES = tuple(f"{MODEL_DIR}/{name}" for name in (MODEL_JSON, MODEL_NPZ, HISTORY_FILE))
#: Everything a run writes besides the index and the hub (``--overwrite`` deletes these).
RUN_ENTRIES = ("_predictd", "tensor", MODEL_DIR, TRACKS_DIR, REPORT_DIR, "work", "folds",
               RUN_FILE)

INDEX_FORMAT = "predictd-tracks/1"
#: Threads hashing local tracks for the index (hashlib releases the GIL on large buffers).
HASH_THREADS = 4
_TRACK_RE = re.compile(r"^tracks/([A-Za-z0-9_+-][A-Za-z0-9_.+-]*)\.(imputed|uncertainty)\.bw$")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")


# --------------------------------------------------------------------------- paths
def run_file(out: str) -> str:
    return storage.join(out, RUN_FILE)


def index_file(out: str) -> str:
    """The track index, ``OUT/tracks.json``."""
    return storage.join(out, INDEX_FILE)


def tensor_dir(out: str) -> str:
    return storage.join(out, "tensor")


def model_dir(out: str) -> str:
    return storage.join(out, MODEL_DIR)


def model_file(out: str, name: str = MODEL_JSON) -> str:
    """A file of the model (``model.json``, ``factors.npz``), as :meth:`Model.save` names them."""
    return storage.join(out, MODEL_DIR, name)


def history_file(out: str) -> str:
    """Training losses per iteration (``OUT/model/history.json``)."""
    return storage.join(out, MODEL_DIR, HISTORY_FILE)


def genome_factors_dir(out: str) -> str:
    return storage.join(out, MODEL_DIR, "genome_factors")


def tracks_dir(out: str) -> str:
    return storage.join(out, TRACKS_DIR)


def track_file_name(name: str) -> str:
    """The file name of the imputed track of experiment ``name`` (in ``OUT/tracks/``)."""
    return f"{name}{TRACK_SUFFIX}"


def track_path(name: str) -> str:
    """The imputed track of experiment ``name``, relative to OUT."""
    return f"{TRACKS_DIR}/{track_file_name(name)}"


def track_file(out: str, name: str) -> str:
    """The imputed track of experiment ``name`` (``cell_type.assay``)."""
    return storage.join(out, track_path(name))


def uncertainty_file_name(name: str) -> str:
    """The file name of the uncertainty track of experiment ``name`` (in ``OUT/tracks/``): a
    standard deviation per bin of its imputed track (``uncertainty``)."""
    return f"{name}{UNCERTAINTY_SUFFIX}"


def uncertainty_path(name: str) -> str:
    """The uncertainty track of experiment ``name``, relative to OUT."""
    return f"{TRACKS_DIR}/{uncertainty_file_name(name)}"


def uncertainty_file(out: str, name: str) -> str:
    """The uncertainty track of experiment ``name`` (``cell_type.assay``)."""
    return storage.join(out, uncertainty_path(name))


def track_kind(path: str) -> str | None:
    """``"imputed"`` or ``"uncertainty"`` for a track's path relative to OUT, else None."""
    m = _TRACK_RE.match(path)
    return None if m is None else m.group(2)


def split_track_path(path: str) -> tuple[str, str] | None:
    """``(cell_type, assay)`` of an imputed track's path relative to OUT, or None if ``path``
    is not one."""
    m = _TRACK_RE.match(path)
    if m is None:
        return None
    try:
        cell, assay = split_experiment(m.group(1))
    except ValueError:
        return None
    return (cell, assay) if cell and assay else None


def report_dir(out: str) -> str:
    return storage.join(out, REPORT_DIR)


def report_page(out: str) -> str:
    """The report's page, ``OUT/report/index.html`` (written last: present means complete)."""
    return storage.join(out, REPORT_PAGE)


def calibration_file(out: str) -> str:
    """How the held-out tracks' uncertainty tracks describe their errors,
    ``OUT/report/calibration.tsv`` (``uncertainty`` with ``--folds``)."""
    return storage.join(out, REPORT_DIR, "calibration.tsv")


def hub_file(out: str, name: str = HUB_FILE) -> str:
    """One of the hub's :data:`HUB_FILES` (default ``hub.txt``, the one a browser is given)."""
    return storage.join(out, name)


def identity_file(out: str) -> str:
    """What run OUT holds (manifest, genome, config and hold-out checksums)."""
    return storage.join(out, "_predictd", "identity.json")


def marker_file(out: str, stage: str) -> str:
    """The completion marker of a stage (written last by the stage)."""
    return storage.join(out, "_predictd", f"{stage}.done.json")


def training_subset_dir(out: str) -> str:
    return storage.join(out, "work", "training_subset")


def fold_model_dir(out: str, fold: int, member: int) -> str:
    """The OUT of model ``member`` of fold ``fold`` of a ``--folds`` run."""
    return storage.join(out, "folds", f"fold{fold}", f"model{member}")


def reference_genome_factors_dir(out: str) -> str:
    """The genome factors of a fold model's CP-ALS reference (``cp_reference``)."""
    return storage.join(out, "reference_cp_als4", "genome_factors")


# --------------------------------------------------------------------------- listing
@dataclass(frozen=True)
class OutputFile:
    """One file of a run's output.

    Parameters
    ----------
    path : str
        ``/``-separated path relative to the output prefix (``tracks/E003.H3K4me3.imputed.bw``).
    size : int or None
        Bytes, when known.
    md5 : str or None
        Lower-case hex MD5, when known.
    cell_type, assay : str or None
        For imputed tracks; None for other files (model, run.json).
    """

    path: str
    size: int | None = None
    md5: str | None = None
    cell_type: str | None = None
    assay: str | None = None

    @property
    def is_track(self) -> bool:
        return self.cell_type is not None

    @property
    def kind(self) -> str | None:
        """``"imputed"`` or ``"uncertainty"`` (its standard deviation per bin) for a track,
        None for other files."""
        return track_kind(self.path) if self.is_track else None

    @property
    def name(self) -> str:
        """``cell_type.assay`` for an imputed track, ``cell_type.assay.uncertainty`` for an
        uncertainty track, else the path."""
        if not self.is_track:
            return self.path
        name = experiment_name(self.cell_type, self.assay)
        return name if self.kind == "imputed" else f"{name}.{self.kind}"

    def to_json(self) -> dict:
        d = {"path": self.path, "bytes": self.size, "md5": self.md5}
        if self.is_track:
            d = {"path": self.path, "cell_type": self.cell_type, "assay": self.assay,
                 "bytes": self.size, "md5": self.md5}
            if self.kind != "imputed":
                d["kind"] = self.kind
        return d


def output_files(out: str, sub: str) -> list[OutputFile]:
    """Files under ``out/sub`` (a local directory or S3 prefix) as OutputFiles, paths relative
    to ``out``."""
    found = []
    for rel, size in storage.list_prefix(storage.join(out, sub)):
        path = f"{sub}/{rel}"
        ca = split_track_path(path)
        found.append(OutputFile(path, size, None, *(ca or (None, None))))
    return found


def model_output_files(out: str) -> list[OutputFile]:
    """The small model files (:data:`MODEL_FILES`) and run.json present at ``out``. run.json is
    rewritten after every stage, so its size is left unknown (a download compares it with the
    source's at transfer time)."""
    model = {f.path: f for f in output_files(out, MODEL_DIR)}
    files = [model[p] for p in MODEL_FILES if p in model]
    if storage.exists(run_file(out)):
        files.append(OutputFile(RUN_FILE))
    return files


# --------------------------------------------------------------------------- the track index
def track_index(out: str, md5s: dict[str, str] | None = None, hash_local: bool = True) -> dict:
    """The track index document of a local or S3 output prefix.

    Parameters
    ----------
    out : str
        Output prefix (local directory or object-store prefix) holding ``tracks/``.
    md5s : dict, optional
        ``{track path or cell_type.assay: md5}`` already known (e.g. computed by the tasks that
        wrote the tracks, while the files were local). Local tracks not in it are hashed here
        (unless ``hash_local`` is False); S3 tracks not in it get ``md5: null``.
    hash_local : bool, default True
        Hash local files whose MD5 is not given (a whole-genome run's tracks are hundreds of
        GB: the writers should pass ``md5s`` instead).

    Returns
    -------
    dict
        See the module docstring for the format.
    """
    scheme = storage.parse_uri(out)[0]
    if scheme != "file" and scheme not in storage.OBJECT_STORES:
        raise PredictdError(f"cannot index {out}: the track index is written where the run's "
                            "outputs are (a local directory, s3://, gs:// or az:// prefix)")
    md5s = {k: v.lower() for k, v in (md5s or {}).items()}
    tracks = [f for f in output_files(out, TRACKS_DIR) if f.is_track]
    files = model_output_files(out)

    def known(f: OutputFile) -> str | None:
        return md5s.get(f.path) or md5s.get(f.name)

    todo = [f for f in tracks + files
            if known(f) is None and f.size is not None] if scheme == "file" and hash_local \
        else []
    if todo:
        local = storage.parse_uri(out)[1]
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            hashed = pool.map(lambda f: storage.file_md5(os.path.join(local, f.path)), todo)
            md5s.update({f.path: h for f, h in zip(todo, hashed)})
    return {
        "format": INDEX_FORMAT,
        "tracks": [OutputFile(f.path, f.size, known(f), f.cell_type, f.assay).to_json()
                   for f in tracks],
        "files": [OutputFile(f.path, f.size, known(f)).to_json() for f in files],
    }


def write_track_index(out: str, md5s: dict[str, str] | None = None, public: bool = False,
                      hash_local: bool = True) -> str:
    """Write ``OUT/tracks.json`` (see :func:`track_index`) so the run can be listed and
    downloaded over plain HTTP(S).

    Call it after the tracks are written. ``public`` makes the S3 object public-read (use the
    same setting as the tracks). Returns the index's URI.
    """
    doc = track_index(out, md5s, hash_local)
    uri = index_file(out)
    storage.write_text_atomic(uri, json.dumps(doc, indent=1, sort_keys=True) + "\n",
                              public=public)
    return uri


def read_track_index(text: str, where: str) -> list[OutputFile]:
    """Parse a track index; ``where`` names it in errors."""
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
            fmt = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise ValueError(f"format {fmt!r}, expected {INDEX_FORMAT!r}")
        out = []
        for kind in ("tracks", "files"):
            for e in doc.get(kind, []):
                path = str(e["path"])
                if path.startswith("/") or ".." in path.split("/"):
                    raise ValueError(f"unsafe path {path!r}")
                size = e.get("bytes")
                md5 = e.get("md5")
                if size is not None and (not isinstance(size, int) or size < 0):
                    raise ValueError(f"bad size for {path}")
                if md5 is not None and not _MD5_RE.match(str(md5)):
                    raise ValueError(f"bad md5 for {path}")
                ca = split_track_path(path) if kind == "tracks" else None
                if kind == "tracks" and ca is None:
                    raise ValueError(f"not an imputed track path: {path!r}")
                out.append(OutputFile(path, size, md5, *(ca or (None, None))))
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise PredictdError(f"{where}: not a predictd track index ({e})") from None


def load_track_index(out: str) -> list[OutputFile] | None:
    """The track index of the run at ``out`` (any readable URI), or None when it has none."""
    uri = index_file(out)
    if not storage.exists(uri):
        return None
    return read_track_index(storage.read_text(uri), storage.display_uri(uri))
