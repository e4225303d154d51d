"""The bundled manifests in data_manifests/ are valid and match their source lists."""

import csv
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from predictd.manifest import read_manifest

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "data_manifests"
CORE = {"H3K4me1", "H3K4me3", "H3K27me3", "H3K36me3", "H3K9me3"}


def header(path: Path) -> list[str]:
    return path.read_text().splitlines()[0].split("\t")


@pytest.fixture(scope="module")
def roadmap():
    return read_manifest(str(MANIFESTS / "roadmap_consolidated_pval.tsv"))


@pytest.fixture(scope="module")
def encode():
    return read_manifest(str(MANIFESTS / "encode2018_core.tsv"))


# ---------------------------------------------------------------------------------------- Roadmap

def test_roadmap_columns(roadmap):
    assert header(MANIFESTS / "roadmap_consolidated_pval.tsv") == [
        "cell_type", "assay", "uri", "accession", "cell_type_name", "anatomy"]
    assert all(t.md5 is None for t in roadmap)


def test_roadmap_counts(roadmap):
    eids = {t.cell_type for t in roadmap}
    assert len(eids) == 127
    assert "E060" not in eids and "E064" not in eids
    assert len(roadmap) == 819
    by_mark = Counter(t.assay for t in roadmap)
    assert {m: by_mark[m] for m in CORE} == {m: 127 for m in CORE}
    assert by_mark["H3K27ac"] == 98 and by_mark["DNase"] == 39 and by_mark["H3K9ac"] == 47
    assert len({(t.cell_type, t.assay) for t in roadmap}) == len(roadmap)


def test_roadmap_urls_and_accessions(roadmap):
    for t in roadmap:
        u = urlsplit(t.uri)
        assert (u.scheme, u.netloc) == ("https", "egg2.wustl.edu"), t
        assert u.path == (
            "/roadmap/data/byFileType/signal/consolidated/macs2signal/pval/"
            f"{t.cell_type}-{t.assay}.pval.signal.bigwig"
        )
        assert not u.query and not u.fragment
        assert t.accession == f"{t.cell_type}-{t.assay}"
        assert re.fullmatch(r"E\d{3}", t.cell_type)


def test_roadmap_names(roadmap):
    names = {t.cell_type: dict(t.extra)["cell_type_name"] for t in roadmap}
    assert names["E003"] == "H1 Cells"
    assert names["E116"].startswith("GM12878")
    assert names["E024"] == "ES-UCSF4 Cells"  # double space in the source normalised


def test_roadmap_matches_source_lists(roadmap, shared_path):
    src = shared_path("manifests")
    marks = [ln.strip() for ln in (src / "roadmap-assays.tsv").read_text().splitlines() if ln.strip()]
    with open(src / "roadmap-biosamples.tsv") as fh:
        eids = {r["Epigenome ID (EID)"] for r in csv.DictReader(fh, delimiter="\t")}
    assert len(marks) == 24
    assert {t.cell_type for t in roadmap} == eids
    assert {t.assay for t in roadmap} <= set(marks)


# ----------------------------------------------------------------------------------------- ENCODE

def test_encode_columns(encode):
    assert header(MANIFESTS / "encode2018_core.tsv") == [
        "cell_type", "assay", "uri", "accession", "biosample", "biosample_index",
        "biosample_summary", "assay_original"]


def test_encode_counts_and_uniqueness(encode):
    assert len(encode) > 3000
    assert len(encode) == 3814
    assert len({(t.cell_type, t.assay) for t in encode}) == len(encode)
    assert len({t.accession for t in encode}) == len(encode)


def test_encode_urls(encode):
    for t in encode:
        u = urlsplit(t.uri)
        assert (u.scheme, u.netloc) == ("https", "www.encodeproject.org"), t
        assert re.fullmatch(r"ENCFF[0-9A-Z]{6}", t.accession), t
        assert u.path == f"/files/{t.accession}/@@download/{t.accession}.bigWig", t
        assert not u.query and not u.fragment


def test_encode_name_mapping(encode):
    by_acc = {t.accession: t for t in encode}
    t = by_acc["ENCFF879WIV"]  # KMS-11, ChIP-seq_H3K79me2_signal_p-value
    extra = dict(t.extra)
    assert (t.cell_type, t.assay) == ("KMS-11", "H3K79me2")
    assert extra["biosample"] == "KMS-11" and extra["assay_original"] == "ChIP-seq_H3K79me2_signal_p-value"
    originals = {}
    for t in encode:
        e = dict(t.extra)
        # one safe assay name per original and back
        assert originals.setdefault(t.assay, e["assay_original"]) == e["assay_original"]
        assert t.cell_type.startswith(re.sub(r"[^A-Za-z0-9+-]+", "_", e["biosample"]).strip("_"))
    assert originals["DNase"] == "DNase-seq_read-depth_normalized_signal"
    assert originals["ATAC"] == "ATAC-seq_signal_p-value"
    assert originals["CAGE_plus"] == "CAGE_plus_strand_signal_of_all_reads"
    # K562 has several biosample indices: every one is suffixed, none is bare.
    k562 = {t.cell_type for t in encode if dict(t.extra)["biosample"] == "K562"}
    assert len(k562) > 1 and all(re.fullmatch(r"K562_J\d{3}", c) for c in k562)


def test_encode_matches_source(encode, shared_path):
    src = shared_path("manifests/ENCODE2018Core.tsv")
    with open(src) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert {r["Accession"] for r in rows} == {t.accession for t in encode}


# ---------------------------------------------------------------------------------------- build.py

def test_build_is_reproducible(tmp_path, shared_path):
    src = shared_path("manifests")
    res = subprocess.run(
        [sys.executable, str(MANIFESTS / "build.py"), "--source", str(src), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stderr
    for name in ("roadmap_consolidated_pval.tsv", "encode2018_core.tsv", "LICENSE-avocado"):
        assert (tmp_path / name).read_bytes() == (MANIFESTS / name).read_bytes(), name


def test_licence_and_readme_present():
    assert "Apache License" in (MANIFESTS / "LICENSE-avocado").read_text()
    readme = (MANIFESTS / "README.md").read_text()
    assert "Apache" in readme and "LICENSE-avocado" in readme and "Schreiber" in readme
