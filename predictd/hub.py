"""UCSC track hubs for a run's imputed tracks (and, optionally, the observed ones).

A hub is three small text files in the "ra" format (stanzas of ``key value`` lines separated by
blank lines), written at the top of the run's output prefix so that the tracks are reachable by
URLs relative to the hub::

    OUT/hub.txt        hub name, labels, contact, genomesFile genomes.txt
    OUT/genomes.txt    genome <assembly>, trackDb trackDb.txt
    OUT/trackDb.txt    a composite track of the imputed tracks (subgroups cell type × assay,
                       shown as a matrix in the browser), and one of the observed tracks

Put OUT behind HTTP(S) (e.g. a public-read S3 prefix) and paste ``<URL of OUT>/hub.txt`` into
the UCSC browser's *Track Hubs → Connected Hubs* box.

UCSC's ``hubCheck`` is not available as a Python package; :func:`check_hub` checks what it
would reject in files like ours (required settings, track names, parents, subgroups, label
lengths).

Examples
--------
>>> t = [HubTrack("E003", "H3K4me3", "tracks/E003.H3K4me3.imputed.bw")]
>>> files = render_hub("demo", "hg19", t)
>>> sorted(files)
['genomes.txt', 'hub.txt', 'trackDb.txt']
>>> check_hub(files)
>>> "bigDataUrl tracks/E003.H3K4me3.imputed.bw" in files["trackDb.txt"]
True
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from urllib.parse import quote, urljoin

from . import layout, storage, tensor
from .download import list_outputs
from .errors import PredictdError
from .layout import HUB_FILE, HUB_FILES

__all__ = [
    "HubTrack",
    "browser_access",
    "check_hub",
    "hub_url",
    "imputed_tracks",
    "observed_tracks",
    "parse_ra",
    "render_hub",
    "s3_https_url",
    "write_hub",
]

log = logging.getLogger("predictd.hub")

#: The browser cuts longer labels (hubCheck warns beyond these lengths).
SHORT_LABEL_MAX = 17
LONG_LABEL_MAX = 76
#: Subtracks switched on when the hub is first loaded (the rest are one click away in the
#: composite's matrix); loading thousands of bigWigs at once would stall the browser.
DEFAULT_ON = 10
DEFAULT_EMAIL = "none@example.org"

_TRACK_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_GENOME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_TAG_RE = re.compile(r"[^A-Za-z0-9_]")
# Conventional colours of the common histone marks (as in Roadmap/ENCODE browser sessions);
# other assays cycle through the palette below.
_MARK_COLORS = {
    "H3K4me3": "255,0,0", "H3K4me2": "255,90,40", "H3K4me1": "230,180,0",
    "H3K27ac": "255,140,0", "H3K9ac": "200,80,80", "H3K36me3": "0,140,0",
    "H3K79me2": "100,170,60", "H3K27me3": "120,120,120", "H3K9me3": "60,60,200",
    "H4K20me1": "120,60,160", "H2A.Z": "0,150,150", "DNase": "0,110,200",
    "ATAC": "0,110,200", "CTCF": "160,0,160",
}
_PALETTE = ("31,119,180", "214,39,40", "44,160,44", "148,103,189", "255,127,14",
            "140,86,75", "227,119,194", "127,127,127", "188,189,34", "23,190,207")


@dataclass(frozen=True)
class HubTrack:
    """One bigWig of the hub.

    Parameters
    ----------
    cell_type, assay : str
    url : str
        ``bigDataUrl``: relative to the hub (``tracks/...``) or an absolute http(s) URL.
    kind : str
        ``"imputed"`` or ``"observed"``.
    """

    cell_type: str
    assay: str
    url: str
    kind: str = "imputed"


# --------------------------------------------------------------------------- URLs
def s3_https_url(uri: str, endpoint: str | None = None) -> str:
    """The HTTPS URL of an ``s3://`` object, as a browser would fetch it.

    ``endpoint`` (default: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, as boto3 reads them)
    is an S3-compatible store's URL, used path style; empty means AWS itself, virtual-hosted
    style (path style for bucket names with dots, which do not match AWS's TLS certificate).

    Examples
    --------
    >>> s3_https_url("s3://my-bucket/run 1/hub.txt", endpoint="")
    'https://my-bucket.s3.amazonaws.com/run%201/hub.txt'
    >>> s3_https_url("s3://b/k.bw", endpoint="http://127.0.0.1:9000")
    'http://127.0.0.1:9000/b/k.bw'
    """
    bucket, _, key = storage.parse_uri(uri)[1].partition("/")
    key = quote(key, safe="/~")
    if endpoint is None:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        return f"{endpoint.rstrip('/')}/{bucket}/{key}".rstrip("/")
    if "." in bucket:
        return f"https://s3.amazonaws.com/{bucket}/{key}".rstrip("/")
    return f"https://{bucket}.s3.amazonaws.com/{key}".rstrip("/")


def gcs_https_url(uri: str, endpoint: str | None = None) -> str:
    """The HTTPS URL of a ``gs://`` object, as a browser would fetch it (``endpoint``, default
    ``STORAGE_EMULATOR_HOST``, replaces ``https://storage.googleapis.com``).

    >>> gcs_https_url("gs://my-bucket/run 1/hub.txt", endpoint="")
    'https://storage.googleapis.com/my-bucket/run%201/hub.txt'
    """
    bucket, _, key = storage.parse_uri(uri)[1].partition("/")
    if endpoint is None:
        endpoint = os.environ.get("STORAGE_EMULATOR_HOST", "")
    base = endpoint.rstrip("/") or "https://storage.googleapis.com"
    if endpoint:  # emulators serve objects under the JSON API's download path
        return f"{base}/download/storage/v1/b/{bucket}/o/{quote(key, safe='')}?alt=media"
    return f"{base}/{bucket}/{quote(key, safe='/~')}".rstrip("/")


def hub_url(out: str, url_base: str | None = None) -> str | None:
    """The URL to paste into the browser for a hub written at ``out`` (None for a local
    directory without ``url_base``: it must be served first)."""
    if url_base:
        return f"{url_base.rstrip('/')}/{HUB_FILE}"
    scheme = storage.parse_uri(out)[0]
    if scheme == "s3":
        return s3_https_url(layout.hub_file(out))
    if scheme == "az":
        return storage.azure_url(layout.hub_file(out))
    if scheme == "gs":
        return gcs_https_url(layout.hub_file(out))
    return None


def _check_url_base(url_base: str | None) -> str | None:
    if url_base is None:
        return None
    if storage.parse_uri(url_base)[0] not in ("http", "https"):
        raise PredictdError(f"--url-base {url_base}: must be an http(s):// URL (where OUT is "
                            "served)")
    return url_base.rstrip("/")


# --------------------------------------------------------------------------- tracks
def imputed_tracks(out: str, url_base: str | None = None) -> list[HubTrack]:
    """The imputed tracks found at ``out``, with bigDataUrls relative to the hub (or under
    ``url_base``)."""
    base = _check_url_base(url_base)
    # uncertainty tracks (standard deviations) are not signal: the hub shows the imputations
    out_files = [f for f in list_outputs(out) if f.is_track and f.kind == "imputed"]
    return [HubTrack(f.cell_type, f.assay,
                     f"{base}/{quote(f.path, safe='/')}" if base else quote(f.path, safe="/"))
            for f in out_files]


def observed_tracks(manifest: str) -> list[HubTrack]:
    """The observed tracks of a manifest, as URLs a browser can fetch.

    ``http(s)://`` URIs are used as they are, ``s3://``, ``gs://`` and Azure ones become HTTPS
    URLs (see :func:`s3_https_url`, :func:`gcs_https_url` and :func:`predictd.storage.azure_url`;
    the objects must be publicly readable). Local files cannot be shown:
    they raise a PredictdError naming the row.
    """
    from .manifest import read_manifest

    if storage.is_remote(manifest):
        from .ingest import scratch_dir

        local = storage.fetch_to_local(manifest, scratch_dir())
        tracks = read_manifest(local, base=manifest.rsplit("/", 1)[0])
    else:
        tracks = read_manifest(manifest)
    out = []
    for t in tracks:
        scheme = storage.parse_uri(t.uri)[0]
        if scheme in ("http", "https"):
            url = t.uri
        elif scheme == "s3":
            url = s3_https_url(t.uri)
        elif scheme == "az":
            url = storage.azure_url(t.uri)
        elif scheme == "gs":
            url = gcs_https_url(t.uri)
        else:
            raise PredictdError(
                f"{manifest}, row {t.row} ({t.name}): {t.uri} is a local file, which the "
                "genome browser cannot fetch; list it by an http(s)://, s3://, gs:// or az:// URI")
        out.append(HubTrack(t.cell_type, t.assay, url, "observed"))
    return out


# --------------------------------------------------------------------------- rendering
def _label(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "~"


def _tag(name: str) -> str:
    """A subgroup tag / track-name part: letters, digits and underscores only."""
    tag = _TAG_RE.sub("_", name)
    return tag if tag[:1].isalpha() else f"x{tag}"


def _colors(assays: list[str]) -> dict[str, str]:
    out, i = {}, 0
    for a in assays:
        if a in _MARK_COLORS:
            out[a] = _MARK_COLORS[a]
        else:
            out[a] = _PALETTE[i % len(_PALETTE)]
            i += 1
    return out


def _stanza(pairs: list[tuple[str, str]], indent: str = "") -> str:
    return "".join(f"{indent}{k} {v}\n" for k, v in pairs) + "\n"


def _track_stanzas(tracks: list[HubTrack], kind: str, composite: bool, names: set[str],
                   colors: dict[str, str]) -> list[str]:
    if not tracks:
        return []
    suffix = "imp" if kind == "imputed" else "obs"
    parent = f"predictd_{kind}"
    tracks = sorted(tracks, key=lambda t: (t.cell_type, t.assay))
    cells = sorted({t.cell_type for t in tracks})
    assays = sorted({t.assay for t in tracks})
    out = []
    if composite:
        cell_tags, assay_tags = _tags(cells), _tags(assays)
        out.append(_stanza([
            ("track", parent),
            ("compositeTrack", "on"),
            ("shortLabel", _label(f"predictd {kind}", SHORT_LABEL_MAX)),
            ("longLabel", _label(f"predictd {kind} signal: {len(cells)} cell types x "
                                 f"{len(assays)} assays", LONG_LABEL_MAX)),
            ("type", "bigWig"),
            ("subGroup1", "cell Cell_type " + " ".join(f"{cell_tags[c]}={c}" for c in cells)),
            ("subGroup2", "assay Assay " + " ".join(f"{assay_tags[a]}={a}" for a in assays)),
            ("dimensions", "dimX=assay dimY=cell"),
            ("sortOrder", "cell=+ assay=+"),
            ("dragAndDrop", "subTracks"),
            ("visibility", "full" if kind == "imputed" else "hide"),
            ("autoScale", "on"),
            ("windowingFunction", "mean"),
            ("maxHeightPixels", "100:32:8"),
        ]))
    for i, t in enumerate(tracks):
        name = _unique_tag(f"{_tag(t.cell_type)}_{_tag(t.assay)}_{suffix}", names)
        names.add(name)
        on = i < DEFAULT_ON
        pairs = [("track", name)]
        if composite:
            pairs += [("parent", f"{parent} {'on' if on else 'off'}"),
                      ("subGroups", f"cell={cell_tags[t.cell_type]} "
                                    f"assay={assay_tags[t.assay]}")]
        pairs += [
            ("shortLabel", _label(f"{t.cell_type} {t.assay}", SHORT_LABEL_MAX)),
            ("longLabel", _label(f"{t.cell_type} {t.assay} ({kind}, predictd)",
                                 LONG_LABEL_MAX)),
            ("type", "bigWig"),
            ("bigDataUrl", t.url),
            ("color", colors[t.assay]),
        ]
        if not composite:
            pairs += [("visibility", "full" if on and kind == "imputed" else "hide"),
                      ("autoScale", "on"), ("windowingFunction", "mean")]
        out.append(_stanza(pairs, indent="    " if composite else ""))
    return out


def _tags(names: list[str]) -> dict[str, str]:
    """Distinct subgroup tags for names that may differ only in characters tags cannot hold."""
    taken: set[str] = set()
    out = {}
    for n in names:
        out[n] = _unique_tag(_tag(n), taken)
        taken.add(out[n])
    return out


def _unique_tag(tag: str, taken: set[str]) -> str:
    if tag not in taken:
        return tag
    i = 2
    while f"{tag}_{i}" in taken:
        i += 1
    return f"{tag}_{i}"


def render_hub(name: str, genome: str, imputed: list[HubTrack],
               observed: list[HubTrack] = (), email: str = DEFAULT_EMAIL,
               composite: bool = True, description_url: str | None = None) -> dict[str, str]:
    """The hub's three files as text (pure: nothing is written).

    Parameters
    ----------
    name : str
        Short name of the run (labels; the hub id is derived from it).
    genome : str
        UCSC assembly name (``hg38``).
    imputed, observed : list of HubTrack
    email : str
        Contact shown by the browser (the hub format requires one).
    composite : bool, default True
        One composite track per kind with a cell type × assay matrix; False writes one
        top-level track per file.
    description_url : str, optional
        ``descriptionUrl`` of the hub (e.g. ``report/index.html``).

    Returns
    -------
    dict
        ``{"hub.txt": ..., "genomes.txt": ..., "trackDb.txt": ...}``.
    """
    if not _GENOME_RE.match(genome or ""):
        raise PredictdError(f"genome {genome!r} is not a UCSC assembly name (like hg38); give "
                            "--genome")
    if not imputed and not observed:
        raise PredictdError("no tracks for the hub")
    if not email or any(c.isspace() for c in email):
        raise PredictdError(f"hub email {email!r}: must be one word (an address)")
    hub_id = _tag(f"predictd_{name}")
    hub = [("hub", hub_id),
           ("shortLabel", _label(f"predictd {name}", SHORT_LABEL_MAX)),
           ("longLabel", _label(f"predictd imputed epigenomic tracks: {name} ({genome})",
                                LONG_LABEL_MAX)),
           ("genomesFile", "genomes.txt"),
           ("email", email)]
    if description_url:
        hub.append(("descriptionUrl", description_url))
    colors = _colors(sorted({t.assay for t in [*imputed, *observed]}))
    names: set[str] = {"predictd_imputed", "predictd_observed"}
    stanzas = (_track_stanzas(list(imputed), "imputed", composite, names, colors)
               + _track_stanzas(list(observed), "observed", composite, names, colors))
    return {
        "hub.txt": _stanza(hub).rstrip("\n") + "\n",
        "genomes.txt": _stanza([("genome", genome), ("trackDb", "trackDb.txt")]),
        "trackDb.txt": "".join(stanzas),
    }


def _check_assembly(out: str, genome: str) -> None:
    """Warn when a bundled assembly (hg19, hg38, mm10) does not have the run's chromosomes
    at their lengths (read from the run's tensor, when it is there): the browser would draw
    nothing there, or draw it at the wrong place. A warning, not an error: a hub of a run on
    a toy genome still shows how the hub works."""
    from .genome import BUNDLED_GENOMES, load_genome
    if genome not in BUNDLED_GENOMES or not storage.exists(
            storage.join(layout.tensor_dir(out), "header.json")):
        return
    sizes = load_genome(genome).sizes
    for chrom, length in tensor.read_header(layout.tensor_dir(out)).genome["chroms"]:
        if sizes.get(chrom) != length:
            log.warning("--genome %s: the run's chromosome %s (%s bp) is not %s's%s; the "
                        "browser will not show the tracks there (give the assembly the run's "
                        "genome belongs to)", genome, chrom, f"{length:,}", genome,
                        f" ({sizes[chrom]:,} bp)" if chrom in sizes else "")
            return


def _run_genome(out: str) -> str | None:
    uri = layout.run_file(out)
    if not storage.exists(uri):
        return None
    try:
        return json.loads(storage.read_text(uri))["genome"]["name"]
    except (ValueError, KeyError, TypeError):
        return None


def write_hub(out: str, genome: str | None = None, url_base: str | None = None,
              observed_manifest: str | None = None, email: str = DEFAULT_EMAIL,
              composite: bool = True, public: bool = False,
              name: str | None = None) -> list[str]:
    """Write hub.txt, genomes.txt and trackDb.txt for the run at ``out``.

    Parameters
    ----------
    out : str
        The run's output prefix (local directory or object-store prefix); the hub is written there.
    genome : str, optional
        UCSC assembly name; default: the run's genome (from run.json) when it is a named
        assembly.
    url_base : str, optional
        Public http(s) URL of ``out``: bigDataUrls become absolute under it. Default: relative
        to the hub.
    observed_manifest : str, optional
        Also show the observed tracks of this manifest (their URIs must be http(s), s3, gs or Azure).
    email, composite, name
        See :func:`render_hub` (``name`` defaults to the last component of ``out``).
    public : bool, default False
        Make the hub files public-read (S3, GCS: per object; Azure: the container's blobs). The
        tracks must be readable too.

    On an object store the hub file, the first imputed track and the first observed one are
    then fetched anonymously, as the genome browser fetches them (:func:`browser_access`): with
    ``public`` a refusal raises a PredictdError saying what to change (the hub files are
    written); without, it is a warning.

    Returns
    -------
    list of str
        URIs written: the track index (``tracks.json``, see :mod:`predictd.layout`) and the
        three hub files.
    """
    if storage.parse_uri(out)[0] != "file" and not storage.is_object_store(out):
        raise PredictdError(f"cannot write a hub to {storage.display_uri(out)}: give the run's "
                            "local directory, s3://, gs:// or az:// prefix")
    imputed = imputed_tracks(out, url_base)  # first: a wrong OUT is the likeliest mistake
    run_genome = _run_genome(out)
    if genome is None:
        genome = run_genome
        if genome is None or not _GENOME_RE.match(genome):
            raise PredictdError(f"{out}: the run's genome {genome!r} is not a UCSC assembly "
                                "name; give --genome (e.g. hg38)")
    elif run_genome and _GENOME_RE.match(run_genome) and run_genome != genome:
        raise PredictdError(f"--genome {genome}: the run at {out} is on {run_genome}; its "
                            "tracks would be drawn at the wrong coordinates")
    _check_assembly(out, genome)
    observed = observed_tracks(observed_manifest) if observed_manifest else []
    name = name or os.path.basename(storage.parse_uri(out)[1].rstrip("/")) or "run"
    desc = None
    if storage.exists(layout.report_page(out)):
        page = layout.REPORT_PAGE
        desc = f"{url_base.rstrip('/')}/{page}" if url_base else page
    files = render_hub(name, genome, imputed, observed, email=email, composite=composite,
                       description_url=desc)
    check_hub(files)
    # The hub publishes OUT over HTTP; the index lets `predictd list/download` read it there.
    written = [layout.write_track_index(out, public=public)]
    for fname in HUB_FILES:
        uri = layout.hub_file(out, fname)
        storage.write_text_atomic(uri, files[fname], public=public)
        written.append(uri)
    if storage.is_object_store(out):
        _check_browser_access(out, url_base, imputed, observed, public, observed_manifest)
    return written


def browser_access(out: str, url_base: str | None, tracks: list[HubTrack]
                   ) -> list[tuple[str, bool | None, str]]:
    """What the genome browser fetches, asked as it asks (anonymously,
    :func:`predictd.storage.anonymous_read`): the hub file of ``out`` and each of ``tracks``,
    their URLs resolved against the hub's. ``(url, readable, why not)`` each; [] when the hub
    has no URL yet (a local directory without ``url_base``)."""
    hub = hub_url(out, url_base)
    if hub is None:
        return []
    return [(u, *storage.anonymous_read(u)) for u in [hub] + [urljoin(hub, t.url) for t in tracks]]


def _check_browser_access(out, url_base, imputed, observed, public, observed_manifest):
    """After writing a hub on an object store: the hub file, the first imputed track and the
    first observed one, asked anonymously. With ``public`` (a hub for the browser) a refusal
    is an error naming what to change; without, a warning; a server that cannot be asked, a
    warning."""
    tracks = imputed[:1] + observed[:1]
    kinds = ["hub"] + [t.kind for t in tracks]
    for (url, ok, why), kind in zip(browser_access(out, url_base, tracks), kinds):
        if ok:
            continue
        if ok is None:
            log.warning("could not check that the genome browser can read %s (%s)", url, why)
            continue
        if kind == "hub":
            fix = ("the hub files were written public-read but are still refused: the bucket "
                   "blocks public access (S3 Block Public Access, or ACLs disabled); grant "
                   "read with a bucket policy instead" if public else
                   "the hub files are private and the browser reads hubs anonymously: use "
                   "--public (and run the pipeline with --public) or a bucket policy")
        elif kind == "imputed":
            fix = ("the run's tracks are private: run the same `predictd run` command again "
                   "with --public (it makes the finished run's tracks public without "
                   "recomputing them), or grant read with a bucket policy")
        else:
            fix = f"the observed tracks of {observed_manifest} must be readable by anyone"
        if not public:
            log.warning("the genome browser cannot read %s (%s): %s", url, why, fix)
            return
        raise PredictdError(f"the hub is written, but the genome browser cannot read {url} "
                            f"({why}): {fix}")


# --------------------------------------------------------------------------- checking
def parse_ra(text: str, where: str = "") -> list[dict[str, str]]:
    """Parse "ra" text into stanzas (``{setting: value}``, in order; ``__line__`` holds the
    1-based line of each stanza's first setting).

    Blank lines end a stanza; ``#`` starts a comment line; a trailing ``\\`` continues a line.
    A setting given twice in one stanza is an error.
    """
    stanzas, cur, pending, pending_line = [], {}, "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if pending:
            line = pending + " " + line
        if line.endswith("\\"):
            pending, pending_line = line[:-1].rstrip(), pending_line or n
            continue
        line_no, pending, pending_line = pending_line or n, "", 0
        if not line:
            if cur:
                stanzas.append(cur)
                cur = {}
            continue
        if line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key in cur:
            raise PredictdError(f"{where} line {line_no}: {key!r} given twice in one stanza")
        if not cur:
            cur["__line__"] = str(line_no)
        cur[key] = value.strip()
    if pending:
        raise PredictdError(f"{where}: file ends inside a '\\' continuation")
    if cur:
        stanzas.append(cur)
    return stanzas


def check_hub(files: dict[str, str]) -> None:
    """Check hub files for what UCSC's hubCheck rejects (our stand-in; hubCheck itself is not
    installable from PyPI).

    Checks: hub.txt has ``hub``, ``shortLabel``, ``longLabel``, ``genomesFile``, ``email``;
    the genomes file and every ``trackDb`` it names exist; every trackDb stanza starts with a
    unique, valid ``track`` name and has ``shortLabel``, ``longLabel`` and ``type``; data tracks
    have ``bigDataUrl``; ``parent`` names an earlier composite; ``subGroups`` give a defined
    value for every subgroup of the parent; ``dimensions`` and ``sortOrder`` name defined
    subgroups; labels fit the browser's lengths.

    Raises
    ------
    PredictdError
        On the first problem, naming the file and line.
    """
    hub = parse_ra(files.get("hub.txt", ""), "hub.txt")
    if len(hub) != 1:
        raise PredictdError(f"hub.txt: expected one stanza, found {len(hub)}")
    hub = hub[0]
    for key in ("hub", "shortLabel", "longLabel", "genomesFile", "email"):
        if not hub.get(key):
            raise PredictdError(f"hub.txt: missing {key!r}")
    if hub["hub"].startswith("hub ") or " " in hub["hub"]:
        raise PredictdError(f"hub.txt: hub name {hub['hub']!r} must be one word")
    _check_label("hub.txt", hub)
    gfile = hub["genomesFile"]
    if gfile not in files:
        raise PredictdError(f"hub.txt: genomesFile {gfile} is missing")
    genomes = parse_ra(files[gfile], gfile)
    if not genomes:
        raise PredictdError(f"{gfile}: no genome stanza")
    for g in genomes:
        where = f"{gfile} line {g['__line__']}"
        if next(iter(k for k in g if k != "__line__")) != "genome":
            raise PredictdError(f"{where}: a stanza must start with 'genome'")
        if not g.get("genome") or not g.get("trackDb"):
            raise PredictdError(f"{where}: needs 'genome' and 'trackDb'")
        if g["trackDb"] not in files:
            raise PredictdError(f"{where}: trackDb {g['trackDb']} is missing")
        _check_trackdb(g["trackDb"], files[g["trackDb"]])


def _check_label(where: str, st: dict) -> None:
    if len(st.get("shortLabel", "")) > SHORT_LABEL_MAX:
        raise PredictdError(f"{where}: shortLabel longer than {SHORT_LABEL_MAX} characters")
    if len(st.get("longLabel", "")) > LONG_LABEL_MAX:
        raise PredictdError(f"{where}: longLabel longer than {LONG_LABEL_MAX} characters")


def _subgroups(st: dict) -> dict[str, set[str]]:
    out = {}
    for key, value in st.items():
        if re.fullmatch(r"subGroup\d+", key):
            parts = value.split()
            if len(parts) < 3 or any("=" not in p for p in parts[2:]):
                raise PredictdError(f"{key} {value!r}: expected 'name Title tag=Title ...'")
            out[parts[0]] = {p.split("=", 1)[0] for p in parts[2:]}
    return out


def _check_trackdb(fname: str, text: str) -> None:
    stanzas = parse_ra(text, fname)
    if not stanzas:
        raise PredictdError(f"{fname}: no tracks")
    seen: dict[str, dict] = {}
    for st in stanzas:
        where = f"{fname} line {st['__line__']}"
        first = next(iter(k for k in st if k != "__line__"))
        if first != "track":
            raise PredictdError(f"{where}: a stanza must start with 'track', not {first!r}")
        name = st["track"]
        if not _TRACK_NAME_RE.match(name):
            raise PredictdError(f"{where}: track name {name!r} must start with a letter and "
                                "hold only letters, digits and '_'")
        if name in seen:
            raise PredictdError(f"{where}: track {name!r} defined twice")
        for key in ("shortLabel", "longLabel", "type"):
            if not st.get(key):
                raise PredictdError(f"{where}: track {name} has no {key!r}")
        _check_label(f"{where} ({name})", st)
        is_composite = st.get("compositeTrack") == "on"
        if not is_composite and not st.get("bigDataUrl"):
            raise PredictdError(f"{where}: data track {name} has no 'bigDataUrl'")
        if is_composite:
            groups = _subgroups(st)
            for key in ("dimensions", "sortOrder"):
                for part in st.get(key, "").split():
                    group = part.split("=", 1)[1].rstrip("+-") if key == "dimensions" \
                        else part.split("=", 1)[0]
                    if group not in groups:
                        raise PredictdError(f"{where}: {key} of {name} names undefined "
                                            f"subgroup {group!r}")
        if "parent" in st:
            pname, *state = st["parent"].split()
            parent = seen.get(pname)
            if parent is None or parent.get("compositeTrack") != "on":
                raise PredictdError(f"{where}: parent {pname!r} of {name} is not an earlier "
                                    "composite track")
            if state and state[0] not in ("on", "off"):
                raise PredictdError(f"{where}: parent state {state[0]!r} (use on or off)")
            groups = _subgroups(parent)
            given = dict(p.split("=", 1) for p in st.get("subGroups", "").split() if "=" in p)
            for group, tags in groups.items():
                if given.get(group) not in tags:
                    raise PredictdError(f"{where}: subGroups of {name} must give {group} one of "
                                        f"{sorted(tags)[:5]}")
        seen[name] = st
