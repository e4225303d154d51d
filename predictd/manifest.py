"""Manifests: the list of observed experiments (tracks) a run starts from.

A manifest is a tab-separated file with a header row naming at least ``cell_type``, ``assay`` and
``uri``; ``md5`` and ``accession`` are optional and any other columns are kept as extras. One row is
one observed experiment. Lines starting with ``#`` and blank lines are ignored::

    # Roadmap, two marks
    cell_type   assay     uri                                   md5
    E003        H3K4me3   tracks/E003-H3K4me3.bw                0f343b0931126a20f133d67c2b018a3b
    E017        H3K4me3   s3://bucket/E017-H3K4me3.bw

``uri`` is a local path (relative paths are resolved against the manifest's directory), a
``file://`` URI, or an ``http://``, ``https://``, ``s3://``, ``gs://`` or Azure (``az://``,
``abfs[s]://``, ``wasb[s]://``) URL. Every problem is reported as a
:class:`~predictd.errors.PredictdError` naming the file and the row (1-based line number, header
included), so a user can fix the file without reading code.

Examples
--------
>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> p = os.path.join(d, "m.tsv")
>>> _ = open(p, "w").write("cell_type\\tassay\\turi\\nE003\\tH3K4me3\\tE003.bw\\n")
>>> t = read_manifest(p)[0]
>>> t.name, t.uri == os.path.join(d, "E003.bw"), t.row
('E003.H3K4me3', True, 2)
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import tempfile
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from predictd import storage
from predictd.errors import PredictdError
from predictd.names import check_cell_type, check_name, experiment_name

REQUIRED_COLUMNS = ("cell_type", "assay", "uri")
OPTIONAL_COLUMNS = ("md5", "accession")
REMOTE_SCHEMES = ("http", "https", "s3", "gs", *storage.AZURE_SCHEMES)

_MD5_RE = re.compile(r"[0-9a-fA-F]{32}")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class Track:
    """One observed experiment of a manifest.

    Parameters
    ----------
    cell_type, assay : str
        File-name-safe names; together they identify the track.
    uri : str
        Absolute local path, or an ``http(s)://``, ``s3://``, ``gs://`` or Azure URL.
    md5 : str or None
        Lower-case hex MD5 of the file, if given.
    accession : str or None
        Source accession (e.g. an ENCODE ``ENCFF...`` id), if given.
    row : int
        1-based line number of the track in its manifest (the header is usually line 1); 0 for
        tracks built in code.
    extra : tuple of (str, str)
        Other columns of the row, in header order.
    """

    cell_type: str
    assay: str
    uri: str
    md5: str | None = None
    accession: str | None = None
    row: int = 0
    extra: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def name(self) -> str:
        """``"{cell_type}.{assay}"``, the stem of the track's output files."""
        return experiment_name(self.cell_type, self.assay)

    @property
    def is_remote(self) -> bool:
        """True when :attr:`uri` must be fetched (http, https, s3, gs or Azure)."""
        return uri_scheme(self.uri) in REMOTE_SCHEMES


def uri_scheme(uri: str) -> str:
    """The scheme of a manifest URI: ``"http"``, ``"https"``, ``"s3"``, ``"file"``, ``""`` (a plain
    local path) or any other ``xyz`` of ``xyz://...`` (which :func:`read_manifest` rejects).

    Examples
    --------
    >>> uri_scheme("s3://b/k.bw"), uri_scheme("/data/a.bw"), uri_scheme("C:x.bw")
    ('s3', '', '')
    """
    m = _SCHEME_RE.match(uri)
    if not m:
        return ""
    scheme = m.group(1).lower()
    # "name:with:colons.bw" is a legal local file name; only treat "xyz:" as a scheme when it is
    # followed by "//" or is the file: scheme.
    if uri[m.end():].startswith("//") or scheme == "file":
        return scheme
    return ""


def _resolve_uri(uri: str, base: str, where: str) -> str:
    scheme = uri_scheme(uri)
    if scheme in REMOTE_SCHEMES:
        parts = urlsplit(uri)
        if not parts.netloc:
            raise PredictdError(f"{where}uri {uri!r} has no host/bucket")
        if scheme in ("s3", "gs") and parts.path.strip("/") == "":
            raise PredictdError(f"{where}uri {uri!r} has no object key after the bucket")
        if scheme in storage.AZURE_SCHEMES:
            try:
                blob = storage.azure_blob(uri)[3]
            except PredictdError as exc:
                raise PredictdError(f"{where}{exc}") from None
            if not blob.strip("/"):
                raise PredictdError(f"{where}uri {uri!r} has no blob path after the container")
        return uri
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise PredictdError(
                f"{where}uri {uri!r} names a remote host; file:// URIs must be local"
            )
        path = unquote(parts.path)
        if not path:
            raise PredictdError(f"{where}uri {uri!r} has an empty path")
        return _join_local(path, base, where)
    if scheme:
        raise PredictdError(
            f"{where}uri {uri!r} has unsupported scheme {scheme!r} "
            "(allowed: local path, file://, http://, https://, s3://, gs://, az://, abfs[s]://, wasb[s]://)"
        )
    return _join_local(uri, base, where)


def _join_local(path: str, base: str, where: str = "") -> str:
    base_scheme = uri_scheme(base)
    if base_scheme in REMOTE_SCHEMES and (os.path.isabs(path) or path.startswith("~")):
        # a manifest fetched from elsewhere must not make predictd read this machine's files
        raise PredictdError(
            f"{where}uri {path!r} is a local path, but the manifest is remote ({base}): it may "
            "name objects beside it (relative) or full http(s)/s3/gs/Azure URLs only"
        )
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return os.path.normpath(path)
    if base_scheme in REMOTE_SCHEMES:
        # The manifest itself was remote: a relative entry names an object beside it.
        parts = urlsplit(base)
        joined = posixpath.normpath(posixpath.join(parts.path or "/", path))
        return f"{base_scheme}://{parts.netloc}{joined}"
    if base_scheme == "file":
        base = unquote(urlsplit(base).path)
    return os.path.normpath(os.path.join(os.path.abspath(base), path))


def read_manifest(path: str, base: str | None = None) -> list[Track]:
    """Read and validate a local manifest file.

    Parameters
    ----------
    path : str
        Local path of the TSV manifest (download remote manifests first).
    base : str, optional
        Directory (local path, ``file://``, ``http(s)://``, ``s3://``, ``gs://`` or Azure prefix)
        against which relative ``uri`` entries are resolved. Defaults to the manifest's own
        directory. Pass the original remote prefix when ``path`` is a downloaded copy.

    Returns
    -------
    list of Track
        In file order. Local URIs are absolute normalised paths (``file://`` converted to paths);
        remote URIs are kept as written; ``md5`` is lower-cased.

    Raises
    ------
    PredictdError
        Naming the file and row: missing/unreadable/empty file, no data rows, missing or duplicate
        header columns, wrong column count, empty required field, unsafe cell_type/assay name,
        duplicate (cell_type, assay) pair (both rows named), unsupported URI scheme, malformed md5.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise PredictdError(f"manifest not found: {path}") from None
    except IsADirectoryError:
        raise PredictdError(f"manifest {path} is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PredictdError(f"cannot read manifest {path}: {exc}") from None
    if base is None:
        base = os.path.dirname(os.path.abspath(path))

    header: list[str] | None = None
    header_row = 0
    tracks: list[Track] = []
    seen: dict[tuple[str, str], int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in raw.split("\t")]
        if header is None:
            header, header_row = fields, lineno
            _check_header(header, path, lineno)
            continue
        where = f"{path}, row {lineno}: "
        if len(fields) != len(header):
            raise PredictdError(
                f"{where}expected {len(header)} tab-separated columns (as in the header on row "
                f"{header_row}), got {len(fields)}"
            )
        rec = dict(zip(header, fields))
        for col in REQUIRED_COLUMNS:
            if not rec[col]:
                raise PredictdError(f"{where}empty {col!r} field")
        cell_type = check_cell_type(rec["cell_type"], "cell_type", where)
        assay = check_name(rec["assay"], "assay", where)
        key = (cell_type, assay)
        if key in seen:
            raise PredictdError(
                f"{where}duplicate track {experiment_name(cell_type, assay)} "
                f"(also on row {seen[key]})"
            )
        seen[key] = lineno
        md5 = rec.get("md5") or None
        if md5 is not None:
            if not _MD5_RE.fullmatch(md5):
                raise PredictdError(f"{where}md5 {md5!r} is not 32 hexadecimal characters")
            md5 = md5.lower()
        extra = tuple(
            (col, rec[col]) for col in header if col not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS
        )
        tracks.append(
            Track(
                cell_type=cell_type,
                assay=assay,
                uri=_resolve_uri(rec["uri"], base, where),
                md5=md5,
                accession=rec.get("accession") or None,
                row=lineno,
                extra=extra,
            )
        )
    if header is None:
        raise PredictdError(f"manifest {path} is empty (no header row)")
    if not tracks:
        raise PredictdError(f"manifest {path} has a header but no data rows")
    return tracks


def _check_header(header: list[str], path: str, lineno: int) -> None:
    where = f"{path}, row {lineno} (header): "
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise PredictdError(
            f"{where}missing required column(s) {', '.join(missing)} "
            f"(found: {', '.join(repr(h) for h in header)})"
        )
    if "" in header:
        raise PredictdError(f"{where}column {header.index('') + 1} has an empty name")
    dups = sorted({h for h in header if header.count(h) > 1})
    if dups:
        raise PredictdError(f"{where}duplicate column(s) {', '.join(dups)}")


def write_manifest(tracks, path: str) -> None:
    """Write tracks as a manifest TSV, atomically (temporary file then ``os.replace``).

    Columns: ``cell_type, assay, uri, md5, accession`` and then every extra column met in the
    tracks, in first-seen order (blank where a track lacks it).

    Parameters
    ----------
    tracks : iterable of Track
    path : str
        Destination; its directory must exist.

    Raises
    ------
    PredictdError
        If a value contains a tab or newline, or the file cannot be written.
    """
    tracks = list(tracks)
    extra_cols: list[str] = []
    for t in tracks:
        for col, _ in t.extra:
            if col not in extra_cols:
                extra_cols.append(col)
    columns = list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS) + extra_cols
    lines = ["\t".join(columns)]
    for t in tracks:
        extras = dict(t.extra)
        values = [t.cell_type, t.assay, t.uri, t.md5 or "", t.accession or ""]
        values += [extras.get(c, "") for c in extra_cols]
        for col, v in zip(columns, values):
            if any(ch in v for ch in "\t\r\n"):
                raise PredictdError(
                    f"cannot write manifest {path}: {col} of track {t.name} contains a tab or newline"
                )
        lines.append("\t".join(values))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, storage.creation_mode())
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise PredictdError(f"cannot write manifest {path}: {exc}") from None


def manifest_checksum(tracks) -> str:
    """SHA-256 of a canonical form of the tracks, to detect a changed manifest on resume.

    The canonical form is the JSON list of ``[cell_type, assay, uri, md5, accession]`` sorted by
    (cell_type, assay): reordering rows, comments, extra columns and row numbers do not change it;
    any change to which data a track points at does.

    Parameters
    ----------
    tracks : iterable of Track

    Returns
    -------
    str
        64 lower-case hex characters.
    """
    canon = sorted(
        [t.cell_type, t.assay, t.uri, t.md5 or "", t.accession or ""] for t in tracks
    )
    blob = json.dumps(canon, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()
