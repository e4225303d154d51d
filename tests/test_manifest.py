"""Manifest parsing, validation, writing and checksums."""

import os
import re

import pytest

from predictd.errors import PredictdError
from predictd.names import check_name
from predictd.manifest import (
    Track,
    manifest_checksum,
    read_manifest,
    uri_scheme,
    write_manifest,
)

MD5 = "0f343b0931126a20f133d67c2b018a3b"


def write(tmp_path, text, name="m.tsv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def tsv(*rows):
    return "".join("\t".join(r) + "\n" for r in rows)


HEADER = ("cell_type", "assay", "uri")


# ------------------------------------------------------------------------------------ good files

def test_minimal_manifest_resolves_relative_paths(tmp_path):
    path = write(tmp_path, tsv(HEADER, ("E003", "H3K4me3", "a.bw"), ("E017", "H3K4me3", "sub/../b.bw")))
    tracks = read_manifest(path)
    assert [t.name for t in tracks] == ["E003.H3K4me3", "E017.H3K4me3"]
    assert tracks[0].uri == str(tmp_path / "a.bw")
    assert tracks[1].uri == str(tmp_path / "b.bw")
    assert [t.row for t in tracks] == [2, 3]
    assert tracks[0].md5 is None and tracks[0].accession is None
    assert not tracks[0].is_remote


def test_relative_paths_resolve_against_manifest_dir_not_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "deep" / "dir"
    sub.mkdir(parents=True)
    path = write(sub, tsv(HEADER, ("E003", "H3K4me3", "../x.bw")))
    monkeypatch.chdir(tmp_path)
    assert read_manifest(os.path.relpath(path))[0].uri == str(tmp_path / "deep" / "x.bw")


def test_base_override_local_and_remote(tmp_path):
    path = write(tmp_path, tsv(HEADER, ("E003", "H3K4me3", "tracks/a.bw"), ("E004", "DNase", "/abs/b.bw")))
    local = read_manifest(path, base=str(tmp_path / "elsewhere"))
    assert local[0].uri == str(tmp_path / "elsewhere" / "tracks" / "a.bw")
    assert local[1].uri == "/abs/b.bw"  # absolute paths ignore base
    # a remote manifest may not name local files (see tests/test_security.py)
    with pytest.raises(PredictdError, match=r"row 3: uri '/abs/b.bw' is a local path"):
        read_manifest(path, base="s3://bucket/runs/m1/")
    path = write(tmp_path, tsv(HEADER, ("E003", "H3K4me3", "tracks/a.bw")))
    remote = read_manifest(path, base="s3://bucket/runs/m1/")
    assert remote[0].uri == "s3://bucket/runs/m1/tracks/a.bw"
    assert remote[0].is_remote
    web = read_manifest(path, base="https://example.org/data")
    assert web[0].uri == "https://example.org/data/tracks/a.bw"


def test_optional_and_extra_columns_comments_whitespace(tmp_path):
    text = (
        "# a comment before the header\n"
        "\n"
        "cell_type\tassay\turi\tmd5\taccession\tnote\n"
        "# a comment between rows\n"
        f"  E003 \t H3K4me3\t https://h.org/x.bw \t{MD5.upper()}\tENCFF000AAA\tfirst\n"
        "   \n"
        "E017\tH2A.Z\ts3://bkt/k/y.bw\t\t\t\n"
    )
    tracks = read_manifest(write(tmp_path, text))
    t0, t1 = tracks
    assert (t0.cell_type, t0.assay, t0.uri) == ("E003", "H3K4me3", "https://h.org/x.bw")
    assert t0.md5 == MD5  # lower-cased
    assert t0.accession == "ENCFF000AAA"
    assert t0.row == 5 and t1.row == 7
    assert dict(t0.extra) == {"note": "first"}
    assert (t1.md5, t1.accession, t1.name) == (None, None, "E017.H2A.Z")
    assert t1.is_remote


def test_file_uris_become_absolute_paths(tmp_path):
    path = write(tmp_path, tsv(
        HEADER,
        ("A", "x", f"file://{tmp_path}/my%20file.bw"),
        ("B", "x", "file://localhost/data/b.bw"),
        ("C", "x", "file:rel/c.bw"),
    ))
    a, b, c = read_manifest(path)
    assert a.uri == str(tmp_path / "my file.bw")
    assert b.uri == "/data/b.bw"
    assert c.uri == str(tmp_path / "rel" / "c.bw")


def test_utf8_bom_and_crlf(tmp_path):
    p = tmp_path / "m.tsv"
    p.write_bytes("\ufeffcell_type\tassay\turi\r\nE1\tA\tx.bw\r\n".encode("utf-8"))
    (t,) = read_manifest(str(p))
    assert t.name == "E1.A" and t.uri == str(tmp_path / "x.bw")


def test_colon_in_local_file_name_is_not_a_scheme(tmp_path):
    (t,) = read_manifest(write(tmp_path, tsv(HEADER, ("E1", "A", "run:3.bw"))))
    assert t.uri == str(tmp_path / "run:3.bw")
    assert uri_scheme("run:3.bw") == "" and uri_scheme("S3://b/k") == "s3"


# ------------------------------------------------------------------------------------- bad files

def test_missing_file(tmp_path):
    with pytest.raises(PredictdError, match=r"manifest not found: .*nope\.tsv"):
        read_manifest(str(tmp_path / "nope.tsv"))


def test_directory(tmp_path):
    with pytest.raises(PredictdError, match="is a directory"):
        read_manifest(str(tmp_path))


def test_unreadable_bytes(tmp_path):
    p = tmp_path / "bin.tsv"
    p.write_bytes(b"cell_type\tassay\turi\n\xff\xfe\n")
    with pytest.raises(PredictdError, match=r"cannot read manifest .*bin\.tsv"):
        read_manifest(str(p))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_permission_denied(tmp_path):
    p = write(tmp_path, tsv(HEADER, ("a", "b", "c")))
    os.chmod(p, 0)
    with pytest.raises(PredictdError, match="cannot read manifest"):
        read_manifest(p)


@pytest.mark.parametrize(
    "text, culprit",
    [
        ("", r"m\.tsv is empty"),
        ("# just a comment\n\n", r"m\.tsv is empty"),
        ("cell_type\tassay\turi\n# nothing else\n", r"m\.tsv has a header but no data rows"),
        ("cell_type\turi\nA\tx\n", r"row 1 \(header\): missing required column\(s\) assay"),
        ("celltype\tmark\turl\nA\tB\tC\n",
         r"missing required column\(s\) cell_type, assay, uri"),
        ("cell_type\tassay\turi\tmd5\tmd5\nA\tB\tC\t\t\n", r"duplicate column\(s\) md5"),
        ("cell_type\tassay\turi\t\nA\tB\tC\t\n", r"column 4 has an empty name"),
        ("cell_type\tassay\turi\nA\tB\n", r"row 2: expected 3 tab-separated columns .* got 2"),
        ("cell_type\tassay\turi\nA\tB\tC\tD\n", r"row 2: expected 3 .* got 4"),
        ("cell_type assay uri\nA B C\n", r"missing required column"),
        ("cell_type\tassay\turi\nA\tB\tx.bw\n\t B\tx.bw\n", r"row 3: empty 'cell_type' field"),
        ("cell_type\tassay\turi\nA\t\tx.bw\n", r"row 2: empty 'assay' field"),
        ("cell_type\tassay\turi\nA\tB\t  \n", r"row 2: empty 'uri' field"),
        ("cell_type\tassay\turi\n"
         "E003\tH3K4me3\ta.bw\n"
         "# comment\n"
         "E017\tH3K4me3\tb.bw\n"
         "E003\tH3K4me3\tc.bw\n",
         r"row 5: duplicate track E003\.H3K4me3 \(also on row 2\)"),
        ("cell_type\tassay\turi\nE 003\tB\tx.bw\n", r"row 2: cell_type 'E 003' has characters unsafe"),
        ("cell_type\tassay\turi\nA\tH3K4/me3\tx.bw\n", r"row 2: assay 'H3K4/me3' has characters unsafe .*'/'"),
        ("cell_type\tassay\turi\n.hidden\tB\tx.bw\n", r"row 2: cell_type '\.hidden' must not start with '\.'"),
        ("cell_type\tassay\turi\nA\t..\tx.bw\n", r"row 2: assay '\.\.' must not start"),
        ("cell_type\tassay\turi\nE.003\tH3K4me3\tx.bw\n", r"row 2: cell_type 'E\.003' must not contain '\.'"),
        ("cell_type\tassay\turi\nA\tcafé\tx.bw\n", r"row 2: assay 'café' has characters unsafe"),
        ("cell_type\tassay\turi\nA\tB\tftp://h/x.bw\n", r"row 2: uri 'ftp://h/x.bw' has unsupported scheme 'ftp'"),
        ("cell_type\tassay\turi\nA\tB\tgs://bucket/\n", r"row 2: uri 'gs://bucket/' has no object key"),
        ("cell_type\tassay\turi\nA\tB\taz://container/\n", r"row 2: uri 'az://container/' has no blob path"),
        ("cell_type\tassay\turi\nA\tB\tabfss://c@bad.example.org/x.bw\n", r"row 2: Azure URI names its account wrongly"),
        ("cell_type\tassay\turi\nA\tB\thttps:///x.bw\n", r"row 2: uri 'https:///x.bw' has no host"),
        ("cell_type\tassay\turi\nA\tB\ts3://bucket/\n", r"row 2: uri 's3://bucket/' has no object key"),
        ("cell_type\tassay\turi\nA\tB\tfile://otherhost/x.bw\n", r"row 2: .*file:// URIs must be local"),
        ("cell_type\tassay\turi\tmd5\nA\tB\tx.bw\tabc123\n", r"row 2: md5 'abc123' is not 32 hex"),
        ("cell_type\tassay\turi\tmd5\nA\tB\tx.bw\t" + "g" * 32 + "\n", r"row 2: md5 'g+' is not 32"),
    ],
)
def test_bad_manifests_name_file_and_row(tmp_path, text, culprit):
    path = write(tmp_path, text)
    with pytest.raises(PredictdError, match=culprit) as err:
        read_manifest(path)
    assert path in str(err.value)
    assert "\n" not in str(err.value)


def test_check_name_direct():
    assert check_name("H2A.Z", "assay") == "H2A.Z"
    assert check_name("CD4+_T-cell", "cell_type") == "CD4+_T-cell"
    with pytest.raises(PredictdError, match="cell_type is empty"):
        check_name("", "cell_type")


# ----------------------------------------------------------------------------- write + checksum

def test_write_then_read_roundtrip(tmp_path):
    tracks = [
        Track("E003", "H3K4me3", str(tmp_path / "a.bw"), MD5, "ENCFF1", 0, (("note", "n1"),)),
        Track("E017", "DNase", "https://h.org/b.bw", None, None, 0, (("extra2", "z"),)),
    ]
    out = tmp_path / "out.tsv"
    write_manifest(tracks, str(out))
    lines = out.read_text().splitlines()
    assert lines[0] == "cell_type\tassay\turi\tmd5\taccession\tnote\textra2"
    back = read_manifest(str(out))
    assert back == [
        Track("E003", "H3K4me3", str(tmp_path / "a.bw"), MD5, "ENCFF1", 2),
        Track("E017", "DNase", "https://h.org/b.bw", None, None, 3),
    ]
    assert dict(back[0].extra) == {"note": "n1", "extra2": ""}
    assert manifest_checksum(back) == manifest_checksum(tracks)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_write_is_atomic_replace(tmp_path):
    out = tmp_path / "m.tsv"
    out.write_text("old content\n")
    write_manifest([Track("A", "B", "/x.bw")], str(out))
    assert out.read_text().startswith("cell_type\t")
    with pytest.raises(PredictdError, match="contains a tab or newline"):
        write_manifest([Track("A", "B", "/x\t.bw")], str(out))
    # A failed write leaves the previous file intact and no temp files behind.
    assert out.read_text().startswith("cell_type\t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tsv"]


def test_write_into_missing_directory(tmp_path):
    with pytest.raises((PredictdError, OSError)):
        write_manifest([Track("A", "B", "/x.bw")], str(tmp_path / "no" / "m.tsv"))


def test_checksum_stable_under_order_rows_and_extras():
    a = Track("A", "x", "/a.bw", MD5, "acc", 2, (("k", "1"),))
    b = Track("B", "x", "s3://b/k.bw", None, None, 3)
    c1 = manifest_checksum([a, b])
    assert re.fullmatch(r"[0-9a-f]{64}", c1)
    assert manifest_checksum([b, a]) == c1
    assert manifest_checksum([Track("A", "x", "/a.bw", MD5, "acc", 9), b]) == c1
    assert manifest_checksum([Track("A", "x", "/other.bw", MD5, "acc"), b]) != c1
    assert manifest_checksum([Track("A", "x", "/a.bw", None, "acc"), b]) != c1
    assert manifest_checksum([a]) != c1
