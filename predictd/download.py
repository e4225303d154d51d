"""List and fetch what a run produced: imputed tracks (and optionally the model) from an output
prefix that is a local directory, an ``s3://``, ``gs://`` or Azure prefix or an ``http(s)://`` URL.

A local or S3 prefix is listed directly (``OUT/tracks/*.imputed.bw``). A web server cannot be
listed, so for ``http(s)://`` sources the run's track index ``OUT/tracks.json`` (see
:mod:`predictd.layout`) gives the files with their sizes and MD5s; without it, the track names
come from ``OUT/model/model.json`` (every (cell type, assay) pair of the model has a track,
docs/design.md §9) and sizes are learnt while downloading.

Downloads mirror the source's layout under DEST (``DEST/tracks/...``, ``DEST/model/...``), skip
files already complete (size, and MD5 when known), and resume partial ones (see
:func:`predictd.storage.download_file`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field

from . import layout, storage
from .errors import PredictdError
from .layout import INDEX_FILE, MODEL_FILES, RUN_FILE, OutputFile
from .names import experiment_name
from .selection import matches, patterns

__all__ = [
    "DownloadReport",
    "download",
    "find_outputs",
    "format_size",
    "list_outputs",
    "select",
]

log = logging.getLogger("predictd.download")

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


# --------------------------------------------------------------------------- listing
def list_outputs(source: str, include_model: bool = False) -> list[OutputFile]:
    """The imputed tracks (and, with ``include_model``, the model files and run.json) of a run.

    Parameters
    ----------
    source : str
        The run's output prefix: local directory, ``file://``, ``s3://``, ``gs://``, Azure or
        ``http(s)://``.
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
        tracks = [f for f in layout.output_files(source, layout.TRACKS_DIR) if f.is_track]
        if not tracks:
            raise PredictdError(_nothing_there(source))
        known = {f.path: (f.size, f.md5) for f in layout.load_track_index(source) or []}
        # An index entry is trusted only if its size still matches the file (a stale index
        # after a rewrite must not fail good downloads).
        tracks = [OutputFile(f.path, f.size, known[f.path][1], f.cell_type, f.assay)
                  if f.path in known and known[f.path][0] == f.size else f for f in tracks]
        files = tracks + (layout.model_output_files(source) if include_model else [])
    tracks = sorted((f for f in files if f.is_track), key=lambda f: (f.cell_type, f.assay))
    others = [f for f in files if not f.is_track] if include_model else []
    return tracks + others


def _nothing_there(source: str) -> str:
    if storage.exists(layout.run_file(source)):
        return (f"{source} has no imputed tracks yet (tracks/ is empty: the impute stage has not "
                "finished)")
    return f"no predictd output at {source} (no tracks/*.imputed.bw, no run.json)"


def _list_http(source: str) -> list[OutputFile]:
    indexed = layout.load_track_index(source)
    if indexed is not None:
        return indexed
    model_json = layout.model_file(source)
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
    files = [OutputFile(layout.track_path(experiment_name(c, a)), None, None, c, a)
             for c in cells for a in assays]
    return files + [OutputFile(p) for p in (*MODEL_FILES, RUN_FILE)]


def unfinished(source: str) -> bool:
    """Whether ``source`` is a run (local or in an object store: its private markers can be
    read) whose impute stage has not completed, so its tracks are those written so far."""
    if storage.is_remote(source) and not storage.is_object_store(source):
        return False  # over plain HTTP(S) only the published files are visible
    # a --folds run writes its tracks in its "folds" stage
    return (storage.exists(layout.identity_file(source))
            and not any(storage.exists(layout.marker_file(source, stage))
                        for stage in ("impute", "folds")))


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
    cells, assay_pats = patterns(cell_types), patterns(assays)
    return [f for f in files
            if not f.is_track or (matches(f.cell_type, cells) and matches(f.assay, assay_pats))]


def find_outputs(source: str, cell_types=(), assays=(),
                 include_model: bool = False) -> list[OutputFile]:
    """:func:`list_outputs` filtered by :func:`select`; raises PredictdError (naming the
    filters and the cell types and assays that exist) when no track matches."""
    files = list_outputs(source, include_model=include_model)
    chosen = select(files, cell_types, assays)
    if not any(f.is_track for f in chosen):
        raise PredictdError(_no_match(source, files, cell_types, assays))
    return chosen


def _no_match(source: str, files: list[OutputFile], cell_types, assays) -> str:
    tracks = [f for f in files if f.is_track]
    have_c = sorted({f.cell_type for f in tracks})
    have_a = sorted({f.assay for f in tracks})
    want = " ".join([*(f"--cell-type {c}" for c in patterns(cell_types)),
                     *(f"--assay {a}" for a in patterns(assays))])

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
        Output prefix: local directory, ``s3://``, ``gs://``, Azure or ``http(s)://``.
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
