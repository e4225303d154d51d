"""predictd's own bigWig writer (predictd.bigwig.write), read back by two independent readers:
libBigWig (pyBigWig) and UCSC's kent library (pybbi) — the code the genome browser runs.

Small section, zoom-block and tree sizes are patched in so that a test-sized file has
multi-level R-trees, a multi-level chromosome B+ tree and many zoom blocks."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pyBigWig
import pytest

from predictd.bigwig import BigWigWriter, read_binned
from predictd.bigwig import write as bigwig_write
from predictd.bigwig.format import ZOOM_RECORD
from predictd.bigwig.validate import check_trees

kent = pytest.importorskip("bbi", reason="pybbi (UCSC's kent bigWig library) is not installed")

BIN = 25


@pytest.fixture
def small_structures(monkeypatch):
    monkeypatch.setattr(bigwig_write, "SECTION_ITEMS", 16)
    monkeypatch.setattr(bigwig_write, "ZOOM_ITEMS", 8)
    monkeypatch.setattr(bigwig_write, "TREE_BLOCK", 4)


def _layout(rng):
    """Chromosomes in a non-alphabetical order, odd lengths (a partial last bin), one without
    data, many tiny ones (a deep name tree), and per chromosome the blocks to write: unaligned
    sizes, with a gap."""
    chroms = [("chr2", 200_013), ("chr10", 123_450), ("chrEmpty", 5_000), ("chr1", 64_000)]
    chroms += [(f"scaffold_{i:03d}", 300 + 7 * i) for i in range(40)]
    blocks, values = [], {}
    for name, length in chroms:
        n = -(-length // BIN)
        y = rng.gamma(0.6, 2.0, n).astype(np.float32)
        y[rng.random(n) < 0.05] = 0.0
        values[name] = y
        if name == "chrEmpty":
            values[name] = np.full(n, np.nan, np.float32)
            continue
        if name == "chr10":  # a gap: bins 1000..1999 are never written
            values[name][1000:2000] = np.nan
            blocks += [(name, 0, y[:1000]), (name, 2000, y[2000:3001]), (name, 3001, y[3001:])]
            continue
        cuts = [0, *sorted(rng.choice(np.arange(1, n), size=min(3, n - 1), replace=False)), n]
        blocks += [(name, a, y[a:b]) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    return chroms, blocks, values


def _write(path, chroms, blocks):
    with BigWigWriter(path, chroms, bin_size=BIN) as w:
        for c, s, v in blocks:
            w.add_block(c, s, v)


def _per_base(y, length):
    return np.repeat(y.astype(np.float64), BIN)[:length]


def test_round_trip_through_libbigwig_and_kent(tmp_path, small_structures):
    rng = np.random.default_rng(3)
    chroms, blocks, values = _layout(rng)
    path = str(tmp_path / "t.bw")
    _write(path, chroms, blocks)

    # libBigWig: chromosome list, every bin, the header summary
    with pyBigWig.open(path) as bw:
        assert bw.chroms() == dict(chroms)
        head = bw.header()
    covered = {c: ~np.isnan(_per_base(values[c], n)) for c, n in chroms}
    allv = np.concatenate([_per_base(values[c], n)[covered[c]] for c, n in chroms])
    assert head["nBasesCovered"] == allv.size
    assert head["minVal"] == int(allv.min()) and head["maxVal"] == int(allv.max())
    assert head["sumData"] == int(allv.sum())
    for c, n in chroms:
        got = read_binned(path, c, n, BIN)
        np.testing.assert_array_equal(got, np.nan_to_num(values[c]), err_msg=c)

    # kent: chromosome sizes, base-level values (NaN where nothing was written)
    assert dict(kent.chromsizes(path)) == dict(chroms)
    for c, n in chroms:
        np.testing.assert_array_equal(kent.fetch(path, c, 0, n, missing=np.nan), _per_base(values[c], n),
                                      err_msg=c)


@pytest.mark.parametrize("width", [400, 1600, 6400, 25_600])
def test_zoom_levels_give_exact_summaries_on_their_grid(tmp_path, small_structures, width):
    """Windows that are unions of zoom records are summarised from the zoom levels alone; on
    that grid both readers must give the exact statistics of the data."""
    rng = np.random.default_rng(width)
    length = 1_000_000 + 13
    y = rng.gamma(0.6, 2.0, -(-length // BIN)).astype(np.float32)
    path = str(tmp_path / "z.bw")
    _write(path, [("chrZ", length)], [("chrZ", s, y[s:s + 7_777]) for s in range(0, y.size, 7_777)])
    nb = length // width
    win = _per_base(y, length)[:nb * width].reshape(nb, width)
    expected = {"mean": win.mean(1), "max": win.max(1), "min": win.min(1),
                "std": win.std(1, ddof=1)}
    for summary, want in expected.items():
        got = kent.fetch(path, "chrZ", 0, nb * width, bins=nb, summary=summary)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7, err_msg=summary)
    with pyBigWig.open(path) as bw:
        for kind in ("mean", "max", "min"):
            got = np.array(bw.stats("chrZ", 0, nb * width, type=kind, nBins=nb), float)
            np.testing.assert_allclose(got, expected[kind], rtol=2e-6, atol=1e-7, err_msg=kind)
    assert len(bigwig_write.zoom_reductions([("chrZ", length)], BIN)) >= 4


def test_same_answers_as_a_file_written_by_libbigwig(tmp_path):
    """The same arrays through pyBigWig's writer and ours: identical values and exact
    statistics through both readers, and files of about the same size."""
    rng = np.random.default_rng(9)
    chroms = [("chrB", 3_000_007), ("chrA", 1_000_000)]
    data = {c: rng.gamma(0.5, 2.0, -(-n // BIN)).astype(np.float32) for c, n in chroms}
    ours, theirs = str(tmp_path / "ours.bw"), str(tmp_path / "theirs.bw")
    _write(ours, chroms, [(c, 0, data[c]) for c, _ in chroms])
    bw = pyBigWig.open(theirs, "w")
    bw.addHeader(chroms, maxZooms=10)
    for c, n in chroms:
        full = n // BIN
        bw.addEntries(c, 0, values=data[c][:full], span=BIN, step=BIN)
        if data[c].size > full:
            bw.addEntries([c], [full * BIN], ends=[n], values=[float(data[c][-1])])
    bw.close()
    a, b = pyBigWig.open(ours), pyBigWig.open(theirs)
    for c, n in chroms:
        assert a.intervals(c) == b.intervals(c)
        for s, e in [(0, n), (12_345, 678_901), (n - 1_000, n)]:
            assert a.stats(c, s, e, exact=True) == pytest.approx(b.stats(c, s, e, exact=True))
        np.testing.assert_array_equal(kent.fetch(ours, c, 0, n), kent.fetch(theirs, c, 0, n))
    assert a.header()["nBasesCovered"] == b.header()["nBasesCovered"]
    size_ours, size_theirs = (os.path.getsize(p) for p in (ours, theirs))
    assert 0.8 < size_ours / size_theirs < 1.2


def test_file_without_data_opens(tmp_path):
    path = str(tmp_path / "empty.bw")
    with BigWigWriter(path, [("chr1", 1000), ("chr2", 50)]):
        pass
    with pyBigWig.open(path) as bw:
        assert bw.chroms() == {"chr1": 1000, "chr2": 50}
        assert bw.header()["nBasesCovered"] == 0
    assert np.isnan(kent.fetch(path, "chr1", 0, 1000, missing=np.nan)).all()


def _zoom_records(path):
    """Every zoom level's records, decoded here from the file's bytes: {reduction: records}."""
    with open(path, "rb") as fh:
        raw = fh.read()
    n_levels = struct.unpack_from("<H", raw, 6)[0]
    out = {}
    for z in range(n_levels):
        red, _, data_off, index_off = struct.unpack_from("<IIQQ", raw, 64 + 24 * z)
        assert struct.unpack_from("<I", raw, index_off)[0] == 0x2468ACE0  # R-tree magic
        leaves = []

        def walk(off):
            is_leaf, _, count = struct.unpack_from("<BBH", raw, off)
            for i in range(count):
                if is_leaf:
                    leaves.append(struct.unpack_from("<IIIIQQ", raw, off + 4 + 32 * i)[4:])
                else:
                    walk(struct.unpack_from("<IIIIQ", raw, off + 4 + 24 * i)[4])

        walk(index_off + 48)
        recs = np.concatenate([np.frombuffer(zlib.decompress(raw[o:o + n]), ZOOM_RECORD)
                               for o, n in leaves])
        assert recs.size == struct.unpack_from("<I", raw, data_off)[0]
        out[red] = recs
    return out


def test_zoom_records_are_exact_on_their_grid(tmp_path, small_structures):
    """Each zoom record, decoded from the bytes, against the data it summarises: start and end
    on the level's grid (clipped to the chromosome), bases with data, min, max, sum, sum of
    squares; windows without data have no record."""
    rng = np.random.default_rng(11)
    chroms, blocks, values = _layout(rng)
    path = str(tmp_path / "z.bw")
    _write(path, chroms, blocks)
    with open(path, "rb") as fh:
        raw = fh.read(64)
    chrom_tree, data_off, index_off = struct.unpack_from("<QQQ", raw, 8)
    named = check_trees(path, os.path.getsize(path), chrom_tree, data_off, index_off)[0]
    zooms = _zoom_records(path)
    assert len(zooms) >= 3
    for red, recs in zooms.items():
        want = []
        for c, n in chroms:
            pb = _per_base(values[c], n)
            for s in range(0, n, red):
                w = pb[s:s + red]
                w = w[~np.isnan(w)]
                if w.size:
                    want.append((named[c][0], s, min(s + red, n), w.size, w.min(), w.max(),
                                 w.sum(), (w * w).sum()))
        want = np.array(want)
        got = recs[np.lexsort((recs["start"], recs["chrom"]))]
        want = want[np.lexsort((want[:, 1], want[:, 0]))]
        assert got.size == len(want), red
        for i, f in enumerate(("chrom", "start", "end", "n")):
            np.testing.assert_array_equal(got[f], want[:, i].astype(np.int64), err_msg=(red, f))
        for i, f in enumerate(("min", "max", "sum", "sumsq"), 4):
            np.testing.assert_allclose(got[f], want[:, i], rtol=1e-6, err_msg=(red, f))
