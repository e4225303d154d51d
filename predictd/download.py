"""List and fetch what a run produced: imputed tracks (and optionally the model) from an output
prefix that is a local directory, an ``s3://`` prefix or an ``http(s)://`` URL.

A local or S3 prefix is listed directly (``OUT/tracks/*.imputed.bw``). A web server cannot be
listed, so for ``http(s)://`` sources the run's track index ``OUT/tracks.json`` (written by
:func:`write_track_index` after imputation) gives the files with their sizes and MD5s; without
it, the track names come from ``OUT/model/model.json`` (every (cell type, assay) pair of the
model has a track, DESIGN §7) and sizes are learnt while downloading.

The index sits beside ``tracks/`` rather than inside it so that ``tracks/`` holds only bigWigs
(users glob it). Its format::

    {"format": "predictd-tracks/1",
     "tracks": [{"path": "tracks/E003.H3K4me3.imputed.bw", "cell_type": "E003",
                 "assay": "H3K4me3", "bytes": 994992, "md5": "0f34...", }, ...],
     "files":  [{"path": "model/model.json", "bytes": 2310, "md5": null}, ...]}

Paths are relative to OUT; ``md5`` is null when it was not computed (e.g. tracks written to
S3, whose ETags are not MD5s for multipart uploads or under SSE-KMS).

Downloads mirror the source's layout under DEST (``DEST/tracks/...``, ``DEST/model/...``), skip
files already complete (size, and MD5 when known), and resume partial ones (see
:func:`predictd.storage.download_file`).

Examples
--------
>>> split_track_file("tracks/E003.H3K4me3.imputed.bw")
('E003', 'H3K4me3')
>>> split_track_file("tracks/index.json") is None
True
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import storage
from .errors import PredictdError
from .names import experiment_name, split_experiment

__all__ = [
    "INDEX_FILE",
    "DownloadReport",
    "OutputFile",
    "download",
    "find_outputs",
    "format_size",
    "list_outputs",
    "read_track_index",
    "select",
    "split_track_file",
    "track_index",
    "write_track_index",
]

log = logging.getLogger("predictd.download")

#: The track index, relative to an output prefix.
INDEX_FILE = "tracks.json"
INDEX_FORMAT = "predictd-tracks/1"
#: Small model files fetched with ``include_model`` (the genome factors, bins × L floats, are
#: left out: for a human genome they are tens of GB and only needed to re-write tracks).
MODEL_FILES = ("model/model.json", "model/factors.npz", "model/history.json")
RUN_FILE = "run.json"
_TRACK_RE = re.compile(r"^tracks/([A-Za-z0-9_+-][A-Za-z0-9_.+-]*)\.imputed\.bw$")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
#: Threads hashing local tracks for the index (hashlib releases the GIL on large buffers).
HASH_THREADS = 4


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
    def name(self) -> str:
        """``cell_type.assay`` for a track, else the path."""
        return experiment_name(self.cell_type, self.assay) if self.is_track else self.path

    def to_json(self) -> dict:
        d = {"path": self.path, "bytes": self.size, "md5": self.md5}
        if self.is_track:
            d = {"path": self.path, "cell_type": self.cell_type, "assay": self.assay,
                 "bytes": self.size, "md5": self.md5}
        return d


@dataclass
class DownloadReport:
    """What :func:`download` did (or, with ``dry_run``, would do)."""

    dest: str
    fetched: list[OutputFile] = field(default_factory=list)
    skipped: list[OutputFile] = field(default_factory=list)
    dry_run: bool = False

    @property
    def fetched_bytes(self) -> int:
        return sum(f.size or 0 for f in self.fetched)


def split_track_file(path: str) -> tuple[str, str] | None:
    """``(cell_type, assay)`` of an imputed track's path, or None if ``path`` is not one.

    The name is split at its first dot, as the pipeline splits experiment names.
    """
    m = _TRACK_RE.match(path)
    if m is None:
        return None
    try:
        cell, assay = split_experiment(m.group(1))
    except ValueError:
        return None
    return (cell, assay) if cell and assay else None


def format_size(n: int | None) -> str:
    """Human-readable bytes (``"1.5 MiB"``); ``"?"`` when unknown.

    Examples
    --------
    >>> format_size(1536), format_size(None), format_size(12)
    ('1.5 KiB', '?', '12 B')
    """
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # unreachable


# --------------------------------------------------------------------------- the index
def track_index(out: str, md5s: dict[str, str] | None = None, hash_local: bool = True) -> dict:
    """The track index document of a local or S3 output prefix.

    Parameters
    ----------
    out : str
        Output prefix (local directory or ``s3://``) holding ``tracks/``.
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
    if scheme not in ("file", "s3"):
        raise PredictdError(f"cannot index {out}: the track index is written where the run's "
                            "outputs are (a local directory or s3:// prefix)")
    md5s = {k: v.lower() for k, v in (md5s or {}).items()}
    tracks = [f for f in _listed(out, "tracks") if f.is_track]
    files = _listed_model(out)

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
    uri = storage.join(out, INDEX_FILE)
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
                ca = split_track_file(path) if kind == "tracks" else None
                if kind == "tracks" and ca is None:
                    raise ValueError(f"not an imputed track path: {path!r}")
                out.append(OutputFile(path, size, md5, *(ca or (None, None))))
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise PredictdError(f"{where}: not a predictd track index ({e})") from None


# --------------------------------------------------------------------------- listing
def _listed(out: str, sub: str) -> list[OutputFile]:
    """Files under ``out/sub`` as OutputFiles (paths relative to ``out``)."""
    found = []
    for rel, size in storage.list_prefix(storage.join(out, sub)):
        path = f"{sub}/{rel}"
        ca = split_track_file(path)
        found.append(OutputFile(path, size, None, *(ca or (None, None))))
    return found


def _listed_model(out: str) -> list[OutputFile]:
    """The small model files and run.json. run.json is rewritten after every stage, so its size
    is left unknown (the download compares it with the source's at transfer time)."""
    model = {f.path: f for f in _listed(out, "model")}
    files = [model[p] for p in MODEL_FILES if p in model]
    if storage.exists(storage.join(out, RUN_FILE)):
        files.append(OutputFile(RUN_FILE))
    return files


def _index_md5s(source: str) -> dict[str, tuple[int | None, str | None]]:
    """{path: (size, md5)} from the source's index, or {} when it has none."""
    uri = storage.join(source, INDEX_FILE)
    if not storage.exists(uri):
        return {}
    return {f.path: (f.size, f.md5) for f in read_track_index(storage.read_text(uri), uri)}


def list_outputs(source: str, include_model: bool = False) -> list[OutputFile]:
    """The imputed tracks (and, with ``include_model``, the model files and run.json) of a run.

    Parameters
    ----------
    source : str
        The run's output prefix: local directory, ``file://``, ``s3://`` or ``http(s)://``.
    include_model : bool, default False
        Also list ``model/model.json``, ``model/factors.npz``, ``model/history.json`` and
        ``run.json``.

    Returns
    -------
    list of OutputFile
        Tracks sorted by cell type and assay, then the other files.

    Raises
    ------
    PredictdError
        When ``source`` holds no predictd output (one line naming it).
    """
    scheme = storage.parse_uri(source)[0]
    if scheme in ("http", "https"):
        files = _list_http(source)
    else:
        tracks = [f for f in _listed(source, "tracks") if f.is_track]
        if not tracks:
            raise PredictdError(_nothing_there(source))
        known = _index_md5s(source)
        # An index entry is trusted only if its size still matches the file (a stale index
        # after a rewrite must not fail good downloads).
        tracks = [OutputFile(f.path, f.size, known[f.path][1], f.cell_type, f.assay)
                  if f.path in known and known[f.path][0] == f.size else f for f in tracks]
        files = tracks + (_listed_model(source) if include_model else [])
    tracks = sorted((f for f in files if f.is_track), key=lambda f: (f.cell_type, f.assay))
    others = [f for f in files if not f.is_track] if include_model else []
    return tracks + others


def _nothing_there(source: str) -> str:
    if storage.exists(storage.join(source, RUN_FILE)):
        return (f"{source} has no imputed tracks yet (tracks/ is empty: the impute stage has not "
                "finished)")
    return f"no predictd output at {source} (no tracks/*.imputed.bw, no run.json)"


def _list_http(source: str) -> list[OutputFile]:
    index = storage.join(source, INDEX_FILE)
    if storage.exists(index):
        return read_track_index(storage.read_text(index), storage.display_uri(index))
    model_json = storage.join(source, "model", "model.json")
    if not storage.exists(model_json):
        raise PredictdError(f"no predictd output at {storage.display_uri(source)} (neither "
                            f"{INDEX_FILE} nor model/model.json found there)")
    try:
        doc = json.loads(storage.read_text(model_json))
        cells, assays = list(doc["cell_types"]), list(doc["assays"])
    except (ValueError, KeyError, TypeError) as e:
        raise PredictdError(f"{storage.display_uri(model_json)}: not a predictd model ({e})"
                            ) from None
    log.info("%s has no %s; listing the model's tracks (sizes unknown until downloaded)",
             storage.display_uri(source), INDEX_FILE)
    files = [OutputFile(f"tracks/{c}.{a}.imputed.bw", None, None, c, a)
             for c in cells for a in assays]
    return files + [OutputFile(p) for p in (*MODEL_FILES, RUN_FILE)]


def select(files: list[OutputFile], cell_types=(), assays=()) -> list[OutputFile]:
    """Tracks whose cell type and assay match the filters, plus every non-track file.

    Each filter is a list of names or shell patterns (``E0*``); comma-separated values are split;
    an empty filter matches everything.

    Examples
    --------
    >>> fs = [OutputFile("tracks/E003.H3K4me3.imputed.bw", 1, None, "E003", "H3K4me3"),
    ...       OutputFile("tracks/E116.H3K27me3.imputed.bw", 1, None, "E116", "H3K27me3")]
    >>> [f.name for f in select(fs, assays=["H3K4*"])]
    ['E003.H3K4me3']
    """
    cells, assay_pats = _patterns(cell_types), _patterns(assays)

    def hit(value, pats):
        return not pats or any(fnmatch.fnmatchcase(value, p) for p in pats)

    return [f for f in files
            if not f.is_track or (hit(f.cell_type, cells) and hit(f.assay, assay_pats))]


def find_outputs(source: str, cell_types=(), assays=(),
                 include_model: bool = False) -> list[OutputFile]:
    """:func:`list_outputs` filtered by :func:`select`; raises PredictdError (naming the
    filters and the cell types and assays that exist) when no track matches."""
    files = list_outputs(source, include_model=include_model)
    chosen = select(files, cell_types, assays)
    if not any(f.is_track for f in chosen):
        raise PredictdError(_no_match(source, files, cell_types, assays))
    return chosen


def _patterns(values) -> list[str]:
    return [v.strip() for value in values or () for v in str(value).split(",") if v.strip()]


def _no_match(source: str, files: list[OutputFile], cell_types, assays) -> str:
    tracks = [f for f in files if f.is_track]
    have_c = sorted({f.cell_type for f in tracks})
    have_a = sorted({f.assay for f in tracks})
    want = " ".join([*(f"--cell-type {c}" for c in _patterns(cell_types)),
                     *(f"--assay {a}" for a in _patterns(assays))])

    def few(xs):
        return ", ".join(xs[:12]) + (f", ... ({len(xs)} in all)" if len(xs) > 12 else "")

    return (f"no track at {storage.display_uri(source)} matches {want} "
            f"(cell types: {few(have_c)}; assays: {few(have_a)})")


# --------------------------------------------------------------------------- downloading
def _complete(local: str, f: OutputFile) -> bool:
    """Whether ``local`` already holds ``f`` (size known and equal; MD5 equal when known)."""
    if f.size is None or not os.path.isfile(local) or os.path.getsize(local) != f.size:
        return False
    return f.md5 is None or storage.file_md5(local) == f.md5


def _signature(path: str):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def download(source: str, dest: str, cell_types=(), assays=(), include_model: bool = False,
             dry_run: bool = False, progress: bool = False) -> DownloadReport:
    """Fetch a run's imputed tracks into ``dest``, mirroring the source's layout.

    Parameters
    ----------
    source : str
        Output prefix: local directory, ``s3://`` or ``http(s)://``.
    dest : str
        Local directory (created if missing).
    cell_types, assays : sequence of str
        Filters (names or shell patterns; comma-separated values allowed); empty means all.
    include_model : bool, default False
        Also fetch the model files and run.json.
    dry_run : bool, default False
        Only report what would be fetched and what is already complete.
    progress : bool, default False
        tqdm progress bars on stderr (files, and bytes of the current file).

    Returns
    -------
    DownloadReport

    Raises
    ------
    PredictdError
        No output at ``source``; no track matching the filters; a transfer or MD5 failure.
    """
    chosen = find_outputs(source, cell_types, assays, include_model)
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise PredictdError(f"destination is a file, not a directory: {dest}")
    report = DownloadReport(dest=dest, dry_run=dry_run)
    todo = []
    for f in chosen:
        (report.skipped if _complete(os.path.join(dest, *f.path.split("/")), f)
         else todo).append(f)
    if dry_run:
        report.fetched = todo
        return report
    bar = None
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), unit="file", desc="predictd: downloading", leave=True)
    try:
        for f in todo:
            local = os.path.join(dest, *f.path.split("/"))
            before = _signature(local)
            storage.download_file(storage.join(source, f.path), local, progress=progress,
                                  md5=f.md5)
            # storage leaves its lock file beside each download. Once the file is complete any
            # process still waiting on that lock will find it complete and skip it, so removing
            # the lock now cannot let two transfers write one file; it keeps DEST clean.
            with contextlib.suppress(FileNotFoundError):
                os.remove(local + ".lock")
            if f.size is None and before is not None and _signature(local) == before:
                report.skipped.append(f)  # size unknown up front; storage found it complete
            else:
                size = os.path.getsize(local)
                report.fetched.append(OutputFile(f.path, size, f.md5, f.cell_type, f.assay))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return report
