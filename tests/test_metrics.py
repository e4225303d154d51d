"""Metrics (docs/design.md §8) against hand-computed cases and brute force, and annotation region
masks."""

import gzip
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, rankdata, spearmanr

from predictd import metrics as M
from predictd.annotations import (
    concat_chrom_masks,
    annotation_beds,
    interval_mask,
    read_bed,
    region_masks,
)
from predictd.errors import PredictdError


def python_lines_run(fn, *args, skip=()):
    """``fn(*args)`` and the number of Python lines it ran, not counting the lines run by the
    functions in ``skip`` and by what they call.

    Vectorised code runs the same few lines whatever the size of its arrays; a loop over bins
    or intervals runs lines in proportion to them. Unlike a stopwatch, the count does not
    depend on the machine or its load.
    """
    skipped = {f.__code__ for f in skip}
    count = 0

    def trace_lines(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return trace_lines

    def trace_calls(frame, event, arg):
        f = frame
        while f is not None:
            if f.f_code in skipped:
                return None
            f = f.f_back
        return trace_lines

    previous = sys.gettrace()
    sys.settrace(trace_calls)
    try:
        out = fn(*args)
    finally:
        sys.settrace(previous)
    return out, count


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --------------------------------------------------------------------------------------------------
# hand-made N = 200 track: n1 = 2, n5 = 10, ties at the top-1 % boundary and in the zeros


def hand_pair():
    y = np.zeros(200)
    y[10], y[20], y[30] = 5.0, 4.0, 4.0  # 2nd and 3rd largest tie
    yhat = np.zeros(200)
    yhat[30], yhat[10], yhat[50] = 3.0, 2.0, 1.0
    return y, yhat


def test_top_counts():
    assert M.top_counts(200) == (2, 10)
    assert M.top_counts(99) == (0, 4)
    assert M.top_counts(12_345_678) == (123_456, 617_283)


def test_top_mask_exact_size_stable_ties():
    x = np.array([1.0, 3.0, 3.0, 2.0, 3.0, 0.0])
    assert M.top_mask(x, 2).nonzero()[0].tolist() == [1, 2]
    assert M.top_mask(x, 4).nonzero()[0].tolist() == [1, 2, 3, 4]
    assert M.top_mask(x, 0).sum() == 0
    assert M.top_mask(x, 10).all()
    y, _ = hand_pair()
    assert M.top_mask(y, 2).nonzero()[0].tolist() == [10, 20]
    # 3 positives, then the lowest-index zeros fill the top 5 %.
    assert M.top_mask(y, 10).nonzero()[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 10, 20, 30]


def test_mse_hand():
    assert M.mse([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]) == pytest.approx(5.0 / 3.0)
    assert math.isnan(M.mse([], []))


def test_gwcorr_hand(no_warnings):
    assert M.gwcorr([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert M.gwcorr([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert M.gwcorr([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert math.isnan(M.gwcorr([0.1] * 500, np.arange(500)))
    assert math.isnan(M.gwcorr([1.0], [2.0]))


def test_gwspear_hand_with_ties(no_warnings):
    # ranks y = [1, 2.5, 2.5, 4], ranks yhat = [1, 3, 2, 4]: 4.5 / sqrt(4.5 * 5)
    assert M.gwspear([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(M.gwspear(np.ones(300), np.arange(300)))


def test_spearman_and_pearson_match_scipy():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 6, 1000).astype(float)  # heavy ties
    yhat = y + rng.integers(-2, 3, 1000)
    assert M.gwspear(y, yhat) == pytest.approx(spearmanr(y, yhat)[0], abs=1e-12)
    assert M.gwcorr(y, yhat) == pytest.approx(pearsonr(y, yhat)[0], abs=1e-12)


def test_average_ranks_match_scipy():
    rng = np.random.default_rng(3)
    cases = (rng.integers(0, 4, 777).astype(float), rng.normal(size=500), np.zeros(5), np.ones(1))
    for x in cases:
        np.testing.assert_array_equal(M.average_ranks(x), rankdata(x))


def test_top1_metrics_hand():
    y, yhat = hand_pair()
    # threshold = 2nd largest y = 4 -> bins 10, 20, 30 (tie admitted)
    assert M.mse1obs(y, yhat) == pytest.approx((9 + 16 + 1) / 3)
    # threshold = 2nd largest yhat = 2 -> bins 30, 10
    assert M.mse1imp(y, yhat) == pytest.approx((1 + 9) / 2)
    # top1(y) = {10, 20}, top1(yhat) = {30, 10}
    assert M.match1(y, yhat) == pytest.approx(0.5)
    # top5(yhat) = {30, 10, 50, 0..6}: catches 10 but not 20
    assert M.catch1obs(y, yhat) == pytest.approx(0.5)
    # top5(y) = {10, 20, 30, 0..6}: catches 30 and 10
    assert M.catch1imp(y, yhat) == pytest.approx(1.0)
    # positives {10 (score 2), 20 (score 0)} vs 198 negatives (one 3, one 1, 196 zeros):
    # 197 wins + 0, and 98 for 196 ties -> 295 / 396
    assert M.aucobs1(y, yhat) == pytest.approx(295 / 396)
    # positives {30 (y 4), 10 (y 5)} vs negatives (one 4, 197 zeros): 198 + 197.5
    assert M.aucimp1(y, yhat) == pytest.approx(395.5 / 396)


def test_perfect_and_reversed():
    y = np.arange(300, dtype=float)
    s = M.score_track(y, y)
    assert s["mse"] == 0 and s["match1"] == 1 and s["aucobs1"] == 1 and s["aucimp1"] == 1
    s = M.score_track(y, -y)
    assert s["gwcorr"] == pytest.approx(-1) and s["match1"] == 0 and s["aucobs1"] == 0


def brute_auc(scores, labels):
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (pos.size * neg.size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_brute_force_pairs(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 8, 400).astype(float)
    yhat = np.round(y + rng.normal(0, 2, 400))
    n1, _ = M.top_counts(400)
    assert M.aucobs1(y, yhat) == pytest.approx(brute_auc(yhat, M.top_mask(y, n1)), abs=1e-12)
    assert M.aucimp1(y, yhat) == pytest.approx(brute_auc(y, M.top_mask(yhat, n1)), abs=1e-12)


def test_overlap_metrics_match_sorted_definition():
    # Exact-size top sets = first n indices of a stable descending sort.
    rng = np.random.default_rng(11)
    y = rng.integers(0, 5, 1000).astype(float)
    yhat = rng.integers(0, 5, 1000).astype(float)
    n1, n5 = M.top_counts(1000)

    def top(x, k):
        return set(np.argsort(-x, kind="stable")[:k].tolist())

    assert M.match1(y, yhat) == len(top(y, n1) & top(yhat, n1)) / n1
    assert M.catch1obs(y, yhat) == len(top(y, n1) & top(yhat, n5)) / n1
    assert M.catch1imp(y, yhat) == len(top(yhat, n1) & top(y, n5)) / n1


def test_small_n_gives_nan_quietly(no_warnings):
    y = np.arange(99, dtype=float)
    s = M.score_track(y, y + 1)
    assert s["mse"] == pytest.approx(1.0)
    for name in ["mse1obs", "mse1imp", "match1", "catch1obs", "catch1imp", "aucobs1", "aucimp1"]:
        assert math.isnan(s[name]), name
        assert math.isnan(getattr(M, name)(y, y + 1)), name


def test_constant_track_quietly(no_warnings):
    y = np.full(500, 0.7)
    yhat = np.linspace(0, 1, 500)
    s = M.score_track(y, yhat)
    assert math.isnan(s["gwcorr"]) and math.isnan(s["gwspear"])
    assert s["aucimp1"] == 0.5  # every pair tied
    assert np.isfinite(s["mse"])


def test_score_track_consistent_with_functions():
    rng = np.random.default_rng(5)
    y = rng.gamma(1.0, 1.0, 5000)
    yhat = (y + rng.normal(0, 0.5, 5000)).astype(np.float32)
    masks = {
        "prom": rng.random(5000) < 0.1,
        "gene": rng.random(5000) < 0.5,
        "enh": np.zeros(5000, bool),
    }
    s = M.score_track(y, yhat, masks)
    assert list(s) == M.METRIC_NAMES + M.REGION_METRIC_NAMES
    for name in M.METRIC_NAMES:
        assert s[name] == pytest.approx(getattr(M, name)(y, yhat), rel=1e-12), name
    assert s["mseprom"] == pytest.approx(M.mse_in_mask(y, yhat, masks["prom"]))
    assert math.isnan(s["mseenh"])
    assert all(isinstance(v, float) for v in s.values())


def test_mse_in_mask_hand_and_errors():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    yhat = np.array([0.0, 2.0, 5.0, 4.0])
    assert M.mse_in_mask(y, yhat, np.array([True, False, True, False])) == pytest.approx(2.5)
    with pytest.raises(PredictdError, match="boolean"):
        M.mse_in_mask(y, yhat, np.array([1, 0, 1, 0]))
    with pytest.raises(PredictdError, match="3 bins|shape"):
        M.mse_in_mask(y, yhat, np.array([True, False, True]))


def test_input_errors_name_the_culprit():
    with pytest.raises(PredictdError, match="yhat"):
        M.mse(np.zeros(3), np.zeros(4))
    with pytest.raises(PredictdError, match=r"yhat \(imputed\) has 1 non-finite"):
        M.score_track(np.zeros(300), np.r_[np.zeros(299), np.nan])
    with pytest.raises(PredictdError, match="1-D"):
        M.gwcorr(np.zeros((2, 2)), np.zeros((2, 2)))


def test_score_track_is_vectorised_1m_bins():
    rng = np.random.default_rng(0)
    y = rng.gamma(0.5, 1.0, 1_000_000).astype(np.float32)
    yhat = y + rng.normal(0, 0.3, y.size).astype(np.float32)
    scores, lines = python_lines_run(M.score_track, y, yhat)
    assert all(np.isfinite(v) for v in scores.values())
    # Three O(N log N) sorts at most, no per-bin Python loop: a million bins run the same
    # Python lines as ten thousand.
    _, lines_10k = python_lines_run(M.score_track, y[:10_000], yhat[:10_000])
    assert lines == lines_10k


# --------------------------------------------------------------------------------------------------
# annotations


def write_bed(path: Path, lines, gz=False):
    text = "".join("\t".join(map(str, fields)) + "\n" for fields in lines)
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def brute_mask(length, bin_size, intervals):
    n = -(-length // bin_size)
    out = np.zeros(n, dtype=bool)
    for i in range(n):
        b0, b1 = i * bin_size, min((i + 1) * bin_size, length)
        out[i] = any(max(b0, s) < min(b1, e) for s, e in intervals)
    return out


def test_interval_mask_edges():
    # [10, 26) touches bins 0 and 1; [60, 61) bin 2; [99, 200) clipped to the partial last bin.
    m = interval_mask(5, 25, 110, np.array([10, 60, 109]), np.array([26, 61, 200]))
    assert m.tolist() == [True, True, True, False, True]
    # half-open: [25, 50) is exactly bin 1; empty and out-of-chromosome intervals add nothing
    m = interval_mask(5, 25, 110, np.array([25, 40, 300]), np.array([50, 40, 400]))
    assert m.tolist() == [False, True, False, False, False]


def test_region_masks_strand_aware_hand_bed(tmp_path):
    genes = write_bed(
        tmp_path / "genes.bed.gz",
        [
            ("chrT", 3000, 3100, "g_plus", 0, "+"),   # promoter [1000, 3000): bins 40..119
            ("chrT", 5000, 5010, "g_minus", 0, "-"),  # promoter [5010, 7010): bins 200..280
            ("chrT", 500, 600, "g_clip", 0, "+"),     # promoter clipped to [0, 500): bins 0..19
            ("chrT", 9000, 9990, "g_end", 0, "-"),    # promoter clipped to [9990, 10010)
            ("chrT", 7500, 7600, "g_nostrand", 0, "."),  # body only
            ("chrX_absent", 0, 5000, "g_other", 0, "+"),
        ],
        gz=True,
    )
    enh = write_bed(
        tmp_path / "enh.bed",
        [("chrT", 1234, 1300, "e1", 10, ".", 1250, 1251, "0,0,0", 2, "10,6", "0,60"),
         ("chrU", 0, 30, "e2", 1, ".", 0, 1, "0,0,0", 1, "30", "0")],
    )
    genome = [("chrT", 10_010), ("chrU", 40)]
    masks = region_masks(genome, 25, genes_bed=genes, enhancers_bed=enh)
    assert set(masks) == {"prom", "gene", "enh"}
    assert masks["prom"]["chrT"].size == 401 and masks["prom"]["chrU"].size == 2

    prom = [(1000, 3000), (5010, 7010), (0, 500), (9990, 11990)]
    np.testing.assert_array_equal(masks["prom"]["chrT"], brute_mask(10_010, 25, prom))
    # strand-aware: + promoter is before the gene, - promoter after it
    assert masks["prom"]["chrT"][119] and not masks["prom"]["chrT"][120]
    assert not masks["prom"]["chrT"][199] and masks["prom"]["chrT"][200]
    assert masks["prom"]["chrT"][280] and not masks["prom"]["chrT"][281]
    body = [(3000, 3100), (5000, 5010), (500, 600), (9000, 9990), (7500, 7600)]
    np.testing.assert_array_equal(masks["gene"]["chrT"], brute_mask(10_010, 25, body))
    assert not masks["gene"]["chrU"].any()
    np.testing.assert_array_equal(masks["enh"]["chrT"], brute_mask(10_010, 25, [(1234, 1300)]))
    assert masks["enh"]["chrT"].nonzero()[0].tolist() == [49, 50, 51]
    assert masks["enh"]["chrU"].tolist() == [True, True]

    flat = concat_chrom_masks(masks, ["chrT", "chrU"])
    assert flat["enh"].size == 403 and flat["enh"].sum() == 5


def test_region_masks_only_requested_beds(tmp_path):
    enh = write_bed(tmp_path / "e.bed", [("c1", 0, 10)])
    assert list(region_masks({"c1": 100}, 25, enhancers_bed=enh)) == ["enh"]
    assert region_masks({"c1": 100}, 25) == {}


def test_bed_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.bed"
    bad.write_text("track name=x\nc1\t0\t10\tg\t0\t+\nc1\tten\t20\tg\t0\t+\n")
    with pytest.raises(PredictdError, match=r"bad\.bed:3"):
        read_bed(bad)
    nostrand = write_bed(tmp_path / "g.bed", [("c1", 0, 10)])
    with pytest.raises(PredictdError, match=r"g\.bed:1.*strand"):
        region_masks({"c1": 100}, 25, genes_bed=nostrand)
    inverted = write_bed(tmp_path / "inv.bed", [("c1", 30, 10)])
    with pytest.raises(PredictdError, match=r"inv\.bed:1"):
        read_bed(inverted)
    with pytest.raises(PredictdError, match="not found"):
        read_bed(tmp_path / "missing.bed")


def test_real_hg38_annotations_chr21(shared_path):
    # bundled with the package: the shared data's files, byte for byte
    beds = annotation_beds("hg38")
    assert set(beds) == {"genes", "enhancers", "blacklist"}
    annot = shared_path("annotations/hg38")
    for path in beds.values():
        assert path.read_bytes() == (annot / path.name).read_bytes()
    assert annotation_beds("hg38", annot) == {k: annot / p.name for k, p in beds.items()}
    assert annotation_beds("hg18") == {} and annotation_beds(None) == {}
    masks, lines = python_lines_run(region_masks, [("chr21", 46_709_983)], 25, beds["genes"],
                                    beds["enhancers"], skip=[read_bed])
    genes = read_bed(beds["genes"], need_strand=True)
    assert len(genes) > 50_000
    sel = genes.chrom == "chr21"
    # Reading a BED loops over its lines; building the masks from the intervals loops over
    # neither chr21's 1.9 M bins nor its intervals: fewer Python lines than chr21 has genes.
    assert lines < sel.sum()
    # Each chr21 gene's promoter side is in the mask: the bin just upstream of its TSS.
    plus = sel & (genes.strand == "+") & (genes.start >= 25)
    minus = sel & (genes.strand == "-")
    assert masks["prom"]["chr21"][(genes.start[plus] - 1) // 25].all()
    assert masks["prom"]["chr21"][genes.end[minus] // 25].all()
    frac = {r: masks[r]["chr21"].mean() for r in masks}
    assert 0.01 < frac["prom"] < 0.1 and 0.2 < frac["gene"] < 0.7 and 0.001 < frac["enh"] < 0.05


def test_msevar_is_the_variance_weighted_mse(no_warnings):
    rng = np.random.default_rng(3)
    tracks = rng.gamma(1.0, 1.0, size=(500, 4))
    tracks[::7, 2] = np.nan  # a cell type not observed in some bins
    var = M.assay_variance(tracks)
    # per bin: the population variance of the observed values
    for i in (0, 1, 7, 499):
        row = tracks[i][~np.isnan(tracks[i])]
        assert var[i] == pytest.approx(np.var(row))
    y, yhat = tracks[:, 0], rng.gamma(1.0, 1.0, 500)
    want = sum((a - b) ** 2 * w for a, b, w in zip(y, yhat, var)) / var.sum()
    assert M.msevar(y, yhat, var) == pytest.approx(want)
    # uniform weights give the plain mse; weight only where the track is perfect gives 0
    assert M.msevar(y, yhat, np.ones(500)) == pytest.approx(M.mse(y, yhat))
    w = np.zeros(500)
    w[:10] = 1.0
    assert M.msevar(y, np.r_[y[:10], yhat[10:]], w) == 0.0
    # one observed value (or none) has no spread; no spread anywhere is undefined
    np.testing.assert_array_equal(M.assay_variance([[1.0, np.nan], [np.nan, np.nan]]), [0, 0])
    assert math.isnan(M.msevar(y, yhat, np.zeros(500)))
    s = M.score_track(y, yhat, {"prom": np.arange(500) < 50}, var)
    assert list(s) == M.METRIC_NAMES + ["msevar", "mseprom"]
    assert s["msevar"] == M.msevar(y, yhat, var) and "msevar" in M.LOWER_IS_BETTER


def test_msevar_input_errors():
    y = np.zeros(10)
    with pytest.raises(PredictdError, match="var .* 9 bins"):
        M.msevar(y, y, np.ones(9))
    with pytest.raises(PredictdError, match="negative"):
        M.msevar(y, y, -np.ones(10))
    with pytest.raises(PredictdError, match="non-finite"):
        M.msevar(y, y, np.full(10, np.nan))
    with pytest.raises(PredictdError, match="bins × cell types"):
        M.assay_variance(np.ones(3))


def test_bundled_hg19_and_mm10_annotations():
    """The hg19 genes, enhancers and blacklist and the mm10 blacklist are bundled and readable,
    with the interval counts PROVENANCE.md gives; on hg19 chr22 they give region masks and a
    blacklist in the same proportions as hg38's."""
    hg19, mm10 = annotation_beds("hg19"), annotation_beds("mm10")
    assert set(hg19) == {"genes", "enhancers", "blacklist"} and set(mm10) == {"blacklist"}
    counts = {k: len(read_bed(p)) for k, p in hg19.items()}
    assert counts == {"genes": 20_629, "enhancers": 63_090, "blacklist": 834}
    assert len(read_bed(mm10["blacklist"])) == 3_435
    assert len(read_bed(hg19["genes"], need_strand=True)) == 20_629
    masks = region_masks([("chr22", 51_304_566)], 25, hg19["genes"], hg19["enhancers"])
    frac = {r: masks[r]["chr22"].mean() for r in masks}
    assert 0.01 < frac["prom"] < 0.05 and 0.2 < frac["gene"] < 0.5
    assert 0.003 < frac["enh"] < 0.02
