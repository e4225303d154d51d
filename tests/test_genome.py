"""Genome assemblies: bundled chrom.sizes, parsing user files, bins."""

import json

import pytest

from predictd.errors import PredictdError
from predictd.genome import BUNDLED_GENOMES, Genome, load_genome, parse_chrom_sizes

def write(tmp_path, text, name="g.chrom.sizes"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# ------------------------------------------------------------------------------- bundled genomes

@pytest.mark.parametrize(
    "name, n_chroms, known",
    [
        # Values checked against UCSC chrom.sizes files in public repositories (see genome.py).
        ("hg19", 25, {"chr1": 249250621, "chr22": 51304566, "chrX": 155270560,
                      "chrY": 59373566, "chrM": 16571}),
        ("hg38", 25, {"chr1": 248956422, "chr21": 46709983, "chrX": 156040895,
                      "chrY": 57227415, "chrM": 16569}),
        ("mm10", 22, {"chr1": 195471971, "chr19": 61431566, "chrX": 171031299,
                      "chrY": 91744698, "chrM": 16299}),
    ],
)
def test_bundled_genome_sizes(name, n_chroms, known):
    g = load_genome(name)
    assert g.name == name
    assert len(g.chroms) == n_chroms
    for chrom, size in known.items():
        assert g.sizes[chrom] == size


@pytest.mark.parametrize(
    "name, total",
    [("hg19", 3095693983), ("hg38", 3088286401), ("mm10", 2725537669)],
)
def test_bundled_genome_totals_and_primary_only(name, total):
    g = load_genome(name)
    assert sum(g.sizes.values()) == total
    n_auto = 22 if name != "mm10" else 19
    assert g.names == [f"chr{i}" for i in range(1, n_auto + 1)] + ["chrX", "chrY", "chrM"]
    assert not any(("_" in c or "Un" in c) for c in g.names)


def test_bundled_names():
    assert set(BUNDLED_GENOMES) == {"hg19", "hg38", "mm10"}


def test_hg19_chr22_matches_real_encode_bigwig(shared_path):
    bw_path = shared_path("real_bigwigs/ENCFF826FLP.bw")
    pyBigWig = pytest.importorskip("pyBigWig")
    bw = pyBigWig.open(str(bw_path))
    try:
        assert bw.chroms("chr22") == load_genome("hg19").sizes["chr22"]
    finally:
        bw.close()


# -------------------------------------------------------------------------------------- bins, json

def test_bins_partial_last_bin():
    g = Genome("toy", (("a", 100), ("b", 101), ("c", 1)))
    assert g.n_bins(25) == {"a": 4, "b": 5, "c": 1}
    assert g.total_bins(25) == 10
    assert g.n_bins(1000) == {"a": 1, "b": 1, "c": 1}


def test_total_bins_hg38():
    g = load_genome("hg38")
    expected = sum(-(-n // 25) for n in g.sizes.values())
    assert g.total_bins(25) == expected
    assert 123_000_000 < expected < 124_000_000


@pytest.mark.parametrize("bad", [0, -25, 2.5, "25", True])
def test_bad_bin_size(bad):
    with pytest.raises(PredictdError, match="bin_size"):
        Genome("toy", (("a", 10),)).n_bins(bad)


def test_json_roundtrip_and_hashable():
    g = load_genome("mm10")
    text = g.to_json()
    assert json.loads(text)["chroms"][0] == ["chr1", 195471971]
    g2 = Genome.from_json(text)
    assert g2 == g and hash(g2) == hash(g)
    assert Genome.from_json(json.loads(text)) == g


def test_from_json_malformed():
    with pytest.raises(PredictdError, match="malformed"):
        Genome.from_json('{"name": "x"}')
    with pytest.raises(PredictdError, match="duplicate chromosome 'a'"):
        Genome.from_json('{"name": "x", "chroms": [["a", 1], ["a", 2]]}')


# ---------------------------------------------------------------------------- chrom.sizes parsing

def test_parse_good_file_tabs_spaces_comments(tmp_path):
    path = write(tmp_path, "# my assembly\nchrB\t300\n\nchrA   200\r\nchrM 16\n")
    g = load_genome(path)
    assert g.name == path
    assert g.chroms == (("chrB", 300), ("chrA", 200), ("chrM", 16))  # file order kept
    assert g.n_bins(25) == {"chrB": 12, "chrA": 8, "chrM": 1}


def test_parse_with_explicit_name(tmp_path):
    g = parse_chrom_sizes(write(tmp_path, "c1\t5\n"), name="tiny")
    assert g.name == "tiny"


@pytest.mark.parametrize(
    "text, culprit",
    [
        ("chr1\t100\nchr2\n", r"g\.chrom\.sizes:2: expected 2 columns"),
        ("chr1\t100\tx\n", r":1: expected 2 columns"),
        ("chr1\t100\nchr2\tabc\n", r":2: size of 'chr2' is not an integer: 'abc'"),
        ("chr1\t1e5\n", r":1: size of 'chr1' is not an integer"),
        ("chr1\t0\n", r":1: size of 'chr1' must be positive, got 0"),
        ("chr1\t-5\n", r":1: size of 'chr1' must be positive, got -5"),
        ("chr1\t10\nchr2\t10\nchr1\t20\n", r":3: duplicate chromosome 'chr1' \(first on line 1\)"),
        ("", r"g\.chrom\.sizes is empty"),
        ("# only a comment\n\n", r"is empty"),
    ],
)
def test_parse_bad_files_name_culprit(tmp_path, text, culprit):
    path = write(tmp_path, text)
    with pytest.raises(PredictdError, match=culprit) as err:
        load_genome(path)
    assert str(tmp_path) in str(err.value)


def test_unknown_name_lists_bundled():
    with pytest.raises(PredictdError) as err:
        load_genome("hg42")
    msg = str(err.value)
    assert "'hg42'" in msg and "hg19" in msg and "hg38" in msg and "mm10" in msg


def test_directory_is_not_a_genome(tmp_path):
    with pytest.raises(PredictdError, match="not a regular file"):
        load_genome(str(tmp_path))


def test_unreadable_file(tmp_path):
    path = tmp_path / "bin.sizes"
    path.write_bytes(b"\xff\xfe\x00chr1\t5\n")
    with pytest.raises(PredictdError, match="cannot read chrom.sizes file .*bin.sizes"):
        load_genome(str(path))
