#!/usr/bin/env python
"""Regenerate the bundled manifests from the Avocado track lists.

Usage::

    python data_manifests/build.py [--source DIR] [--out DIR]

``--source`` defaults to ``$PREDICTD_SHARED/data/manifests`` (or ``<repo>/../shared/data/manifests``)
and must hold ``roadmap-biosamples.tsv``, ``roadmap-assays.tsv``, ``ENCODE2018Core.tsv`` and
``LICENSE-avocado``. Outputs (in ``--out``, default: this script's directory):

- ``roadmap_consolidated_pval.tsv`` — the five core marks of every Roadmap epigenome plus the
  extra observed pairs listed in ``roadmap_observed.tsv`` (a curated input; see README.md);
- ``encode2018_core.tsv`` — every track of ENCODE2018Core.tsv with file-name-safe names;
- ``LICENSE-avocado`` — copied verbatim.

Each output is re-read with :func:`predictd.manifest.read_manifest` before the script exits, so a
generated file is always a valid manifest. Output is deterministic: same inputs, same bytes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from predictd.errors import PredictdError  # noqa: E402
from predictd.manifest import read_manifest  # noqa: E402
from predictd.names import check_cell_type, check_name  # noqa: E402

ROADMAP_URL = (
    "https://egg2.wustl.edu/roadmap/data/byFileType/signal/consolidated/macs2signal/pval/"
    "{eid}-{mark}.pval.signal.bigwig"
)
ENCODE_PORTAL = "https://www.encodeproject.org"
# Every consolidated Roadmap epigenome was, by construction, profiled for these five marks.
ROADMAP_CORE_MARKS = ("H3K4me1", "H3K4me3", "H3K27me3", "H3K36me3", "H3K9me3")


def default_source() -> Path:
    shared = os.environ.get("PREDICTD_SHARED", str(HERE.parent.parent / "shared"))
    return Path(shared) / "data" / "manifests"


def read_table(path: Path, header: bool = True) -> list[dict[str, str]] | list[list[str]]:
    """Tab-separated lines of a file, skipping blanks and ``#`` comments; dicts if ``header``."""
    lines = [
        ln.rstrip("\r\n").split("\t")
        for ln in path.read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    if not header:
        return lines
    cols = [c.strip() for c in lines[0]]
    return [dict(zip(cols, (v.strip() for v in ln))) for ln in lines[1:]]


def write_tsv(path: Path, columns: list[str], rows: list[list[str]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write("\t".join(columns) + "\n")
        for r in rows:
            assert not any(("\t" in v or "\n" in v) for v in r), r
            fh.write("\t".join(r) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------- Roadmap

def build_roadmap(source: Path, out: Path) -> int:
    marks = [ln[0].strip() for ln in read_table(source / "roadmap-assays.tsv", header=False)]
    samples = read_table(source / "roadmap-biosamples.tsv")
    eid_col = "Epigenome ID (EID)"
    names = {
        s[eid_col]: (
            " ".join(s["Standardized Epigenome name"].split()),
            s.get("ANATOMY", ""),
        )
        for s in samples
        if s.get(eid_col)
    }
    observed: dict[tuple[str, str], str] = {(e, m): "core" for e in names for m in ROADMAP_CORE_MARKS}
    for r in read_table(HERE / "roadmap_observed.tsv"):
        key = (r["cell_type"], r["assay"])
        if key[0] not in names:
            raise SystemExit(f"roadmap_observed.tsv: unknown epigenome {key[0]}")
        if key[1] not in marks:
            raise SystemExit(f"roadmap_observed.tsv: mark {key[1]} not in roadmap-assays.tsv")
        if key in observed:
            raise SystemExit(f"roadmap_observed.tsv: {key[0]}-{key[1]} listed twice or is core")
        observed[key] = r["source"]

    mark_order = {m: i for i, m in enumerate(marks)}
    rows = []
    for eid, mark in sorted(observed, key=lambda k: (k[0], mark_order[k[1]])):
        name, anatomy = names[eid]
        rows.append(
            [eid, mark, ROADMAP_URL.format(eid=eid, mark=mark), f"{eid}-{mark}", name, anatomy]
        )
    path = out / "roadmap_consolidated_pval.tsv"
    write_tsv(path, ["cell_type", "assay", "uri", "accession", "cell_type_name", "anatomy"], rows)
    return len(read_manifest(str(path)))


# ----------------------------------------------------------------------------------------- ENCODE

_ASSAY_RULES = (
    (re.compile(r"^ChIP-seq_(.+)_signal_p-value$"), r"\1"),
    (re.compile(r"^DNase-seq_.*$"), "DNase"),
    (re.compile(r"^ATAC-seq_.*$"), "ATAC"),
    (re.compile(r"^(.+)_(plus|minus)_strand_signal_of_all_reads$"), r"\1_\2"),
)


def safe_name(text: str) -> str:
    """Runs of characters outside ``[A-Za-z0-9.+-]`` become one ``_``; no leading/trailing ``_``/``.``.

    >>> safe_name("common myeloid progenitor, CD34-positive")
    'common_myeloid_progenitor_CD34-positive'
    >>> safe_name("Peyer's patch")
    'Peyer_s_patch'
    """
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_").lstrip(".")


def encode_assay_name(assay: str) -> str:
    """Short, safe assay name of an ENCODE2018Core ``Assay`` value.

    >>> encode_assay_name("ChIP-seq_H3K79me2_signal_p-value")
    'H3K79me2'
    >>> encode_assay_name("DNase-seq_read-depth_normalized_signal")
    'DNase'
    >>> encode_assay_name("polyA_RNA-seq_minus_strand_signal_of_all_reads")
    'polyA_RNA-seq_minus'
    """
    for pattern, repl in _ASSAY_RULES:
        if pattern.match(assay):
            return safe_name(pattern.sub(repl, assay))
    return safe_name(assay)


def build_encode(source: Path, out: Path) -> tuple[int, int]:
    rows = read_table(source / "ENCODE2018Core.tsv")
    indices: dict[str, set[str]] = {}
    for r in rows:
        indices.setdefault(r["Biosample"], set()).add(r["Biosample Index"])

    # One Avocado biosample index per distinct biosample summary (donor, treatment...). Biosamples
    # with one index keep the bare safe name; the others get "_<index>" on every one of their
    # indices so that none of them silently stands for the whole biosample.
    # A cell type may not contain a dot (experiment names split at their first dot): MM.1S -> MM_1S.
    def cell_type_of(r):
        base = safe_name(r["Biosample"]).replace(".", "_")
        return base if len(indices[r["Biosample"]]) == 1 else f"{base}_{r['Biosample Index']}"

    safe_to_biosample: dict[str, str] = {}
    assay_to_original: dict[str, str] = {}
    chosen: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:
        ct, assay = cell_type_of(r), encode_assay_name(r["Assay"])
        check_cell_type(ct, "cell_type", f"ENCODE2018Core biosample {r['Biosample']!r}: ")
        check_name(assay, "assay", f"ENCODE2018Core assay {r['Assay']!r}: ")
        # Two different originals must never collapse onto one safe name.
        if safe_to_biosample.setdefault(ct, r["Biosample"]) != r["Biosample"]:
            raise SystemExit(f"safe name {ct} shared by {r['Biosample']} and {safe_to_biosample[ct]}")
        if assay_to_original.setdefault(assay, r["Assay"]) != r["Assay"]:
            raise SystemExit(f"safe assay {assay} shared by {r['Assay']} and {assay_to_original[assay]}")
        key = (ct, assay)
        # Duplicate (cell_type, assay): keep the smallest accession so reruns agree.
        if key not in chosen or r["Accession"] < chosen[key]["Accession"]:
            chosen[key] = r
    dropped = len(rows) - len(chosen)

    out_rows = []
    for (ct, assay), r in sorted(chosen.items()):
        out_rows.append(
            [
                ct,
                assay,
                ENCODE_PORTAL + r["Download URL"],
                r["Accession"],
                r["Biosample"],
                r["Biosample Index"],
                r["Biosample summary"],
                r["Assay"],
            ]
        )
    path = out / "encode2018_core.tsv"
    columns = ["cell_type", "assay", "uri", "accession", "biosample", "biosample_index",
               "biosample_summary", "assay_original"]
    write_tsv(path, columns, out_rows)
    return len(read_manifest(str(path))), dropped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=default_source())
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    for name in ("roadmap-biosamples.tsv", "roadmap-assays.tsv", "ENCODE2018Core.tsv",
                 "LICENSE-avocado"):
        if not (args.source / name).is_file():
            print(f"error: {args.source / name} not found (set --source or PREDICTD_SHARED)",
                  file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        n_roadmap = build_roadmap(args.source, args.out)
        n_encode, dropped = build_encode(args.source, args.out)
    except PredictdError as exc:
        print(f"error: generated manifest is invalid: {exc}", file=sys.stderr)
        return 1
    shutil.copyfile(args.source / "LICENSE-avocado", args.out / "LICENSE-avocado")
    print(f"roadmap_consolidated_pval.tsv: {n_roadmap} tracks")
    print(f"encode2018_core.tsv: {n_encode} tracks ({dropped} duplicate rows dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
