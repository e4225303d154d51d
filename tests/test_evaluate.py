"""Scoring held-out tracks: methods, region metrics on hg38."""

from __future__ import annotations

import numpy as np

from predictd import evaluate
from predictd.genome import load_genome
from predictd.pipeline import _region_masks
from predictd.tensor import TensorHeader
from tests.conftest import shared_data


def test_score_methods_skips_unavailable_baselines_and_unobserved_bins():
    rng = np.random.default_rng(0)
    y = rng.random(1000)
    y[:100] = np.nan  # a chromosome the observed track lacks
    v = {"A.x": {"y": y, "model": y + 0.1, "average": np.full(1000, np.nan)}}
    rows = evaluate.score_methods(v)
    assert [r["method"] for r in rows] == ["model"]
    assert abs(rows[0]["mse"] - 0.01) < 1e-9


def test_region_metrics_on_hg38():
    shared_data()
    g = load_genome("hg38")
    header = TensorHeader(experiments=[], cell_types=[], assays=[],
                          genome={"name": "hg38", "chroms": [list(c) for c in g.chroms]},
                          bin_size=25, block_bins=262_144, transform="arcsinh")
    masks = _region_masks(header, None)
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
