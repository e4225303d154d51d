"""Scoring held-out tracks: methods, msevar, the blacklist, region metrics on hg38."""

from __future__ import annotations

import numpy as np
import pytest

from predictd import evaluate, metrics
from predictd.genome import load_genome
from predictd.annotations import genome_region_masks
from predictd.tensor import TensorHeader


def test_score_methods_skips_unavailable_baselines_and_unobserved_bins():
    rng = np.random.default_rng(0)
    y = rng.random(1000)
    y[:100] = np.nan  # a chromosome the observed track lacks
    v = {"A.x": {"y": y, "model": y + 0.1, "average": np.full(1000, np.nan)}}
    rows = evaluate.score_methods(v)
    assert [r["method"] for r in rows] == ["model"]
    assert abs(rows[0]["mse"] - 0.01) < 1e-9


def test_msevar_from_the_assays_tracks_and_blacklisted_bins_left_out():
    rng = np.random.default_rng(1)
    names = ["A.x", "B.x", "C.x", "A.y"]
    X = rng.gamma(1.0, 1.0, size=(400, 4))
    var = evaluate.assay_variance_of("B.x", names, X)
    np.testing.assert_allclose(var, np.var(X[:, :3], axis=1))  # the x tracks, B.x included
    y, yhat = X[:, 1], X[:, 0]
    black = np.zeros(400, bool)
    black[:40] = True
    yhat = np.where(black, yhat + 100.0, yhat)  # a huge error only where blacklisted
    rows = evaluate.score_methods({"B.x": {"y": y, "model": yhat, "var": var}}, None, black)
    (row,) = rows
    assert row["method"] == "model"
    want = metrics.score_track(y[40:], yhat[40:], None, var[40:])
    assert row == {"cell_type": "B", "assay": "x", "method": "model", **want}
    assert list(want)[-1] == "msevar"


@pytest.mark.slow
def test_region_metrics_on_hg38(shared):
    g = load_genome("hg38")
    header = TensorHeader(experiments=[], cell_types=[], assays=[],
                          genome={"name": "hg38", "chroms": [list(c) for c in g.chroms]},
                          bin_size=25, block_bins=262_144, transform="arcsinh")
    masks = genome_region_masks(header.genome, header.bin_size)
    n = g.total_bins(25)
    assert set(masks) == {"prom", "gene", "enh"} and all(m.size == n for m in masks.values())
    # promoters and gene bodies cover a few % and about half of the genome
    assert 0.01 < masks["prom"].mean() < 0.1 and 0.3 < masks["gene"].mean() < 0.7
    part = slice(0, 2_000_000)  # chr1's first 50 Mbp keep the scoring quick
    sub = {k: m[part] for k, m in masks.items()}
    y = np.zeros(2_000_000, np.float32)
    yhat = np.where(sub["prom"], 1.0, 0.0).astype(np.float32)
    rows = evaluate.score_methods({"A.x": {"y": y, "model": yhat}}, sub)
    assert rows[0]["mseprom"] == 1.0 and rows[0]["mseenh"] < 1.0


# two chromosomes of 1,000 bp (40 bins) and 330 bp (14 bins, the last one partial) at 25 bp
CHROMS = [["a", 1000], ["b", 330]]


def _vectors():
    y = np.zeros(54)
    yhat = np.zeros(54)
    y[5:9] = 2.0            # a's strongest signal, predicted exactly
    yhat[5:9] = 2.0
    y[44:47] = 1.0          # b: observed 1, predicted 0 -> the error sits here
    y[40] = np.nan          # b's first bin not observed
    return y, yhat


def test_error_profile_hand_computed():
    y, yhat = _vectors()
    segs = evaluate._segments(54, CHROMS, 25)
    assert [s[:3] for s in segs] == [("a", 0, 40), ("b", 40, 14)]
    p = evaluate.error_profile((yhat - y) ** 2, segs, width=4)
    # 53 scored bins, squared error 1 in three of them
    assert p["bins"] == 53 and abs(p["mse"] - 3 / 53) < 1e-12
    # worst 1 % of 53 bins is one bin: 1 of the total 3
    assert abs(p["top1_share"] - 1 / 3) < 1e-12
    # the worst 4-bin window within one chromosome holds all of it
    assert p["worst"][0] in (43, 44) and p["worst"][1] == 4
    assert p["worst_share"] == 1.0 and p["worst_mse"] == 0.75 and p["rest_mse"] == 0.0


def test_error_profile_window_never_straddles_chromosomes():
    y = np.zeros(54)
    yhat = np.zeros(54)
    yhat[37:43] = 1.0  # error across the a|b boundary: 3 bins each side
    y[40] = np.nan
    segs = evaluate._segments(54, CHROMS, 25)
    p = evaluate.error_profile((yhat - y) ** 2, segs, width=6)
    s, w = p["worst"]
    assert (s + w <= 40) or s >= 40  # inside one chromosome
    assert abs(p["worst_share"] - 3 / 5) < 1e-12  # a's 3 of the 5 scored error bins
    # a perfect model: no window, no shares
    p = evaluate.error_profile((y - y) ** 2, segs, width=6)
    assert p["mse"] == 0.0 and p["worst"] is None and np.isnan(p["top1_share"])


def test_example_regions_name_real_coordinates():
    y, yhat = _vectors()
    base = np.full(54, 0.5)
    examples, errors = evaluate.example_regions({"E1.m": (y, yhat, base)}, CHROMS, 25,
                                                width=4, error_width=14)
    assert [e["label"] for e in examples] == ["densest observed signal",
                                              "largest error of the model"]
    dense, worst = examples
    assert dense["chrom"] == "a" and dense["start_bin"] == 5
    np.testing.assert_array_equal(dense["observed"], [2.0] * 4)
    # the error window is on chromosome b, in b's own bin numbers
    assert worst["chrom"] == "b" and 0 <= worst["start_bin"] <= 4
    assert worst["observed"].size == 4
    # the worst window is the whole of the short chromosome b, its end its length
    (row,) = errors
    assert row["track"] == "E1.m" and row["worst"] == "b:0-330" and row["worst_share"] == 1.0
    # no chromosome list: one unnamed segment, positions are bins
    examples, _ = evaluate.example_regions({"E1.m": (y, yhat, base)}, None, 25, width=4)
    assert examples[0]["chrom"] == "" and examples[0]["start_bin"] == 5
    with pytest.raises(ValueError, match="54 bins"):
        evaluate.example_regions({"E1.m": (y, yhat, base)}, [["a", 1000]], 25)
