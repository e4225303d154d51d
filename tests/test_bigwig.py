"""Tests for predictd.bigwig: binning contract, chunked reading, atomic writing, bad files."""

import logging
import os
from pathlib import Path

import numpy as np
import pyBigWig
import pytest

from predictd.bigwig import (
    BigWigWriter,
    bigwig_chroms,
    bin_means,
    open_bigwig,
    read_binned,
    write_bigwig,
)
from predictd.errors import PredictdError

REPO = Path(__file__).resolve().parents[1]
REAL_CHR22_LEN = 51_304_566


def shared_data() -> Path:
    return Path(os.environ.get("PREDICTD_SHARED", REPO.parent / "shared")) / "data"


@pytest.fixture(scope="module")
def real_bw() -> Path:
    path = shared_data() / "real_bigwigs" / "ENCFF826FLP.bw"
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set PREDICTD_SHARED)")
    return path


def make_bw(path, chroms, entries):
    """Write a bigWig with pyBigWig directly: entries = [(chrom, start, end, value), ...]."""
    bw = pyBigWig.open(str(path), "w")
    bw.addHeader(chroms, maxZooms=0)
    if entries:
        c, s, e, v = zip(*entries)
        bw.addEntries(list(c), list(s), ends=list(e), values=[float(x) for x in v])
    bw.close()
    return path


def per_base(entries, chrom, length):
    """Brute-force per-base signal (0 where no data) from interval tuples."""
    base = np.zeros(length)
    for c, s, e, v in entries:
        if c == chrom:
            base[s:e] = v
    return base


def brute_bins(base, bin_size):
    starts = np.arange(0, len(base), bin_size)
    sums = np.add.reduceat(base, starts)
    widths = np.diff(np.append(starts, len(base)))
    return sums / widths


# --- bin_means ---------------------------------------------------------------------------------


def test_bin_means_partial_last_bin_and_nan():
    v = np.array([1.0, np.nan, 3.0, 4.0, 5.0, np.nan, np.nan])
    got = bin_means(v, 3)
    # bins: [1, 0, 3] -> 4/3; [4, 5, 0] -> 3; last partial [0] -> 0
    np.testing.assert_allclose(got, [4 / 3, 3.0, 0.0], rtol=1e-7)
    assert got.dtype == np.float32
    assert not np.isnan(v[:1]).any() and np.isnan(v[1])  # input not modified


def test_bin_means_edge_cases():
    assert bin_means(np.array([]), 25).shape == (0,)
    np.testing.assert_array_equal(bin_means(np.full(30, np.nan), 25), [0.0, 0.0])
    np.testing.assert_array_equal(bin_means(np.array([2, 4, 6], dtype=np.int64), 2), [3.0, 6.0])
    np.testing.assert_array_equal(bin_means(np.array([7.0, 8.0]), 1), [7.0, 8.0])
    # a single partial bin is the mean over its own bases, not over bin_size
    np.testing.assert_array_equal(bin_means(np.array([3.0, 5.0]), 25), [4.0])
    with pytest.raises(ValueError):
        bin_means(np.zeros(4), 0)
    with pytest.raises(ValueError):
        bin_means(np.zeros((2, 2)), 2)


def test_bin_means_mixed_sign_precision():
    # float32 input with cancellation: float64 accumulation keeps the mean exact
    v = np.array([1e6, -1e6, 1.0, 0.0], dtype=np.float32)
    assert bin_means(v, 4)[0] == pytest.approx(0.25, abs=1e-7)


# --- read_binned on small hand-made files ------------------------------------------------------

HAND_ENTRIES = [
    ("chrA", 0, 10, 2.0),
    ("chrA", 10, 30, 4.0),  # straddles bins 0 and 1
    ("chrA", 40, 41, 100.0),
    ("chrA", 70, 105, 1.0),  # gap 41..70, then straddles bins 2, 3, 4
    ("chrA", 105, 110, 3.0),
]


def test_read_binned_hand_checked(tmp_path):
    path = make_bw(tmp_path / "hand.bw", [("chrA", 110), ("chrB", 60)], HAND_ENTRIES)
    got = read_binned(path, "chrA", 110)
    # bin0: 10*2+15*4=80/25; bin1: 5*4+1*100=120/25; bin2: 5*1/25; bin3: 25/25; bin4 (10 bp): (5+15)/10
    np.testing.assert_allclose(got, [3.2, 4.8, 0.2, 1.0, 2.0], rtol=1e-6)
    assert got.dtype == np.float32
    # chromosome in the header without data: all zeros; absent chromosome: None
    np.testing.assert_array_equal(read_binned(path, "chrB", 60), [0.0, 0.0, 0.0])
    assert read_binned(path, "chrZ", 1000) is None


@pytest.mark.parametrize("chunk_bins", [1, 2, 3, 7])
def test_read_binned_chunking_does_not_change_result(tmp_path, chunk_bins):
    rng = np.random.default_rng(chunk_bins)
    length = 1013
    cuts = np.unique(rng.integers(0, length, size=80))
    entries = [
        ("chrA", int(s), int(e), float(rng.normal(3, 2)))
        for s, e in zip(cuts[:-1], cuts[1:])
        if rng.random() < 0.7  # leave gaps
    ]
    path = make_bw(tmp_path / "rand.bw", [("chrA", length)], entries)
    expected = brute_bins(per_base(entries, "chrA", length), 25)
    got = read_binned(path, "chrA", length, chunk_bins=chunk_bins)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    with open_bigwig(path) as bw:  # a handle works too, and is reusable
        np.testing.assert_array_equal(read_binned(bw, "chrA", length, chunk_bins=chunk_bins), got)
        np.testing.assert_allclose(read_binned(bw, "chrA", length, bin_size=10),
                                   brute_bins(per_base(entries, "chrA", length), 10), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_bins", [2, 64])
def test_read_binned_bin_range_equals_slice_of_whole(tmp_path, chunk_bins):
    """A block's range reads the same values as the whole chromosome sliced (ingest reads one
    tensor block of every track at a time), including ranges past a short file's end."""
    rng = np.random.default_rng(11)
    file_len, genome_len = 2_990, 3_333  # the file's chromosome is shorter than the genome's
    cuts = np.unique(rng.integers(0, file_len, size=60))
    entries = [("chrA", int(s), int(e), float(rng.normal(3, 2)))
               for s, e in zip(cuts[:-1], cuts[1:]) if rng.random() < 0.7]
    path = make_bw(tmp_path / "r.bw", [("chrA", file_len)], entries)
    whole = read_binned(path, "chrA", genome_len, chunk_bins=chunk_bins)
    n = whole.size
    for lo, hi in [(0, n), (0, 7), (5, 6), (13, 100), (100, 120), (119, n), (n, n), (130, n)]:
        part = read_binned(path, "chrA", genome_len, chunk_bins=chunk_bins, bins=(lo, hi))
        np.testing.assert_array_equal(part, whole[lo:hi], err_msg=f"bins {lo}-{hi}")
    assert whole[-14:].sum() == 0 and whole[:100].sum() != 0  # past the file's end: no data
    with pytest.raises(ValueError):
        read_binned(path, "chrA", genome_len, bins=(10, n + 1))


def test_read_binned_shorter_file_pads_and_warns(tmp_path, caplog):
    path = make_bw(tmp_path / "short.bw", [("chrM", 40)], [("chrM", 0, 40, 5.0)])
    with caplog.at_level(logging.WARNING, logger="predictd.bigwig"):
        got = read_binned(path, "chrM", 60)
    # bin1 covers [25, 50): 15 bases of 5.0 in the file, 10 beyond its end count as 0
    np.testing.assert_allclose(got, [5.0, 3.0, 0.0])
    assert "chrM" in caplog.text and "40 bp" in caplog.text


def test_read_binned_longer_file_is_an_error(tmp_path):
    path = make_bw(tmp_path / "long.bw", [("chr1", 100)], [("chr1", 0, 100, 1.0)])
    expected = r"chromosome size mismatch: file .*long\.bw has chr1 of 100 bp, genome says 90"
    with pytest.raises(PredictdError, match=expected):
        read_binned(path, "chr1", 90)


def test_read_binned_inf_is_an_error(tmp_path):
    path = make_bw(tmp_path / "inf.bw", [("chr1", 100)], [("chr1", 0, 50, 1.0), ("chr1", 60, 61, np.inf)])
    with pytest.raises(PredictdError, match=r"inf\.bw has infinite values in chr1 near chr1:50-75"):
        read_binned(path, "chr1", 100)


# --- bad files -------------------------------------------------------------------------------


def test_missing_directory_and_text_files(tmp_path):
    with pytest.raises(PredictdError, match="not found: .*nope.bw"):
        bigwig_chroms(tmp_path / "nope.bw")
    with pytest.raises(PredictdError, match="is a directory"):
        bigwig_chroms(tmp_path)
    (tmp_path / "notes.bw").write_text("track type=wiggle_0\nchr1 0 10 1.0\n" * 10)
    with pytest.raises(PredictdError, match=r"not a bigWig file .*notes\.bw"):
        read_binned(tmp_path / "notes.bw", "chr1", 100)
    (tmp_path / "empty.bw").write_bytes(b"")
    with pytest.raises(PredictdError, match=r"empty\.bw"):
        bigwig_chroms(tmp_path / "empty.bw")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read mode-000 files")
def test_unreadable_file(tmp_path):
    path = make_bw(tmp_path / "locked.bw", [("chr1", 100)], [])
    path.chmod(0)
    with pytest.raises(PredictdError, match="permission denied.*locked.bw"):
        bigwig_chroms(path)


@pytest.mark.parametrize("keep", [100, 1000, 200_000, 2_000_000, -1000, -1])
def test_truncated_real_file(tmp_path, real_bw, keep):
    # pyBigWig segfaults on some of these cuts (e.g. 100 bytes): the structural check must catch them
    data = real_bw.read_bytes()
    cut = tmp_path / "cut.bw"
    cut.write_bytes(data[:keep])
    with pytest.raises(PredictdError, match=r"truncated or corrupt bigWig file .*cut\.bw"):
        bigwig_chroms(cut)
    with pytest.raises(PredictdError, match=r"cut\.bw"):
        read_binned(cut, "chr22", REAL_CHR22_LEN)


def test_corrupt_data_block_names_file_and_chrom(tmp_path, real_bw):
    data = bytearray(real_bw.read_bytes())
    data[50_000:54_000] = b"\x07" * 4000  # inside the compressed data section
    bad = tmp_path / "bad.bw"
    bad.write_bytes(bytes(data))
    with pytest.raises(PredictdError, match=r"corrupt bigWig file .*bad\.bw: cannot read chr22:"):
        read_binned(bad, "chr22", REAL_CHR22_LEN)


# --- the real ENCODE file ----------------------------------------------------------------------


def test_real_file_matches_brute_force(real_bw):
    assert bigwig_chroms(real_bw) == {"chr22": REAL_CHR22_LEN}
    got = read_binned(real_bw, "chr22", REAL_CHR22_LEN)
    assert got.shape == (-(-REAL_CHR22_LEN // 25),)
    # brute force over the first 4 Mbp that carry data (the first 16 Mbp of chr22 are one zero
    # interval in this file), built from intervals(), a different libBigWig path than values()
    lo, hi = 16_000_000, 20_000_000
    with open_bigwig(real_bw) as bw:
        ivs = bw.intervals("chr22", lo, hi)
    base = np.zeros(hi - lo)
    for s, e, v in ivs:
        base[max(s, lo) - lo : min(e, hi) - lo] = v
    expected = base.reshape(-1, 25).mean(axis=1)
    np.testing.assert_allclose(got[lo // 25 : hi // 25], expected, rtol=1e-6, atol=1e-6)
    assert expected.max() > 1  # the window really has signal


def test_real_file_whole_chromosome_vs_exact_stats(real_bw):
    got = read_binned(real_bw, "chr22", REAL_CHR22_LEN)
    n_bins = got.shape[0]
    rng = np.random.default_rng(22)
    nonzero = np.flatnonzero(got)
    sample = np.unique(np.concatenate([
        rng.choice(n_bins, 150, replace=False), rng.choice(nonzero, 150, replace=False), [n_bins - 1],
    ]))
    with open_bigwig(real_bw) as bw:
        for b in sample:
            start, end = int(b) * 25, min(REAL_CHR22_LEN, int(b) * 25 + 25)
            total = bw.stats("chr22", start, end, type="sum", exact=True)[0] or 0.0
            assert got[b] == pytest.approx(total / (end - start), rel=1e-5, abs=1e-6), (b, start)
    assert 0 < got.max() <= 171.85 + 1e-3


# --- writing -----------------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path):
    chroms = [("chr2", 1010), ("chr10", 60), ("chrEmpty", 500), ("chr1", 75)]  # not name-sorted
    rng = np.random.default_rng(3)
    chr2 = rng.gamma(1.0, 2.0, size=41).astype(np.float32)  # 41 bins, last one 10 bp
    chr10 = np.array([0.5, 1.5, 2.5], dtype=np.float32)  # last bin 10 bp
    chr1 = np.array([7.0, 8.0, 9.0], dtype=np.float32)  # exact multiple of 25
    blocks = [
        ("chr2", 0, chr2[:10]), ("chr2", 10, chr2[10:25]), ("chr2", 30, chr2[30:]),  # gap 25..30
        ("chr10", 0, chr10), ("chr1", 0, chr1),
    ]
    out = write_bigwig(tmp_path / "sub" / "out.bw", chroms, blocks)
    assert out == tmp_path / "sub" / "out.bw"
    assert list(bigwig_chroms(out).items()) == chroms
    expected2 = chr2.copy()
    expected2[25:30] = 0
    np.testing.assert_array_equal(read_binned(out, "chr2", 1010), expected2)
    np.testing.assert_array_equal(read_binned(out, "chr10", 60), chr10)
    np.testing.assert_array_equal(read_binned(out, "chr1", 75), chr1)
    np.testing.assert_array_equal(read_binned(out, "chrEmpty", 500), np.zeros(20))
    with open_bigwig(out) as bw:
        # entries never run past the chromosome end; the partial bin is its own 10 bp interval
        assert bw.intervals("chr2")[-1] == (1000, 1010, pytest.approx(float(chr2[-1])))
        assert bw.intervals("chr10")[-1][:2] == (50, 60)
        assert bw.intervals("chr2", 620, 760) == ((600, 625, pytest.approx(float(chr2[24]))),
                                                  (750, 775, pytest.approx(float(chr2[30]))))
    assert sorted(os.listdir(tmp_path / "sub")) == ["out.bw"]  # no temp files left behind


def test_written_file_has_zoom_levels(tmp_path):
    n = 200_000
    values = np.tile(np.array([1.0, 3.0], dtype=np.float32), n // 2)
    out = write_bigwig(tmp_path / "z.bw", [("chr1", n * 25)], [("chr1", 0, values)])
    with open_bigwig(out) as bw:
        assert bw.header()["nLevels"] >= 1
        # zoom-level (non-exact) summary agrees with the data
        assert bw.stats("chr1", 0, n * 25, type="mean")[0] == pytest.approx(2.0, rel=1e-3)
        assert bw.stats("chr1", type="max")[0] == pytest.approx(3.0)
    assert out.read_bytes()[-4:] == out.read_bytes()[:4]  # UCSC end signature present


def test_several_writers_open_at_once(tmp_path):
    chroms = [("chr1", 100), ("chr2", 50)]
    writers = [BigWigWriter(tmp_path / f"t{i}.bw", chroms).open() for i in range(3)]
    for chrom, n in chroms:
        for i, w in enumerate(writers):
            w.add_block(chrom, 0, np.full(-(-n // 25), float(i + 1)))
    for w in writers:
        w.close()
    for i in range(3):
        np.testing.assert_array_equal(read_binned(tmp_path / f"t{i}.bw", "chr2", 50), [i + 1.0] * 2)


def test_abort_leaves_nothing_and_keeps_old_file(tmp_path):
    target = tmp_path / "track.bw"
    target.write_bytes(b"old contents")

    def blocks():
        yield ("chr1", 0, np.ones(4))
        raise RuntimeError("task killed")

    with pytest.raises(RuntimeError, match="task killed"):
        write_bigwig(target, [("chr1", 100)], blocks())
    assert target.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["track.bw"]

    fresh = tmp_path / "fresh.bw"
    with pytest.raises(ValueError):
        with BigWigWriter(fresh, [("chr1", 100)]) as w:
            w.add_block("chr1", 0, np.ones(2))
            raise ValueError("boom")
    assert not fresh.exists()
    assert os.listdir(tmp_path) == ["track.bw"]


def test_writer_rejects_bad_blocks(tmp_path):
    with BigWigWriter(tmp_path / "ok.bw", [("chr1", 100), ("chr2", 100)]) as w:
        w.add_block("chr2", 0, np.ones(2))
        with pytest.raises(ValueError, match="out of order"):
            w.add_block("chr1", 0, np.ones(2))  # header order
        with pytest.raises(ValueError, match="out of order"):
            w.add_block("chr2", 1, np.ones(2))  # overlaps
        with pytest.raises(ValueError, match="past the end"):
            w.add_block("chr2", 2, np.ones(3))
        with pytest.raises(ValueError, match="NaN"):
            w.add_block("chr2", 2, np.array([1.0, np.nan]))
        with pytest.raises(ValueError, match="not in the header"):
            w.add_block("chrX", 0, np.ones(1))
        w.add_block("chr2", 3, np.array([4.0]))  # the writer is still usable after rejections
    np.testing.assert_array_equal(read_binned(tmp_path / "ok.bw", "chr2", 100), [1, 1, 0, 4])


def test_unwritable_destination(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PredictdError, match="cannot create output directory"):
        write_bigwig(blocker / "sub" / "t.bw", [("chr1", 10)], [])


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_uncreatable_destination_is_an_error_not_a_crash():
    # pyBigWig segfaults when it cannot create its output; /proc refuses new files even for root
    with pytest.raises(PredictdError, match="cannot create bigWig file /proc/predictd-test.bw"):
        write_bigwig("/proc/predictd-test.bw", [("chr1", 10)], [])


# --- the native section decoder against libBigWig -----------------------------------------------
# read_binned(path) decodes data sections itself; read_binned(handle) asks libBigWig for
# per-base values. The two must agree on every layout a writer can produce.


def _both(path, chrom, length, bin_size=25, bins=None):
    native = read_binned(path, chrom, length, bin_size, bins=bins)
    with open_bigwig(path) as bw:
        lib = read_binned(bw, chrom, length, bin_size, bins=bins)
    return native, lib


def test_native_reader_equals_libbigwig_on_real_encode_file(real_bw):
    native, lib = _both(real_bw, "chr22", REAL_CHR22_LEN)
    np.testing.assert_array_equal(native, lib)
    assert np.count_nonzero(native) > 100_000
    rng = np.random.default_rng(5)
    n_bins = native.size
    for lo in [0, n_bins - 1, *rng.integers(0, n_bins, 6).tolist()]:
        hi = min(n_bins, lo + int(rng.integers(1, 300_000)))
        got, _ = _both(real_bw, "chr22", REAL_CHR22_LEN, bins=(lo, hi))
        np.testing.assert_array_equal(got, native[lo:hi])
    # another bin size: records and bins no longer line up the same way
    native, lib = _both(real_bw, "chr22", REAL_CHR22_LEN, bin_size=200)
    np.testing.assert_allclose(native, lib, rtol=1e-6, atol=1e-7)


def _layouts(tmp_path):
    """Files of every section type libBigWig writes: bedGraph (spans crossing bins, gaps),
    variable step, fixed step off the grid, fixed step on the 25 bp grid; two chromosomes, the
    second with a partial last bin and ending before the genome's chromosome does."""
    rng = np.random.default_rng(11)
    chroms = [("c1", 40_000), ("c2", 30_013)]
    files = {}
    # bedGraph: random spans 1..300 bp with random gaps
    bg = tmp_path / "bedgraph.bw"
    bw = pyBigWig.open(str(bg), "w")
    bw.addHeader(chroms, maxZooms=0)
    for c, n in chroms:
        pos, starts, ends = 3, [], []
        while True:
            s = pos + int(rng.integers(0, 40))
            e = s + int(rng.integers(1, 300))
            if e > n - 7:
                break
            starts.append(s)
            ends.append(e)
            pos = e
        vals = rng.normal(2, 3, len(starts)).astype(np.float32)
        vals[::17] = np.nan  # stored NaN reads as no data
        bw.addEntries([c] * len(starts), starts, ends=ends, values=vals.tolist())
    bw.close()
    files["bedgraph"] = bg
    # variable step: sorted distinct starts, one span
    vs = tmp_path / "varstep.bw"
    bw = pyBigWig.open(str(vs), "w")
    bw.addHeader(chroms, maxZooms=0)
    for c, n in chroms:
        starts = np.sort(rng.choice(np.arange(0, n - 60, 60), 300, replace=False)) + 7
        bw.addEntries(c, starts.tolist(), values=rng.random(300).tolist(), span=37)
    bw.close()
    files["varstep"] = vs
    # fixed step off the bin grid (span < step, odd start) and on it (span = step = 25)
    for name, start, step, span in [("fixed_off", 13, 30, 11), ("fixed_grid", 50, 25, 25)]:
        path = tmp_path / f"{name}.bw"
        bw = pyBigWig.open(str(path), "w")
        bw.addHeader(chroms, maxZooms=0)
        for c, n in chroms:
            count = (n - start - span) // step
            bw.addEntries(c, start, values=rng.normal(0, 5, count).tolist(), span=span, step=step)
        bw.close()
        files[name] = path
    return files, chroms


@pytest.mark.parametrize("bin_size", [25, 10, 7])
def test_native_reader_equals_libbigwig_on_every_section_type(tmp_path, bin_size):
    files, chroms = _layouts(tmp_path)
    rng = np.random.default_rng(bin_size)
    for kind, path in files.items():
        for c, n in chroms:
            genome_len = n + 1_000 if c == "c2" else n  # c2 ends early in the file
            native, lib = _both(path, c, genome_len, bin_size)
            np.testing.assert_allclose(native, lib, rtol=1e-6, atol=1e-6, err_msg=f"{kind} {c}")
            assert np.count_nonzero(native) > native.size // 10, kind
            n_bins = native.size
            for _ in range(4):
                lo = int(rng.integers(0, n_bins))
                hi = int(rng.integers(lo, n_bins + 1))
                got, _ = _both(path, c, genome_len, bin_size, bins=(lo, hi))
                np.testing.assert_array_equal(got, native[lo:hi], err_msg=f"{kind} {c} {lo}-{hi}")


def test_native_reader_on_predictd_files_is_exact(tmp_path):
    """predictd's own files (grid-aligned fixed-step runs, a bedGraph record for the partial
    last bin) read back bit for bit, whole and by block, including a file cut mid-bin."""
    rng = np.random.default_rng(3)
    y = rng.normal(0, 10, 50_001).astype(np.float32)
    length = 50_001 * 25 - 12
    out = tmp_path / "p.bw"
    write_bigwig(out, [("chrA", length)], [("chrA", 0, y)])
    native, lib = _both(out, "chrA", length)
    np.testing.assert_array_equal(native, y)
    np.testing.assert_array_equal(lib, y)
    for lo, hi in [(0, 1), (4095, 4097), (12_000, 50_001), (50_000, 50_001), (7, 7)]:
        np.testing.assert_array_equal(read_binned(out, "chrA", length, bins=(lo, hi)), y[lo:hi])
    # the genome's chromosome is longer: the file's last (partial) bin is a genome bin of 25 bp
    native, lib = _both(out, "chrA", length + 100)
    np.testing.assert_array_equal(native, lib)
    assert native[50_000] == pytest.approx(y[-1] * 13 / 25, rel=1e-6)
    assert not native[50_001:].any()


def test_short_blocks_are_deflated_by_zlib_long_ones_by_isal():
    """A chromosome's last, short blocks take zlib's stream (which depends on the input
    alone); full blocks ISA-L's. Both inflate to the block."""
    import zlib

    from isal.isal_zlib import compress as isal_compress

    from predictd.bigwig import write as bigwig_write

    rng = np.random.default_rng(5)
    for n in (4, 128, 1023, 1024, 4096, 16_024):
        body = np.round(rng.gamma(0.5, 1, n), 1).astype(np.float32).tobytes()
        data = bigwig_write.deflate(body)
        assert zlib.decompress(data) == body
        short = len(body) < bigwig_write.ISAL_MIN_BYTES
        assert data == (zlib.compress(body, bigwig_write.ZLIB_LEVEL) if short
                        else isal_compress(body, bigwig_write.ZLIB_LEVEL)), n


def test_native_reader_uncompressed_file(tmp_path, monkeypatch):
    """Data blocks stored raw (uncompressBufSize 0, as `bedGraphToBigWig -unc` writes)."""
    from predictd.bigwig import write as bigwig_write

    monkeypatch.setattr(bigwig_write, "deflate", bytes)
    monkeypatch.setattr(bigwig_write, "UNCOMPRESS_BUF", 0)
    y = np.random.default_rng(4).random(10_000).astype(np.float32)
    out = tmp_path / "raw.bw"
    write_bigwig(out, [("chrA", 250_000)], [("chrA", 0, y)])
    with open(out, "rb") as fh:
        assert int.from_bytes(fh.read(64)[52:56], "little") == 0  # uncompressBufSize
    native, lib = _both(out, "chrA", 250_000)
    np.testing.assert_array_equal(lib, y)  # libBigWig reads it as raw too
    np.testing.assert_array_equal(native, y)


def test_native_reader_overlapping_records_read_as_libbigwig_does(tmp_path, monkeypatch):
    """Overlapping records are malformed (UCSC's tools refuse them) but exist in the wild:
    such a file is read the way libBigWig reads it, not by summing the overlaps."""
    from predictd.bigwig import read as bigwig_read
    a = tmp_path / "a.bw"
    make_bw(a, [("c", 1000)], [("c", 0, 100, 1.0), ("c", 300, 400, 5.0)])
    # the decoder sees every record twice, the second copy shifted by 50 bp onto the first
    real = bigwig_read.section_records

    def doubled(*args):
        s, e, v, dense = real(*args)
        return (np.concatenate([s, s + 50]), np.concatenate([e, e + 50]),
                np.concatenate([v, v * 2]), dense)

    monkeypatch.setattr(bigwig_read, "section_records", doubled)
    calls = []
    real_open = bigwig_read.open_bigwig
    monkeypatch.setattr(bigwig_read, "open_bigwig", lambda p: calls.append(p) or real_open(p))
    got = read_binned(a, "c", 1000)
    assert calls == [os.fspath(a)]  # handed to libBigWig
    with real_open(a) as bw:
        np.testing.assert_array_equal(got, read_binned(bw, "c", 1000))
